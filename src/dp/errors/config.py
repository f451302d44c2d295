"""Errors of the configuration (flags, DP_* variables, dp.toml) and the command line."""

from __future__ import annotations

from collections.abc import Sequence

from dp.errors.base import DPError

__all__ = ["CLIError", "ConfigError", "ConfigFileError"]


class ConfigError(DPError):
    """A setting (`--store`, `DP_BUS_URL`, a `dp.toml` key, ...) has a value dp cannot use."""

    def __init__(
        self, setting: str, value: str, source: str, problem: str, accepted: Sequence[str] = ()
    ) -> None:
        self.setting = setting
        self.value = value
        self.source = source
        self.problem = problem
        self.accepted = tuple(accepted)
        hint = f"; accepted: {', '.join(self.accepted)}" if self.accepted else ""
        super().__init__(f"{setting} {value!r} (from {source}) {problem}{hint}.")


class ConfigFileError(DPError):
    """A `dp.toml` (or the `[tool.dp]` table of a `pyproject.toml`) cannot be read."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class CLIError(DPError):
    """Bad command-line input: a malformed or contradictory option, a name that is not there."""
