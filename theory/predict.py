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
from kernels.stax.layer import own_rank_promotion
from theory import dynamics, ode_dynamics, regression
from theory.linalg import JitterWarning
from theory.ode_dynamics import ODEState
from theory.regression import Gaussian

# Under JAX's default rank promotion whatever the caller set (neural-tangents' tests set 'raise'):
# the solvers broadcast eigenvalues against targets by design.
gradient_descent_mse = own_rank_promotion(dynamics.gradient_descent_mse)
gradient_descent_mse_discrete = own_rank_promotion(dynamics.gradient_descent_mse_discrete)
gradient_descent_mse_ensemble = own_rank_promotion(dynamics.gradient_descent_mse_ensemble)
max_learning_rate = own_rank_promotion(dynamics.max_learning_rate)
gradient_descent = own_rank_promotion(ode_dynamics.gradient_descent)
gp_inference = own_rank_promotion(regression.gp_inference)

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
