"""Tables that grow by appending rows: what the app's engine keeps per item and per user (pooled
texts, vectors, biases, facts), so that a write costs what it changed, not the catalogue.

A write appends new rows and overwrites changed ones in place. Appending doubles the capacity
when it runs out, so adding one row costs amortised constant time and no write copies the whole
table. The rows are a numpy array (what serving reads); torch reads them without a copy on the
CPU (``torch.from_numpy``). Not thread safe by itself: the engine changes a table only under its
lock, and readers read it under the same lock.
"""

from __future__ import annotations

import numpy as np

MIN_CAPACITY = 16


class Rows:
    """A growing array of rows, ``(len, *shape)``; rows not yet written hold ``fill``."""

    def __init__(self, data: np.ndarray, fill: float | int = 0):
        data = np.asarray(data)
        if not data.flags.writeable or not data.flags.c_contiguous:
            data = np.array(data, order="C")  # a read-only file's arrays are copied once
        self._data = data
        self._size = len(data)
        self._fill = fill

    def __len__(self) -> int:
        return self._size

    @property
    def array(self) -> np.ndarray:
        """The rows, ``(len, *shape)`` (a view: changed in place by later writes)."""
        return self._data[: self._size]

    def resize(self, size: int) -> None:
        """Grow to ``size`` rows (the new ones hold ``fill``), doubling the capacity as needed."""
        if size <= self._size:
            return
        if size > len(self._data):
            capacity = max(size, 2 * len(self._data), MIN_CAPACITY)
            grown = np.empty((capacity, *self._data.shape[1:]), dtype=self._data.dtype)
            grown[: self._size] = self.array
            self._data = grown
        self._data[self._size : size] = self._fill
        self._size = size

    def put(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Write ``values`` into ``rows`` (in order; rows past the end grow the table)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return
        self.resize(int(rows.max()) + 1)
        self._data[rows] = values
