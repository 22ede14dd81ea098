# From neural-tangents 0.6.5, the >>> examples of the docstring at line 15 of neural_tangents/stax.py, after the imports they take for granted.
# Copyright 2019 Google LLC. Licensed under the Apache License, Version 2.0: see NOTICE and LICENSE in tests/nt_examples/.
import jax
import jax.numpy as jnp
import numpy as np
from jax import random
import widekit as nt
from widekit import stax
from jax import random
import widekit as nt
from widekit import stax
key1, key2 = random.split(random.PRNGKey(1), 2)
x_train = random.normal(key1, (20, 32, 32, 3))
y_train = random.uniform(key1, (20, 10))
x_test = random.normal(key2, (5, 32, 32, 3))
init_fn, apply_fn, kernel_fn = stax.serial(
    stax.Conv(128, (3, 3)),
    stax.Relu(),
    stax.Conv(256, (3, 3)),
    stax.Relu(),
    stax.Conv(512, (3, 3)),
    stax.Flatten(),
    stax.Dense(10)
)
predict_fn = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train,
                                                      y_train)
y_test_nngp = predict_fn(x_test=x_test, get='nngp')
y_test_ntk = predict_fn(x_test=x_test, get='ntk')
