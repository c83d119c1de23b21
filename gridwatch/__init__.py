"""gridwatch: command-centre analytics for grid-based city governance."""

__version__ = "0.1.0"
