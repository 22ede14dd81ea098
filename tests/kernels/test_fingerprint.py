"""kernels.fingerprint: equal for equal networks (also across processes), different when anything differs."""
import importlib
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from kernels import stax
from kernels.fingerprint import FingerprintError, fingerprint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NETWORK = textwrap.dedent("""
    import jax.numpy as jnp, numpy as np
    from kernels import stax
    table = np.linspace(0., 1., 5)

    def make(scale=1.0, offset=0.5, fn=jnp.sin, table=table):
        def nngp_fn(c, v1, v2):
            return scale * c + offset * table[0]
        return stax.serial(stax.Conv(3, (2,), padding="SAME", W_std=1.3), stax.Elementwise(fn, nngp_fn),
                           stax.ElementwiseNumerical(jnp.tanh, 30), stax.FanOut(2),
                           stax.parallel(stax.Relu(), stax.Erf()), stax.FanInSum(), stax.GlobalAvgPool(),
                           stax.Dense(1))[2]
""")


def make(**kwargs):
    scope = {}
    exec(NETWORK, scope)
    return scope["make"](**kwargs)


def test_equal_networks_built_twice():
    assert fingerprint(make()) == fingerprint(make())


@pytest.mark.slow  # a fresh interpreter importing JAX: 12 s on CI's CPU
def test_equal_networks_built_in_another_process():
    here = fingerprint(make())
    code = NETWORK + "\nfrom kernels.fingerprint import fingerprint\nprint(fingerprint(make()))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, PYTHONHASHSEED="123", JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == here


@pytest.mark.parametrize("change", [dict(scale=2.0), dict(offset=0.25), dict(fn=jnp.cos),
                                    dict(table=np.linspace(0., 1., 5) + 1e-12)])
def test_any_closure_value_or_function_changes_it(change):
    assert fingerprint(make(**change)) != fingerprint(make())


def test_a_constant_in_the_code_changes_it():
    a = stax.Elementwise(jnp.sin, lambda c, v1, v2: 0.5 * c)[2]
    b = stax.Elementwise(jnp.sin, lambda c, v1, v2: 0.25 * c)[2]
    assert a.name == b.name and fingerprint(a) != fingerprint(b)


def test_layer_parameters_change_it():
    assert fingerprint(stax.Dense(4, W_std=1.0)[2]) != fingerprint(stax.Dense(4, W_std=1.5)[2])
    assert fingerprint(stax.Dense(4)[2]) == fingerprint(stax.Dense(4)[2])


def test_what_cannot_be_described_is_refused_by_name():
    class Opaque:
        pass
    thing = Opaque()
    with pytest.raises(FingerprintError, match=r"'thing'.*Opaque"):
        fingerprint(lambda c: thing)


USER_MODULE = textwrap.dedent("""
    import jax, jax.numpy as jnp
    SCALE = {c}

    @jax.jit
    def jitted(u):
        return jnp.sin({c} * u)

    @jax.custom_jvp
    def with_jvp(u):
        return jnp.sin(u)
    with_jvp.defjvp(lambda p, t: (jnp.sin(p[0]), {c} * t[0]))

    @jax.custom_vjp
    def with_vjp(u):
        return jnp.sin(u)
    with_vjp.defvjp(lambda u: (jnp.sin(u), u), lambda r, g: ({c} * g,))

    class Cfg:
        freq = {c}
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``write(c)``: (re)writes and (re)loads a user's module file whose functions and values use ``c``."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a rewrite in the same second must not load stale .pyc
    name = f"fp_user_{os.path.basename(tmp_path)}"
    state = {}

    def write(c):
        (tmp_path / f"{name}.py").write_text(USER_MODULE.format(c=c))
        importlib.invalidate_caches()
        state["module"] = importlib.reload(state["module"]) if "module" in state else importlib.import_module(name)
        return state["module"]

    yield write
    sys.modules.pop(name, None)


CASES = {
    "jit": lambda m: m.jitted,
    "custom_jvp": lambda m: m.with_jvp,
    "custom_vjp": lambda m: m.with_vjp,
    "class attribute": lambda m: (lambda cfg: (lambda u: jnp.sin(cfg.freq * u)))(m.Cfg),
    "module attribute": lambda m: (lambda mod: (lambda u: jnp.sin(mod.SCALE * u)))(m),
    "network": lambda m: stax.serial(stax.Dense(1), stax.ElementwiseNumerical(m.jitted, 60))[2],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_users_objects_are_followed_not_named(user_module, case):
    one = fingerprint(CASES[case](user_module(1.0)))
    assert fingerprint(CASES[case](user_module(1.0))) == one  # reloaded unchanged: the same
    assert fingerprint(CASES[case](user_module(2.0))) != one


def test_a_users_module_outside_code_is_refused(user_module):
    module = user_module(1.0)
    with pytest.raises(FingerprintError, match="fp_user_"):
        fingerprint([module])
    assert fingerprint(jnp.sin) == fingerprint(jnp.sin) and fingerprint([np]) == fingerprint([np])


def test_a_class_the_code_updates_is_state_not_configuration():
    class Counter:
        calls = 0

    def hook():
        Counter.calls += 1

    before = fingerprint(hook)
    hook()
    assert fingerprint(hook) == before
