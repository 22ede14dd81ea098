"""The named experiments: name -> module path, imported only when asked for.

To add one, write a module following the protocol in `experiments.runner`
and add its line here. Lazy imports keep `widekit list` fast and let one
experiment's missing optional dependency leave the others usable.
"""
import importlib

from kernels.checks import argument_error

EXPERIMENTS = {
    "ntk-convergence": "experiments.ntk_convergence",
    "function-dynamics": "experiments.function_dynamics",
    "real-data-regression": "experiments.real_data_regression",
    "deep-linear-dynamics": "experiments.deep_linear_dynamics",
    "high-dim-generalization": "experiments.high_dim_generalization",
    "criticality": "experiments.criticality",
    "eigenlearning-curves": "experiments.eigenlearning_curves",
    "student-t-processes": "experiments.student_t_processes",
    "infinite-depth-classifiers": "experiments.infinite_depth_classifiers",
    "feature-learning": "experiments.feature_learning",
}


def load_experiment(name):
    """The module registered under `name`; KeyError lists the known names, TypeError refuses a non-string."""
    if not isinstance(name, str):
        raise argument_error("load_experiment", "name", "an experiment's name (a string)", name, TypeError)
    if name not in EXPERIMENTS:
        known = ", ".join(sorted(EXPERIMENTS)) or "none registered"
        raise KeyError(f"no experiment named {name!r} (known: {known})")
    entry = EXPERIMENTS[name]
    return importlib.import_module(entry) if isinstance(entry, str) else entry


def describe(name):
    """The first line of the experiment module's docstring."""
    try:
        module = load_experiment(name)
    except ImportError as error:
        return f"(cannot be imported: {error})"
    return (module.__doc__ or "").strip().split("\n")[0]
