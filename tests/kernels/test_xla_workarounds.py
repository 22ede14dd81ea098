"""Programs that crash jaxlib's CPU backend unless widekit avoids the pattern that triggers it.

jaxlib 0.10.2, CPU, float32: ``jax.jit(jax.jacrev(f))`` of

    x = jnp.asarray(np.linspace(-2, 2, 5), jnp.float32)
    f = lambda c: jnp.cos(c[..., None, None] * x[:, None] + x[None, :]).sum((-1, -2))

on ``c`` of shape (3, 3, 2, 2) corrupts the heap (the next ``gc.collect()`` or compilation
segfaults); on ``c`` of shape (36,) it runs, and jaxlib 0.10.1, 0.10.0 and 0.4.30 run both. That is the shape of
`ElementwiseNumerical`'s Gauss–Hermite rule on a kernel with position axes, which
`kernels.duals.gauss_hermite_dual` now evaluates on flattened arrays. neural-tangents'
``elementwise_test.test_autodiff`` reached it through ``jax.jacrev`` of ``kernel_fn``.

Each case runs in a child process: a crash must fail the test, not kill the test worker.
"""
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


def _error(program: str) -> float:
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=600)
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
