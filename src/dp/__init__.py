"""dp: event-driven data pipelines for Python."""

from dp.errors import DPError

__all__ = ["DPError"]
