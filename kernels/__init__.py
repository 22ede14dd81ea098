"""Closed-form infinite-width kernels: ``from kernels import stax``."""
from kernels import stax
from kernels.kernel import Kernel
from kernels.empirical import empirical_kernel_fn, monte_carlo_kernel_fn
from kernels.batch import batch
