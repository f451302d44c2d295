"""The `dp` command line: `dp.cli:app` is the entry point, `python -m dp.cli` runs it too.

The top floor: it reads the settings, builds the backends (`dp.config`) and hands them to the
engine, the scheduler and the service; nothing below imports it.
"""

from __future__ import annotations

from dp.cli.main import app, main

__all__ = ["app", "main"]
