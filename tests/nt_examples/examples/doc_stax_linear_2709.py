# From neural-tangents 0.6.5, the >>> examples of the docstring at line 2709 of neural_tangents/_src/stax/linear.py, after the imports they take for granted.
# Copyright 2019 Google LLC. Licensed under the Apache License, Version 2.0: see NOTICE and LICENSE in tests/nt_examples/.
import jax
import jax.numpy as jnp
import numpy as np
from jax import random
import widekit as nt
from widekit import stax
mask = jnp.array([[0, 0, 0, 0, 0],
                  [0, 0, 0, 0, 0],
                  [0, 0, 1, 0, 0],
                  [0, 0, 0, 0, 0],
                  [0, 0, 0, 0, 0]], dtype=jnp.bool_)
jax.image.resize(mask, (2, 2), method='bilinear').astype(jnp.bool_)
