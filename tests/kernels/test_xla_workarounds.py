"""Programs that jaxlib's CPU backend crashes on, or computes wrongly, unless widekit avoids the
pattern that triggers it (`kernels.duals.on_flat_arrays`).

jaxlib 0.10.2, CPU, float32: ``jax.jit(jax.jacrev(f))`` of

    x = jnp.asarray(np.linspace(-2, 2, 5), jnp.float32)
    f = lambda c: jnp.cos(c[..., None, None] * x[:, None] + x[None, :]).sum((-1, -2))

on ``c`` of shape (3, 3, 2, 2) corrupts the heap (the next ``gc.collect()`` or compilation
segfaults); on ``c`` of shape (36,) it runs, and jaxlib 0.10.1, 0.10.0 and 0.4.30 run both. That is the shape of
`ElementwiseNumerical`'s Gauss–Hermite rule on a kernel with position axes, which
`kernels.duals.gauss_hermite_dual` now evaluates on flattened arrays. neural-tangents'
``elementwise_test.test_autodiff`` reached it through ``jax.jacrev`` of ``kernel_fn``.

Each crash case runs in a child process: a crash must fail the test, not kill the test worker.

A user's dual (`Elementwise(fn, nngp_fn)`) is differentiated for the NTK. neural-tangents' test
gives it the arc-cosine formula ``sqrt(max(v1 v2 - c^2, 1e-30)) / 2 pi + (1 - arctan2(..)/pi) c / 2``
on one-channel inputs, where every correlation is +-1 and the derivative's terms of size
``c / sqrt(v1 v2 - c^2)`` must cancel; on position-pair kernels XLA evaluated them inconsistently
(1e8 where the closed form gives 0, with jaxlib 0.10.0 to 0.10.2).
"""
import os
import subprocess
import sys
import textwrap

import pytest

_PROGRAM = textwrap.dedent("""
    import gc, warnings
    import jax, jax.numpy as jnp, numpy as np
    from widekit import stax
    warnings.simplefilter("ignore")
    layers = lambda: stax.serial(stax.Dense(1, 2., .01), stax.ElementwiseNumerical(jnp.cos, {deg}),
                                 stax.Dense(1, 2., .01), stax.ElementwiseNumerical(jnp.cos, {deg}))
    _, _, kernel_fn = layers()
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 1, 2, 3))
    jac32 = jax.jacrev(lambda x: kernel_fn(x, None, "{get}"))(x)
    gc.collect()
    d = np.asarray(jax.random.normal(jax.random.PRNGKey(1), x.shape), np.float64)
    with jax.enable_x64(True):  # central differences in float64, along a random direction
        _, _, kernel_fn64 = layers()
        f64 = lambda x: np.asarray(kernel_fn64(jnp.asarray(x, jnp.float64), None, "{get}"))
        h = 1e-5
        fd = (f64(np.asarray(x, np.float64) + h * d) - f64(np.asarray(x, np.float64) - h * d)) / (2 * h)
    along = np.tensordot(np.asarray(jac32, np.float64), d, axes=d.ndim)
    print("error", float(np.abs(along - fd).max() / np.abs(fd).max()))
""")


_RULE = textwrap.dedent("""
    import gc
    import jax, jax.numpy as jnp, numpy as np
    from kernels import duals
    dual = duals.gauss_hermite_dual(jnp.cos, 30)
    c = jax.random.uniform(jax.random.PRNGKey(0), (3, 3, 2, 2), minval=-.5, maxval=.5)
    v1, v2 = jnp.full(c.shape, .8), jnp.full(c.shape, .6)
    jac = jax.jit(jax.jacrev(lambda c: dual(c, v1, v2)[0]))(c)
    gc.collect()
    # E[cos u cos v] = exp(-(v1 + v2) / 2) cosh(c): its derivative is diagonal in c, with exp(..) sinh(c).
    want = np.diag((np.exp(-.7) * np.sinh(np.asarray(c, np.float64))).ravel())
    print("error", float(np.abs(np.asarray(jac, np.float64).reshape(36, 36) - want).max()))
""")


def _error(program: str, user_settings: bool = False) -> float:
    """What ``program`` prints after "error"; ``user_settings``: without the tests' ``XLA_FLAGS``."""
    env = {k: v for k, v in os.environ.items() if not (user_settings and k == "XLA_FLAGS")}
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    return float(run.stdout.split("error")[-1])


def test_jacrev_of_gauss_hermite_rule_runs_in_float32():
    """The trigger itself: the rule's ``jit(jacrev)`` on a 4-D float32 covariance finishes, and its
    derivative is cos's closed form (Gauss–Hermite with 30 points is exact to float32 here)."""
    assert _error(_RULE) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_jacrev_of_elementwise_numerical_kernel_runs_in_float32(get):
    """The case neural-tangents' test found: float32 ``jacrev`` of a two-layer ElementwiseNumerical
    kernel on inputs with two position axes. It must finish, and agree with float64 central
    differences of the kernel (so a wrong derivative cannot pass either)."""
    assert _error(_PROGRAM.format(deg=40, get=get)) < 1e-4


_USER_DUAL = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from kernels import stax

    def arc_cosine(cov12, var1, var2):  # neural-tangents' test's ReLU dual, as a user writes it
        prod = var1 * var2
        root = jnp.sqrt(jnp.maximum(prod - cov12 ** 2, 1e-30))
        return root / (2 * jnp.pi) + (1 - jnp.arctan2(root, cov12) / jnp.pi) / 2 * cov12

    user = stax.serial(stax.Dense(1), stax.Elementwise(jax.nn.relu, arc_cosine),
                       stax.Dense(1), stax.Elementwise(jax.nn.relu, arc_cosine))
    closed = stax.serial(stax.Dense(1), stax.Relu(), stax.Dense(1), stax.Relu())
    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal((n, 4, 3, 1)).astype(np.float32) for n in (5, 6))
    got, want = user.kernel_fn(x1, x2), closed.kernel_fn(x1, x2)  # all fields (get=None): the program that erred
    print("error", max(float(np.abs(np.asarray(getattr(got, f)) - np.asarray(getattr(want, f))).max()
                             / np.abs(np.asarray(getattr(want, f))).max()) for f in ("nngp", "ntk", "cov1", "cov2")))
""")


def test_derivative_of_a_user_dual_at_correlation_one():
    """Truth: the closed-form ReLU kernel. The autodiff NTK of the user's formula differs from it by
    the formula's own cancellation error (measured 2e-4 of the largest entry). Run as users run it:
    float32, XLA's default pipeline (not the tests' float64 and cheap pipeline, under which it passed
    before the fix)."""
    assert _error(_USER_DUAL, user_settings=True) < 1e-2
