"""neural-tangents' custom-layer tools (`stax.layer`, `requires`, `Diagonal`, ...) as adapters.

Truth: the built-in layers (themselves checked against neural-tangents and finite networks) and the
public kernel of the network before the custom layer, read at known positions.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widekit import stax


@stax.layer
def MyDense(out_dim, W_std=1.0, b_std=0.0):
    """A Dense layer written as a neural-tangents user would (NTK parameterization)."""
    def init_fn(rng, input_shape):
        k1, k2 = jax.random.split(rng)
        return input_shape[:-1] + (out_dim,), (jax.random.normal(k1, (input_shape[-1], out_dim)),
                                               jax.random.normal(k2, (out_dim,)))

    def apply_fn(params, x, **kwargs):
        w, b = params
        return W_std * x @ w / np.sqrt(x.shape[-1]) + b_std * b

    @stax.requires(diagonal_spatial=stax.Diagonal())
    def kernel_fn(k, **kwargs):
        nngp = W_std ** 2 * k.nngp + b_std ** 2
        return k.replace(nngp=nngp, ntk=nngp + W_std ** 2 * k.ntk, cov1=W_std ** 2 * k.cov1 + b_std ** 2,
                         cov2=None if k.cov2 is None else W_std ** 2 * k.cov2 + b_std ** 2, is_gaussian=True)

    return init_fn, apply_fn, kernel_fn


@stax.layer
def ReadPosition(h, w):
    """Reads one position of an image: needs the position pairs in neural-tangents' layout."""
    def init_fn(rng, input_shape):
        return (input_shape[0], input_shape[-1]), ()

    def apply_fn(params, x, **kwargs):
        return x[:, h, w, :]

    def kernel_fn(k):  # no `requires`: position pairs, as neural-tangents' default
        assert k.nngp.ndim == 6 and not k.diagonal_spatial
        return k.replace(nngp=k.nngp[:, :, h, h, w, w], ntk=k.ntk[:, :, h, h, w, w], cov1=k.cov1[:, h, h, w, w],
                         cov2=None if k.cov2 is None else k.cov2[:, h, h, w, w])

    return init_fn, apply_fn, kernel_fn


def images(n=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((n, 3, 4, 2)))


def test_custom_dense_equals_the_built_in_dense_in_an_mlp():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 5)))
    ours = stax.serial(MyDense(8, 1.3, 0.2), stax.Relu(), MyDense(1, 0.9, 0.1))
    built_in = stax.serial(stax.Dense(8, 1.3, 0.2), stax.Relu(), stax.Dense(1, 0.9, 0.1))
    for get in ("nngp", "ntk"):
        np.testing.assert_allclose(ours.kernel_fn(x, x[:2], get), built_in.kernel_fn(x, x[:2], get), rtol=1e-12)
    _, params = ours.init_fn(jax.random.PRNGKey(0), x.shape)
    assert ours.apply_fn(params, x).shape == (4, 1)


def test_a_pointwise_custom_layer_keeps_a_flatten_cnn_on_equal_positions():
    """`Diagonal()` lets the rule run on equal positions only; the result equals the built-in Dense's."""
    x = images()
    ours = stax.serial(stax.Conv(4, (2, 2), padding="SAME"), stax.Relu(), MyDense(4, 1.1, 0.3), stax.Relu(),
                       stax.Flatten(), stax.Dense(1))
    built_in = stax.serial(stax.Conv(4, (2, 2), padding="SAME"), stax.Relu(), stax.Dense(4, 1.1, 0.3), stax.Relu(),
                           stax.Flatten(), stax.Dense(1))
    np.testing.assert_allclose(ours.kernel_fn(x, None, "ntk"), built_in.kernel_fn(x, None, "ntk"), rtol=1e-12)


def test_the_rule_sees_neural_tangents_position_pair_layout():
    """Reading position (h, w) = (0, 2) of a 3 x 4 image equals the public kernel there; in widekit's
    internal (S, S') order the same indices would read another pair of positions."""
    x, x2 = images(), images(2, seed=3)
    body = [stax.Conv(3, (2, 2), padding="SAME"), stax.Relu(), stax.Conv(3, (3, 2), padding="SAME")]
    full = stax.serial(*body).kernel_fn(x, x2, ("nngp", "ntk"))
    read = stax.serial(*body, ReadPosition(0, 2)).kernel_fn(x, x2, ("nngp", "ntk"))
    np.testing.assert_allclose(read.nngp, full.nngp[:, :, 0, 0, 2, 2], rtol=1e-12)
    np.testing.assert_allclose(read.ntk, full.ntk[:, :, 0, 0, 2, 2], rtol=1e-12)
    assert not np.allclose(read.nngp, full.nngp[:, :, 0, 2, 0, 2], rtol=1e-3)  # the wrong layout differs
    # and the kernel of x with itself, in blocks of one example, is the same
    whole = stax.serial(*body, ReadPosition(0, 2)).kernel_fn(x, None, "nngp")
    blocked = stax.serial(*body, ReadPosition(0, 2)).kernel_fn(x, None, "nngp", block_size=1)
    np.testing.assert_allclose(blocked, whole, rtol=1e-12)
    np.testing.assert_allclose(whole, stax.serial(*body).kernel_fn(x, None, "nngp")[:, :, 0, 0, 2, 2], rtol=1e-12)


def test_custom_layer_apply_fn_runs_in_a_network_and_keywords_are_checked():
    net = stax.serial(stax.Conv(3, (2, 2), padding="SAME"), ReadPosition(1, 3), MyDense(2))
    _, params = net.init_fn(jax.random.PRNGKey(0), images().shape)
    assert net.apply_fn(params, images()).shape == (3, 2)
    with pytest.raises(NotImplementedError, match="mask_constant"):
        net.apply_fn(params, images(), mask_constant=0.0)
    with pytest.raises(TypeError, match="colour"):
        net.apply_fn(params, images(), colour=1)


def test_requirements_widekit_cannot_honour_are_refused_by_name():
    for reqs, argument in ((dict(diagonal_batch=False), "diagonal_batch"), (dict(batch_axis=1), "batch_axis"),
                           (dict(channel_axis=1), "channel_axis"), (dict(diagonal_spatial="yes"), "diagonal_spatial"),
                           (dict(colour=1), "colour")):
        @stax.layer
        def Bad():
            return (lambda rng, s: (s, ())), (lambda p, x, **kw: x), stax.requires(**reqs)(lambda k: k)
        with pytest.raises((ValueError, TypeError), match=f"Bad.*{argument}"):
            Bad()


def test_a_rule_that_returns_no_kernel_is_refused_by_name():
    @stax.layer
    def Broken():
        return (lambda rng, s: (s, ())), (lambda p, x, **kw: x), (lambda k: k.nngp)
    with pytest.raises(TypeError, match="Broken.*must return a Kernel"):
        stax.serial(stax.Dense(2), Broken()).kernel_fn(jnp.ones((2, 3)), None, "nngp")


def test_masking_tools_change_nothing_or_refuse():
    """A custom layer declares no mask handling, so it refuses masked inputs by name."""
    assert stax.unmask_fn(len) is len
    assert stax.supports_masking(remask_kernel=True)(MyDense) is MyDense
    with pytest.raises(TypeError, match="remask_kernel"):
        stax.supports_masking(remask_kernel="no")
    with pytest.raises(NotImplementedError, match="MaskedArray"):
        stax.MaskedArray(jnp.ones(3), jnp.zeros(3, bool))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 5))).at[0, 3:].set(0.0)
    with pytest.raises(NotImplementedError, match="MyDense.*mask_constant"):
        stax.serial(stax.Dense(3), MyDense(2)).kernel_fn(x, None, "nngp", mask_constant=0.0)


def test_bool_and_diagonal_logic():
    assert stax.Bool.YES & stax.Bool.MAYBE == stax.Bool.MAYBE
    assert stax.Diagonal() & stax.Diagonal(stax.Bool.NO, stax.Bool.YES) == stax.Diagonal(stax.Bool.NO, stax.Bool.NO)


def test_diagonal_composition():
    """``a >> b`` is ``b`` after ``a`` (neural-tangents' rule, worked by hand below); it is associative,
    ``b << a`` is the same, and ``bool`` is neural-tangents' "may keep equal positions only"."""
    Y, M, N, D = stax.Bool.YES, stax.Bool.MAYBE, stax.Bool.NO, stax.Diagonal
    assert D(Y, Y) >> D(N, N) == D(Y, Y)  # a readout of equal positions: nothing after it matters
    assert D(Y, N) >> D(M, Y) == D(N, Y)  # off-diagonal entries handed on to a layer that needs them
    assert D(Y, N) >> D(Y, M) == D(Y, M)  # ... to a layer that does not
    assert D(M, M) >> D(Y, N) == D(M, N)  # the first layer's input decides
    assert D(Y, M) >> D(N, Y) == D(N, Y)  # a MAYBE handed to a layer that needs pairs: the lower input
    assert D(Y, M) and D(Y, Y) and not D(Y, N) and not D(M, Y)
    every = [D(i, o) for i in stax.Bool for o in stax.Bool]
    for a in every:
        for b in every:
            assert b << a == a >> b
            for c in every:
                assert (a >> b) >> c == a >> (b >> c)


def test_kernel_reports_neural_tangents_layout_fields():
    k = stax.serial(stax.Conv(2, (2, 2), padding="SAME"), stax.GlobalAvgPool()).kernel_fn(images(), None)
    assert (k.diagonal_batch, k.batch_axis, k.channel_axis, k.is_reversed, k.mask1) == (True, 0, 1, False, None)
    k = stax.Conv(2, (2, 2), padding="SAME").kernel_fn(images(), None, diagonal_spatial=True)
    assert k.diagonal_spatial and k.channel_axis == 3 and k.shape1 == (3, 3, 4, 2)


def test_kernel_fn_of_a_kernel_continues_the_network():
    """kernel_fn(Kernel): the second half of a network applied to the first half's public Kernel equals
    the whole network, for an MLP, a pooled CNN (position pairs round-trip through neural-tangents'
    layout) and the kernel of two batches."""
    x, x2 = images(), images(2, seed=4)
    first = [stax.Conv(3, (2, 2), padding="SAME"), stax.Relu(), stax.Conv(3, (3, 2), padding="SAME")]
    second = [stax.Relu(), stax.Conv(2, (2, 2), padding="SAME"), stax.GlobalAvgPool()]
    for a, b in ((x, None), (x, x2)):
        whole = stax.serial(*first, *second).kernel_fn(a, b)
        half = stax.serial(*second).kernel_fn(stax.serial(*first).kernel_fn(a, b))
        for f in ("nngp", "ntk", "cov1") + (() if b is None else ("cov2",)):
            np.testing.assert_allclose(getattr(half, f), getattr(whole, f), rtol=1e-12)
        assert half.x1_is_x2 == (b is None) and (half.cov2 is None) == (whole.cov2 is None) == (b is None)
    flat = np.random.default_rng(2).standard_normal((4, 3))
    k = stax.serial(stax.Dense(5), stax.Relu()).kernel_fn(flat, None)
    np.testing.assert_allclose(stax.Dense(2, 1.5, 0.1).kernel_fn(k, get="ntk"),
                               stax.serial(stax.Dense(5), stax.Relu(), stax.Dense(2, 1.5, 0.1)).kernel_fn(flat, None, "ntk"),
                               rtol=1e-12)


def test_kernel_fn_of_a_kernel_subtracts_zero_means_after_weights():
    """A LayerNorm (or a sum of branches) given another network's Kernel needs the channel means, which the public
    Kernel does not carry: after Dense, Conv or attention they are zero, and the result is the whole network's;
    after an activation they are unknown, and the Kernel is refused rather than normalized as if centred."""
    x, x2 = images(), images(2, seed=4)
    for first in ([stax.Conv(3, (2, 2), padding="SAME")],
                  [stax.Conv(3, (2, 2), padding="SAME"), stax.Relu(), stax.GlobalSelfAttention(4, 4, 4, 2)]):
        second = [stax.LayerNorm(axis=(1, 2, 3)), stax.Relu(), stax.FanOut(2),
                  stax.parallel(stax.Conv(2, (2, 2), padding="SAME"), stax.Identity()), stax.FanInSum(), stax.GlobalAvgPool()]
        for b in (None, x2):
            whole = stax.serial(*first, *second).kernel_fn(x, b, ("nngp", "ntk"))
            half = stax.serial(*second).kernel_fn(stax.serial(*first).kernel_fn(x, b), get=("nngp", "ntk"))
            for f in ("nngp", "ntk"):
                np.testing.assert_allclose(getattr(half, f), getattr(whole, f), rtol=1e-12)
    after_relu = stax.serial(stax.Conv(3, (2, 2), padding="SAME"), stax.Relu()).kernel_fn(x)
    with pytest.raises(ValueError, match=r"LayerNorm.*channel mean of its inputs is unknown.*kernel_fn\(Kernel\)"):
        stax.LayerNorm().kernel_fn(after_relu)


def test_kernel_fn_of_a_kernel_refuses_what_it_cannot_use():
    x = images()
    diagonal = stax.Conv(2, (2, 2), padding="SAME").kernel_fn(x, None, diagonal_spatial=True)
    with pytest.raises(ValueError, match="every pair of positions"):
        stax.GlobalAvgPool().kernel_fn(diagonal)
    assert stax.Flatten().kernel_fn(diagonal, get="nngp").shape == (3, 3)  # Flatten needs equal positions only
    # Layers that keep positions apart continue a Kernel of equal positions, giving equal positions.
    rest = stax.serial(stax.Relu(), stax.Conv(2, (2, 2), padding="SAME"), stax.Erf())
    whole = stax.serial(stax.Conv(2, (2, 2), padding="SAME"), rest)
    np.testing.assert_allclose(rest.kernel_fn(diagonal, get="ntk"), whole.kernel_fn(x, None, "ntk", diagonal_spatial=True),
                               rtol=1e-12)
    k = stax.Conv(2, (2, 2), padding="SAME").kernel_fn(x)
    with pytest.raises(ValueError, match="`x2`"):
        stax.Relu().kernel_fn(k, x)
    with pytest.raises(ValueError, match="without ntk"):
        stax.Relu().kernel_fn(k.replace(ntk=None))


def test_elementwise_without_a_dual_is_a_finite_network_only():
    net = stax.serial(stax.Dense(3), stax.Elementwise(jnp.tanh))
    x = jnp.ones((2, 4))
    _, params = net.init_fn(jax.random.PRNGKey(0), x.shape)
    np.testing.assert_allclose(net.apply_fn(params, x), jnp.tanh(stax.Dense(3).apply_fn(params[0], x)), rtol=1e-12)
    with pytest.raises(NotImplementedError, match="nngp_fn"):
        net.kernel_fn(x, None, "nngp")
    with pytest.raises(ValueError, match="Elementwise: give fn"):
        stax.Elementwise()


def test_get_takes_every_field_of_neural_tangents_kernel():
    """neural-tangents' get accepts any Kernel field; their values describe the returned arrays."""
    net = stax.serial(stax.Conv(2, (2, 2), padding="SAME"), stax.Relu())
    x = images()
    assert net.kernel_fn(x, None, "shape1") == (3, 3, 4, 2)
    out = net.kernel_fn(x, x[:2], ("nngp", "is_gaussian", "x1_is_x2", "diagonal_spatial", "channel_axis", "mask1"))
    assert out.nngp.shape == (3, 2, 3, 3, 4, 4)
    assert (out.is_gaussian, out.x1_is_x2, out.diagonal_spatial, out.channel_axis, out.mask1) == (False, False, False,
                                                                                                  3, None)
    assert stax.Conv(2, (2, 2), padding="SAME").kernel_fn(x, None, "is_reversed", neural_tangents_axis_order=True)
    assert not stax.Conv(2, (2, 2), padding="SAME").kernel_fn(x, None, "is_reversed")
    with pytest.raises(ValueError, match="get"):
        net.kernel_fn(x, None, "colour")


def test_a_rule_sees_no_ntk_when_none_is_asked_for():
    """neural-tangents hands a rule ``Kernel.ntk = None`` when ``get`` leaves the NTK out, so a layer with
    an NNGP alone (its tests' RBF kernel) refuses only NTK requests. Truth: after ``Dense(W_std=1)``, the
    RBF rule gives ``exp(-gamma |x - x'|^2)``."""
    gamma = 0.3

    @stax.layer
    def Rbf():
        def rule(k):
            if k.ntk is not None:
                raise ValueError("Rbf has no NTK")
            d = k.shape1[1]
            return k.replace(nngp=jnp.exp(-gamma * d * (k.cov1[:, None] + k.cov2[None] - 2 * k.nngp)))
        return (lambda rng, shape: (shape, ())), (lambda params, x, **kw: x), rule

    x1, x2 = jax.random.normal(jax.random.PRNGKey(0), (3, 4)), jax.random.normal(jax.random.PRNGKey(1), (2, 4))
    kernel_fn = stax.serial(stax.Dense(4, W_std=1.), Rbf()).kernel_fn
    want = np.exp(-gamma * ((np.asarray(x1)[:, None] - np.asarray(x2)[None]) ** 2).sum(-1))
    np.testing.assert_allclose(kernel_fn(x1, x2, "nngp"), want, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(kernel_fn, static_argnames="get")(x1, x2, get="nngp"), want, rtol=1e-6)
    for get in ("ntk", ("nngp", "ntk"), None):
        with pytest.raises(ValueError, match="Rbf has no NTK"):
            kernel_fn(x1, x2, get)
