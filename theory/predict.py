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

All of them, and the `predict_fn`s they return, are traceable by `jax.jit` and
differentiable by `jax.grad` (kernels, targets, initial outputs, times,
`diag_reg`): with a traced input the same formulas run as jax.numpy in the
traced dtype (float64 only under x64 mode), value checks skipped; concrete
inputs keep the float64 host path (`theory.linalg`).
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
