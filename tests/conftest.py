"""Test-wide settings: float64 so that closed forms can be checked to 1e-6, one BLAS thread.

The package itself never flips this flag; only the test session does. Each pytest-xdist
worker already has a core of its own: OpenBLAS's threads on top of that oversubscribe the
cores, and its spinning threads then slow small solves many times over (measured: a 500 x 500
`eigh` 0.12 s with one thread, 6-8 s with two on a loaded 2-core machine).

XLA compiles with its cheap CPU pipeline: most tests run many small programs once, so
compilation dominates their time. Measured on one core, all passing either way: the oracle and
graph tests 256 s -> 191 s of CPU, the Monte Carlo table with three experiments' training
tests 324 s -> 259 s. A user's own ``XLA_FLAGS`` is left as it is.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # read when NumPy first loads in this worker
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ.setdefault("XLA_FLAGS", FAST_COMPILE)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

try:  # NumPy may already be loaded by a plugin: limit its BLAS at run time too
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
except ImportError:  # threadpoolctl comes with scikit-learn, a test dependency
    pass
