"""The demo data set: scikit-learn's handwritten digits, split and batched deterministically.

The 1,797 8x8 digit images ship inside scikit-learn, so the demo job needs no network. Pixels
are scaled from 0..16 to [0, 1] float32; labels are int32. The split is stratified by class
and fixed by a seed; the batch iterator reshuffles every epoch with a ``numpy`` Generator
seeded the same way, so a run is reproducible from its seed alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from scirs2_optim_jax import validation as v

__all__ = [
    "DEFAULT_TEST_SIZE",
    "NUM_CLASSES",
    "NUM_FEATURES",
    "NUM_SAMPLES",
    "DigitsSplit",
    "iterate_batch_indices",
    "iterate_batches",
    "load_digits_split",
]

NUM_SAMPLES = 1797
NUM_CLASSES = 10
NUM_FEATURES = 64
DEFAULT_TEST_SIZE = 360


@dataclass(frozen=True)
class DigitsSplit:
    """A train/test split of the digits: ``x_*`` float32 ``[n, 64]`` in [0, 1], ``y_*`` int32."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(seed: int = 0, test_size: int = DEFAULT_TEST_SIZE) -> DigitsSplit:
    """Loads the digits and splits them, stratified by class, into train and test sets.

    Each class gives the test set a share of its samples proportional to its size (largest
    remainders settle the rounding, so the test set has exactly ``test_size`` samples). Both
    sets are ordered by a permutation drawn from ``numpy.random.default_rng(seed)``.

    Args:
        seed: seeds the split; the same seed gives the same split on every machine.
        test_size: number of test samples, in [10, 1787] (default 360, i.e. 1437/360).

    Returns:
        A :class:`DigitsSplit`.

    Example:
        >>> split = load_digits_split(seed=0)
        >>> split.x_train.shape, split.x_test.shape, split.x_train.dtype.name
        ((1437, 64), (360, 64), 'float32')
        >>> sorted(set(split.y_test.tolist())) == list(range(10))
        True
    """
    v.check_int("load_digits_split", "seed", seed, 0)
    v.check_int("load_digits_split", "test_size", test_size, NUM_CLASSES)
    if test_size > NUM_SAMPLES - NUM_CLASSES:
        raise ValueError(
            f"load_digits_split: test_size must be an integer <= {NUM_SAMPLES - NUM_CLASSES}, "
            f"got {test_size!r}"
        )
    # Imported here: scikit-learn takes seconds to import and only this function needs it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.data / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int32)
    n = len(labels)

    rng = np.random.default_rng(seed)
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    quota = counts * test_size / n
    per_class = np.floor(quota).astype(np.int64)
    # Largest remainders first; ties go to the lower class so the split is fully determined.
    order = np.lexsort((np.arange(NUM_CLASSES), -(quota - per_class)))
    per_class[order[: test_size - int(per_class.sum())]] += 1

    test_parts, train_parts = [], []
    for cls in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == cls))
        test_parts.append(members[: per_class[cls]])
        train_parts.append(members[per_class[cls] :])
    test_idx = rng.permutation(np.concatenate(test_parts))
    train_idx = rng.permutation(np.concatenate(train_parts))
    return DigitsSplit(
        x_train=images[train_idx],
        y_train=labels[train_idx],
        x_test=images[test_idx],
        y_test=labels[test_idx],
    )


def iterate_batch_indices(
    num_samples: int, batch_size: int, seed: int = 0, *, start: int = 0
) -> Iterator[np.ndarray]:
    """Yields the sample indices of each batch forever, reshuffling at every epoch start.

    The index sequence behind :func:`iterate_batches`: batch ``k`` is the ``k``-th
    ``batch_size`` slice of its epoch's permutation (the remainder of an epoch is dropped).
    A multi-process run draws it in every process, which is cheap, and each process then
    reads only the rows its own devices hold, so the global batch is the one a single
    process would build.

    Args:
        num_samples: the size of the data set, an integer >= 1.
        batch_size: indices per batch, between 1 and ``num_samples``.
        seed: seeds the ``numpy`` Generator that draws each epoch's permutation.
        start: how many batches of the sequence to skip, an integer >= 0.

    Returns:
        An endless iterator of int64 arrays of length ``batch_size``.

    Example:
        >>> batches = iterate_batch_indices(10, 4, seed=0)
        >>> first = next(batches)
        >>> len(first), len(set(first.tolist())), bool((first < 10).all())
        (4, 4, True)
    """
    fn = "iterate_batch_indices"
    n = v.check_int(fn, "num_samples", num_samples, 1)
    v.check_int(fn, "batch_size", batch_size, 1)
    if batch_size > n:
        raise ValueError(
            f"{fn}: batch_size must be an integer <= {n} (the number of samples), "
            f"got {batch_size!r}"
        )
    v.check_int(fn, "start", start, 0)
    # Validated above, before the first batch is asked for; the generator only draws.
    return _indices(n, batch_size, np.random.default_rng(seed), start)


def iterate_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, seed: int = 0, *, start: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(x_batch, y_batch)`` forever, reshuffling at the start of every epoch.

    Every batch has exactly ``batch_size`` rows (the remainder of an epoch is dropped), so a
    jitted step sees one shape and compiles once. The sequence is a function of ``seed``
    alone (the rows :func:`iterate_batch_indices` picks); ``start`` skips its first batches
    without building them, so a run resumed after ``start`` steps sees exactly the batches
    the uninterrupted run would have seen.

    Args:
        x, y: the samples and labels, the same length along axis 0.
        batch_size: rows per batch, between 1 and ``len(x)``.
        seed: seeds the ``numpy`` Generator that draws each epoch's permutation.
        start: how many batches of the sequence to skip, an integer >= 0.

    Returns:
        An endless iterator of batches.

    Example:
        >>> import numpy as np
        >>> batches = iterate_batches(np.arange(10.0)[:, None], np.arange(10), 4, seed=0)
        >>> [len(next(batches)[0]) for _ in range(3)]
        [4, 4, 4]
        >>> third = iterate_batches(np.arange(10.0)[:, None], np.arange(10), 4, start=2)
        >>> fresh = iterate_batches(np.arange(10.0)[:, None], np.arange(10), 4)
        >>> _ = [next(fresh) for _ in range(2)]
        >>> bool((next(third)[1] == next(fresh)[1]).all())
        True
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(
            f"iterate_batches: x and y must have the same length, got {n} and {len(y)}"
        )
    v.check_int("iterate_batches", "batch_size", batch_size, 1)
    if batch_size > n:
        raise ValueError(
            f"iterate_batches: batch_size must be an integer <= {n} (the number of samples), "
            f"got {batch_size!r}"
        )
    v.check_int("iterate_batches", "start", start, 0)
    indices = _indices(n, batch_size, np.random.default_rng(seed), start)
    return ((x[idx], y[idx]) for idx in indices)


def _indices(n: int, batch_size: int, rng: np.random.Generator, skip: int) -> Iterator[np.ndarray]:
    per_epoch = n // batch_size
    skip_epochs, first = divmod(skip, per_epoch)
    # Skipped epochs still draw their permutation: the Generator's state must advance
    # exactly as it would have.
    for _ in range(skip_epochs):
        rng.permutation(n)
    while True:
        perm = rng.permutation(n)
        for index in range(first, per_epoch):
            yield perm[index * batch_size : (index + 1) * batch_size]
        first = 0
