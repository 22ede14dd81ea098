"""Closed-form infinite-width kernels: ``from kernels import stax``."""
from kernels import stax
from kernels.kernel import Kernel
