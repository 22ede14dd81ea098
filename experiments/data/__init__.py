"""Data sets: bundled real data, local-file loaders, synthetic sets."""
from experiments.data.bundled import (
    concrete_arrays, load_concrete, load_digits, load_mnist_subset)
from experiments.data.files import load_cifar10, load_mnist_idx, read_cifar_batch, read_idx
from experiments.data.splits import Dataset, class_targets, shuffled_split, subsample
from experiments.data.synthetic import (
    circle_points, dirichlet, random_teacher, sphere, teacher_targets, unit_circle)

__all__ = [
    "Dataset", "class_targets", "shuffled_split", "subsample",
    "load_digits", "load_mnist_subset", "load_concrete", "concrete_arrays",
    "read_idx", "load_mnist_idx", "read_cifar_batch", "load_cifar10",
    "unit_circle", "circle_points", "sphere", "dirichlet", "random_teacher",
    "teacher_targets",
]
