"""`widekit.predict`: the solvers of `theory.predict` under neural-tangents' module name."""
from theory.predict import *  # noqa: F401,F403  (the facade re-exports, by design)
from theory.predict import __all__  # noqa: F401
