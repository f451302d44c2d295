"""Where task results live.

- `ports`: the `IOManager` port the engine sees, the `ByteStore` port that moves bytes and the
  `Codec` port that encodes values.
- `results`: `ResultStore`, the IOManager over a byte store and codecs, in the design's layout
  `{run_id}/{task_name}/{task_result_id}.pkl`.
- `codecs`: pickle (the default) and Parquet (frames).
- `filesystem`, `memory`, `s3`: the adapters (`dp.io.s3` imports boto3: `pip install 'dp[s3]'`).
"""

from __future__ import annotations

from dp.io.codecs import PARQUET, PICKLE, ParquetCodec, PickleCodec
from dp.io.filesystem import FilesystemByteStore, FilesystemIOManager
from dp.io.memory import InMemoryIOManager, MemoryByteStore
from dp.io.ports import ByteStore, Codec, IOManager
from dp.io.results import ResultStore, check_results, results_url

__all__ = [
    "PARQUET",
    "PICKLE",
    "ByteStore",
    "Codec",
    "FilesystemByteStore",
    "FilesystemIOManager",
    "IOManager",
    "InMemoryIOManager",
    "MemoryByteStore",
    "ParquetCodec",
    "PickleCodec",
    "ResultStore",
    "check_results",
    "results_url",
]
