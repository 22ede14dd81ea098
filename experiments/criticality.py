"""criticality: kernel, correlation and susceptibility flows over depth at and off criticality, and the finite-width ReLU kurtosis 3 (1 + 5/n)^L, against sampled networks.

Roberts, Yaida & Hanin 2021 (PDLT, arXiv:2106.10165, ch. 4-5; kernel recursion
eq. 4.90 ff., susceptibilities eqs. 5.48-5.50), Poole et al. 2016 (chi_1, the
mean squared singular value of a layer's Jacobian, eq. 7) and Schoenholz et al.
2017, through `theory.criticality` (kernel_recursion, susceptibilities,
relu_dual, tanh_dual, critical_initialization, relu_output_kurtosis), all
called in `summarize`, never while sampling.

Flows. Two inputs whose first-layer kernel has variances k1 and correlation
`rho1` pass through `flow_depth` layers of width `flow_width` for each case
(activation, C_W, C_b, k1) of FLOW_CASES: ReLU at C_W = 1.8, 2 (critical), 2.2;
tanh at C_W = 0.8, 1 (critical), 1.5 with C_b = 0.3, and at C_W = 1 from a
tiny kernel k1 = 1e-4 (the K -> 0 limit that defines tanh's criticality).
`flow_nets` networks per case. What is measured per network and layer l is
the network's own kernel of layer l, G^l = C_b + C_W mean_j phi(z^{l-1}_j)
phi(z^{l-1}_j) over the two inputs (the exact covariance of z^l given layer
l-1: the realised kernel with the last layer's readout noise integrated out),
and the layer's susceptibilities from its neurons, chi_perp = C_W mean_j
phi'(z_j)^2 and chi_parallel = C_W mean_j phi(z_j) phi'(z_j) z_j / G (the
Jacobian gains averaged over the next layer's weights: Poole et al.'s chi_1
and d K^{l+1} / d K^l), and one real Jacobian gain |W (phi'(z) * v)|^2 / |v|^2
for a fresh Gaussian v.

Agreement (each entry at family level LEVEL / number of entries):
  * flow_*: the mean over networks at each layer l <= `flow_check_depth` (10
    at small: l / n <= 0.04) and case against the infinite-width recursion
    from K^(1) (variance, correlation rho, chi_parallel, chi_perp at K^l),
    max-|z| with SE over networks (scaled by the ratio of the t_{nets-1} and
    normal quantiles at the Šidák level, as only `flow_nets` networks give each
    SE). Finite-width corrections grow as l / n and are not modelled: they are
    kept below the SE by the choice of width, networks and checked depth.
    Deeper layers are drawn only: there the network-to-network spread of K
    (log-normal, log-variance ~ 2 l / n) makes a mean over 16 networks
    unreliable (tanh at C_W = 0.8, layer 28, width 256: the mean over 64
    networks is 12% low for one seed and 5% high for another).
  * one_step_*: exact at any width. Given layer l-1, the z^l_j are i.i.d.
    N(0, G^{l-1}), so E[G^l | layer l-1] = C_b + C_W dual(G^{l-1}) and the
    neurons' susceptibilities average to susceptibilities(G^{l-1}). Residuals
    per network and layer, with SE from the neurons' conditional variance
    (n - 1 degrees of freedom each); as martingale differences they are
    uncorrelated across layers, so both max-|z| and chi^2 are valid.
  * critical_C_W_relu / _tanh: the C_W at which the measured Jacobian gain is 1
    (C_W / mean gain, ReLU over its three cases, tanh over the K -> 0 case)
    against `critical_initialization`.

Kurtosis. For each width n in `widths` and depth L = r n for r in `ratios`
(integer L only), `n_nets` bias-free ReLU networks at C_W = 2 with L hidden
layers of width n and `n_out` outputs on one fixed input. Two estimates from
the same networks: 3 mean(G_L^2) / mean(G_L)^2 with G_L the output's exact
conditional variance (readout integrated out, not the hidden layers'
fluctuations that the formula is about), and mean(m4) / mean(m2)^2 from the
sampled outputs. Delta-method SEs. Both are compared with relu_output_kurtosis
for L/n <= `check_ratio` (beyond it the estimators' right skew makes |z| > 3
a few times likelier than Gaussian); the rest are drawn.

Pieces: ("flows", case, 0, 0) and ("kurtosis", n, L, chunk).
"""
import dataclasses

import matplotlib.figure
import numpy as np
from scipy import stats

from experiments import agreement as agree
from theory import criticality as crit

FLOW_CASES = (("relu", 1.8, 0.0, 1.0), ("relu", 2.0, 0.0, 1.0), ("relu", 2.2, 0.0, 1.0),
              ("tanh", 0.8, 0.0, 1.0), ("tanh", 1.0, 0.0, 1.0), ("tanh", 1.5, 0.3, 1.0),
              ("tanh", 1.0, 0.0, 1e-4))  # (activation, C_W, C_b, first-layer variance k1)
ACTIVATIONS = {"relu": (lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(z.dtype)),
               "tanh": (np.tanh, lambda z: 1 / np.cosh(z) ** 2)}


@dataclasses.dataclass(frozen=True)
class Config:
    widths: tuple = (16, 32)
    ratios: tuple = (0.0625, 0.125, 0.1875, 0.25, 0.375, 0.5)
    n_nets: int = 16000
    n_chunks: int = 2
    n_out: int = 8
    flow_depth: int = 30
    flow_width: int = 256
    flow_nets: int = 16
    rho1: float = 0.6
    flow_check_depth: int = 10
    check_ratio: float = 0.25
    seed: int = 0

    @classmethod
    def tiny(cls):
        return cls(widths=(8, 16), ratios=(0.125, 0.25), n_nets=16000, n_chunks=1,
                   flow_depth=8, flow_width=64, flow_nets=4)

    @classmethod
    def small(cls):
        return cls()

    @classmethod
    def paper(cls):
        return cls(widths=(16, 32, 64), ratios=(0.0625, 0.125, 0.1875, 0.25, 0.375, 0.5, 0.75, 1.0),
                   n_nets=200000, n_chunks=20, flow_depth=60, flow_width=1024, flow_nets=32)


def depths(config, width):
    return sorted({int(round(r * width)) for r in config.ratios
                   if abs(r * width - round(r * width)) < 1e-9 and round(r * width) >= 1})


def pieces(config):
    out = [("flows", i, 0, 0) for i in range(len(FLOW_CASES))]
    for n in config.widths:
        for depth in depths(config, n):
            out += [("kurtosis", n, depth, c) for c in range(config.n_chunks)]
    return out


def _input(rng, n0):
    x = rng.standard_normal(n0)
    return x * np.sqrt(n0) / np.linalg.norm(x)          # |x|^2 / n0 = 1


def sample_networks(rng, width, depth, n_nets, n_out, C_W=2.0, batch=1000):
    """Sampled bias-free ReLU networks on one fixed input (|x|^2 / n0 = 1).

    Returns (z, g): z (n_nets, n_out) the outputs, and g (n_nets,) each
    network's G_L = (C_W / n) sum_j relu(z_j^(L))^2, the variance of its
    outputs given its hidden layers (for depth 0, G_0 = C_W |x|^2 / n0).
    """
    x = _input(rng, width).astype(np.float32)
    scale = np.float32(np.sqrt(C_W / width))
    outs, gs = [], []
    for start in range(0, n_nets, batch):
        b = min(batch, n_nets - start)
        h = np.broadcast_to(x, (b, width))
        for _ in range(depth):
            w = rng.standard_normal((b, width, width), dtype=np.float32) * scale
            h = np.maximum(np.einsum("bij,bj->bi", w, h), 0)
        w = rng.standard_normal((b, n_out, width), dtype=np.float32) * scale
        outs.append(np.einsum("bij,bj->bi", w, h).astype(np.float64))
        gs.append(C_W / width * np.sum(np.asarray(h, dtype=np.float64) ** 2, axis=1))
    return np.concatenate(outs), np.concatenate(gs)


def kurtosis_with_se(m4, m2):
    """mean(m4) / mean(m2)^2 and its delta-method standard error over samples."""
    a, b = m4.mean(), m2.mean()
    grad = np.array([1 / b ** 2, -2 * a / b ** 3])
    cov = np.cov(np.stack([m4, m2])) / len(m4)
    return a / b ** 2, float(np.sqrt(grad @ cov @ grad))


def _flow_inputs(rng, n0, rho1):
    """Two inputs with |x|^2 / n0 = 1 and correlation rho1, and a unit direction g orthogonal to xa."""
    xa = _input(rng, n0)
    g = _input(rng, n0)
    g = g - (g @ xa) / n0 * xa
    g = g * np.sqrt(n0) / np.linalg.norm(g)
    return xa, rho1 * xa + np.sqrt(1 - rho1 ** 2) * g


def _flows(config, case):
    """Per network and layer: its kernel G (3: cov12, var_a, var_b), the neurons' susceptibilities
    and their conditional variances, and one real Jacobian gain (see the module docstring)."""
    act, cw, cb, k1 = FLOW_CASES[case]
    phi, dphi = ACTIVATIONS[act]
    rng = np.random.default_rng([config.seed, 7, case])
    n, depth, nets = config.flow_width, config.flow_depth, config.flow_nets
    xa, xb = _flow_inputs(rng, n, config.rho1)
    x = np.stack([xa, xb]) * np.sqrt((k1 - cb) / cw)       # K^(1)_aa = C_b + C_W |x|^2 / n0 = k1
    shape = (nets, depth)
    out = {"G": np.zeros(shape + (3,)), "G_var": np.zeros(shape + (2,)),
           "chi_par": np.zeros(shape), "chi_par_var": np.zeros(shape),
           "chi_perp": np.zeros(shape), "chi_perp_var": np.zeros(shape),
           "gain": np.zeros((nets, depth - 1))}
    scale = np.float32(np.sqrt(cw / n))
    for m in range(nets):
        h, d, v = x, None, None
        k_prev = cb + cw * np.array([h[0] @ h[1], h[0] @ h[0], h[1] @ h[1]]) / n
        for layer in range(depth):
            w = (rng.standard_normal((n, n), dtype=np.float32) * scale).astype(np.float64)
            if d is not None:                   # the previous layer's Jacobian gain, through this W
                jv = w @ (d * v)
                out["gain"][m, layer - 1] = jv @ jv / (v @ v)
            z = h @ w.T + rng.standard_normal(n) * np.sqrt(cb)     # (2, n): layer l = layer + 1
            out["G"][m, layer] = k_prev
            p, d = phi(z), dphi(z[0])
            terms = cb + cw * np.stack([p[0] * p[1], 0.5 * (p[0] ** 2 + p[1] ** 2)])
            k_prev = cb + cw * np.array([np.mean(p[0] * p[1]), np.mean(p[0] ** 2), np.mean(p[1] ** 2)])
            out["G_var"][m, layer] = terms.var(axis=1, ddof=1) / n
            perp, par = cw * d ** 2, cw * p[0] * d * z[0] / out["G"][m, layer, 1]
            out["chi_perp"][m, layer], out["chi_perp_var"][m, layer] = perp.mean(), perp.var(ddof=1) / n
            out["chi_par"][m, layer], out["chi_par_var"][m, layer] = par.mean(), par.var(ddof=1) / n
            v = rng.standard_normal(n)
            h = p
    return out


def run_piece(config, piece):
    kind, width, depth, chunk = piece
    if kind == "flows":
        return _flows(config, int(width))
    rng = np.random.default_rng([config.seed, width, depth, chunk])
    n = config.n_nets // config.n_chunks
    z, g = sample_networks(rng, width, depth, n, config.n_out)
    return {"width": width, "depth": depth, "m2": np.mean(z ** 2, 1), "m4": np.mean(z ** 4, 1),
            "g": g}


def _case_theory(config, case, data):
    """Infinite-width flow from K^(1) and one-step predictions from each network's own kernel."""
    act, cw, cb, k1 = FLOW_CASES[case]
    dual = getattr(crit, f"{act}_dual")        # looked up now, so a patched theory is what is compared
    g = np.asarray(data["G"])
    flow = crit.kernel_recursion(dual, g[0, 0, 0], g[0, 0, 1], g[0, 0, 2], config.flow_depth - 1, cw, cb)
    k = 0.5 * (flow.var1 + flow.var2)
    chi_par, chi_perp = crit.susceptibilities(dual, flow.var1, cw)
    step = crit.kernel_recursion(dual, g[:, :-1, 0], g[:, :-1, 1], g[:, :-1, 2], 1, cw, cb)
    one_par, one_perp = crit.susceptibilities(dual, g[:, :, 1], cw)
    return {"var": k, "rho": flow.cov12 / np.sqrt(flow.var1 * flow.var2), "chi_par": chi_par,
            "chi_perp": chi_perp, "next_cov": step.cov12[1], "next_var": 0.5 * (step.var1[1] + step.var2[1]),
            "one_chi_par": one_par, "one_chi_perp": one_perp}


def _mean_se(samples):
    samples = np.asarray(samples, np.float64)
    return samples.mean(0), samples.std(0, ddof=1) / np.sqrt(samples.shape[0])


def summarize(config, results):
    flows = {r_i: r for r_i, r in enumerate(results[:len(FLOW_CASES)])}
    out = {"flow_cases": [f"{a} C_W={c:g}" + (f" C_b={b:g}" if b else "") + (f" K1={k:g}" if k != 1 else "")
                          for a, c, b, k in FLOW_CASES],
           "flow_depth": config.flow_depth, "flow_width": config.flow_width,
           "flow_nets": config.flow_nets, "flow_check_depth": config.flow_check_depth, "check_ratio": config.check_ratio, "flows": {}}
    for i, label in enumerate(out["flow_cases"]):
        data = flows[i]
        theory = _case_theory(config, i, data)
        g = np.asarray(data["G"])
        measured = {"var": 0.5 * (g[..., 1] + g[..., 2]), "rho": g[..., 0] / np.sqrt(g[..., 1] * g[..., 2]),
                    "chi_par": data["chi_par"], "chi_perp": data["chi_perp"]}
        f = {"layer": np.arange(1, config.flow_depth + 1)}
        for key, samples in measured.items():
            f[key], f["mc_" + key], f["mc_" + key + "_se"] = theory[key], *_mean_se(samples)
        # one-step residuals (layers 2..depth for the kernel, 1..depth for the susceptibilities)
        resid = {"cov": (g[:, 1:, 0] - theory["next_cov"], np.asarray(data["G_var"])[:, :-1, 0]),
                 "var": (0.5 * (g[:, 1:, 1] + g[:, 1:, 2]) - theory["next_var"],
                         np.asarray(data["G_var"])[:, :-1, 1]),
                 "chi_par": (np.asarray(data["chi_par"]) - theory["one_chi_par"], data["chi_par_var"]),
                 "chi_perp": (np.asarray(data["chi_perp"]) - theory["one_chi_perp"], data["chi_perp_var"])}
        for key, (r, v) in resid.items():
            f[f"step_{key}"] = r.mean(0)
            f[f"step_{key}_se"] = np.sqrt(np.sum(v, axis=0)) / r.shape[0]
        out["flows"][label] = f
    out["critical"] = {}
    for act in ("relu", "tanh"):
        if act == "relu":
            chosen = [i for i, c in enumerate(FLOW_CASES) if c[0] == "relu"]
        else:
            chosen = [i for i, c in enumerate(FLOW_CASES) if c[0] == "tanh" and c[3] < 1e-3]
        gains = np.concatenate([np.asarray(flows[i]["gain"]).ravel() / FLOW_CASES[i][1] for i in chosen])
        a, se = gains.mean(), gains.std(ddof=1) / np.sqrt(gains.size)
        out["critical"][act] = {"C_W": 1 / a, "se": se / a ** 2,
                                "theory": float(crit.critical_initialization(act).C_W), "samples": gains.size}
    points = []
    for n in config.widths:
        for depth in depths(config, n):
            mine = [r for r in results[len(FLOW_CASES):] if int(r["width"]) == n and int(r["depth"]) == depth]
            m4 = np.concatenate([r["m4"] for r in mine])
            m2 = np.concatenate([r["m2"] for r in mine])
            g = np.concatenate([r["g"] for r in mine])
            k, se = kurtosis_with_se(3 * g ** 2, g)
            k_direct, se_direct = kurtosis_with_se(m4, m2)
            theory = float(crit.relu_output_kurtosis(n, depth))
            points.append({"width": n, "depth": depth, "ratio": depth / n, "kurtosis": k, "se": se,
                           "theory": theory, "kurtosis_direct": k_direct, "se_direct": se_direct,
                           "n_nets": len(m4)})
    out["kurtosis"] = points
    return out

def plot(results):
    figure = matplotlib.figure.Figure(figsize=(15, 9.5))
    grid = figure.add_gridspec(2, 3)
    panels = [("var", "kernel K^(l) (single input)", "log"), ("rho", "correlation rho^(l)", "linear"),
              ("chi", "chi_parallel (solid, o), chi_perp (dashed, x)", "linear")]
    for j, (key, label, scale) in enumerate(panels):
        axes = figure.add_subplot(grid[0, j])
        for i, (name, f) in enumerate(results["flows"].items()):
            color, layer = f"C{i}", np.asarray(f["layer"])
            shift = (i - 3) * 0.08               # cases side by side, none hidden under another
            pairs = [("chi_par", "-", "o"), ("chi_perp", "--", "x")] if key == "chi" else [(key, "-", "o")]
            for k, (q, style, marker) in enumerate(pairs):
                axes.plot(layer, f[q], style, color=color, lw=1, label=name if k == 0 else None)
                axes.errorbar(layer[::2] + shift, np.asarray(f["mc_" + q])[::2],
                              yerr=np.asarray(f["mc_" + q + "_se"])[::2], fmt=marker, ms=3,
                              color=color, elinewidth=0.8, capsize=1.5)
        axes.axvline(results["flow_check_depth"] + 0.5, color="grey", ls=":", lw=1)
        axes.set(xlabel="layer l", ylabel=label, yscale=scale)
        if key == "chi":
            axes.set_ylim(0.0, 1.5)
        axes.tick_params(labelsize=9)
        axes.legend(fontsize=8, ncol=2 if key != "var" else 1)
    figure.axes[0].set_title(f"lines: infinite width; markers: mean ± SE of {results['flow_nets']} "
                             f"width-{results['flow_width']} nets", fontsize=10)
    axes = figure.add_subplot(grid[1, :2])
    points = results["kurtosis"]
    r = np.linspace(0, max(p["ratio"] for p in points), 200)
    for i, n in enumerate(sorted({p["width"] for p in points})):
        mine = [p for p in points if p["width"] == n]
        axes.errorbar([p["ratio"] for p in mine], [p["kurtosis"] for p in mine],
                      yerr=[p["se"] for p in mine], fmt="o", color=f"C{i}", ms=4, capsize=2,
                      label=f"n={n}: 3 E[G_L^2]/E[G_L]^2 over sampled nets (± SE)")
        axes.errorbar([p["ratio"] + 0.006 for p in mine], [p["kurtosis_direct"] for p in mine],
                      yerr=[p["se_direct"] for p in mine], fmt="x", color=f"C{i}", ms=5, capsize=2,
                      label=f"n={n}: same nets, from output samples z (± SE)")
        axes.plot(r, 3 * (1 + 5 / n) ** (r * n), color=f"C{i}", lw=1, label=f"3 (1 + 5/n)^L, n={n}")
    axes.plot(r, 3 * (1 + 5 * r), "k:", lw=1, label="3 (1 + 5 L/n), leading order")
    axes.axvline(results["check_ratio"], color="grey", ls=":", lw=1)
    axes.set(xlabel="L / n", ylabel="output kurtosis E[z^4] / E[z^2]^2", yscale="log",
             title=f"bias-free ReLU at C_W = 2; compared for L/n <= {results['check_ratio']:g} (dotted line)")
    axes.legend(fontsize=8)
    axes = figure.add_subplot(grid[1, 2])
    for i, (name, f) in enumerate(results["flows"].items()):
        layer = np.asarray(f["layer"])
        for q, marker in (("cov", "o"), ("chi_perp", "x")):
            z = np.asarray(f[f"step_{q}"]) / np.asarray(f[f"step_{q}_se"])
            axes.plot(layer[-len(z):] + (i - 3) * 0.08, z, marker, ms=3, color=f"C{i}")
    axes.axhline(0, color="k", lw=0.5)
    axes.set(xlabel="layer l", ylabel="one-step residual / SE",
             title="o: K_ab^(l) - recursion(G^(l-1)); x: chi_perp", ylim=(-5, 5))
    figure.tight_layout()
    return figure


def _t_scaled(se, n_points, dof, level):
    """SEs scaled so that the Šidák max-|z| threshold holds for t statistics with `dof` degrees of freedom."""
    per_point = -np.expm1(np.log1p(-level) / n_points)
    return np.asarray(se) * stats.t.ppf(1 - per_point / 2, dof) / stats.norm.ppf(1 - per_point / 2)


N_ENTRIES = 16  # statistical entries below; each at level LEVEL / N_ENTRIES


def agreement(results):
    level = agree.LEVEL / N_ENTRIES
    flows = list(results["flows"].values())
    dof = results["flow_nets"] - 1
    entries = []
    last = results["flow_check_depth"]
    for key, first in (("var", 1), ("rho", 1), ("chi_par", 0), ("chi_perp", 0)):
        measured = np.concatenate([np.asarray(f["mc_" + key])[first:last] for f in flows])
        theory = np.concatenate([np.asarray(f[key])[first:last] for f in flows])
        se = np.concatenate([np.asarray(f["mc_" + key + "_se"])[first:last] for f in flows])
        entries.append(agree.max_z(f"flow_{key}", measured, theory, _t_scaled(se, se.size, dof, level),
                                   level=level, what=f"(case, layer <= {last}) means over {dof + 1} nets vs the "
                                                     "infinite-width recursion (SE t-scaled)"))
    for key in ("cov", "var", "chi_par", "chi_perp"):
        residual = np.concatenate([np.asarray(f[f"step_{key}"]) for f in flows])
        se = np.concatenate([np.asarray(f[f"step_{key}_se"]) for f in flows])
        what = "(case, layer) one-step residuals, network's own kernel"
        entries.append(agree.max_z(f"one_step_{key}_max_z", residual, 0.0, se, level=level, what=what))
        entries.append(agree.chi_squared(f"one_step_{key}_chi2", residual, 0.0, se, level=level, what=what))
    for act, c in results["critical"].items():
        entries.append(agree.z_score(f"critical_C_W_{act}", c["C_W"], c["theory"], c["se"], level=level))
    checked = [p for p in results["kurtosis"] if p["ratio"] <= results["check_ratio"] + 1e-12]
    theory = [p["theory"] for p in checked]
    entries.append(agree.max_z("kurtosis_conditional", [p["kurtosis"] for p in checked], theory,
                               [p["se"] for p in checked], level=level, what="(n, L) with L/n <= "
                               f"{results['check_ratio']:g}, 3 E[G_L^2]/E[G_L]^2"))
    entries.append(agree.max_z("kurtosis_output_samples", [p["kurtosis_direct"] for p in checked], theory,
                               [p["se_direct"] for p in checked], level=level,
                               what=f"(n, L) with L/n <= {results['check_ratio']:g}, output samples"))
    assert len(entries) == N_ENTRIES
    return entries


def caption(record):
    """The figure's caption, every number from the record."""
    res, cfg = record["results"], record["config"]
    e = agree.by_name(record["agreement"])
    crit_text = "; ".join(f"{act}: {c['C_W']:.4f} ± {c['se']:.4f} (theory {c['theory']:g})"
                          for act, c in res["critical"].items())
    points = res["kurtosis"]
    widths = sorted({p["width"] for p in points})
    return (
        f"Top: `theory.criticality.kernel_recursion` and `susceptibilities` (lines) over {res['flow_depth']} "
        f"layers for {', '.join(res['flow_cases'])} (first-layer correlation {cfg['rho1']:g}); markers: "
        f"mean ± SE over {res['flow_nets']} sampled width-{res['flow_width']} networks of each network's "
        "own kernel G^(l) (the exact covariance of layer l given layer l-1) and of its neurons' "
        "susceptibilities C_W mean phi'^2 and C_W mean phi phi' z / G (Roberts, Yaida & Hanin 2021, "
        "ch. 4-5; Poole et al. 2016); ReLU's three correlation curves, and its chi_parallel and chi_perp, "
        "coincide (scale invariance). Finite-width corrections O(l/n) are not modelled but kept below the "
        f"SE by the choice of width and by comparing layers l <= {res['flow_check_depth']} (dotted line; "
        "deeper layers are drawn only, their means over few networks being dominated by the log-normal "
        f"spread of K) (largest flow |z| {e['flow_var']['value']:.2f}, {e['flow_rho']['value']:.2f}, "
        f"{e['flow_chi_par']['value']:.2f}, {e['flow_chi_perp']['value']:.2f} for K, rho, chi_par, "
        "chi_perp). Bottom right: one-step residuals, exact at any width: each network's G^(l) against "
        "the recursion applied to its own G^(l-1), and its susceptibilities at its own G^(l-1) "
        f"(chi^2/dof {e['one_step_cov_chi2']['value']:.2f} for the correlation, "
        f"{e['one_step_chi_perp_chi2']['value']:.2f} for chi_perp). The C_W at which the measured "
        f"Jacobian gain |W (phi'(z) v)|^2 / |v|^2 is 1 (criticality): {crit_text}. Bottom left: output "
        f"kurtosis of {points[0]['n_nets']:,} sampled bias-free ReLU networks per point (widths "
        f"{', '.join(map(str, widths))}, full weight matrices) against `relu_output_kurtosis` = "
        f"3 (1 + 5/n)^L, with PDLT's leading order 3 (1 + 5 L/n); dots use each network's exact "
        "conditional output variance (readout integrated out), crosses the sampled outputs. For L/n <= "
        f"{res['check_ratio']:g} the largest |z| is {e['kurtosis_conditional']['value']:.2f} "
        f"({e['kurtosis_output_samples']['value']:.2f} from the output samples); beyond it the points are "
        "drawn only (the estimators' right skew).")
