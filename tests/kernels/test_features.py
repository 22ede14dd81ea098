"""kernels.features against widekit's closed-form kernel_fn of the same ReLU MLP, and deliberately wrong constructions.

The exact kernels come from `kernels.stax` (checked against neural-tangents elsewhere); the
features only see depth, W_std and b_std. Errors are relative Frobenius norms
`||Phi Phi^T - K|| / ||K||`, root-mean-squared over seeds (one draw's error is dominated by
a few random modes).
"""
import jax
import numpy as np
import pytest
import scipy.linalg

from kernels import empirical_kernel_fn, features, stax

N, D, DEPTH, W_STD, B_STD = 30, 8, 2, 1.5, 0.1
FEATURE_COUNTS = (16, 64, 256, 1024)
SEEDS = 3


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def mlp(width=512, out=1):
    layers = []
    for _ in range(DEPTH):
        layers += [stax.Dense(width, W_std=W_STD, b_std=B_STD), stax.Relu()]
    return stax.serial(*layers, stax.Dense(out, W_std=W_STD, b_std=B_STD))


@pytest.fixture(scope="module")
def exact():
    x = np.random.default_rng(3).standard_normal((N, D))
    k = mlp()[2](x, None, ("nngp", "ntk"))
    return x, {"nngp": np.asarray(k.nngp), "ntk": np.asarray(k.ntk)}


def errors(x, k, get):
    """RMS relative error of the features' kernel at each feature count (whatever features.* is now)."""
    function = features.relu_ntk_features if get == "ntk" else features.relu_nngp_features
    out = []
    for m in FEATURE_COUNTS:
        squared = []
        for seed in range(SEEDS):
            phi = np.asarray(function(x, DEPTH, m, jax.random.PRNGKey(seed), W_std=W_STD, b_std=B_STD))
            squared.append(rel(phi @ phi.T, k) ** 2)
        out.append(np.sqrt(np.mean(squared)))
    return np.array(out)


def slope(errs):
    return float(np.polyfit(np.log(FEATURE_COUNTS), np.log(errs), 1)[0])


@pytest.fixture(scope="module")
def ntk_errors(exact):
    return errors(exact[0], exact[1]["ntk"], "ntk")


def test_ntk_features_error_falls_like_inverse_sqrt_features(ntk_errors):
    # Measured: 0.83, 0.48, 0.23, 0.12 at m = 16..1024 (slope -0.47); 0 would be no convergence, -1 a 1/m error.
    assert -0.65 < slope(ntk_errors) < -0.35, ntk_errors
    assert ntk_errors[-1] < 0.15, ntk_errors


@pytest.mark.slow
def test_nngp_features_error_falls_like_inverse_sqrt_features(exact):
    errs = errors(exact[0], exact[1]["nngp"], "nngp")  # measured: 0.82, 0.43, 0.20, 0.10 (slope -0.52)
    assert -0.65 < slope(errs) < -0.35, errs
    assert errs[-1] < 0.15, errs


def test_ntk_without_the_derivative_term_does_not_converge(exact, monkeypatch, ntk_errors):
    # Dropping W_l^2 E[step step] Theta^{l-1} (the sketched tensor product) leaves the NNGP's features.
    monkeypatch.setattr(features, "tensor_srht", lambda a, b, m, key: np.zeros((a.shape[0], m)))
    wrong = errors(exact[0], exact[1]["ntk"], "ntk")  # measured: 0.75, 0.69, 0.57, 0.52 (slope -0.09)
    assert wrong[-1] > 0.3 and slope(wrong) > -0.2, wrong
    assert wrong[-1] > 3 * ntk_errors[-1]


def test_ntk_with_a_wrong_derivative_scale_does_not_converge(exact, monkeypatch, ntk_errors):
    # Zandieh et al.'s sqrt(2/m) step features (c_sigma = 2 for inputs on the sphere) on top of W_std: twice the
    # derivative term at every layer.
    real = features.arc_cosine_features

    def doubled_step(h, order, m, key):
        return real(h, order, m, key) * (np.sqrt(2.0) if order == 0 else 1.0)

    monkeypatch.setattr(features, "arc_cosine_features", doubled_step)
    wrong = errors(exact[0], exact[1]["ntk"], "ntk")  # measured: 1.98, 1.00, 0.96, 1.07 (slope -0.14)
    assert wrong[-1] > 0.2 and slope(wrong) > -0.25, wrong
    assert wrong[-1] > 3 * ntk_errors[-1]


def test_hadamard_transform_is_sylvesters_matrix():
    x = np.random.default_rng(0).standard_normal((3, 32))
    assert np.allclose(np.asarray(features._hadamard(x)), x @ scipy.linalg.hadamard(32), atol=1e-12)


def test_feature_map_rows_do_not_depend_on_blocks(exact):
    x = exact[0]
    feature_map = features.relu_mlp_feature_map(DEPTH, 64, jax.random.PRNGKey(1), W_std=W_STD, b_std=B_STD)
    whole = np.asarray(feature_map(x))
    parts = np.concatenate([np.asarray(feature_map(x[:11])), np.asarray(feature_map(x[11:]))])
    assert whole.shape == (N, 2 * 64 + 1) and feature_map.get == "ntk"
    assert np.allclose(whole, parts, rtol=1e-12, atol=1e-12)


@pytest.mark.slow  # compiling the Jacobians and the empirical kernel: ~25 s on the loaded 2-core machine
def test_network_ntk_features_are_the_empirical_ntk(exact):
    # Independent: kernels.empirical_kernel_fn (Jacobian contraction, averaged over the 3 outputs) per network.
    x = exact[0]
    init_fn, apply_fn, _ = mlp(width=16, out=3)
    key = jax.random.PRNGKey(2)
    phi = features.network_features(init_fn, apply_fn, x, 2, key, get="ntk")
    ntk = empirical_kernel_fn(apply_fn)
    expected = np.mean([np.asarray(ntk(x, None, "ntk", params=init_fn(k, x.shape)[1]))
                        for k in jax.random.split(key, 2)], axis=0)
    assert rel(phi @ phi.T, expected) < 1e-10
    nngp = features.network_features(init_fn, apply_fn, x, 2, key, get="nngp")
    assert rel(nngp @ nngp.T, expected) > 0.1  # the outputs' covariance is another kernel


@pytest.mark.parametrize("call, name", [
    (lambda x: features.relu_ntk_features(x, 2, 8, jax.random.PRNGKey(0), parameterization="standard"),
     "parameterization"),
    (lambda x: features.relu_nngp_features(x, 2, 8, jax.random.PRNGKey(0), parameterization="mup"),
     "parameterization"),
    (lambda x: features.relu_ntk_features(x, 2, 8, jax.random.PRNGKey(0), W_std=[1.0, 1.0]), "W_std"),
    (lambda x: features.relu_ntk_features(x, 2, 8, jax.random.PRNGKey(0), b_std="0.1"), "b_std"),
    (lambda x: features.relu_ntk_features(x, -1, 8, jax.random.PRNGKey(0)), "depth"),
    (lambda x: features.relu_ntk_features(x, 2, 0, jax.random.PRNGKey(0)), "n_features"),
    (lambda x: features.relu_ntk_features(x[:, :, None], 2, 8, jax.random.PRNGKey(0)), "x"),
    (lambda x: features.relu_mlp_feature_map(2, 8, jax.random.PRNGKey(0), get="both"), "get"),
    (lambda x: features.network_features(None, None, x, 1, jax.random.PRNGKey(0), get="cov"), "get"),
])
def test_bad_arguments_are_named(exact, call, name):
    with pytest.raises((ValueError, TypeError), match=f"argument `{name}`"):
        call(exact[0])


def test_standard_parameterization_nngp_is_the_same(exact):
    x = exact[0]
    a = features.relu_nngp_features(x, DEPTH, 32, jax.random.PRNGKey(0), W_std=W_STD, b_std=B_STD)
    b = features.relu_nngp_features(x, DEPTH, 32, jax.random.PRNGKey(0), W_std=W_STD, b_std=B_STD,
                                    parameterization="standard")
    assert np.array_equal(np.asarray(a), np.asarray(b))
