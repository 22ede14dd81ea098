"""Reference kernels and outputs from neural-tangents 0.6.5 for masked inputs (``mask_constant``).

Run with the reference environment's python (see ``reference_env.sh``)::

    .venv-nt/bin/python experiments/benchmarks/generate_reference_masking.py

It writes ``tests/data/nt_masking_reference.npz`` (format: ``tests/data/nt_masking_reference.README.md``):
per case ``NAME/spec``, ``NAME/x1``, ``NAME/x2`` (inputs with their masked entries set to
``NAME/mask_constant``), ``NAME/nngp``, ``NAME/ntk`` (``kernel_fn(x1, x2, mask_constant=...)``),
``NAME/nngp_11``, ``NAME/ntk_11`` (``x2=None``); for the cases in ``APPLY_CASES`` also the
parameters ``NAME/param/i/j`` of neural-tangents' ``init_fn`` (layer ``i``, array ``j``) and
``NAME/apply`` (``unmask_fn(apply_fn)(params, x1, mask_constant=...)``). Everything is float64 from
``generate_reference.py``'s seed; it reuses that script's spec language and helpers.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generate_reference as reference  # noqa: E402  (sets float64 and the CPU platform)
import jax  # noqa: E402
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

act, dense, attention = reference.act, reference.dense, reference.attention
READOUT, FLATTEN, GAP = reference.READOUT, reference.FLATTEN, reference.GAP
OUT = os.path.join(reference.REPO_ROOT, "tests", "data", "nt_masking_reference.npz")

# Cases whose apply_fn is compared too (their layers' parameters have widekit's layout).
APPLY_CASES = ("seq_dense_relu_gap", "seq_flatten", "seq_layernorm_positions")


def _cases():
    """``name -> (spec, x1 shape, x2 shape, masking)``; ``masking``: ``("lengths", c)`` pads example
    ``n``'s sequence after a length drawn per example (one example fully masked), ``("entries", c)``
    masks single entries with probability 0.4."""
    seq = (5, 7, 3)
    relu = [dense(512, 1.3, 0.2), act("Relu")]
    c = {}

    def add(name, spec, shape, masking=("lengths", 10.)):
        c[name] = (spec, shape, (shape[0] - 1,) + shape[1:], masking)

    add("seq_dense_relu_gap", relu + [GAP, READOUT], seq)
    add("seq_dense_erf_gsp", [dense(512, 1.1, 0.3), act("Erf"), ["GlobalSumPool", {}], READOUT], seq)
    add("seq_flatten", relu + [FLATTEN, READOUT], seq)
    add("seq_spatial_output", relu + [dense(512, 0.9, 0.1)], seq)
    add("seq_nan_constant", relu + [GAP, READOUT], seq, ("lengths", float("nan")))
    add("seq_layernorm_positions", [dense(512, 1.2, 0.1), ["LayerNorm", {"axis": [1, 2]}], act("Relu"), GAP,
                                    READOUT], seq)
    add("seq_layernorm_channels", [dense(512, 1.2, 0.1), ["LayerNorm", {"axis": -1}], act("Erf"), GAP, READOUT],
        seq)
    for mechanism in ("SOFTMAX", "IDENTITY", "RELU", "ABS"):
        add(f"seq_attention_{mechanism.lower()}", relu + [attention(mechanism, 2, W_key_std=1.2, b_std=0.1),
                                                           act("Relu"), GAP, READOUT], seq)
    add("seq_attention_identity_standard", relu + [attention("IDENTITY", 2, linear_scaling=False), GAP, READOUT],
        seq)
    add("seq_imdb_like", [dense(512, 1.0, 0.1), act("Relu"), attention("SOFTMAX", 1), act("Relu"), GAP,
                          dense(1)], seq)
    add("img_dense_relu_gap", relu + [GAP, READOUT], (4, 3, 4, 2))
    add("flat_entries_masked", relu + [dense(512, 1.1, 0.1), act("Erf"), READOUT], (6, 5), ("entries", -3.))
    add("seq_entries_masked", relu + [GAP, READOUT], seq, ("entries", 10.))
    return c


def masked_inputs(name, shape, masking):
    kind, constant = masking
    x = reference._inputs(name, shape)
    rng = np.random.default_rng([reference.SEED, len(name), shape[0]])
    if kind == "lengths":
        lengths = rng.integers(1, shape[1] + 1, shape[0])
        lengths[-1] = 0  # one example with every position masked
        if shape[0] > 1:
            lengths[0] = shape[1]  # and one with none
        positions = np.arange(shape[1]).reshape((1, shape[1]) + (1,) * (len(shape) - 2))
        mask = positions >= lengths.reshape((-1,) + (1,) * (len(shape) - 1))
        mask = np.broadcast_to(mask, shape)
    else:
        mask = rng.random(shape) < 0.4
    return np.where(mask, constant, x)


def case(name, spec, x1_shape, x2_shape, masking):
    x1, x2 = masked_inputs(name + "/x1", x1_shape, masking), masked_inputs(name + "/x2", x2_shape, masking)
    constant = masking[1]
    init_fn, apply_fn, kernel_fn = reference.network_from_spec(spec)
    k12 = kernel_fn(x1, x2, ("nngp", "ntk"), mask_constant=constant)
    k11 = kernel_fn(x1, None, ("nngp", "ntk"), mask_constant=constant)
    record = {"spec": np.array(json.dumps(spec)), "x1": x1, "x2": x2, "mask_constant": np.array(constant),
              "nngp": np.asarray(k12.nngp), "ntk": np.asarray(k12.ntk),
              "nngp_11": np.asarray(k11.nngp), "ntk_11": np.asarray(k11.ntk)}
    if name in APPLY_CASES:
        _, params = init_fn(jax.random.PRNGKey(3), x1.shape)
        for i, layer_params in enumerate(params):
            for j, p in enumerate(layer_params if isinstance(layer_params, (tuple, list)) else ()):
                if p is not None:
                    record[f"param/{i}/{j}"] = np.asarray(p)
        record["apply"] = np.asarray(stax.unmask_fn(apply_fn)(params, x1, mask_constant=constant))
    for key in ("nngp", "ntk", "nngp_11", "ntk_11"):
        if not np.all(np.isfinite(record[key])):
            raise FloatingPointError(f"{name}: non-finite values in {key}")
    print(f"  {name}: nngp {record['nngp'].shape}")
    return {f"{name}/{k}": v for k, v in record.items()}


def main():
    data, names = {}, []
    for name, args in _cases().items():
        data.update(case(name, *args))
        names.append(name)
    data["_cases"] = np.array(json.dumps(names))
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT}: {len(names)} cases")


if __name__ == "__main__":
    main()
