"""Counter-based randomness: a value drawn from a hash of its keys, so that a draw depends only on what it is
about (a world object, a camera, a stamp) and never on the order things were drawn in."""

from __future__ import annotations

import numpy as np


def mix(*values) -> np.ndarray:
    """A positive 31-bit hash (int64, 1 to 2**31) of integer arrays or scalars, broadcast element by element
    (splitmix64's finaliser after each value)."""
    h = np.zeros(np.broadcast(*values).shape, np.uint64)
    with np.errstate(over="ignore"):
        for value in values:
            h = (h ^ np.asarray(value).astype(np.int64).astype(np.uint64)) + np.uint64(0x9E3779B97F4A7C15)
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h ^= h >> np.uint64(31)
    return (h >> np.uint64(33)).astype(np.int64) + 1


def uniform(*values) -> np.ndarray:
    """A float64 in [0, 1) per element, from mix(*values)."""
    return (mix(*values) - 1) / float(2**31)


def text_key(text: str) -> int:
    """A stable integer key for a name (a camera's), for mix()."""
    return int(mix(*np.frombuffer(text.encode(), np.uint8).astype(np.int64)).item()) if text else 0
