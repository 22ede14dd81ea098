"""deep-linear-dynamics at the tiny size: gradient-descent mode strengths and plateau lengths against
Saxe et al.'s solution from the t = 0 overlap; each quantity of the theory, off by 10%, is rejected."""
import dataclasses
import json

import numpy as np
import pytest

from experiments import agreement, registry, run_folder, runner
from experiments import deep_linear_dynamics as exp
from experiments.__main__ import main
from theory import deep_linear

NAME = "deep-linear-dynamics"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dld")
    assert main(["run", NAME, "--size", "tiny", "--out", str(out), "--no-progress", "--strict"]) == 0
    assert (out / f"{NAME}.png").exists()
    config, size, overrides = runner._claimed_config(NAME, exp, str(out))
    fingerprint = run_folder.run_fingerprint(NAME, size, dataclasses.asdict(config), overrides)
    pieces = runner._read_pieces(str(out), fingerprint, runner._pieces(exp, config))[0]
    return json.loads((out / "results.json").read_text()), config, pieces


def failures(config, pieces):
    return agreement.failures(exp.agreement(run_folder.jsonable(exp.summarize(config, pieces))))


def test_true_theory_passes_at_tiny(run):
    record, config, pieces = run
    assert agreement.failures(record["agreement"]) == []
    assert {e["name"] for e in record["agreement"]} >= {"balanced_max_abs_error_over_s", "balanced_plateau_time",
                                                        "random_init_plateau_time"}
    assert failures(config, pieces) == []        # re-summarizing the saved pieces gives the same verdict


def _scaled(function, which, factor):
    names = {"mode_strength": ("t", "s", "u0", "tau"), "learning_time": ("s", "u0", "uf", "tau")}[function.__name__]

    def wrong(*args, **kwargs):
        kwargs = {**dict(zip(names, args)), **kwargs}
        kwargs.setdefault("tau", 1.0)
        kwargs[which] = kwargs[which] * factor
        return function(**kwargs)
    return wrong


@pytest.mark.parametrize("function", ["mode_strength", "learning_time"])
@pytest.mark.parametrize("which", ["s", "u0", "tau"])
@pytest.mark.parametrize("factor", [1.1, 0.9])
def test_ten_percent_error_in_a_theory_quantity_is_rejected(run, monkeypatch, function, which, factor):
    _, config, pieces = run
    monkeypatch.setattr(deep_linear, function, _scaled(getattr(deep_linear, function), which, factor))
    assert failures(config, pieces)


def test_whitened_inputs_and_correlation():
    x, y, u, s, v, _ = exp.problem(exp.Config.tiny())
    p = x.shape[1]
    np.testing.assert_allclose(x @ x.T / p, np.eye(x.shape[0]), atol=1e-12)
    np.testing.assert_allclose(y @ x.T / p, (u * s) @ v.T, atol=1e-12)


def test_registered():
    assert registry.load_experiment(NAME) is exp
