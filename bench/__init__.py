"""dp's benchmarks: `make bench` (or `python -m bench [NAME ...]`)."""

import sys
from pathlib import Path

# The private servers in tests/ (redis, PostgreSQL, Tansu) import their helpers as top-level
# modules (`from ports import free_port`), as they are under pytest: give them that path.
_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)
