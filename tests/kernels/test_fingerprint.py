"""kernels.fingerprint: equal for equal networks (also across processes), different when anything differs."""
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


def test_equal_networks_built_twice_and_in_another_process():
    here = fingerprint(make())
    assert fingerprint(make()) == here
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
