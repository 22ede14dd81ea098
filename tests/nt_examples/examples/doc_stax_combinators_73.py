# From neural-tangents 0.6.5, the >>> examples of the docstring at line 73 of neural_tangents/_src/stax/combinators.py, after the imports they take for granted.
# Copyright 2019 Google LLC. Licensed under the Apache License, Version 2.0: see NOTICE and LICENSE in tests/nt_examples/.
import jax
import jax.numpy as jnp
import numpy as np
from jax import random
import widekit as nt
from widekit import stax
from widekit import stax
layer = stax.serial(stax.Dense(128), stax.Relu())
depth = 100
nn_unrolled = stax.serial(*([layer] * depth))
nn_compiled = stax.repeat(layer, depth)
