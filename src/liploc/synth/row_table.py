"""Tables of parallel arrays with one row per item (the parts of the town's mesh, its parking slots)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any, Self

import numpy as np


class RowTable:
    """Base of a frozen dataclass whose fields are NumPy arrays of equal length, one row per item:
    its length, a subset of its rows, and the rows of several tables in order."""

    def __len__(self) -> int:
        return len(getattr(self, fields(self)[0].name))  # type: ignore[arg-type]

    def take(self, rows: Any) -> Self:
        """The rows ``rows`` selects (indices or a boolean mask), in its order."""
        return type(self)(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})  # type: ignore[arg-type]

    @classmethod
    def concatenate(cls, tables: Sequence[Self]) -> Self:
        """Rows of all ``tables`` in order."""
        return cls(**{f.name: np.concatenate([getattr(t, f.name) for t in tables]) for f in fields(cls)})  # type: ignore[arg-type]
