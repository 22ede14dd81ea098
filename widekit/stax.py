"""`widekit.stax`: the layers and combinators of `kernels.stax` under neural-tangents' module name."""
from kernels.stax import *  # noqa: F401,F403  (the facade re-exports, by design)
from kernels.stax import __all__  # noqa: F401
