"""Training engine: gradient descent and minibatch SGD of any `apply_fn` under MSE.

Convention (shared with `theory`'s `predict` functions and neural-tangents'
`predict.gradient_descent_mse`, so a trained network and its prediction are
compared at the same t):

    loss(params) = ||f(params, X) - Y||^2 / (2 * Y.size)
    params <- params - learning_rate * grad loss(params)        (one step)
    t = step * learning_rate                      (gradient-flow time)

Careful with the argument of the predictions: `theory.predict`'s functions,
like neural-tangents', take `t` in *units of steps* (their absolute time is
`learning_rate * t`). So a trajectory is compared with
`predict.gradient_descent_mse(ntk, y, learning_rate)(t=trajectory.steps, ...)`
(or `gradient_descent_mse_discrete(...)(steps=trajectory.steps, ...)`, equal
for a linear model to rounding), while `trajectory.times` holds the absolute
time `steps * learning_rate`, the axis to plot.

`Y.size` counts every entry of the targets (examples x outputs). For the
network linearised around its initialisation, with J = df/dparams of shape
(Y.size, P) and the empirical NTK Theta = J J^T on the training points
(outputs flattened), one step maps the training residual r = f - Y to
(I - learning_rate * Theta / Y.size) r, hence

    r_s = (I - learning_rate * Theta / Y.size)^s r_0  ->  exp(-t Theta / Y.size) r_0

as learning_rate -> 0 at fixed t. This is eq. (10)-(11) of Lee et al. 2019,
"Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient
Descent" (§2.2), with their 1/|D| replaced by 1/Y.size; `tests/experiments`
checks both the discrete and the continuous form on a linear model.

Minibatch SGD (`batch_size` set) draws, at every step, `batch_size` training
examples without replacement from `fold_in(key, step)` and uses the same loss
restricted to the batch (divided by the batch's target size), an unbiased
estimate of the full gradient; time is still `step * learning_rate`.

Per-layer learning rates (`learning_rate_scales`): a pytree shaped like one
network's parameters whose float leaves multiply `learning_rate` for that
parameter array, params <- params - learning_rate * scale * grad. This is the
learning-rate exponent c of an abc-parametrization (Yang & Hu 2021, §3: a
layer of width n learns at eta n^-c); `abc_learning_rates` builds it from
each layer's role and c. Time stays `step * learning_rate`.

Many seeds at once: `init_ensemble` stacks the parameters of one network per
seed (leading axis), and `train_ensemble` runs `train` under `jax.vmap` over
that axis. `inverse_gamma_readout` gives each network of an ensemble its own
readout variance sigma^2 ~ InvGamma(a, b) (the finite networks of the
Student-t process, Lee, Yun, Yang & Lee 2021). Everything from the first to
the last step is one `jax.jit` call:
a `lax.scan` over the recorded steps whose body runs the steps in between
with `lax.fori_loop`.
"""
import functools
import warnings
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels.stax.linear import ROLES as ABC_ROLES


class Trajectory(NamedTuple):
    """What `train` records at each of the R recorded steps.

    With `train_ensemble`, every field except `steps` and `times` gains a
    leading seed axis S. N training points, M test points, K outputs.
    """

    steps: np.ndarray               # (R,) int: the steps recorded (theory's `t`)
    times: np.ndarray               # (R,) float: steps * learning_rate, flow time
    train_outputs: jax.Array        # (R, N, K)
    train_loss: jax.Array           # (R,)
    test_outputs: Optional[jax.Array]  # (R, M, K), if x_test was given
    test_loss: Optional[jax.Array]     # (R,), if y_test was given
    ntk: Optional[Any]              # ntk_fn(params) stacked over R, if ntk_fn was given
    params: Any                     # the parameters after the last recorded step


def mse_loss(outputs, targets):
    """||outputs - targets||^2 / (2 * targets.size): the module's convention."""
    return jnp.sum((outputs - targets) ** 2) / (2 * targets.size)


def init_ensemble(init_fn, input_shape, seeds):
    """Parameters of one network per seed, stacked on a leading axis.

    Args:
      init_fn: `init_fn(rng, input_shape) -> (output_shape, params)`, the
        neural-tangents / `jax.example_libraries.stax` signature.
      input_shape: e.g. `(-1, features)`.
      seeds: integers; seed s initialises with `jax.random.PRNGKey(s)`, so a
        network is the same whether it is initialised alone or in an ensemble.

    Returns:
      The params pytree with a leading axis of length `len(seeds)`.
    """
    seeds = jnp.asarray([int(s) for s in seeds])
    # jitted as a whole: run eagerly, every small op would compile on its own
    init_all = jax.jit(jax.vmap(lambda seed: init_fn(jax.random.PRNGKey(seed), input_shape)[1]))
    return init_all(seeds)


def inverse_gamma_readout(params, seeds, a, b):
    """Scale the readout layer of every network of an ensemble by its own sigma, sigma^2 ~ InvGamma(a, b).

    Lee, Yun, Yang & Lee 2021, "Scale mixtures of neural network Gaussian processes"
    (inverse-gamma case): multiplying the readout's parameters (its weights and, if it has
    one, its bias) by sigma multiplies the network's outputs by sigma, so at infinite width,
    given sigma^2, they are the GP with kernel sigma^2 K (K the NNGP of the unscaled network,
    whose readout has `W_std = 1` in the paper), and, sigma^2 integrated out, the Student-t
    process TP(2a, 0, (b / a) K): at one input the output is sqrt(b / a K(x, x)) times a
    Student t with 2a degrees of freedom, of variance b / (a - 1) K(x, x) for a > 1
    (`theory.student_t`).

    sigma^2 = b / g, g ~ Gamma(a, 1) drawn on the host by NumPy (float64; jax.random.gamma
    costs about 4 s of compilation per process on a CPU), one generator per network:
    network i uses `numpy.random.default_rng(seeds[i])`, so, as with `init_ensemble`, a
    network's variance does not depend on the ensemble it is in. Passing the seeds given
    to `init_ensemble` is fine: NumPy's generator is not JAX's.

    Args:
      params: the stacked parameters of S networks (leading axis S, as `init_ensemble`
        gives) in `stax.serial`'s layout: a list or tuple with one entry per layer, empty
        for layers without parameters; the readout is the last entry that holds arrays.
      seeds: S non-negative integers, one per network.
      a, b: the inverse-gamma shape and scale, finite and > 0.

    Returns:
      `(params, variances)`: the parameters with the readout of network i multiplied by
      sqrt(variances[i]) (the other layers unchanged; same container type), and the
      `(S,)` float64 NumPy array of variances.
    """
    where = "inverse_gamma_readout"
    for name, value in (("a", a), ("b", b)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not (np.isfinite(value) and value > 0):
            raise ValueError(f"{where}: argument `{name}` must be a finite real number > 0; received {value!r}")
    if not isinstance(params, (list, tuple)):
        raise TypeError(f"{where}: argument `params` must be stax.serial's list of per-layer parameters; "
                        f"received {type(params).__name__}")
    holding = [i for i, layer in enumerate(params) if jax.tree_util.tree_leaves(layer)]
    if not holding:
        raise ValueError(f"{where}: argument `params` must hold a layer with parameters; received none")
    readout = holding[-1]
    n_networks = jax.tree_util.tree_leaves(params[readout])[0].shape[0]
    seeds = [int(s) for s in seeds]
    if len(seeds) != n_networks or min(seeds) < 0:
        raise ValueError(f"{where}: argument `seeds` must be {n_networks} non-negative integers (one per "
                         f"network of params); received {len(seeds)}, smallest {min(seeds, default=None)}")
    variances = float(b) / np.array([np.random.default_rng(s).gamma(float(a)) for s in seeds])
    sigma = jnp.asarray(np.sqrt(variances))
    scaled = jax.tree_util.tree_map(
        lambda w: w * sigma.astype(w.dtype).reshape((-1,) + (1,) * (w.ndim - 1)), params[readout])
    return type(params)(scaled if i == readout else layer for i, layer in enumerate(params)), variances


def train(apply_fn, params, x_train, y_train, *, learning_rate, record_steps,
          x_test=None, y_test=None, ntk_fn=None, batch_size=None, key=None, learning_rate_scales=None):
    """Train one network by gradient descent (or SGD) and record its trajectory.

    Args:
      apply_fn: `apply_fn(params, x) -> (N, K)`.
      params: the initial parameters.
      x_train: `(N, ...)` inputs; y_train: `(N, K)` targets, shaped like the
        network's outputs.
      learning_rate: step size (time advances by it every step).
      record_steps: nondecreasing step numbers >= 0 at which to record; 0
        records the initialisation. The last one is the number of steps run.
      x_test: optional `(M, ...)` inputs whose outputs are recorded.
      y_test: optional `(M, K)` targets (needs `x_test`) for the test loss.
      ntk_fn: optional `ntk_fn(params) -> array or pytree`, recorded at every
        recorded step, e.g. `lambda p: empirical_ntk(x_train, x0, p)`.
      batch_size: None for full-batch gradient descent, else the SGD batch size.
      key: PRNG key for the SGD batches (required with `batch_size`).
      learning_rate_scales: None, or a pytree with the structure of `params` whose leaves
        are positive finite floats: parameter array i steps by
        `learning_rate * scale_i * grad_i` (`abc_learning_rates` makes one).

    Returns:
      A `Trajectory`.
    """
    return _run(apply_fn, params, x_train, y_train, learning_rate, record_steps,
                x_test, y_test, ntk_fn, batch_size, key, learning_rate_scales, ensemble=False)


def train_ensemble(apply_fn, params, x_train, y_train, *, learning_rate, record_steps,
                   x_test=None, y_test=None, ntk_fn=None, batch_size=None, key=None,
                   learning_rate_scales=None):
    """`train` for S networks at once, vmapped over the leading axis of `params`.

    Args are those of `train`, except that `params` carries a leading seed axis
    (from `init_ensemble`) and, for SGD, network i uses
    `jax.random.split(key, S)[i]` as its key. The data is shared, and so are
    `learning_rate_scales` (shaped like one network's parameters, no seed axis).

    Returns:
      A `Trajectory` whose recorded fields have a leading axis S.
    """
    return _run(apply_fn, params, x_train, y_train, learning_rate, record_steps,
                x_test, y_test, ntk_fn, batch_size, key, learning_rate_scales, ensemble=True)


def abc_learning_rates(params, layers):
    """The learning-rate multipliers n^-c of an abc-parametrized `stax.serial` network, per layer.

    In an abc-parametrization (Yang & Hu 2021, arXiv:2011.14522, §3) the trained weights w of
    a layer of width n step at eta n^-c. Yang & Hu use one c for all layers; a c per layer
    is what the symmetry of SGD, (a, b, c) -> (a + theta, b - theta, c - 2 theta) per layer,
    maps between equal training dynamics: their muP (multipliers n^1/2 at the input and
    n^-1/2 at the readout, c = 0: every multiplier 1) trains exactly as Table 3 of Yang et al.
    2022 (arXiv:2203.03466; no multipliers, input weights at eta fan_out, readout at
    eta / fan_in), i.e. `Dense(parameterization="abc")` with (a, b) = (0, 0), (0, 1/2), (0, 1)
    and c = -1, 0, 1.

    Args:
      params: the parameters of one network, or of an ensemble (leading seed axis), in
        `stax.serial`'s layout: a list or tuple with one entry per layer.
      layers: one entry per layer: None (multiplier 1; layers without parameters take None),
        or `(role, c)` with role "input", "hidden" or "output" as given to that layer's
        `Dense(..., role=role)`: all of the layer's parameters get multiplier n^-c, where n
        is the output width of an input layer and the fan-in of the others, read from the
        layer's weight matrix `(fan_in, fan_out)`.

    Returns:
      The pytree of float multipliers for `train`'s `learning_rate_scales`, shaped like one
      network's parameters.
    """
    where = "abc_learning_rates"
    if not isinstance(params, (list, tuple)):
        raise TypeError(f"{where}: argument `params` must be stax.serial's list of per-layer parameters; "
                        f"received {type(params).__name__}")
    if not isinstance(layers, (list, tuple)) or len(layers) != len(params):
        raise ValueError(f"{where}: argument `layers` must be a list with one entry per layer "
                         f"({len(params)}); received {layers!r}")
    scales = []
    for i, (layer, spec) in enumerate(zip(params, layers)):
        if spec is None:
            scales.append(jax.tree_util.tree_map(lambda _: 1.0, layer))
            continue
        if not (isinstance(spec, (list, tuple)) and len(spec) == 2 and spec[0] in ABC_ROLES
                and isinstance(spec[1], (int, float)) and not isinstance(spec[1], bool)
                and np.isfinite(spec[1])):
            raise ValueError(f"{where}: argument `layers[{i}]` must be None or (role, c) with role in "
                             f"{ABC_ROLES} and c a finite number; received {spec!r}")
        matrices = [a for a in jax.tree_util.tree_leaves(layer) if np.ndim(a) >= 2]
        if not matrices:
            raise ValueError(f"{where}: argument `layers[{i}]` is {spec!r}, but layer {i} has no weight matrix")
        fan_in, fan_out = matrices[0].shape[-2:]
        width = fan_out if spec[0] == "input" else fan_in
        scales.append(jax.tree_util.tree_map(lambda _: float(width) ** -float(spec[1]), layer))
    return type(params)(scales)


def _check_scales(scales, params):
    """`learning_rate_scales` as arrays in the dtype of their parameters, or an error naming it."""
    if scales is None:
        return jax.tree_util.tree_map(lambda p: jnp.ones((), p.dtype), params)
    # Lists and tuples are one kind of sequence here: `serial` returns a list of its layers' parameters
    # (as neural-tangents does), a user may write the scales as tuples.
    expected = jax.tree_util.tree_structure(_sequences_as_tuples(params))
    if jax.tree_util.tree_structure(_sequences_as_tuples(scales)) != expected:
        raise ValueError(f"train: argument `learning_rate_scales` must have the structure of one network's "
                         f"params, {jax.tree_util.tree_structure(params)}; received "
                         f"{jax.tree_util.tree_structure(scales)}")
    values = [np.asarray(s, np.float64) for s in jax.tree_util.tree_leaves(scales)]
    if any(v.shape != () or not np.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f"train: argument `learning_rate_scales` must hold one positive finite number "
                         f"per parameter array; received {[v.tolist() for v in values]}")
    leaves = jax.tree_util.tree_leaves(params)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params),
                                        [jnp.asarray(v, p.dtype) for v, p in zip(values, leaves)])


def _sequences_as_tuples(tree):
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return tuple(_sequences_as_tuples(t) for t in tree)
    return tree


def _run(apply_fn, params, x_train, y_train, learning_rate, record_steps,
         x_test, y_test, ntk_fn, batch_size, key, learning_rate_scales, ensemble):
    steps = np.asarray(record_steps)
    if steps.ndim != 1 or steps.size == 0 or not np.issubdtype(steps.dtype, np.integer):
        raise ValueError(f"record_steps must be a non-empty 1-d list of ints, got {record_steps!r}")
    if steps[0] < 0 or np.any(np.diff(steps) < 0):
        raise ValueError(f"record_steps must be >= 0 and nondecreasing, got {steps.tolist()}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
    n_train = x_train.shape[0]
    if y_test is not None and x_test is None:
        raise ValueError("y_test was given without x_test")
    if batch_size is not None:
        if not 1 <= batch_size <= n_train:
            raise ValueError(f"batch_size must lie in [1, {n_train}], got {batch_size}")
        if key is None:
            raise ValueError("SGD (batch_size set) needs a PRNG key")
    first = jax.tree_util.tree_map(lambda a: a[0], params) if ensemble else params
    _check_shapes("train", apply_fn, first, x_train, y_train)
    scales = _check_scales(learning_rate_scales, first)
    if y_test is not None:
        _check_shapes("test", apply_fn, first, jnp.asarray(x_test), jnp.asarray(y_test))

    if ensemble:
        n_seeds = jax.tree_util.tree_leaves(params)[0].shape[0]
        key = jax.random.split(key, n_seeds) if key is not None else jnp.zeros((n_seeds, 2), jnp.uint32)
    elif key is None:
        key = jnp.zeros((2,), jnp.uint32)  # unused by gradient descent
    run = _compiled_run(apply_fn, ntk_fn, float(learning_rate), batch_size, ensemble)
    final, recorded = run(params, scales, key, jnp.asarray(np.diff(steps, prepend=0), jnp.int32),
                          x_train, y_train,
                          None if x_test is None else jnp.asarray(x_test),
                          None if y_test is None else jnp.asarray(y_test))
    trajectory = Trajectory(
        steps=steps, times=steps * float(learning_rate),
        train_outputs=recorded["train_outputs"], train_loss=recorded["train_loss"],
        test_outputs=recorded.get("test_outputs"), test_loss=recorded.get("test_loss"),
        ntk=recorded.get("ntk"), params=final)
    _warn_if_diverged(trajectory, learning_rate)
    return trajectory


@functools.lru_cache(maxsize=16)
def _compiled_run(apply_fn, ntk_fn, learning_rate, batch_size, ensemble):
    """The jitted training loop, cached so that calls differing only in data,
    parameters, keys or record steps (same count) reuse one compilation."""

    def one_network(params, scales, key, segment_lengths, x_train, y_train, x_test, y_test):
        def step(_, carry):
            params, step_number = carry
            if batch_size is None:
                x, y = x_train, y_train
            else:
                batch = jax.random.choice(jax.random.fold_in(key, step_number),
                                          x_train.shape[0], (batch_size,), replace=False)
                x, y = x_train[batch], y_train[batch]
            grads = jax.grad(lambda p: mse_loss(apply_fn(p, x), y))(params)
            params = jax.tree_util.tree_map(lambda p, s, g: p - learning_rate * s * g, params, scales, grads)
            return params, step_number + 1

        def record(params):
            outputs = apply_fn(params, x_train)
            out = {"train_outputs": outputs, "train_loss": mse_loss(outputs, y_train)}
            if x_test is not None:
                out["test_outputs"] = apply_fn(params, x_test)
                if y_test is not None:
                    out["test_loss"] = mse_loss(out["test_outputs"], y_test)
            if ntk_fn is not None:
                out["ntk"] = ntk_fn(params)
            return out

        def segment(carry, length):
            carry = lax.fori_loop(0, length, step, carry)
            return carry, record(carry[0])

        (params, _), recorded = lax.scan(
            segment, (params, jnp.zeros((), jnp.int32)), segment_lengths)
        return params, recorded

    if ensemble:
        return jax.jit(jax.vmap(one_network, in_axes=(0, None, 0, None, None, None, None, None)))
    return jax.jit(one_network)


def _check_shapes(split, apply_fn, params, x, y):
    out = jax.eval_shape(apply_fn, params, x)
    if out.shape != y.shape:
        raise ValueError(
            f"apply_fn maps x_{split} {tuple(x.shape)} to outputs {tuple(out.shape)}, "
            f"but y_{split} has shape {tuple(y.shape)}; they must match")


def _warn_if_diverged(trajectory, learning_rate):
    loss = np.asarray(trajectory.train_loss)
    bad = ~np.isfinite(loss)
    if bad.any():
        first = trajectory.steps[np.argmax(bad.any(axis=tuple(range(loss.ndim - 1))))]
        warnings.warn(
            f"training loss is not finite from recorded step {first} on: learning_rate "
            f"{learning_rate} is likely above the stable limit 2 * Y.size / lambda_max(Theta)",
            RuntimeWarning, stacklevel=3)
