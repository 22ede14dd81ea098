"""real-data-regression at the tiny size: the table is complete and the kernels learn."""
import json

import numpy as np
import pytest

from experiments import real_data_regression as experiment
from experiments.__main__ import main


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("real-data-regression")
    assert main(["run", "real-data-regression", "--size", "tiny", "--out", str(out),
                 "--no-progress"]) == 0
    assert (out / "real-data-regression.png").read_bytes()[:4] == b"\x89PNG"
    return json.loads((out / "results.json").read_text())


def test_table_has_every_method_for_every_combination(record):
    config = experiment.Config.tiny()
    table = record["results"]["table"]
    for dataset, architecture in config.combinations:
        rows = [r for r in table if (r["dataset"], r["architecture"]) == (dataset, architecture)]
        methods = [r["method"] for r in rows]
        assert methods[:2] == ["NNGP regression (t = inf)", "NTK regression (t = inf)"]
        assert len(rows) == 4 + 2 * len(config.widths(architecture))
        for r in rows:
            assert 0 <= r["test_accuracy"] <= 1 and np.isfinite(r["test_mse"])
    assert any("accuracy NNGP | NTK" in key for key in record["agreement"])


def test_kernel_regression_beats_chance_by_far(record):
    for c in record["results"]["combinations"]:
        # 64 training images of 10 classes: chance is 0.1
        assert c["nngp_acc"] > 0.4 and c["ntk_acc"] > 0.4, c
        # regression at t = inf fits better than the mean at finite t
        assert c["ntk_mse"] < c["ntk_t_mse"] + 1e-9


def test_networks_trained_stably_near_their_twins(record):
    for c in record["results"]["combinations"]:
        assert c["learning_rate"] > 0
        assert np.all(np.isfinite(c["net_mse_mean"])) and np.all(np.asarray(c["twin_gap"]) > 0)
        # a trained network is closer to its twin than to the targets' scale
        assert np.all(np.asarray(c["twin_gap"]) < 0.5)


def test_configs_are_valid():
    for size in ("tiny", "small", "paper"):
        config = getattr(experiment.Config, size)()
        assert len(experiment.pieces(config)) == len(config.combinations)
    assert len(experiment.Config.small().combinations) == 4
    with pytest.raises(ValueError, match="combinations"):
        experiment.Config(combinations=(("cifar", "mlp"),))
