"""``kernel_fn(x1, x2, diagonal_batch=False)``: ``cov1``/``cov2`` hold the covariance of every pair of examples of
one batch, ``(N1, N1, ...)`` in the layout of ``nngp``, as neural-tangents 0.6.5 returns them (its reference values,
tests/data/nt_keywords2_reference.npz), also for ``kernel_fn(Kernel)``, block by block and through `kernels.batch`;
checked besides against the network's own ``nngp(x1, x1)`` and the ``diagonal_batch=True`` ``cov1``, and a wrong
rule (covariances of perfectly correlated examples) is shown to fail the reference."""
import numpy as np
import pytest

from kernels import Kernel, batch, stax
from tests.kernels.keywords2_reference import arrays, cases, close
from tests.kernels.spec import network_from_spec


def _cases():
    return cases("db_")


_load, _close = arrays, close


def _widekit(name):
    case, ref = _cases()[name], _load(name)
    keywords = dict(case["keywords"])
    k = network_from_spec(case["spec"])[2](ref["x1"], ref.get("x2"), None, **keywords)
    if "then" in case:
        k = network_from_spec(case["then"])[2](k)
    return k, ref


DEFAULT = ("db_mlp", "db_mlp_x2none", "db_on_kernel_x2none")  # the others are slow


@pytest.mark.parametrize("name", [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(_cases())])
def test_matches_neural_tangents(name):
    k, ref = _widekit(name)
    assert k.diagonal_batch is False
    for field in ("nngp", "ntk", "cov1", "cov2"):
        if field in ref:
            assert _close(getattr(k, field), ref[field]), field
    if "x2" not in ref:  # neural-tangents gives cov2=None then
        assert k.cov2 is None


def test_a_wrong_full_batch_covariance_fails_the_reference():
    # Perfectly correlated examples: cov1[i, j] = sqrt(cov1[i] cov1[j]), from the diagonal_batch=True variances.
    case, ref = _cases()["db_mlp"], _load("db_mlp")
    own = np.asarray(network_from_spec(case["spec"])[2](ref["x1"], ref["x2"], "cov1"))
    wrong = np.sqrt(np.outer(own, own))
    assert not _close(wrong, ref["cov1"], tol=1e-2)
    np.testing.assert_allclose(np.diagonal(ref["cov1"]), own, rtol=1e-9)  # the diagonals do agree


# A 1-D CNN whose output keeps positions (so cov1 has them too); an MLP and its head for the cheaper checks
# (each new network and shape costs a compilation).
NET = stax.serial(stax.Conv(3, (2,), padding="SAME", W_std=1.4, b_std=0.1), stax.Relu(), stax.Conv(3, (2,)))
X1 = np.random.RandomState(0).randn(5, 3, 2)
X2 = np.random.RandomState(1).randn(3, 3, 2)
MLP = stax.serial(stax.Dense(4, W_std=1.4, b_std=0.1), stax.Relu())
MLP_HEAD = stax.serial(stax.Dense(3), stax.Erf(), stax.Dense(1))
Y1, Y2 = X1[:, :, 0], X2[:, :, 0]


@pytest.mark.parametrize("diagonal_spatial", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_cov1_is_the_nngp_of_the_batch_with_itself(diagonal_spatial):
    kernel_fn = NET[2]
    k = kernel_fn(X1, X2, None, diagonal_batch=False, diagonal_spatial=diagonal_spatial)
    own = kernel_fn(X1, X2, ("nngp", "ntk", "cov1", "cov2"), diagonal_spatial=diagonal_spatial)
    np.testing.assert_allclose(k.cov1, kernel_fn(X1, X1, "nngp", diagonal_spatial=diagonal_spatial), rtol=1e-12)
    np.testing.assert_allclose(k.cov2, kernel_fn(X2, X2, "nngp", diagonal_spatial=diagonal_spatial), rtol=1e-12)
    # The batch diagonal is each example's own covariance (diagonal_batch=True); nngp and ntk do not change.
    np.testing.assert_allclose(np.moveaxis(np.diagonal(np.asarray(k.cov1), axis1=0, axis2=1), -1, 0), own.cov1,
                               rtol=1e-10)
    np.testing.assert_allclose(np.moveaxis(np.diagonal(np.asarray(k.cov2), axis1=0, axis2=1), -1, 0), own.cov2,
                               rtol=1e-10)
    np.testing.assert_array_equal(k.nngp, own.nngp)
    np.testing.assert_array_equal(k.ntk, own.ntk)


@pytest.mark.slow  # default: the reference parity and cov1 = nngp(x1, x1) checks
def test_get_forms_blocks_and_branches():
    kernel_fn = MLP[2]
    whole = kernel_fn(Y1, Y2, None, diagonal_batch=False)
    pair = kernel_fn(Y1, Y2, ("cov2", "nngp", "diagonal_batch"), diagonal_batch=False, block_size=2)
    np.testing.assert_allclose(pair.cov2, whole.cov2, rtol=1e-12)
    np.testing.assert_allclose(pair.nngp, whole.nngp, rtol=1e-12)
    assert pair.diagonal_batch is False
    branches = stax.serial(MLP, stax.FanOut(2), stax.parallel(stax.Dense(2), stax.Dense(3, b_std=0.2)))[2]
    out = branches(Y1, Y2, "cov1", diagonal_batch=False)
    for ours, ref in zip(out, branches(Y1, Y1, "nngp")):
        np.testing.assert_allclose(ours, ref, rtol=1e-12)


@pytest.mark.slow  # default: the reference parity and cov1 = nngp(x1, x1) checks
def test_kernel_fn_of_a_kernel_and_batch():
    net = stax.serial(MLP, MLP_HEAD)[2]
    first = MLP[2](Y1, Y2, None, diagonal_batch=False)
    assert first.cov1.shape == (5, 5)
    expected = net(Y1, Y2, None, diagonal_batch=False)
    for field in ("nngp", "ntk", "cov1", "cov2"):
        np.testing.assert_allclose(getattr(MLP_HEAD[2](first), field), getattr(expected, field), rtol=1e-10)
    np.testing.assert_allclose(MLP_HEAD[2](first, diagonal_batch=True, get="cov1"), np.diagonal(expected.cov1),
                               rtol=1e-10)
    tiled = batch(net, 2, progress=False)(Y1, Y2, None, diagonal_batch=False)
    assert tiled.diagonal_batch is False
    for field in ("nngp", "ntk", "cov1", "cov2"):
        np.testing.assert_allclose(np.asarray(getattr(tiled, field)), getattr(expected, field), rtol=1e-10)
    assert batch(net, 2, progress=False)(Y1, None, "cov2", diagonal_batch=False) is None  # as neural-tangents


def test_batch_takes_numpys_false():
    """As kernel_fn does (batch once tested ``is False`` and failed with a TypeError on it)."""
    expected = MLP[2](Y1, None, "cov1", diagonal_batch=False)
    got = batch(MLP[2], 2, progress=False)(Y1, None, "cov1", diagonal_batch=np.False_)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10)


def test_refusals_name_the_argument():
    kernel_fn = MLP[2]
    with pytest.raises(TypeError, match="diagonal_batch"):
        kernel_fn(Y1, Y2, diagonal_batch="no")
    with pytest.raises(ValueError, match="diagonal_batch"):  # the kernel holds only each example's covariance
        MLP_HEAD[2](kernel_fn(Y1, Y2, None), diagonal_batch=False)
    with pytest.raises(ValueError, match="diagonal_batch"):
        batch(MLP_HEAD[2], 2, progress=False)(kernel_fn(Y1, Y2, None, diagonal_batch=False))
    assert isinstance(kernel_fn(Y1, None, None, diagonal_batch=False), Kernel)


def test_a_full_batch_kernel_continues_through_masks_and_graphs():
    """``kernel_fn(Kernel)`` of a Kernel computed with ``diagonal_batch=False`` equals the whole network's
    ``diagonal_batch=False`` kernel (itself checked against neural-tangents above) when its inputs were
    masked (the batch-pair kernels must carry that batch's masks; they failed on a shape) and when the
    second network is a graph network (each batch's covariance takes that batch's graphs; refused before).
    Found by differential fuzzing against neural-tangents 0.6.5, whose values these are."""
    rs = np.random.RandomState(0)
    x1, x2 = rs.randn(4, 5, 2), rs.randn(2, 5, 2)
    x1[0, 3:], x1[2, 4:], x2[1, 2:] = 7.5, 7.5, 7.5
    first = stax.serial(stax.Dense(2))
    for second in (stax.GlobalAvgPool(), stax.serial(stax.LayerNorm(axis=(1, -1)), stax.Relu())):
        chained = second[2](first[2](x1, x2, None, diagonal_batch=False, mask_constant=7.5))
        direct = stax.serial(first, second)[2](x1, x2, None, diagonal_batch=False, mask_constant=7.5)
        for field in ("nngp", "cov1", "cov2"):
            np.testing.assert_allclose(getattr(chained, field), getattr(direct, field), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(stax.serial(first, stax.GlobalAvgPool())[2](x1, x2, "nngp", mask_constant=7.5)[0],
                               [-0.905767, -0.650332], atol=1e-6)  # neural-tangents 0.6.5's numbers

    rs = np.random.RandomState(0)
    y1, y2 = rs.randn(4, 3, 2), rs.randn(2, 3, 2)
    p1, p2 = (rs.rand(4, 3, 3) < 0.5).astype(float), (rs.rand(2, 3, 3) < 0.5).astype(float)
    first, second = stax.serial(stax.Dense(3)), stax.serial(stax.Aggregate(), stax.Relu(), stax.GlobalAvgPool())
    chained = second[2](first[2](y1, y2, None, diagonal_batch=False), pattern=(p1, p2))
    direct = stax.serial(first, second)[2](y1, y2, None, diagonal_batch=False, pattern=(p1, p2))
    for field in ("nngp", "cov1", "cov2"):
        np.testing.assert_allclose(getattr(chained, field), getattr(direct, field), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(direct.nngp[0, 0], 1.393934, atol=1e-6)  # neural-tangents 0.6.5's number
