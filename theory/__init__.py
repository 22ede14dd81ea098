"""What a kernel predicts: exact inference, training dynamics, model selection."""
from theory import criticality, deep_linear, eigenlearning, high_dim, infinite_depth, large, mup, predict, student_t
from theory.model_selection import fit_hyperparameters, log_marginal_likelihood

__all__ = ["predict", "log_marginal_likelihood", "fit_hyperparameters", "KernelRegressor",
           "deep_linear", "high_dim", "eigenlearning", "criticality", "infinite_depth", "student_t", "large", "mup"]


def __getattr__(name):
    # KernelRegressor loads on first use, so `import theory` does not import scikit-learn.
    if name == "KernelRegressor":
        from theory.estimator import KernelRegressor

        return KernelRegressor
    raise AttributeError(f"module 'theory' has no attribute {name!r}")

