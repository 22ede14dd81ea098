"""real-data-regression: the true theory passes every agreement entry; a deliberately wrong one fails.

The run is made once (tiny: 7x7 block means of the MNIST digits, so compilation
stays short); each wrong theory re-summarizes its saved pieces under a
monkeypatch, without re-simulating. The 10% errors are detected at `--size small`
(the slow test); at tiny, the errors below are what its 4 seeds resolve.
"""
import types

import numpy as np
import pytest

from experiments import agreement
from experiments import real_data_regression as experiment
from tests.experiments.saved_run import resummarized, run_and_read
from theory import predict


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return run_and_read("real-data-regression", experiment, tmp_path_factory.mktemp("real-data-regression"))


def scale_kernel(monkeypatch, name, factor):
    """The closed-form `name` ("nngp" or "ntk") multiplied by `factor`."""
    original = experiment.network

    def network(architecture, width, depth):
        init_fn, apply_fn, kernel_fn = original(architecture, width, depth)

        def wrong(x1, x2=None, get=None):
            k = kernel_fn(x1, x2, get=("nngp", "ntk"))
            scaled = {g: np.asarray(getattr(k, g)) * (factor if g == name else 1.0) for g in ("nngp", "ntk")}
            return types.SimpleNamespace(**scaled)

        return init_fn, apply_fn, wrong

    monkeypatch.setattr(experiment, "network", network)


def scale_argument(monkeypatch, function, argument, factor):
    """`predict.function` called with its `argument` multiplied by `factor`."""
    original = getattr(predict, function)

    def wrong(*args, **kwargs):
        if argument in kwargs:
            kwargs[argument] = kwargs[argument] * factor
        return original(*args, **kwargs)

    monkeypatch.setattr(predict, function, wrong)


def test_true_theory_passes_every_entry(run):
    entries = run["record"]["agreement"]
    assert agreement.failures(entries) == []
    assert len(entries) == 9 * len(run["config"].architectures)
    # the summary recomputed from the saved pieces reproduces the run's agreement
    assert resummarized(experiment, run) == entries


def test_caption_and_figure_come_from_the_record(run):
    text = experiment.caption(run["record"])
    c = run["record"]["results"]["combinations"][0]
    assert f"{100 * c['nngp_accuracy']:.1f}%" in text and "Lee et al. 2018" in text
    assert (run["out"] / "real-data-regression.png").read_bytes()[:4] == b"\x89PNG"


WRONG = [  # (what, patch, factor that tiny's 4 seeds detect)
    ("ntk scale", lambda m, f: scale_kernel(m, "ntk", f), 1.3),
    ("nngp scale", lambda m, f: scale_kernel(m, "nngp", f), 1.3),
    ("learning rate", lambda m, f: scale_argument(m, "gradient_descent_mse_discrete", "learning_rate", f), 1.3),
    ("ridge", lambda m, f: (scale_argument(m, "gradient_descent_mse_ensemble", "diag_reg", f),
                            scale_argument(m, "gradient_descent_mse", "diag_reg", f)), 1.3),
]


@pytest.mark.parametrize("what, patch, factor", WRONG, ids=[w[0] for w in WRONG])
def test_wrong_theory_fails(run, monkeypatch, what, patch, factor):
    patch(monkeypatch, factor)
    assert agreement.failures(resummarized(experiment, run)), what


# at small, each error is caught at 10%, except the ridge: at 20% (a 10% ridge moves the
# converged outputs' motion by ~1%, below what 8 seeds of 4 widths resolve)
SMALL_ERROR = {"ridge": 0.2}


@pytest.mark.slow
@pytest.mark.parametrize("sign", [-1, 1])
def test_small_rejects_ten_percent_errors(tmp_path_factory, sign):
    small = run_and_read("real-data-regression", experiment, tmp_path_factory.mktemp("rdr-small"), size="small")
    assert agreement.failures(small["record"]["agreement"]) == []
    for what, patch, _ in WRONG:
        with pytest.MonkeyPatch.context() as monkeypatch:
            patch(monkeypatch, 1 + sign * SMALL_ERROR.get(what, 0.1))
            assert agreement.failures(resummarized(experiment, small)), what


def test_configs_are_valid():
    for size in ("tiny", "small", "paper"):
        config = getattr(experiment.Config, size)()
        assert all(len(config.widths(a)) >= 2 for a in config.architectures)
    small = experiment.Config.small()
    assert small.n_seeds >= 8 and min(len(small.mlp_widths), len(small.cnn_widths)) >= 4
    assert small.pool == 1 and small.n_test >= 1000
    with pytest.raises(ValueError, match="architectures"):
        experiment.Config(architectures=("resnet",))
