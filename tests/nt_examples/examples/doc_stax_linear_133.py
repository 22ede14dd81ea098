# From neural-tangents 0.6.5, the >>> examples of the docstring at line 133 of neural_tangents/_src/stax/linear.py, after the imports they take for granted.
# Copyright 2019 Google LLC. Licensed under the Apache License, Version 2.0: see NOTICE and LICENSE in tests/nt_examples/.
import jax
import jax.numpy as jnp
import numpy as np
from jax import random
import widekit as nt
from widekit import stax
from jax import random
import jax.numpy as jnp
from widekit import stax
x = random.normal(random.PRNGKey(1), (5, 2, 32, 3))  # NHWC
nn = stax.serial(
    stax.Conv(128, (1, 3)),
    stax.Relu(),
    stax.DotGeneral(rhs=2.),  # output shape is (5, 2, 30, 128)
    stax.GlobalAvgPool()      # (5, 128)
)
nn = stax.serial(
    stax.Conv(128, (1, 3)),
    stax.Relu(),
    stax.DotGeneral(
        rhs=jnp.array([1., -1.]),
        dimension_numbers=(((1,), (0,)), ((), ()))),  # (5, 30, 128)
    stax.GlobalAvgPool()                              # (5, 128)
)
nn = stax.serial(
    stax.Conv(128, (1, 3)),
    stax.Relu(),
    stax.DotGeneral(
        lhs=jnp.array([[0., 1.], [1., 0.]]),
        dimension_numbers=(((1,), (1,)), ((), ()))),  # (5, 2, 30, 128)
    stax.GlobalAvgPool()                              # (5, 128)
)
