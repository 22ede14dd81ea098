"""Reference kernels from neural-tangents 0.6.5 for `GlobalSelfAttention`'s positional embeddings.

Run with the reference environment's python (see ``reference_env.sh``)::

    .venv-nt/bin/python experiments/benchmarks/generate_reference_attention.py

It writes ``tests/data/nt_attention_reference.npz`` (format:
``tests/data/nt_attention_reference.README.md``): ``_cases``, ``_decay_fns`` and, per case,
``NAME/spec``, ``NAME/x1``, ``NAME/x2``, ``NAME/nngp``, ``NAME/ntk`` (``kernel_fn(x1, x2)``),
``NAME/nngp_11``, ``NAME/ntk_11`` (``kernel_fn(x1, None)``). Networks are a Dense or Conv
layer, then ``GlobalSelfAttention`` with ``pos_emb_type`` ``"SUM"`` or ``"CONCAT"``, ending
there (spatial output) or in GlobalAvgPool and Dense(1). A function cannot be JSON, so a
spec's ``pos_emb_decay_fn`` is a name of `DECAY_FNS`. Everything is float64 from a fixed
seed; it reuses ``generate_reference.py``'s helpers.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generate_reference as reference  # noqa: E402  (sets float64 and the CPU platform)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

OUT = os.path.join(reference.REPO_ROOT, "tests", "data", "nt_attention_reference.npz")

# Decay functions a spec may name, as source text (stored in the file as ``_decay_fns``)
# evaluated with ``jnp`` in scope; the tests rebuild them from that text.
DECAY_FNS = {
    "exp": "lambda d: jnp.exp(-d)",
    "exp_slow": "lambda d: jnp.exp(-0.3 * d)",
    "inverse": "lambda d: 1 / (1 + d)",
}


def decay_fn(name):
    return eval(DECAY_FNS[name], {"jnp": jnp})  # our own table's text, not input


def network_from_spec(spec):
    """As ``reference.network_from_spec``, with attention's ``pos_emb_decay_fn`` name decoded."""
    layers = []
    for name, kwargs in spec:
        if name == "GlobalSelfAttention" and kwargs.get("pos_emb_decay_fn") is not None:
            kwargs = dict(kwargs, pos_emb_decay_fn=decay_fn(kwargs["pos_emb_decay_fn"]))
            layers.append(stax.GlobalSelfAttention(**kwargs))
        else:
            layers.append(reference.network_from_spec([[name, kwargs]]))
    return stax.serial(*layers)


def attention(pos_emb_type, mechanism="SOFTMAX", linear_scaling=True, val_pos_emb=False, decay=None, p_norm=2,
              n_heads=2, W_pos_emb_std=1.3, b_std=None, n_chan_pos_emb=None):
    kw = {"n_chan_out": 64, "n_chan_key": 64, "n_chan_val": 64, "n_heads": n_heads,
          "linear_scaling": linear_scaling, "attention_mechanism": mechanism, "W_key_std": 1.2,
          "W_query_std": 0.9, "W_value_std": 1.1, "W_out_std": 0.8, "pos_emb_type": pos_emb_type,
          "val_pos_emb": val_pos_emb, "W_pos_emb_std": W_pos_emb_std}
    if decay is not None:
        kw.update(pos_emb_decay_fn=decay, pos_emb_p_norm=p_norm)
    if b_std is not None:
        kw["b_std"] = b_std
    if n_chan_pos_emb is not None:
        kw["n_chan_pos_emb"] = n_chan_pos_emb
    return ["GlobalSelfAttention", kw]


def _cases():
    seq, img = (4, 5, 4), (3, 3, 4, 3)  # 2-D: rectangular, so that a swap of H and W shows
    first = reference.dense(48, W_std=1.3, b_std=0.1)  # 48 channels: CONCAT weighs them against C_E
    c = {}

    def add(name, spec, x1_shape):
        c[name] = (spec, x1_shape, (x1_shape[0] - 1,) + x1_shape[1:])

    # Every mechanism with both scalings neural-tangents has a kernel for, both embeddings, values
    # with and without them; the decay functions and p-norms spread over the cases.
    mechanisms = [(True, "SOFTMAX"), (True, "IDENTITY"), (True, "ABS"), (True, "RELU"), (False, "IDENTITY")]
    decays = [(None, 2), ("exp", 1), ("inverse", 2), ("exp_slow", 1.5), ("exp", 2)]
    for pos in ("SUM", "CONCAT"):
        for i, (linear, mechanism) in enumerate(mechanisms):
            for val in (False, True):
                decay, p = decays[(i + val + (pos == "CONCAT")) % len(decays)]
                scaling = "linear" if linear else "sqrt"
                name = f"seq_{pos.lower()}_{mechanism.lower()}_{scaling}_val{int(val)}_{decay or 'onehot'}"
                add(name, [first, attention(pos, mechanism, linear, val, decay, p)], seq)
    # Readout after attention; a bias; more embedding channels than inputs; 2-D inputs.
    add("seq_concat_softmax_nchan96_gap", [first, attention("CONCAT", n_chan_pos_emb=96, decay="exp", p_norm=1,
                                                            b_std=0.2), reference.GAP, reference.READOUT], seq)
    add("seq_sum_relu_bias_relu_gap", [first, reference.act("Relu"),
                                       attention("SUM", "RELU", val_pos_emb=True, decay="inverse", b_std=0.3),
                                       reference.GAP, reference.READOUT], seq)
    for pos in ("SUM", "CONCAT"):
        for val in (False, True):
            add(f"img_{pos.lower()}_softmax_val{int(val)}_exp",
                [first, attention(pos, val_pos_emb=val, decay="exp", p_norm=1)], img)
        add(f"img_{pos.lower()}_identity_sqrt_onehot", [first, attention(pos, "IDENTITY", False, True)], img)
        # After one Conv neural-tangents keeps spatial axes reversed (Kernel.is_reversed);
        # the stored arrays are in the inputs' order (reference._unreversed).
        add(f"img_conv_{pos.lower()}_softmax_inverse", [
            reference.conv(48, (2, 3), "SAME", W_std=1.4, b_std=0.1), reference.act("Relu"),
            attention(pos, val_pos_emb=True, decay="inverse", p_norm=2)], img)
    return c


def main():
    print(f"jax {jax.__version__}, neural-tangents {nt.__version__}, numpy {np.__version__}")
    data, names = {}, []
    for name, (spec, x1_shape, x2_shape) in _cases().items():
        data.update(reference.kernel_case(name, spec, x1_shape, x2_shape, build=network_from_spec))
        names.append(name)
    data["_cases"] = np.array(json.dumps(names))
    data["_decay_fns"] = np.array(json.dumps(DECAY_FNS))
    np.savez_compressed(OUT, **data)
    print(f"wrote {len(names)} cases to {OUT}")


if __name__ == "__main__":
    sys.exit(main())
