"""`S3IOManager`: task results as objects in an S3 bucket, or any S3-compatible store (MinIO,
Ceph, R2, moto), so worker processes on many machines share them without a shared disk.

    io = S3IOManager.from_url("s3://my-bucket/dp/results?endpoint=http://127.0.0.1:9000")

The layout mirrors the filesystem one: `{prefix}/{run_id}/{task_name}/{task_result_id}.pkl`,
one pickle per object. An S3 PUT is atomic per object (a reader sees the whole old object or
the whole new one, never half), so no temporary object is needed. Keys are built only from
ids checked by `dp.ids`, so nothing is ever read, listed or deleted outside the manager's own
bucket and prefix, and nothing is unpickled from anywhere else.

Credentials and the region come from boto3's usual chain (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `~/.aws/`, instance roles); the endpoint from
`?endpoint=`, else `DP_S3_ENDPOINT_URL`, else AWS. boto3 is imported here only: `pip install
'dp[s3]'`.
"""

from __future__ import annotations

import os
import pickle
import re
import threading
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from dp.errors import (
    InvalidResultsURLError,
    ResultNotFoundError,
    ResultsUnavailableError,
    SerializationError,
)
from dp.ids import check_id, is_id

__all__ = ["ENDPOINT_VARIABLE", "S3IOManager", "parse_s3_url"]

#: the environment variable naming an S3-compatible endpoint when the URL has no `?endpoint=`
ENDPOINT_VARIABLE: Final = "DP_S3_ENDPOINT_URL"

_SUFFIX: Final = ".pkl"
_NUMBER: Final = re.compile(r"(\d+)")
_BUCKET: Final = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_DELETE_BATCH: Final = 1000  # the most keys one DeleteObjects call takes
_QUERY_KEYS: Final = ("endpoint", "region")
_clients: dict[tuple[str | None, str | None], Any] = {}
_clients_lock = threading.Lock()


def parse_s3_url(url: str) -> tuple[str, str, dict[str, str]]:
    """`s3://BUCKET/PREFIX?endpoint=URL&region=NAME` as (bucket, prefix, options).

    Raises:
        InvalidResultsURLError: (a ValueError) not an s3:// URL, a bad bucket name, a prefix
            with an empty or `..` segment, or an unknown option; the message says which.
    """
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise InvalidResultsURLError(url, "is not an s3:// URL (s3://BUCKET/PREFIX)")
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise InvalidResultsURLError(
            url,
            f"names bucket {bucket!r}; a bucket name is 3-63 lowercase letters, digits, '.' "
            "and '-', e.g. s3://my-bucket/dp/results",
        )
    prefix = parts.path.strip("/")
    if prefix and any(seg in ("", ".", "..") for seg in prefix.split("/")):
        raise InvalidResultsURLError(
            url, f"has prefix {prefix!r} with an empty, '.' or '..' segment"
        )
    options: dict[str, str] = {}
    for key, values in parse_qs(parts.query, keep_blank_values=True).items():
        if key not in _QUERY_KEYS:
            raise InvalidResultsURLError(
                url, f"has unknown option {key!r}; s3:// takes {', '.join(_QUERY_KEYS)}"
            )
        if not values[-1]:
            raise InvalidResultsURLError(url, f"has an empty {key}=")
        options[key] = values[-1]
    endpoint = options.get("endpoint")
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise InvalidResultsURLError(
            url, f"has endpoint {endpoint!r}, which is not an http:// or https:// URL"
        )
    return bucket, prefix, options


class S3IOManager:
    """Keeps results as pickles in `bucket` under `prefix`, through the S3 API.

    Picklable (only the bucket, prefix, endpoint and region travel; each process opens its own
    client), so it works with the process executor as well as with Celery workers.

    Args:
        bucket: an existing bucket.
        prefix: the key prefix results go under (no leading or trailing `/`); "" for the root.
        endpoint_url: an S3-compatible endpoint (default: `DP_S3_ENDPOINT_URL`, else AWS).
        region: the region (default: boto3's configuration, else `us-east-1`).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or os.environ.get(ENDPOINT_VARIABLE) or None
        self.region = region
        self._root = f"{self.prefix}/" if self.prefix else ""
        self._client: Any = None

    @classmethod
    def from_url(cls, url: str) -> S3IOManager:
        """The manager an `s3://BUCKET/PREFIX?endpoint=...&region=...` URL names.

        Raises:
            InvalidResultsURLError: the URL is malformed (see `parse_s3_url`).
        """
        bucket, prefix, options = parse_s3_url(url)
        return cls(
            bucket, prefix, endpoint_url=options.get("endpoint"), region=options.get("region")
        )

    @property
    def url(self) -> str:
        """Where results go, as an s3:// URL."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"{type(self).__name__}({self.bucket!r}, {self.prefix!r}{endpoint})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.bucket, self.prefix, self.endpoint_url, self.region))

    # --- the port ------------------------------------------------------------------------------

    def save(self, run_id: str, task_name: str, task_result_id: str, value: Any) -> str:
        """Pickle `value` into one object and return its `s3://` location."""
        key = self._key(run_id, task_name, task_result_id)
        try:
            data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise SerializationError(
                run_id,
                task_name,
                task_result_id,
                f"cannot pickle the value ({type(exc).__name__}: {exc}). Return plain data "
                "(dicts, lists, DataFrames, dataclasses defined at module level), not "
                "functions, locks, open files or generators.",
            ) from exc
        self._call("save", (run_id, task_name, task_result_id), "put_object", Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"

    def load(self, run_id: str, task_name: str, task_result_id: str) -> Any:
        """Unpickle a stored result."""
        key = self._key(run_id, task_name, task_result_id)
        ids = (run_id, task_name, task_result_id)
        response = self._call("load", ids, "get_object", Key=key, missing=True)
        if response is None:
            raise ResultNotFoundError(run_id, task_name, task_result_id)
        data = response["Body"].read()
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise SerializationError(
                run_id,
                task_name,
                task_result_id,
                f"cannot unpickle s3://{self.bucket}/{key} ({type(exc).__name__}: {exc}); the "
                "object is corrupt, or a class it refers to can no longer be imported. Run the "
                "task again to store it anew.",
            ) from exc

    def exists(self, run_id: str, task_name: str, task_result_id: str) -> bool:
        """Whether the result object exists."""
        key = self._key(run_id, task_name, task_result_id)
        ids = (run_id, task_name, task_result_id)
        return self._call("exists", ids, "head_object", Key=key, missing=True) is not None

    def list_results(self, run_id: str, task_name: str) -> list[str]:
        """Result ids of one task in natural order; objects that are not results are skipped."""
        _check("run_id", run_id)
        _check("task_name", task_name)
        folder = f"{self._root}{run_id}/{task_name}/"
        names = (k[len(folder) :] for k in self._keys(folder, delimiter=True, run_id=run_id))
        stems = (n[: -len(_SUFFIX)] for n in names if n.endswith(_SUFFIX))
        return sorted((s for s in stems if is_id(s)), key=_natural)

    def list_runs(self) -> list[str]:
        """Runs with at least one object, in natural order; other prefixes are skipped."""
        pages = self._pages(self._root, delimiter=True, what="list runs")
        found = (
            p["Prefix"][len(self._root) :].rstrip("/") for page in pages for p in _common(page)
        )
        return sorted((run for run in found if is_id(run)), key=_natural)

    def clear_run(self, run_id: str) -> int:
        """Delete every object of a run and return how many results it held."""
        _check("run_id", run_id)
        folder = f"{self._root}{run_id}/"
        keys = list(self._keys(folder, delimiter=False, run_id=run_id))
        count = sum(1 for key in keys if _is_result(key[len(folder) :]))
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + _DELETE_BATCH]]
            response = self._call(
                "clear",
                (run_id, "*", "*"),
                "delete_objects",
                Delete={"Objects": batch, "Quiet": True},
            )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise ResultsUnavailableError(
                    self.url,
                    f"clear run {run_id!r}",
                    f"{len(errors)} objects were not deleted, e.g. {first.get('Key')!r}: "
                    f"{first.get('Code')} {first.get('Message')}",
                )
        return count

    # --- S3 calls ------------------------------------------------------------------------------

    def _key(self, run_id: str, task_name: str, task_result_id: str) -> str:
        _check("run_id", run_id)
        _check("task_name", task_name)
        _check("task_result_id", task_result_id)
        return f"{self._root}{run_id}/{task_name}/{task_result_id}{_SUFFIX}"

    def _s3(self) -> Any:
        client = self._client
        if client is None:
            client = self._client = _client(self.endpoint_url, self.region)
        return client

    def _call(
        self,
        action: str,
        ids: tuple[str, str, str],
        operation: str,
        *,
        missing: bool = False,
        **params: Any,
    ) -> Any:
        """One S3 call; None when `missing` and the object is not there. Any other failure is a
        `ResultsUnavailableError` naming the action, the run, the task and the result id."""
        from botocore.exceptions import BotoCoreError, ClientError

        run_id, task_name, task_result_id = ids
        try:
            return getattr(self._s3(), operation)(Bucket=self.bucket, **params)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if missing and code in ("NoSuchKey", "404", "NotFound"):
                return None
            problem = f"{code}: {exc.response.get('Error', {}).get('Message', exc)}"
            raise ResultsUnavailableError(
                self.url, _what(action, run_id, task_name, task_result_id), _hint(code, problem)
            ) from None
        except BotoCoreError as exc:
            raise ResultsUnavailableError(
                self.url, _what(action, run_id, task_name, task_result_id), _hint("", str(exc))
            ) from None

    def _pages(self, prefix: str, *, delimiter: bool, what: str) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        params: dict[str, str] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            params["Delimiter"] = "/"
        try:
            # the pages are fetched as the caller iterates: gather them here to catch errors
            return list(self._s3().get_paginator("list_objects_v2").paginate(**params))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            problem = f"{code}: {exc.response.get('Error', {}).get('Message', exc)}"
            raise ResultsUnavailableError(self.url, what, _hint(code, problem)) from None
        except BotoCoreError as exc:
            raise ResultsUnavailableError(self.url, what, _hint("", str(exc))) from None

    def _keys(self, prefix: str, *, delimiter: bool, run_id: str) -> list[str]:
        pages = self._pages(prefix, delimiter=delimiter, what=f"list run {run_id!r}")
        return [obj["Key"] for page in pages for obj in page.get("Contents") or ()]


def _rebuild(bucket: str, prefix: str, endpoint_url: str | None, region: str | None) -> S3IOManager:
    return S3IOManager(bucket, prefix, endpoint_url=endpoint_url, region=region)


def _client(endpoint_url: str | None, region: str | None) -> Any:
    """One client per endpoint and region in a process: creating one reads botocore's service
    model (tenths of a second), and a client is safe to share between threads."""
    key = (endpoint_url, region)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = _make_client(endpoint_url, region)
        return client


def _make_client(endpoint_url: str | None, region: str | None) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region or session.region_name or "us-east-1",
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32),
    )


def _check(kind: str, value: str) -> None:
    if not is_id(value):
        check_id(kind, value)


def _common(page: dict[str, Any]) -> list[dict[str, str]]:
    prefixes: list[dict[str, str]] = page.get("CommonPrefixes") or []
    return prefixes


def _is_result(name: str) -> bool:
    task, _, rest = name.partition("/")
    return is_id(task) and rest.endswith(_SUFFIX) and is_id(rest[: -len(_SUFFIX)])


def _natural(name: str) -> tuple[tuple[str | int, ...], str]:
    parts = _NUMBER.split(name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def _what(action: str, run_id: str, task_name: str, task_result_id: str) -> str:
    if action == "clear":
        return f"clear run {run_id!r}"
    return f"{action} result {task_result_id!r} of task {task_name!r} in run {run_id!r}"


def _hint(code: str, problem: str) -> str:
    if code == "NoSuchBucket":
        return f"{problem}; create the bucket first (aws s3 mb s3://BUCKET, or mc mb for MinIO)"
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return f"{problem}; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy"
    if "credentials" in problem.lower():
        return f"{problem}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials)"
    return f"{problem}; check the endpoint ({ENDPOINT_VARIABLE} or ?endpoint=) and the network"
