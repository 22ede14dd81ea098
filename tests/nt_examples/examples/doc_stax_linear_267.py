# From neural-tangents 0.6.5, the >>> examples of the docstring at line 267 of neural_tangents/_src/stax/linear.py, after the imports they take for granted.
# Copyright 2019 Google LLC. Licensed under the Apache License, Version 2.0: see NOTICE and LICENSE in tests/nt_examples/.
import jax
import jax.numpy as jnp
import numpy as np
from jax import random
import widekit as nt
from widekit import stax
x = random.normal(random.PRNGKey(1), (5, 3, 32))  # NCH
A = random.bernoulli(random.PRNGKey(2), 0.5, (5, 32, 32))
init_fn, apply_fn, kernel_fn = stax.Aggregate(aggregate_axis=2,
                                              batch_axis=0,
                                              channel_axis=1)
out = apply_fn((), x, pattern=A)
n_edges = 10
A_sparse = random.randint(random.PRNGKey(3),
                          shape=(x.shape[0], n_edges, 1, 2),
                          minval=0,
                          maxval=x.shape[2])
init_fn, apply_fn, kernel_fn = stax.Aggregate(aggregate_axis=2,
                                              batch_axis=0,
                                              channel_axis=1,
                                              implementation="SPARSE")
out = apply_fn((), x, pattern=A_sparse)
x = random.normal(random.PRNGKey(1), (5, 3, 32, 16))  # NCHW
A = random.bernoulli(random.PRNGKey(2), 0.5, (5, 32, 16, 32, 16))
init_fn, apply_fn, kernel_fn = stax.Aggregate(aggregate_axis=(2, 3),
                                              batch_axis=0,
                                              channel_axis=1)
out = apply_fn((), x, pattern=A)
A = random.bernoulli(random.PRNGKey(2), 0.5, (5, 16, 16))
init_fn, apply_fn, kernel_fn = stax.Aggregate(aggregate_axis=(3,),
                                              batch_axis=0,
                                              channel_axis=1)
out = apply_fn((), x, pattern=A)
x1 = random.normal(random.PRNGKey(1), (5, 3, 32))  # NCH
x2 = random.normal(random.PRNGKey(2), (2, 3, 32))  # NCH
A1 = random.bernoulli(random.PRNGKey(2), 0.5, (5, 32, 32))
A2 = random.bernoulli(random.PRNGKey(2), 0.5, (2, 32, 32))
_, _, kernel_fn_id = stax.Identity()
_, _, kernel_fn_agg = stax.Aggregate(aggregate_axis=2,
                                     batch_axis=0,
                                     channel_axis=1)
nngp = kernel_fn_id(x1, x2, get='nngp', channel_axis=1)
K_agg = kernel_fn_agg(x1, x2, get='nngp', pattern=(A1, A2))
