"""Offline stand-in for neural-tangents' examples/datasets.py (same names, same return shapes; our code).

Fixed, deterministic random data from numpy.random.RandomState (identical across numpy and
jax versions), small sizes so each example runs in seconds:
  cifar10: images reduced to 8x8x3 (flattened: 192 features), at most 20 train / 10 test;
  mnist:   28x28x1 kept (the examples hard-code 784 inputs), n_train as asked (5120 if None:
           weight_space.py then takes 400 steps, its network moves away from its linearization,
           and the RMSE it prints between the two, about 2e-3, is not float32 rounding: with 256
           examples it took 20 steps and printed 1.1e-5, which neural-tangents and widekit
           gave 1.3e-3 apart), n_test as asked capped at 128 (64 if None);
  imdb_reviews: 30 train / 15 test "texts" (kernel batch size 15 must divide them); embed_glove
           returns (N, L, 16) embeddings with L = min(max_sentence_length, 24) and trailing
           padding set to mask_constant (lengths 10..L).
Labels are one-hot float32 (10 classes; 2 for imdb_reviews), inputs float32.
"""
import numpy as np
from jax import random

_SHAPES = {'cifar10': (8, 8, 3), 'mnist': (28, 28, 1)}
_CLASSES = {'cifar10': 10, 'mnist': 10, 'imdb_reviews': 2}


def _flatten_standardized(x):
  x = np.reshape(x, (x.shape[0], -1))
  return (x - np.mean(x)) / np.std(x)


def _one_hot(x, k, dtype=np.float32):
  return np.array(x[:, None] == np.arange(k), dtype)


def _sizes(name, n_train, n_test):
  if name == 'cifar10':
    return min(n_train or 20, 20), min(n_test or 10, 10)
  if name == 'mnist':
    return (n_train if n_train is not None else 5120), min(n_test or 64, 128)
  if name == 'imdb_reviews':
    return 30, 15
  raise ValueError(f'stand-in datasets: unknown dataset {name!r}')


def get_dataset(name, n_train=None, n_test=None, permute_train=False,
                do_flatten_and_normalize=True, data_dir=None, input_key='image'):
  n_tr, n_te = _sizes(name, n_train, n_test)
  rs = np.random.RandomState({'cifar10': 10, 'mnist': 11, 'imdb_reviews': 12}[name])
  k = _CLASSES[name]
  if name == 'imdb_reviews':
    train_x = np.array([('review %d' % i).encode() for i in range(n_tr)])
    test_x = np.array([('review %d' % (i + n_tr)).encode() for i in range(n_te)])
  else:
    shape = _SHAPES[name]
    train_x = rs.randint(0, 256, size=(n_tr,) + shape).astype(np.uint8)
    test_x = rs.randint(0, 256, size=(n_te,) + shape).astype(np.uint8)
  train_l = rs.randint(0, k, size=n_tr)
  test_l = rs.randint(0, k, size=n_te)
  if do_flatten_and_normalize:
    train_x = _flatten_standardized(train_x).astype(np.float32)
    test_x = _flatten_standardized(test_x).astype(np.float32)
  train_y, test_y = _one_hot(train_l, k), _one_hot(test_l, k)
  if permute_train:
    perm = np.random.RandomState(0).permutation(train_x.shape[0])
    train_x, train_y = train_x[perm], train_y[perm]
  return train_x, train_y, test_x, test_y


def minibatch(x_train, y_train, batch_size, train_epochs):
  """As the original: reshuffles with jax.random each epoch."""
  epoch = 0
  start = 0
  key = random.PRNGKey(0)
  while epoch < train_epochs:
    end = start + batch_size
    if end > x_train.shape[0]:
      key, split = random.split(key)
      permutation = random.permutation(
          split, np.arange(x_train.shape[0], dtype=np.int64), independent=True)
      x_train = x_train[permutation]
      y_train = y_train[permutation]
      epoch += 1
      start = 0
      continue
    yield x_train[start:end], y_train[start:end]
    start = start + batch_size


def embed_glove(xs, glove_path, max_sentence_length=1000, mask_constant=1000.):
  length = min(max_sentence_length, 24)
  dim = 16
  rs = np.random.RandomState(13)
  out = []
  for x in xs:
    n = len(x)
    emb = rs.normal(size=(n, length, dim)).astype(np.float32)
    lengths = rs.randint(10, length + 1, size=n)
    mask = np.arange(length)[None, :] >= lengths[:, None]
    emb[mask, ...] = mask_constant
    out.append(emb)
  return map(lambda e: e, out)
