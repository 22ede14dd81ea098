"""The infinite-width muP limit of a linear network with one hidden layer, computed exactly.

The finite network (`kernels.stax`, Yang & Hu 2021, arXiv:2011.14522, muP of their §5):

    Dense(n, W_std=W_std_in, parameterization="mup", role="input")
    Dense(d_out, W_std=W_std_out, parameterization="mup", role="output")

trained by full-batch gradient descent at learning rate eta on the loss
||f - Y||^2 / (2 Y.size) (`experiments.train`'s convention). In the units in which
muP's hidden coordinates are O(1), u_i = row i of the input layer's effective weights
(n^{1/2} w1, so u_i ~ N(0, W_std_in^2 / d_in I)) and v_i = n times column i of the
readout's effective weights (n^{1/2} w2, so v_i ~ N(0, W_std_out^2 I)),

    f(x) = (1/n) sum_i v_i (u_i . x) = C_vu x,     C = (1/n) sum_i z_i z_i^T,  z_i = (u_i, v_i),

and with R = (f(X) - Y) / Y.size (N x d_out) and M = X^T R (d_in x d_out) one step is, for
every coordinate i alike (the n^{±1/2} multipliers cancel: no width is left in it),

    u_i <- u_i - eta M v_i,     v_i <- v_i - eta M^T u_i,     i.e.  z_i <- A z_i,
    A = I - eta [[0, M], [M^T, 0]].

So C <- A C A^T, a closed recursion on the (d_in + d_out)^2 matrix C whose only random
input is C at initialisation; by the law of large numbers C_0 -> E[z z^T] =
diag(W_std_in^2 / d_in I, W_std_out^2 I) as n -> inf, at the rate n^-1/2, and the
finite network's outputs converge to those of the recursion started there, at the same
rate. Any K rows z_k with sum_k z_k z_k^T = E[z z^T] follow the same recursion; K =
d_in + d_out orthogonal rows (a scaled identity) give a finite network of width d_in + d_out,

    f(x) = sum_k v_k (u_k . x),   u_k(0) = (W_std_in / sqrt(d_in)) e_k (k <= d_in),
                                  v_k(0) = W_std_out e_{k - d_in}   (k > d_in), zero otherwise,

trained by the same gradient descent (no 1/n: the gradient of this f gives exactly the
steps above). This is how Yang & Hu 2021 compute their infinite-width muP Word2Vec (their Word2Vec experiments):
their code (github.com/edwardjhu/TP4, `train-text8-inf.sh`) trains a network of width
2 x vocabulary (input plus output vocabulary) from one-hot initial embeddings. At
initialisation the limit's f is 0 (u and v start in orthogonal blocks): muP's readout
makes a finite network's initial outputs O(n^-1/2).
"""
from typing import NamedTuple, Optional

import numpy as np

from kernels.checks import argument_error, finite_real, positive_int


class MupLimit(NamedTuple):
    """The limit's trajectory at the R recorded steps (float64)."""

    steps: np.ndarray                 # (R,) int
    train_outputs: np.ndarray         # (R, N, d_out)
    test_outputs: Optional[np.ndarray]  # (R, M, d_out), if x_test was given
    u: np.ndarray                     # (d_in + d_out, d_in): the width-(d_in + d_out) input weights, last step
    v: np.ndarray                     # (d_in + d_out, d_out): its readout weights, last step


def orthonormal_initialization(d_in, d_out, W_std_in=1.0, W_std_out=1.0):
    """The initial weights `(u, v)`, `(K, d_in)` and `(K, d_out)` with K = d_in + d_out, of the
    width-K network equal to the muP limit: `[u v] = diag(W_std_in / sqrt(d_in) I, W_std_out I)`,
    whose rows' second moment sum_k z_k z_k^T is that of one coordinate of the infinite network."""
    where = "orthonormal_initialization"
    d_in, d_out = positive_int(where, "d_in", d_in), positive_int(where, "d_out", d_out)
    scales = np.concatenate([np.full(d_in, finite_real(where, "W_std_in", W_std_in) / np.sqrt(d_in)),
                             np.full(d_out, finite_real(where, "W_std_out", W_std_out))])
    z = np.diag(scales)
    return z[:, :d_in], z[:, d_in:]


def linear_mup_limit(x_train, y_train, learning_rate, record_steps, x_test=None, W_std_in=1.0,
                     W_std_out=1.0):
    """Outputs of the infinite-width muP linear network under full-batch gradient descent.

    Args:
      x_train: `(N, d_in)` inputs; y_train: `(N, d_out)` targets.
      learning_rate: eta > 0, the one learning rate of muP for SGD (c = 0), as given to
        `experiments.train.train` for the finite network.
      record_steps: nondecreasing step numbers >= 0 (0: initialisation); the last is the
        number of steps run.
      x_test: optional `(M, d_in)` inputs whose outputs are recorded too.
      W_std_in, W_std_out: the two layers' `W_std`.

    Returns:
      A `MupLimit`, in float64.
    """
    where = "linear_mup_limit"
    x = np.asarray(x_train, np.float64)
    y = np.asarray(y_train, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: x_train must be (N, d_in) and y_train (N, d_out); received shapes "
                         f"{x.shape} and {y.shape}")
    eta = finite_real(where, "learning_rate", learning_rate)
    if eta <= 0:
        raise argument_error(where, "learning_rate", "a positive number", learning_rate)
    steps = np.asarray(record_steps)
    if steps.ndim != 1 or steps.size == 0 or not np.issubdtype(steps.dtype, np.integer) \
            or steps[0] < 0 or np.any(np.diff(steps) < 0):
        raise argument_error(where, "record_steps", "a non-empty nondecreasing list of ints >= 0",
                             record_steps)
    x_test = None if x_test is None else np.asarray(x_test, np.float64)
    if x_test is not None and (x_test.ndim != 2 or x_test.shape[1] != x.shape[1]):
        raise ValueError(f"{where}: x_test must be (M, {x.shape[1]}); received shape {x_test.shape}")
    u, v = orthonormal_initialization(x.shape[1], y.shape[1], W_std_in, W_std_out)
    train_out, test_out, done = [], [], 0
    for target in steps:
        for _ in range(int(target) - done):
            residual = ((x @ u.T) @ v - y) / y.size            # R = (f(X) - Y) / Y.size
            m = x.T @ residual                                  # (d_in, d_out)
            u, v = u - eta * v @ m.T, v - eta * u @ m           # both from the old weights
        done = int(target)
        train_out.append((x @ u.T) @ v)
        if x_test is not None:
            test_out.append((x_test @ u.T) @ v)
    return MupLimit(steps=steps, train_outputs=np.stack(train_out),
                    test_outputs=None if x_test is None else np.stack(test_out), u=u, v=v)


def feature_change_rms(x_train, y_train, learning_rate, x_probe, W_std_in=1.0, W_std_out=1.0):
    """The limit of ||Delta h(x_probe)|| / sqrt(n) after one step of the muP linear network.

    The hidden features h_i(x) = u_i . x change by -eta (M v_i) . x in the first step, with
    M = X^T R at initialisation, where the infinite network's outputs are 0 (R = -Y / Y.size);
    so (1/n) ||Delta h||^2 -> eta^2 x^T M E[v v^T] M^T x = eta^2 W_std_out^2 |M^T x|^2,
    width-independent: muP learns features at every width (Yang & Hu 2021, §5).

    Returns:
      `(M,)` array, one value per row of `x_probe`.
    """
    x = np.asarray(x_train, np.float64)
    y = np.asarray(y_train, np.float64)
    m = x.T @ (-y / y.size)
    probe = np.asarray(x_probe, np.float64)
    return float(learning_rate) * abs(float(W_std_out)) * np.linalg.norm(probe @ m, axis=-1)
