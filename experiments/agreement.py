"""Agreement of theory and experiment as data: entries with uncertainty and a criterion.

Every experiment's `agreement(results)` returns a list of entries, each a dict

    {"name": str (unique), "value": float, "theory": float or None,
     "uncertainty": float or None (one standard error), "interval": [lo, hi] or None (95%),
     "criterion": str, "passed": bool}

built by the functions below, so that one criterion means one thing in every
experiment. `value` is what was measured (or, for a test statistic such as a
max-|z| or a chi-squared, the statistic); `theory` what the theory predicts for
it (None for a statistic whose ideal is implied by the criterion).

The statistical criteria are two-sided tests at a stated family-wise level:
a true theory fails one of them with probability about `level`, and a wrong
one fails when its error exceeds a few standard errors. A criterion that a
noisy estimate could pass by being uncertain is paired with a bound on that
uncertainty (`slope`'s `max_half_width`, `z_score`'s `max_uncertainty`).
"""
import math

import numpy as np
from scipy import special, stats

KEYS = ("name", "value", "theory", "uncertainty", "interval", "criterion", "passed")
Z95 = 1.959963984540054  # two-sided 95% quantile of N(0, 1)
LEVEL = 0.01  # default family-wise level of the statistical criteria


def entry(name, value, *, theory=None, uncertainty=None, interval=None, criterion, passed):
    """One agreement entry, its numbers as plain floats (checked by `check`)."""
    record = {"name": name, "value": _float(value), "theory": _optional_float(theory),
              "uncertainty": _optional_float(uncertainty),
              "interval": None if interval is None else [_float(interval[0]), _float(interval[1])],
              "criterion": criterion, "passed": bool(passed)}
    check([record], "entry")
    return record


def sidak_threshold(n_points, level=LEVEL, dof=None):
    """The |z| that n independent standard normals (Student-t with `dof` degrees of freedom,
    when given) all stay below with probability 1 - level (Šidák)."""
    if n_points < 1:
        raise ValueError(f"n_points must be at least 1; received {n_points}")
    per_point = -math.expm1(math.log1p(-level) / n_points)  # 1 - (1 - level)^(1/n), accurately
    if dof is not None:
        return float(stats.t.isf(per_point / 2, dof))
    return float(-special.ndtri(per_point / 2))


def max_z(name, measured, theory, standard_error, *, level=LEVEL, max_relative_se=None,
          what="points"):
    """The largest |measured - theory| / standard_error over points, against a Šidák threshold.

    Passes when max |z| <= the threshold that n independent N(0, 1) stay below with
    probability 1 - `level` (conservative for positively correlated points), and, with
    `max_relative_se`, when every standard error is at most that fraction of max |theory|:
    the resolution that lets a relative error of a few times it be seen.

    Args:
      name: the entry's name.
      measured, theory, standard_error: arrays of one shape (theory broadcast).
      level: family-wise level of the test.
      max_relative_se: None, or the largest allowed standard_error / max |theory|.
      what: what the points are, for the criterion text.

    Returns:
      An entry whose value is max |z|, uncertainty None, theory None.
    """
    measured, theory, se = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in
                                                 (measured, theory, standard_error)))
    if np.any(se <= 0) or not np.all(np.isfinite(se)):
        raise ValueError(f"{name}: standard errors must be positive and finite")
    z = np.abs(measured - theory) / se
    threshold = sidak_threshold(z.size, level)
    criterion = f"max |z| over {z.size} {what} <= {threshold:.3g} (level {level:g}, Šidák)"
    passed = bool(np.all(np.isfinite(z)) and z.max() <= threshold)
    if max_relative_se is not None:
        scale = float(np.max(np.abs(theory)))
        resolution = float(se.max()) / scale if scale > 0 else math.inf
        criterion += f"; max se / max |theory| = {resolution:.2g} <= {max_relative_se:g}"
        passed = passed and resolution <= max_relative_se
    return entry(name, float(np.max(z)) if np.all(np.isfinite(z)) else math.inf,
                 criterion=criterion, passed=passed)


def chi_squared(name, measured, theory, standard_error, *, level=LEVEL, what="points"):
    """Sum of squared z-scores over independent points against its chi-squared quantile.

    Returns an entry whose value is chi^2 / dof and whose criterion is the upper
    1 - `level` quantile of chi^2_dof / dof.
    """
    measured, theory, se = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in
                                                 (measured, theory, standard_error)))
    if np.any(se <= 0):
        raise ValueError(f"{name}: standard errors must be positive")
    dof = measured.size
    value = float(np.sum(((measured - theory) / se) ** 2) / dof)
    limit = float(stats.chi2.ppf(1 - level, dof) / dof)
    return entry(name, value, criterion=f"chi^2/dof over {dof} {what} <= {limit:.3g} (level {level:g})",
                 passed=np.isfinite(value) and value <= limit)


def z_score(name, value, theory, standard_error, *, level=LEVEL, n_tests=1, max_uncertainty=None):
    """One measured number against the theory's value: |value - theory| / se within a Šidák threshold.

    `n_tests` is the number of such entries the experiment reports, so that their family
    keeps the level; `max_uncertainty`, when given, bounds the standard error.
    """
    value, theory, se = float(value), float(theory), float(standard_error)
    if not se > 0:
        raise ValueError(f"{name}: standard error must be positive; received {se}")
    threshold = sidak_threshold(n_tests, level)
    z = abs(value - theory) / se
    criterion = f"|value - theory| / se = {z:.2f} <= {threshold:.3g}"
    passed = z <= threshold
    if max_uncertainty is not None:
        criterion += f"; se <= {max_uncertainty:g}"
        passed = passed and se <= max_uncertainty
    return entry(name, value, theory=theory, uncertainty=se,
                 interval=(value - Z95 * se, value + Z95 * se), criterion=criterion, passed=passed)


def relative(name, value, theory, tolerance, *, uncertainty=None, interval=None, note=""):
    """|value / theory - 1| <= tolerance: for deterministic comparisons (quadrature, exact solves)."""
    value, theory = float(value), float(theory)
    error = abs(value / theory - 1) if theory != 0 else math.inf
    criterion = f"|value / theory - 1| = {error:.2g} <= {tolerance:g}{note}"
    return entry(name, value, theory=theory, uncertainty=uncertainty, interval=interval,
                 criterion=criterion, passed=np.isfinite(value) and error <= tolerance)


def absolute(name, value, tolerance, *, theory=0.0, uncertainty=None, note=""):
    """|value - theory| <= tolerance."""
    value = float(value)
    error = abs(value - theory)
    return entry(name, value, theory=theory, uncertainty=uncertainty,
                 criterion=f"|value - theory| = {error:.2g} <= {tolerance:g}{note}",
                 passed=np.isfinite(value) and error <= tolerance)


def bootstrap(statistic, samples, *, n_resamples=2000, seed=0):
    """Percentile bootstrap over the first axis of `samples` (e.g. seeds).

    Args:
      statistic: function of an array shaped like `samples` -> float.
      samples: array whose first axis holds independent replicates.

    Returns:
      (estimate, standard error, (lo, hi) 95% percentile interval).
    """
    samples = np.asarray(samples)
    rng = np.random.default_rng(seed)
    n = samples.shape[0]
    draws = np.array([statistic(samples[rng.integers(0, n, n)]) for _ in range(n_resamples)])
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(statistic(samples)), float(np.std(draws, ddof=1)), (float(lo), float(hi))


def log_log_slope(x, y):
    """The least-squares slope of log y against log x (y may carry leading batch axes)."""
    u = np.log(np.asarray(x, np.float64))
    v = np.log(np.asarray(y, np.float64))
    u = u - u.mean()
    slope = (v * u).sum(axis=-1) / (u * u).sum()
    return float(slope) if np.ndim(slope) == 0 else slope


def slope(name, x, samples, theory, max_half_width, *, statistic=None, n_resamples=2000, seed=0):
    """A fitted log-log slope with a bootstrap interval over replicates.

    Passes when the 95% interval contains `theory` and its half-width is at most
    `max_half_width`, so that a noisy estimate cannot pass by being wide.

    Args:
      name: the entry's name.
      x: the abscissae (e.g. widths), shape (n_x,).
      samples: (n_replicates, n_x) per-replicate values whose mean over replicates is fitted
        (or what `statistic` reduces).
      theory: the predicted slope.
      max_half_width: the largest accepted half-width of the interval.
      statistic: samples -> y of shape (n_x,); default the mean over replicates (use e.g. the
        root of the mean square for an rms).
    """
    x = np.asarray(x, np.float64)
    reduce = statistic or (lambda s: np.mean(s, axis=0))
    value, se, (lo, hi) = bootstrap(lambda s: log_log_slope(x, reduce(s)), samples,
                                    n_resamples=n_resamples, seed=seed)
    half = (hi - lo) / 2
    return entry(name, value, theory=theory, uncertainty=se, interval=(lo, hi),
                 criterion=f"95% bootstrap interval contains {theory:g} and its half-width "
                           f"{half:.2g} <= {max_half_width:g}",
                 passed=lo <= theory <= hi and half <= max_half_width)


def check(entries, where="agreement"):
    """Refuses anything but a list of well-formed entries with unique names, naming the fault."""
    if not isinstance(entries, list):
        raise TypeError(f"{where} must return a list of agreement entries; got {type(entries).__name__}")
    names = set()
    for item in entries:
        if not isinstance(item, dict) or set(item) != set(KEYS):
            raise ValueError(f"{where}: an agreement entry must have exactly the keys {KEYS}; got "
                             f"{sorted(item) if isinstance(item, dict) else item!r}")
        name = item["name"]
        if not isinstance(name, str) or not name or name in names:
            raise ValueError(f"{where}: entry names must be unique non-empty strings; {name!r} is not")
        names.add(name)
        if not isinstance(item["value"], float):
            raise TypeError(f"{where}: entry {name!r} has a value that is not a float: {item['value']!r}")
        if not math.isfinite(item["value"]) and item["passed"]:
            raise ValueError(f"{where}: entry {name!r} has the non-finite value {item['value']} and passed")
        for key in ("theory", "uncertainty"):
            if item[key] is not None and not isinstance(item[key], float):
                raise TypeError(f"{where}: entry {name!r} has {key} {item[key]!r}, not a float or None")
        interval = item["interval"]
        if interval is not None and not (isinstance(interval, list) and len(interval) == 2
                                         and all(isinstance(v, float) for v in interval)
                                         and interval[0] <= interval[1]):
            raise ValueError(f"{where}: entry {name!r} has interval {interval!r}, not [lo, hi] or None")
        if not isinstance(item["criterion"], str) or not item["criterion"]:
            raise ValueError(f"{where}: entry {name!r} has no criterion text")
        if not isinstance(item["passed"], bool):
            raise TypeError(f"{where}: entry {name!r} has passed={item['passed']!r}, not a bool")
    return entries


def failures(entries):
    """The names of the entries that did not pass."""
    return [item["name"] for item in entries if not item["passed"]]


def by_name(entries):
    """The entries as a dict name -> entry."""
    return {item["name"]: item for item in entries}


def table(entries):
    """The entries as aligned text lines: name, value, theory, ± se, interval, PASS/FAIL, criterion."""
    rows = [("", "name", "value", "theory", "se", "95% interval", "criterion")]
    for item in entries:
        interval = item["interval"]
        rows.append(("ok  " if item["passed"] else "FAIL", item["name"], _g(item["value"]),
                     _g(item["theory"]), _g(item["uncertainty"]),
                     "" if interval is None else f"[{_g(interval[0])}, {_g(interval[1])}]",
                     item["criterion"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1]
            for row in rows]


def markdown(entries):
    """The entries as a Markdown table."""
    lines = ["| | name | value | theory | se | 95% interval | criterion |", "|---|---|---|---|---|---|---|"]
    for item in entries:
        interval = item["interval"]
        lines.append("| {} | `{}` | {} | {} | {} | {} | {} |".format(
            "pass" if item["passed"] else "**FAIL**", item["name"], _g(item["value"]),
            _g(item["theory"]), _g(item["uncertainty"]),
            "" if interval is None else f"[{_g(interval[0])}, {_g(interval[1])}]",
            item["criterion"].replace("|", "\\|")))
    return lines


def _g(value):
    return "" if value is None else f"{value:.4g}"


def _float(value):
    return float(np.asarray(value, np.float64))


def _optional_float(value):
    return None if value is None else _float(value)
