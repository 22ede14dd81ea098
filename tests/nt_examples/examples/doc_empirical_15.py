# From neural-tangents 0.6.5, the >>> examples of the docstring at line 15 of neural_tangents/_src/empirical.py, after the imports they take for granted.
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
key1, key2, key3 = random.split(random.PRNGKey(1), 3)
x_train = random.normal(key1, (20, 32, 32, 3))
y_train = random.uniform(key1, (20, 10))
x_test = random.normal(key2, (5, 32, 32, 3))
init_fn, f, _ = stax.serial(
    stax.Conv(32, (3, 3)),
    stax.Relu(),
    stax.Conv(32, (3, 3)),
    stax.Relu(),
    stax.Conv(32, (3, 3)),
    stax.Flatten(),
    stax.Dense(10)
)
_, params = init_fn(key3, x_train.shape)
kernel_fn = nt.empirical_kernel_fn(
    f, trace_axes=(-1,), vmap_axes=0,
    implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION)
nngp_test_train = kernel_fn(x_test, x_train, 'nngp', params)
ntk_test_train = kernel_fn(x_test, x_train, 'ntk', params)
kernel_fn = nt.empirical_kernel_fn(
    f, trace_axes=(), vmap_axes=0,
    implementation=nt.NtkImplementation.STRUCTURED_DERIVATIVES)
k_test_train = kernel_fn(x_test, x_train, None, params)
init_fn, f, _ = stax.serial(
    stax.Flatten(),
    stax.Dense(1024),
    stax.Relu(),
    stax.Dense(1024),
    stax.Relu(),
    stax.Dense(100)
)
_, params = init_fn(key3, x_train.shape)
ntk_fn = nt.empirical_ntk_fn(
    f, vmap_axes=0,
    implementation=nt.NtkImplementation.NTK_VECTOR_PRODUCTS)
ntk_test_test = ntk_fn(x_test, None, params)
nngp_fn = nt.empirical_nngp_fn(f, diagonal_axes=(0,))
nngp_train_train_diag = nngp_fn(x_train, None, params)
