"""`kernels.spec.network_from_spec`: a JSON spec builds the network written by hand with `kernels.stax`."""
import json
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import stax
from kernels.spec import LAYER_NAMES, network_from_spec
from tests.kernels import spec as reference_spec

X1 = np.random.default_rng(3).normal(size=(4, 5))
X2 = np.random.default_rng(4).normal(size=(3, 5))
IMAGES = np.random.default_rng(5).normal(size=(3, 6, 6, 2))

MLP = [["Dense", {"out_dim": 64, "W_std": 1.5, "b_std": 0.2}], ["Relu", {}], ["Dense", {"out_dim": 1}]]
NESTED = [["Dense", {"out_dim": 64, "W_std": 1.5, "b_std": 0.2}],
          ["FanOut", {"num": 2}],
          ["parallel", [[["Relu", {}], ["Dense", {"out_dim": 64}]], [["Erf", {}], ["Dense", {"out_dim": 64}]]]],
          ["FanInSum", {}],
          ["repeat", {"layer": [["Polynomial", {"coef": [0.0, 1.0, 0.5]}],
                                ["Dense", {"out_dim": 64, "b_std": None}]], "n": 2}],
          ["serial", [["Sin", {}], ["Dense", {"out_dim": 1, "parameterization": "standard"}]]]]


def nested_by_hand(w_std=1.5):
    return stax.serial(
        stax.Dense(64, W_std=w_std, b_std=0.2), stax.FanOut(2),
        stax.parallel(stax.serial(stax.Relu(), stax.Dense(64)), stax.serial(stax.Erf(), stax.Dense(64))),
        stax.FanInSum(),
        stax.repeat(stax.serial(stax.Polynomial([0.0, 1.0, 0.5]), stax.Dense(64, b_std=None)), 2),
        stax.serial(stax.Sin(), stax.Dense(1, parameterization="standard")))


def close(a, b):
    return all(np.max(np.abs(np.asarray(getattr(a, n)) - np.asarray(getattr(b, n))))
               <= 1e-12 * np.max(np.abs(np.asarray(getattr(b, n)))) for n in ("nngp", "ntk"))


def mlp_by_hand(w_std=1.5):
    return stax.serial(stax.Dense(64, W_std=w_std, b_std=0.2), stax.Relu(), stax.Dense(1))


def test_every_form_of_a_spec_builds_the_network_written_by_hand(tmp_path):
    truth = mlp_by_hand()[2](X1, X2, ("nngp", "ntk"))
    assert close(network_from_spec(MLP)[2](X1, X2, ("nngp", "ntk")), truth)
    path = tmp_path / "mlp.json"
    path.write_text(json.dumps(MLP))
    for spec in (json.dumps(MLP), json.dumps(MLP).encode(), str(path), path):  # the same network, by its description
        assert network_from_spec(spec)[2].name == mlp_by_hand()[2].name, type(spec)
    # A builder that lost an argument (here W_std) would fail the same check.
    assert not close(mlp_by_hand(w_std=1.0)[2](X1, X2, ("nngp", "ntk")), truth)


def test_combinators_nest():
    assert close(network_from_spec(NESTED)[2](X1, X2, ("nngp", "ntk")), nested_by_hand()[2](X1, X2, ("nngp", "ntk")))


def test_elementwise_numerical_names_a_jax_numpy_function():
    spec = [["Dense", {"out_dim": 8}], ["ElementwiseNumerical", {"fn": "sin", "deg": 40}], ["Dense", {"out_dim": 1}]]
    numerical = network_from_spec(spec)[2](X1, None, "nngp")
    closed_form = stax.serial(stax.Dense(8), stax.Sin(), stax.Dense(1))[2](X1, None, "nngp")  # sin's exact dual
    assert np.allclose(numerical, closed_form, rtol=1e-6, atol=0)
    assert not np.allclose(stax.serial(stax.Dense(8), stax.Cos(), stax.Dense(1))[2](X1, None, "nngp"), closed_form,
                           rtol=1e-3)  # another function fails the same check


def test_json_lists_are_tuples_for_shapes():
    spec = [["Conv", {"out_chan": 8, "filter_shape": [3, 3], "strides": [2, 1], "padding": "SAME"}], ["Relu", {}],
            ["AvgPool", {"window_shape": [2, 2]}], ["Flatten", {}], ["Dense", {"out_dim": 1}]]
    by_hand = stax.serial(stax.Conv(8, (3, 3), (2, 1), "SAME"), stax.Relu(), stax.AvgPool((2, 2)), stax.Flatten(),
                          stax.Dense(1))
    assert close(network_from_spec(spec)[2](IMAGES, None, ("nngp", "ntk")), by_hand[2](IMAGES, None, ("nngp", "ntk")))


@pytest.mark.parametrize("spec, kind, message", [
    ([["Dense", {"out_dim": 4}], ["Rectifier", {}]], ValueError, r"item \[1\] names an unknown layer 'Rectifier'"),
    ([["parallel", [[["Relu", {}]], [["Dense", {"out_dim": -1}]]]]], ValueError,
     r"item \[0\]\[1\]\[0\] \(Dense\) with \{\"out_dim\": -1\}: .*`out_dim` must be a positive int"),
    ([["Dense", {"out_dim": 4, "w_std": 1.0}]], TypeError, r"item \[0\] \(Dense\) .*unexpected keyword .*w_std"),
    ([["ElementwiseNumerical", {"fn": "tanhh", "deg": 25}]], ValueError,
     r"item \[0\] \(ElementwiseNumerical\) argument `fn` must name a function of jax.numpy .*'tanhh'"),
    ([["ElementwiseNumerical", {"fn": "pi", "deg": 25}]], ValueError, "argument `fn` must name a function"),
    ([["ElementwiseNumerical", {"fn": "float32", "deg": 25}]], ValueError, "argument `fn` must name a function"),
    ([["ElementwiseNumerical", {"fn": "tanh", "df": "_foo", "deg": 25}]], ValueError, "argument `df` must name"),
    ([["Relu"]], TypeError, r"item \[0\] must be a pair \[LayerName, kwargs\]"),
    ([["Relu", [1.0]]], TypeError, r"item \[0\] \(Relu\) takes a dict of keyword arguments"),
    ([["repeat", {"layer": [["Relu", {}]], "times": 2}]], TypeError, r"item \[0\] \(repeat\) takes"),
    ([["repeat", {"layer": [["Relu", {}]], "n": -1}]], ValueError, r"item \[0\] \(repeat\) .*n must be"),
    ([["serial", {"Relu": {}}]], TypeError, r"\[0\] \(serial\) must be a list of \[LayerName, kwargs\] items"),
    ({"Dense": {}}, TypeError, "argument `spec` must be a JSON string, a list"),
    ('[["Dense", {"out_dim": 4}]', ValueError, "the spec string is not valid JSON"),
    ("no/such/net.json", ValueError, "cannot read the spec file 'no/such/net.json'"),
    (7, TypeError, "argument `spec`"),
])
def test_bad_specs_are_refused_naming_the_item(spec, kind, message):
    with pytest.raises(kind, match="network_from_spec: .*" + message):
        network_from_spec(spec)


def test_layer_names_are_stax_layer_factories():
    assert {"Dense", "Conv", "Relu", "ElementwiseNumerical", "GlobalSelfAttention", "FanInSum"} <= set(LAYER_NAMES)
    assert not {"Layer", "KernelFn", "serial", "parallel", "repeat"} & set(LAYER_NAMES)


def test_the_reference_files_builder_only_adds_their_quadrature_tolerance():
    spec = [["Dense", {"out_dim": 8}],
            ["parallel", [[["ElementwiseNumerical", {"fn": "tanh", "deg": 25}]],
                          [["repeat", {"layer": [["ElementwiseNumerical", {"fn": "sin", "deg": 25,
                                                                          "tolerance": 1e-3}]], "n": 2}]]]]]
    added = reference_spec._with_reference_tolerance(spec)
    assert added[1][1][0][0][1] == {"fn": "tanh", "deg": 25, "tolerance": reference_spec.REFERENCE_TOLERANCE}
    assert added[1][1][1][0][1]["layer"][0][1]["tolerance"] == 1e-3  # a stated tolerance is kept
    assert added[0] == spec[0] and spec[1][1][0][0][1] == {"fn": "tanh", "deg": 25}  # the input is not changed
