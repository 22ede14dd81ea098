"""neural-tangents' keywords of ``kernel_fn`` and ``apply_fn``, and convolutions past three spatial axes: implemented (against its reference
values and against the position-pair kernel) or refused by name, never accepted and ignored."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import stax
from tests.kernels.spec import network_from_spec

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "data", "nt_keywords_reference.npz")


def _reference_cases():
    with np.load(REFERENCE) as data:
        return json.loads(str(data["_cases"]))


@pytest.mark.parametrize("name", sorted(_reference_cases()))
def test_keywords_match_neural_tangents(name):
    case = _reference_cases()[name]
    with np.load(REFERENCE) as data:  # float64: tests run with x64 on (conftest)
        x1 = data[f"{name}/x1"]
        x2 = data[f"{name}/x2"] if f"{name}/x2" in data else None
        k = network_from_spec(case["spec"])[2](x1, x2, ("nngp", "ntk", "cov1"), **case["keywords"])
        for field in ("nngp", "ntk", "cov1"):
            ref = data[f"{name}/{field}"]
            ours = np.asarray(getattr(k, field))
            assert ours.shape == ref.shape, field
            assert np.abs(ours - ref).max() <= 1e-6 * np.abs(ref).max(), field


def _diagonal_of_pairs(a, batch_ndim):
    """Equal positions of an interleaved ``(B..., S1, S1', S2, S2')`` array, by explicit indexing."""
    lead = a.shape[:batch_ndim]
    s1, s2 = a.shape[batch_ndim], a.shape[batch_ndim + 2]
    out = np.empty(lead + (s1, s2))
    for i in range(s1):
        for j in range(s2):
            out[..., i, j] = a[(Ellipsis, i, i, j, j)]
    return out


def test_diagonal_spatial_of_a_pooled_network_is_the_diagonal_of_its_pairs():
    # widekit computes the pairs the pooling needs and returns their diagonal (neural-tangents refuses
    # diagonal_spatial after global pooling, and after AvgPool pools the equal positions only: not this diagonal).
    net = stax.serial(stax.Conv(4, (3, 3), padding="SAME"), stax.Relu(), stax.AvgPool((2, 2), padding="SAME"),
                      stax.Conv(4, (2, 2), padding="SAME"), stax.Erf())
    x1 = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 2))
    x2 = jax.random.normal(jax.random.PRNGKey(1), (1, 3, 4, 2))
    full = net[2](x1, x2, ("nngp", "ntk", "cov1", "cov2"))
    diag = net[2](x1, x2, ("nngp", "ntk", "cov1", "cov2"), diagonal_spatial=True)
    for field, batch_ndim in (("nngp", 2), ("ntk", 2), ("cov1", 1), ("cov2", 1)):
        np.testing.assert_allclose(np.asarray(getattr(diag, field)),
                                   _diagonal_of_pairs(np.asarray(getattr(full, field)), batch_ndim), rtol=1e-6)


def test_x1_is_x2_field():
    kernel_fn = stax.serial(stax.Dense(2), stax.Relu())[2]
    x = jnp.ones((2, 3))
    assert kernel_fn(x).x1_is_x2 and not kernel_fn(x, x).x1_is_x2


@stax.layer
def UserScale():
    """A user's custom layer (neural-tangents' `stax.layer`): it declares no mask rule."""
    return (lambda rng, shape: (shape, ()), lambda params, x, **kwargs: 2. * x,
            lambda k, **kwargs: k.replace(nngp=4. * k.nngp, ntk=4. * k.ntk))


def test_unimplemented_keywords_are_refused_by_name():
    # Masks are implemented for Dense, Conv, activations, pooling, attention (tests/kernels/test_masking.py);
    # a layer without mask support (here a user's custom layer, which declares no mask rule) refuses them by name.
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Conv(3, (2,)), stax.Relu(), UserScale(), stax.GlobalAvgPool())
    x = jnp.ones((2, 4, 3))
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    with pytest.raises(NotImplementedError, match=r"UserScale.*mask_constant"):
        apply_fn(params, x, mask_constant=0.0)
    with pytest.raises(NotImplementedError, match=r"UserScale.*mask_constant"):
        kernel_fn(x, mask_constant=0.0)
    with pytest.raises(TypeError, match="diagonal_batch"):  # False is implemented: tests/kernels/test_diagonal_batch.py
        kernel_fn(x, diagonal_batch="no")
    with pytest.raises(TypeError, match="diagonal_spatial"):
        kernel_fn(x, diagonal_spatial="yes")
    with pytest.raises(TypeError, match="colour"):
        apply_fn(params, x, colour=1)
    with pytest.raises(TypeError, match="colour"):
        kernel_fn(x, colour=1)


def test_rng_and_default_keywords_leave_a_deterministic_network_unchanged():
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(3), stax.Relu(), stax.GlobalAvgPool())
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 3))
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    plain = apply_fn(params, x)
    np.testing.assert_array_equal(apply_fn(params, x, rng=jax.random.PRNGKey(5), mask_constant=None), plain)
    np.testing.assert_array_equal(kernel_fn(x, None, "nngp", diagonal_batch=True, mask_constant=None),
                                  kernel_fn(x, None, "nngp"))


def test_four_dimensional_conv_apply_fn_is_the_three_dimensional_one_along_a_trivial_axis():
    # A 4-D convolution over inputs whose last spatial axis has size 1 (filter 1 there) is the
    # 3-D convolution of the squeezed inputs with the squeezed filter.
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 3, 5, 1, 2))
    init4, apply4, _ = stax.Conv(3, (2, 2, 3, 1), strides=(1, 2, 1, 1), padding="SAME", b_std=0.2)
    _, apply3, _ = stax.Conv(3, (2, 2, 3), strides=(1, 2, 1), padding="SAME", b_std=0.2)
    _, (w, b) = init4(jax.random.PRNGKey(0), x.shape)
    out4 = apply4((w, b), x)
    out3 = apply3((w[:, :, :, 0], b), x[..., 0, :])  # b: (out_chan,)
    np.testing.assert_allclose(np.asarray(out4[..., 0, :]), np.asarray(out3), rtol=1e-12, atol=1e-12)


def test_rng_is_split_between_layers():
    # Two Dropouts in series draw independent masks (one key each, as in neural-tangents): with one
    # shared key the second mask would equal the first, and every kept entry would be kept twice.
    init_fn, apply_fn, _ = stax.serial(stax.Dropout(0.5), stax.Dropout(0.5))
    x = jnp.ones((1, 4000))
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    out = np.asarray(apply_fn(params, x, rng=jax.random.PRNGKey(1)))
    kept = np.mean(out != 0)
    assert abs(kept - 0.25) < 4 * np.sqrt(0.25 * 0.75 / x.size), kept
    _, apply_pair, _ = stax.parallel(stax.Dropout(0.5), stax.Dropout(0.5))
    a, b = apply_pair(((), ()), [x, x], rng=jax.random.PRNGKey(2))
    assert np.mean((np.asarray(a) != 0) == (np.asarray(b) != 0)) < 0.6  # independent: about one half
