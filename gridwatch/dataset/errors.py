"""The one error type of gridwatch.dataset: its message names the file and the problem."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset, label map, hard example or imported file that cannot be used (message says why)."""
