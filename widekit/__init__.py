"""`import widekit as nt`: neural-tangents' names, re-exported from `kernels` and `theory`.

A thin facade (no logic of its own; nothing inside widekit imports it): `nt.stax`,
`nt.predict`, `nt.batch`, the empirical and Monte Carlo kernels, `nt.linearize`,
`nt.taylor_expand`, `nt.NtkImplementation` and `nt.Kernel`, so code written for
neural-tangents 0.6.5 ports by changing its import lines. `nt.experimental`
(TensorFlow) is not provided.
"""
from kernels.batch import batch
from kernels.empirical import (NtkImplementation, empirical_kernel_fn, empirical_nngp_fn, empirical_ntk_fn,
                               empirical_ntk_vp_fn, monte_carlo_kernel_fn)
from kernels.kernel import Kernel
from kernels.taylor import linearize, taylor_expand
from widekit import predict, stax

__all__ = ["Kernel", "NtkImplementation", "batch", "empirical_kernel_fn", "empirical_nngp_fn",
           "empirical_ntk_fn", "empirical_ntk_vp_fn", "linearize", "monte_carlo_kernel_fn", "predict",
           "stax", "taylor_expand"]
