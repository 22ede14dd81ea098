"""neural-tangents 0.6.5 reference kernels of masked inputs through branching networks (issue 14):
residual networks (`FanOut`, `parallel`, `FanInSum`), `FanInProd`, and `FanInConcat` along the
channel and a spatial axis. Same records and inputs as ``generate_reference_masking.py`` (kernels
only), written to ``tests/data/nt_masking_branches_reference.npz``.

Run with the neural-tangents environment: ``.venv-nt/bin/python
experiments/benchmarks/generate_reference_masking_branches.py`` (about a minute).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generate_reference_masking as masking  # noqa: E402  (sets float64 and the CPU platform)
import numpy as np  # noqa: E402

act, dense, conv, reference = masking.act, masking.dense, masking.conv, masking.reference
READOUT, FLATTEN, GAP = masking.READOUT, masking.FLATTEN, masking.GAP
OUT = os.path.join(reference.REPO_ROOT, "tests", "data", "nt_masking_branches_reference.npz")


def _cases():
    """``name -> (spec, x1 shape, x2 shape, masking)`` as in ``generate_reference_masking._cases``."""
    seq, img = (5, 7, 3), (3, 4, 4, 2)
    fan = ["FanOut", {"num": 2}]
    c = {}

    def add(name, spec, shape, masking=("lengths", 10.)):
        c[name] = (spec, shape, (shape[0] - 1,) + shape[1:], masking)

    add("seq_residual_mlp", [dense(512, 1.2, 0.1), fan,
                             ["parallel", [[["Identity", {}]], [act("Relu"), dense(512, 1.4, 0.2)]]],
                             ["FanInSum", {}], act("Relu"), GAP, READOUT], seq)
    add("img_residual_cnn", [conv(64, (3, 3), "SAME", W_std=1.2), fan,
                             ["parallel", [[["Identity", {}]], [act("Relu"), conv(64, (3, 3), "SAME", W_std=1.3)]]],
                             ["FanInSum", {}], act("Relu"), FLATTEN, READOUT], img, ("pixels", -5.))
    add("seq_fanin_prod", [dense(512, 1.1, 0.1), fan,
                           ["parallel", [[dense(512, 1.3, 0.2)], [act("Erf"), dense(512, 0.9, 0.3)]]],
                           ["FanInProd", {}], GAP, READOUT], seq)
    add("seq_concat_channels", [dense(512, 1.2, 0.1), fan,
                                ["parallel", [[dense(512, 1.3, 0.2), act("Relu")], [act("Erf"), dense(256, 0.9)]]],
                                ["FanInConcat", {"axis": -1}], dense(512, 1.1, 0.1), act("Relu"), GAP, READOUT],
        seq)
    add("seq_concat_positions", [dense(512, 1.2, 0.1), fan,
                                 ["parallel", [[dense(512, 1.3, 0.2)], [act("Relu"), dense(512, 0.9, 0.1)]]],
                                 ["FanInConcat", {"axis": 1}], act("Relu"), GAP, READOUT], seq)
    return c


def main():
    data, names = {}, []
    for name, args in _cases().items():
        data.update(masking.case(name, *args))
        names.append(name)
    data["_cases"] = np.array(json.dumps(names))
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT}: {len(names)} cases")


if __name__ == "__main__":
    main()
