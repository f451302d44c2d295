"""Load a user's task definitions from a Python file or an importable module."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from dp.errors import DPError, LoadError

__all__ = ["LoadError", "load_tasks", "module_name_for"]


#: the dp extra that installs a module: a task file importing it when it is missing gets told
EXTRAS = {"pandas": "examples"}


def module_name_for(path: Path) -> tuple[str, Path]:
    """The dotted module name of `path` and the folder to put on `sys.path` to import it.

    A file inside packages (folders with `__init__.py`) keeps its package prefix, so worker
    processes can import its tasks by `module:qualname` exactly like this process did.
    """
    path = path.resolve()
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").exists():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts), folder


def load_tasks(target: str | Path) -> ModuleType:
    """Import `target` (a `.py` path or a dotted module name) so its `@task`s register.

    Raises:
        LoadError: the file does not exist, or importing it raised (the cause is chained).
    """
    text = str(target)
    is_path = text.endswith(".py") or "/" in text or "\\" in text
    if is_path:
        path = Path(text)
        if path.is_dir():
            raise LoadError(
                text, f"{text!r} is a folder; pass the .py file that defines the @task functions."
            )
        if not path.is_file():
            raise LoadError(text, f"task file {text!r} does not exist (looked in {Path.cwd()}).")
        name, root = module_name_for(path)
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
    else:
        name = text
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name and not is_path:
            raise LoadError(
                text, f"module {name!r} is not importable; pass a path to a .py file or install it."
            ) from exc
        extra = EXTRAS.get((exc.name or "").partition(".")[0])
        hint = (
            f"; it comes with dp's {extra!r} extra: pip install 'dp[{extra}]' (from a clone: "
            f"pip install '.[{extra}]')"
            if extra
            else ""
        )
        raise LoadError(text, f"importing {text!r} failed: {exc}{hint}", extra=extra) from exc
    except DPError:
        raise
    except Exception as exc:
        raise LoadError(text, f"importing {text!r} failed: {type(exc).__name__}: {exc}") from exc
