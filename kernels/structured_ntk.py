"""Structured derivatives: the empirical NTK without the Jacobians of weight matrices.

Novak, Sohl-Dickstein & Schoenholz 2022, "Fast finite width neural tangent kernel" (ICML), §4.
A weight ``W`` that reaches the network only through one bilinear operation ``z = x W``
(``dot_general``, or ``conv_general_dilated`` with ``W`` as its kernel) has the Jacobian
``df/dW = sum_m dz[m] (x) x[m]`` (``dz = df/dz``, ``m`` the free positions of ``x``), so its NTK term

    Theta_W(x1, x2) = sum_{m, m'} <dz1[m], dz2[m']> <x1[m], x2[m']>           (§4, eq. 9 in spirit)

can be contracted either by materialising ``df/dW`` (Jacobian contraction's order) or through
the two Gram matrices, whichever costs fewer FLOPs; ``dz`` is much smaller than ``df/dW`` for
wide layers and is obtained without the weight-gradient products. A parameter that enters only
through a broadcast (a bias, LayerNorm's scale) gets ``df/db`` as ``dz`` of the broadcast summed
over the broadcast axes. Every other parameter falls back to its Jacobian.

The structure is read from the network's jaxpr (``jax.make_jaxpr`` with jit inlined): a parameter
qualifies when it has a single use, reached through linear isometries (reshape, transpose,
dtype conversion, negation, multiplication or division by a constant scalar, whose square scales
the term). The jaxpr is then evaluated with an additive perturbation ``eps`` on each qualifying
``z`` and differentiated in ``eps`` (and in the fallback parameters), one reverse pass per output.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Literal

_ISOMETRIES = {"reshape", "transpose", "squeeze", "expand_dims", "convert_element_type", "copy", "copy_p",
               "neg"}
# letters of the canonical factors; output axes use a-h / A-H (`empirical._output_letters`)
_B, _M1, _M2, _K, _R = "w", "x", "y", "z", "v"


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one parameter leaf enters the network: ``kind`` "bilinear", "conv" or "broadcast"; ``eqn``
    the operation whose output ``target`` is perturbed; ``operand`` the parameter's position in it;
    ``scales`` the constant scalars (vars or literals) it was multiplied by, ``inverse`` those it was
    divided by."""
    kind: str
    eqn: object
    operand: int
    scales: tuple = ()
    inverse: tuple = ()

    @property
    def target(self):
        return self.eqn.outvars[0]


@dataclasses.dataclass(frozen=True)
class Switches:
    """neural-tangents' private switches of structured derivatives (``empirical_ntk_fn``'s
    ``_j_rules``, ``_s_rules``, ``_fwd``), with widekit's meaning; none changes the NTK.

    s_rules: weights of a matrix product or convolution contracted through their structure
      ("bilinear"/"conv" rules); False takes them by their Jacobians.
    j_rules: parameters entering through a broadcast (biases) differentiated as the summed
      cotangent of the broadcast ("broadcast" rule, a hand-written Jacobian); False takes them by
      the Jacobian of the whole network.
    fwd: derivatives in forward mode (True), reverse mode (False), or the one whose cost, the
      number of perturbed inputs against the number of outputs, is smaller (None).
    """
    j_rules: bool = True
    s_rules: bool = True
    fwd: Optional[bool] = None

    def allows(self, rule: Optional[Rule]) -> bool:
        if rule is None:
            return False
        return self.j_rules if rule.kind == "broadcast" else self.s_rules


def trace(h, leaves, x):
    """The jaxpr of ``h(leaves, x)`` with every inner ``jit`` inlined (so parameters are visible)."""
    shapes = [jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)) for a in leaves]
    with jax.disable_jit():
        return jax.make_jaxpr(h)(shapes, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), x))


def plan(closed, n_leaves: int) -> list:
    """One `Rule` or ``None`` (Jacobian fallback) per parameter leaf of the traced network."""
    jaxpr = closed.jaxpr
    uses = {}
    for eqn in jaxpr.eqns:
        for position, v in enumerate(eqn.invars):
            if not isinstance(v, Literal):
                uses.setdefault(v, []).append((eqn, position))
    for v in jaxpr.outvars:
        if not isinstance(v, Literal):
            uses.setdefault(v, []).append((None, 0))
    variable = _dependent(jaxpr)
    return [_rule(v, uses, variable) for v in jaxpr.invars[:n_leaves]]


def _dependent(jaxpr) -> set:
    """Variables that depend on the inputs (parameters or data): not constants."""
    out = set(jaxpr.invars)
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, Literal) and v in out for v in eqn.invars):
            out.update(eqn.outvars)
    return out


def _rule(v, uses, variable) -> Optional[Rule]:
    scales, inverse = [], []
    while True:
        found = uses.get(v, [])
        if len(found) != 1 or found[0][0] is None:
            return None
        eqn, position = found[0]
        name = eqn.primitive.name
        other = eqn.invars[1 - position] if len(eqn.invars) == 2 else None
        constant_scalar = (other is not None and jnp.shape(other.aval) == ()
                           and (isinstance(other, Literal) or other not in variable))
        if name in _ISOMETRIES or (name == "mul" and constant_scalar) or (
                name == "div" and position == 0 and constant_scalar):
            if name == "mul":
                scales.append(other)
            elif name == "div":
                inverse.append(other)
            v = eqn.outvars[0]
            continue
        if name == "dot_general":
            return Rule("bilinear", eqn, position, tuple(scales), tuple(inverse))
        if (name == "conv_general_dilated" and position == 1 and eqn.params["feature_group_count"] == 1
                and eqn.params["batch_group_count"] == 1):
            return Rule("conv", eqn, position, tuple(scales), tuple(inverse))
        if name == "broadcast_in_dim" and len(eqn.invars) == 1:
            return Rule("broadcast", eqn, position, tuple(scales), tuple(inverse))
        return None


def evaluate(closed, args, perturb: dict, keep: list):
    """Runs ``closed`` on ``args`` with ``perturb[var]`` added to those variables; returns its
    outputs and the values of the variables listed in ``keep`` (operands, scalars)."""
    env = {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    env.update(zip(closed.jaxpr.constvars, closed.consts))
    env.update(zip(closed.jaxpr.invars, args))
    for eqn in closed.jaxpr.eqns:
        bound = eqn.primitive.get_bind_params(eqn.params)  # (subfuns, params) before JAX 0.7, params after
        subfuns, params = bound if isinstance(bound, tuple) else ((), bound)
        outs = eqn.primitive.bind(*subfuns, *map(read, eqn.invars), **params)
        outs = outs if eqn.primitive.multiple_results else [outs]
        for v, value in zip(eqn.outvars, outs):
            env[v] = value + perturb[v] if v in perturb else value
    return [read(v) for v in closed.jaxpr.outvars], [read(v) for v in keep]


def factors(closed, leaves, x, rules, fwd: Optional[bool] = None):
    """Per leaf of one side: ``("jacobian", J)`` with ``J: (*Y, P)``, or ``("bilinear", dz, xc, c)``
    with ``dz: (*Y, B, M, R)``, ``xc: (B, M, K)`` and ``c`` the constant the weight was scaled by
    (``Y`` the shape of the output of ``closed``, the network traced by `trace` on ``leaves, x``).
    ``fwd``: differentiate in forward mode (True), reverse mode (False), or by size (None:
    forward when the perturbed values have fewer entries than the output)."""
    targets = [r.target if r is not None else None for r in rules]
    keep = []
    for r in rules:
        if r is not None:
            keep.extend(v for v in r.scales + r.inverse if not isinstance(v, Literal))
            if r.kind in ("bilinear", "conv"):
                keep.append(r.eqn.invars[1 - r.operand])
    fixed = [i for i, r in enumerate(rules) if r is not None]
    free = [i for i, r in enumerate(rules) if r is None]

    def run(eps, free_leaves):
        args = list(leaves)
        for i, leaf in zip(free, free_leaves):
            args[i] = leaf
        perturb = {targets[i]: e for i, e in zip(fixed, eps)}
        (out,), kept = evaluate(closed, args + jax.tree.leaves(x), perturb, keep)
        return out, kept

    eps = [jnp.zeros(targets[i].aval.shape, targets[i].aval.dtype) for i in fixed]
    free_leaves = [leaves[i] for i in free]
    if fwd is None:
        fwd = sum(jnp.size(a) for a in eps + free_leaves) < math.prod(closed.jaxpr.outvars[0].aval.shape)
    derivative = jax.jacfwd if fwd else jax.jacrev
    (d_eps, d_free), kept_values = derivative(run, argnums=(0, 1), has_aux=True)(eps, free_leaves)
    kept = dict(zip(keep, kept_values))
    out_ndim = len(closed.jaxpr.outvars[0].aval.shape)
    result = [None] * len(leaves)
    for i, d in zip(free, d_free):
        result[i] = ("jacobian", flat_after(d, out_ndim))
    for i, dz in zip(fixed, d_eps):
        r = rules[i]
        c = math.prod(_value(s, kept) for s in r.scales) / math.prod(_value(s, kept) for s in r.inverse) \
            if (r.scales or r.inverse) else 1.
        c = c if not isinstance(c, float) else jnp.asarray(c, dz.dtype)
        if r.kind == "broadcast":
            result[i] = ("jacobian", c * _unbroadcast(dz, r.eqn, out_ndim))
        else:
            other = kept[r.eqn.invars[1 - r.operand]]
            dz_c, x_c = (_canonical_dot if r.kind == "bilinear" else _canonical_conv)(dz, other, r, out_ndim)
            result[i] = ("bilinear", dz_c, x_c, c)
    return result


def flat_after(a, n: int):
    """``a`` with its axes after the first ``n`` flattened into one (explicit size: an empty output
    or parameter has no ``-1`` to infer)."""
    return a.reshape(a.shape[:n] + (math.prod(a.shape[n:]),))


def _value(v, kept):
    return v.val if isinstance(v, Literal) else kept[v]


def _unbroadcast(dz, eqn, out_ndim):
    """``d f / d operand`` of ``z = broadcast_in_dim(operand)`` from ``dz = df/dz``: summed over the
    axes the broadcast created or expanded from size 1; flattened to ``(*Y, P)``."""
    operand_shape = eqn.invars[0].aval.shape
    dims = eqn.params["broadcast_dimensions"]
    z_shape = eqn.outvars[0].aval.shape
    summed = [a for a in range(len(z_shape)) if a not in dims] + [
        d for d, n in zip(dims, operand_shape) if n == 1 and z_shape[d] != 1]
    reduced = dz.sum(axis=tuple(out_ndim + a for a in summed))
    return flat_after(reduced, out_ndim)


def _canonical_dot(dz, other, rule, out_ndim):
    """``dz: (*Y, *z)`` and the other operand of ``z = dot_general`` as ``(*Y, B, M, R)``, ``(B, M, K)``:
    B its batch axes, M the other operand's free axes, K the contracted ones, R the weight's free axes."""
    (lc, rc), (lb, rb) = rule.eqn.params["dimension_numbers"]
    xc, xb = (lc, lb) if rule.operand == 1 else (rc, rb)
    wc, wb = (rc, rb) if rule.operand == 1 else (lc, lb)
    x_ndim = other.ndim
    w_ndim = len(rule.eqn.invars[rule.operand].aval.shape)
    xf = [a for a in range(x_ndim) if a not in xc and a not in xb]
    wf = [a for a in range(w_ndim) if a not in wc and a not in wb]
    nb = len(xb)
    # z's axes: batch, then lhs free, then rhs free
    z_b = list(range(nb))
    z_x = list(range(nb, nb + len(xf))) if rule.operand == 1 else list(range(nb + len(wf), nb + len(wf) + len(xf)))
    z_w = list(range(nb + len(xf), nb + len(xf) + len(wf))) if rule.operand == 1 else list(range(nb, nb + len(wf)))
    y_axes = list(range(out_ndim))
    dz = jnp.transpose(dz, y_axes + [out_ndim + a for a in z_b + z_x + z_w])
    sizes = [math.prod(other.shape[a] for a in axes) for axes in (xb, xf, xc)]
    r_size = math.prod(rule.eqn.invars[rule.operand].aval.shape[a] for a in wf)
    dz = dz.reshape(dz.shape[:out_ndim] + (sizes[0], sizes[1], r_size))
    x = jnp.transpose(other, list(xb) + xf + list(xc)).reshape(sizes)
    return dz, x


def _canonical_conv(dz, lhs, rule, out_ndim):
    """``z = conv(lhs, W)`` as a product of W with ``lhs``'s patches: ``(*Y, 1, M, C_out)`` and
    ``(1, M, C_in * window)``, M the (batch, output position) pairs. The patches' feature order need
    not match W's: only inner products over W's entries enter the kernel."""
    p = rule.eqn.params
    numbers = p["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = numbers.lhs_spec, numbers.rhs_spec, numbers.out_spec
    window = [rule.eqn.invars[1].aval.shape[a] for a in rhs_spec[2:]]
    patches = lax.conv_general_dilated_patches(
        lhs, window, p["window_strides"], p["padding"], p["lhs_dilation"], p["rhs_dilation"],
        dimension_numbers=numbers, precision=p["precision"])
    # patches come in the output's layout (out_spec), with C_in * window features
    order = [out_spec[0]] + list(out_spec[2:]) + [out_spec[1]]
    patches = jnp.transpose(patches, order)
    x = patches.reshape((1, -1, patches.shape[-1]))
    dz = jnp.transpose(dz, list(range(out_ndim)) + [out_ndim + a for a in order])
    dz = dz.reshape(dz.shape[:out_ndim] + (1, -1, dz.shape[-1]))
    return dz, x


def contract(side1, side2, letters, counts, trace_size):
    """The NTK block ``sum_leaves Theta_leaf`` from both sides' `factors`.

    ``letters = (U1, U2, out)`` as `empirical._output_letters` gives; ``counts = (n1, n2, pairs)`` the
    number of blocks each side's factors are computed for (per-example blocks under ``vmap``) and
    of block pairs, which decides per weight whether to materialise ``df/dW`` (cost
    ``n1 |Y1| B M1 K R + n2 |Y2| B M2 K R + pairs |out| T B K R``, T the traced size) or to contract the
    Gram matrices (``pairs (B M1 M2 K + |out| T B M1 M2 R)``): Novak et al. 2022, §4's choice of order.
    """
    u1, u2, out = letters
    total = 0.
    for a, b in zip(side1, side2):
        if a[0] == "jacobian":
            total = total + jnp.einsum(f"{u1}p,{u2}p->{out}", a[1], b[1])
            continue
        (_, dz1, x1, c1), (_, dz2, x2, c2) = a, b
        materialise, gram = bilinear_costs(dz1.shape, x1.shape, dz2.shape, x2.shape, letters, counts)
        if materialise <= gram:
            j1 = jnp.einsum(f"{u1}{_B}{_M1}{_R},{_B}{_M1}{_K}->{u1}{_B}{_K}{_R}", dz1, x1)
            j2 = jnp.einsum(f"{u2}{_B}{_M2}{_R},{_B}{_M2}{_K}->{u2}{_B}{_K}{_R}", dz2, x2)
            term = jnp.einsum(f"{u1}{_B}{_K}{_R},{u2}{_B}{_K}{_R}->{out}", j1, j2)
        else:
            gram = jnp.einsum(f"{_B}{_M1}{_K},{_B}{_M2}{_K}->{_B}{_M1}{_M2}", x1, x2)
            term = jnp.einsum(f"{u1}{_B}{_M1}{_R},{u2}{_B}{_M2}{_R},{_B}{_M1}{_M2}->{out}", dz1, dz2, gram,
                              optimize="optimal")
        total = total + c1 * c2 * term
    return total / trace_size


def bilinear_costs(dz1, x1, dz2, x2, letters, counts):
    """FLOPs of one weight's term from the canonical shapes: (materialising df/dW, Gram matrices)."""
    u1, u2, out = letters
    y1, y2 = math.prod(dz1[:len(u1)]), math.prod(dz2[:len(u2)])
    b, m1, k = x1
    m2, r = x2[1], dz1[-1]
    out_size, traced = _out_sizes(dz1[:len(u1)], dz2[:len(u2)], letters)
    n1, n2, pairs = counts
    materialise = n1 * y1 * b * m1 * k * r + n2 * y2 * b * m2 * k * r + pairs * out_size * traced * b * k * r
    gram = pairs * (b * m1 * m2 * k + out_size * traced * b * m1 * m2 * r)
    return materialise, gram


def _out_sizes(shape1, shape2, letters):
    """(entries of one output block, entries summed into each: the traced axes' size)."""
    u1, u2, out = letters
    size = dict(zip(u1, shape1)) | dict(zip(u2, shape2))
    return math.prod(size[c] for c in out), math.prod(size[c] for c in set(u1 + u2) - set(out))


def estimated_flops(closed1, closed2, rules1, rules2, letters, counts) -> dict:
    """Estimated FLOPs of one kernel by implementation 1 (Jacobian contraction), 2 (NTK-vector
    products) and 3 (structured derivatives), from both sides' traced networks and agreed rules.

    With ``F`` a block's forward FLOPs without and ``G`` those of its weight products (a reverse
    pass per output row costs about ``F + G``, ``F`` alone without weight gradients), ``rows`` the
    output entries of all blocks of a side, ``P`` the parameter count and ``|out| T`` the entries
    of each kernel block times the traced size summed into each:

      1: ``rows1 (F1 + G1) + rows2 (F2 + G2) + pairs |out| T P``
      2: ``rows2 (F2 + G2) + pairs |Y2| 2 (F1 + G1)`` (a JVP at x1 per cotangent basis vector of x2)
      3: ``rows1 F1 + rows2 F2`` plus, per structured weight, the cheaper order of `contract`, and
         Jacobian contraction's terms for the others.
    """
    n1, n2, pairs = counts
    shape1, shape2 = (tuple(c.jaxpr.outvars[0].aval.shape) for c in (closed1, closed2))
    rows1, rows2 = n1 * math.prod(shape1), n2 * math.prod(shape2)
    out_size, traced = _out_sizes(shape1, shape2, letters)
    (f1, g1), (f2, g2) = _forward_flops(closed1, rules1), _forward_flops(closed2, rules2)
    sizes = [math.prod(v.aval.shape) for v in closed1.jaxpr.invars[:len(rules1)]]
    jc = rows1 * (f1 + g1) + rows2 * (f2 + g2) + pairs * out_size * traced * sum(sizes)
    vp = rows2 * (f2 + g2) + pairs * math.prod(shape2) * 2 * (f1 + g1)
    sd = rows1 * f1 + rows2 * f2
    for r1, r2, size in zip(rules1, rules2, sizes):
        if r1 is not None and r1.kind in ("bilinear", "conv"):
            s1, s2 = _canonical_shapes(r1, shape1), _canonical_shapes(r2, shape2)
            sd += min(bilinear_costs(s1[0], s1[1], s2[0], s2[1], letters, counts))
        else:
            broadcast = r1 is not None  # df/db from dz of the broadcast: |z| per row instead of P
            z1 = math.prod(r1.target.aval.shape) if broadcast else size
            z2 = math.prod(r2.target.aval.shape) if broadcast else size
            sd += rows1 * z1 + rows2 * z2 + pairs * out_size * traced * size
    return {1: jc, 2: vp, 3: sd}


def _forward_flops(closed, rules):
    """(FLOPs of the network's operations without its weights' products, those products' FLOPs):
    a dot_general or convolution costs output size times contracted size, others their output size."""
    weight_eqns = {id(r.eqn) for r in rules if r is not None and r.kind in ("bilinear", "conv")}
    activations, weights = 0, 0
    for eqn in closed.jaxpr.eqns:
        out = sum(math.prod(getattr(v.aval, "shape", ())) for v in eqn.outvars)
        name = eqn.primitive.name
        if name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            cost = out * math.prod(eqn.invars[0].aval.shape[a] for a in lc)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            cost = out * math.prod(rhs) // rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
        else:
            cost = out
        if id(eqn) in weight_eqns:
            weights += cost
        activations += cost
    unstructured = sum(math.prod(v.aval.shape) for v, r in zip(closed.jaxpr.invars, rules)
                       if r is None or r.kind == "broadcast")
    return activations, weights + unstructured


def _canonical_shapes(rule, out_shape):
    """The shapes `_canonical_dot` / `_canonical_conv` give for ``rule``, without computing them."""
    z, other = rule.target.aval, rule.eqn.invars[1 - rule.operand].aval
    canonical = _canonical_dot if rule.kind == "bilinear" else _canonical_conv
    shapes = jax.eval_shape(lambda dz, x: canonical(dz, x, rule, len(out_shape)),
                            jax.ShapeDtypeStruct(tuple(out_shape) + z.shape, z.dtype),
                            jax.ShapeDtypeStruct(other.shape, other.dtype))
    return tuple(s.shape for s in shapes)


def agreed_rules(closed1, closed2, n_leaves: int, switches: Switches = Switches()):
    """Both sides' rules, a leaf kept structured only where both sides' networks agree on how it
    enters (their jaxprs may differ in shape-dependent details) and ``switches`` allow its rule."""
    rules1, rules2 = plan(closed1, n_leaves), plan(closed2, n_leaves)
    same = [switches.allows(a) and switches.allows(b) and (a.kind, a.operand) == (b.kind, b.operand)
            for a, b in zip(rules1, rules2)]
    return ([a if s else None for a, s in zip(rules1, same)],
            [b if s else None for b, s in zip(rules2, same)])
