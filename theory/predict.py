"""What a kernel predicts about training: neural-tangents 0.6.5's `predict` API.

`from theory import predict` gives the functions under neural-tangents' names,
signatures, defaults and semantics, with float64 solves, reused
factorizations, clear errors and no NaN (see `theory.linalg`):

* `gradient_descent_mse`, `gradient_descent_mse_ensemble`: gradient flow on
  MSE at any times (`theory.dynamics`);
* `gradient_descent_mse_discrete`: gradient descent with a finite learning
  rate, which neural-tangents lacks (`theory.dynamics`);
* `gp_inference`: NNGP / NTK / NTK-GP posteriors (`theory.regression`);
* `gradient_descent`: any loss, optional momentum, by ODE integration
  (`theory.ode_dynamics`);
* `max_learning_rate`: the largest stable learning rate (`theory.dynamics`).
"""
from theory.dynamics import (
    gradient_descent_mse,
    gradient_descent_mse_discrete,
    gradient_descent_mse_ensemble,
    max_learning_rate,
)
from theory.linalg import JitterWarning
from theory.ode_dynamics import ODEState, gradient_descent
from theory.regression import Gaussian, gp_inference

__all__ = [
    "Gaussian",
    "JitterWarning",
    "ODEState",
    "gp_inference",
    "gradient_descent",
    "gradient_descent_mse",
    "gradient_descent_mse_discrete",
    "gradient_descent_mse_ensemble",
    "max_learning_rate",
]
