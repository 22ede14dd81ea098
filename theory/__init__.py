"""What a kernel predicts: exact inference, training dynamics, model selection."""
from theory import predict
from theory.estimator import KernelRegressor
from theory.model_selection import fit_hyperparameters, log_marginal_likelihood

# Closed-form results of the literature (deep_linear, high_dim, eigenlearning,
# criticality, ...) add their public names below this line.
