"""Codecs: pickle (the default, any picklable value) and Parquet (pandas DataFrames and Arrow
tables, readable by pandas, DuckDB or Spark without dp; `pip install 'dp[parquet]'`).

A result's key ends with its codec's suffix (`result_001.pkl`, `result_001.parquet`), so
loading reads the suffix and never guesses. Unpickling can run code: load only results your
own pipelines wrote.
"""

from __future__ import annotations

import pickle
from typing import Any, Final

from dp.errors import InvalidArgumentError
from dp.safetext import describe_exception

__all__ = ["CODECS", "FRAMES", "PARQUET", "PICKLE", "ParquetCodec", "PickleCodec", "codecs_for"]


class PickleCodec:
    """Any picklable value, highest protocol."""

    name: Final = "pickle"
    suffix: Final = ".pkl"

    def accepts(self, value: object) -> bool:
        return True

    def encode(self, value: object) -> bytes:
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    def decode(self, data: bytes) -> Any:
        return pickle.loads(data)

    @staticmethod
    def failure(exc: BaseException) -> str:
        """Why a value could not be encoded, and what to return instead."""
        return (
            f"cannot pickle the value ({describe_exception(exc)}). Return plain data (dicts, "
            "lists, DataFrames, dataclasses defined at module level), not functions, locks, "
            "open files or generators."
        )


#: the pandas metadata key pyarrow writes into a file made from a DataFrame
_PANDAS_KEY: Final = b"pandas"


class ParquetCodec:
    """pandas DataFrames and Arrow tables as Parquet files. A DataFrame loads back as a
    DataFrame (pyarrow keeps its index and dtypes in the file), a table as a table. pyarrow
    is imported at the first frame, not before."""

    name: Final = "parquet"
    suffix: Final = ".parquet"

    def accepts(self, value: object) -> bool:
        kind = type(value)
        package = kind.__module__.partition(".")[0]
        return (kind.__name__ == "DataFrame" and package == "pandas") or (
            kind.__name__ == "Table" and package == "pyarrow"
        )

    def encode(self, value: object) -> memoryview:
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        table = value if isinstance(value, pa.Table) else pa.Table.from_pandas(value)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return memoryview(sink.getvalue())

    def decode(self, data: bytes) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(pa.BufferReader(data))
        metadata = table.schema.metadata or {}
        return table.to_pandas() if _PANDAS_KEY in metadata else table


PICKLE: Final = PickleCodec()
PARQUET: Final = ParquetCodec()
#: every codec a result may have been stored with, by suffix: what loading reads
CODECS: Final[dict[str, PickleCodec | ParquetCodec]] = {
    PICKLE.suffix: PICKLE,
    PARQUET.suffix: PARQUET,
}
#: what `frames=` (the `?frames=` option of a results URL) may say
FRAMES: Final = ("pickle", "parquet")


def codecs_for(frames: str) -> tuple[PickleCodec | ParquetCodec, ...]:
    """The codecs a manager saves with, first match wins: with `frames="parquet"`, DataFrames
    and Arrow tables go to Parquet and everything else to pickle.

    Raises:
        ValueError: `frames` is neither "pickle" nor "parquet".
    """
    if frames == "pickle":
        return (PICKLE,)
    if frames == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ModuleNotFoundError:
            raise InvalidArgumentError(
                "frames",
                frames,
                "'pickle' or 'parquet' with pyarrow installed",
                hint="frames=parquet needs pyarrow: pip install 'dp[parquet]'",
            ) from None
        return (PARQUET, PICKLE)
    raise InvalidArgumentError("frames", frames, f"one of {', '.join(FRAMES)}")
