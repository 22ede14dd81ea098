"""toy-linear: random-feature estimate of |x|^2 converging as width^-1/2 (runner test only).

A miniature of ntk-convergence in plain NumPy, cheap enough for the runner's
tests: for W with i.i.d. N(0, 1) rows w_1..w_n, k_n(x) = (1/n) sum_i (w_i . x)^2
is an unbiased estimate of |x|^2 with relative standard deviation sqrt(2/n)
(a chi-square with n degrees of freedom, divided by n), so the mean absolute
relative deviation falls with slope -1/2 in log-log.

Hooks for the tests: `CALLS` records every piece run; `FAIL_ON` names a piece
whose run raises, standing in for a crash.
"""
import dataclasses

import matplotlib.figure
import numpy as np

from experiments import agreement as entries

CALLS = []
FAIL_ON = None
NORM2 = 1.0  # the theory's |x|^2 (a test sets it wrong to see the agreement fail)


@dataclasses.dataclass(frozen=True)
class Config:
    widths: tuple = (16, 64, 256)
    n_seeds: int = 4
    dim: int = 5
    seed: int = 0

    @classmethod
    def tiny(cls):
        return cls(widths=(16, 64, 256, 1024), n_seeds=3)

    @classmethod
    def small(cls):
        return cls(widths=(16, 64, 256, 1024, 4096), n_seeds=8)

    @classmethod
    def paper(cls):
        return cls(widths=tuple(2 ** k for k in range(4, 17, 2)), n_seeds=32)


def pieces(config):
    return [(width, s) for width in config.widths for s in range(config.n_seeds)]


def run_piece(config, piece):
    CALLS.append(piece)
    if piece == FAIL_ON:
        raise RuntimeError(f"simulated crash in piece {piece}")
    width, seed_index = piece
    rng = np.random.default_rng([config.seed, width, seed_index])
    x = np.ones(config.dim) / np.sqrt(config.dim)  # |x|^2 = 1
    estimate = np.mean((rng.standard_normal((width, config.dim)) @ x) ** 2)
    return {"width": width, "estimate": estimate, "features": rng.standard_normal(3)}


def summarize(config, results):
    widths = np.array(config.widths)
    estimates = np.array([[r["estimate"] for r in results if r["width"] == w] for w in widths]).T
    deviation = np.abs(estimates - 1.0)  # (seeds, widths)
    slope = np.polyfit(np.log(widths), np.log(deviation.mean(axis=0)), 1)[0]
    return {"widths": widths, "estimates": estimates, "abs_deviation": deviation,
            "mean_abs_deviation": deviation.mean(axis=0), "slope": slope}


def plot(results):
    figure = matplotlib.figure.Figure(figsize=(4, 3))
    axes = figure.add_subplot()
    axes.loglog(results["widths"], results["mean_abs_deviation"], "o-", label="random features")
    axes.set(xlabel="width", ylabel="|k_n - k|")
    axes.legend()
    return figure


def agreement(results):
    widest = np.asarray(results["estimates"])[:, -1]
    width = results["widths"][-1]
    return [entries.slope("slope", results["widths"], results["abs_deviation"], -0.5, 0.5),
            entries.z_score("mean_estimate_widest", widest.mean(), NORM2,
                            np.sqrt(2 / width / len(widest)), n_tests=2)]
