"""`S3IOManager`: task results as objects in an S3 bucket, or any S3-compatible store (MinIO,
Ceph, R2, moto), so worker processes on many machines share them without a shared disk.

    io = S3IOManager.from_url("s3://my-bucket/dp/results?endpoint=http://127.0.0.1:9000")

The layout is the filesystem one: `{prefix}/{run_id}/{task_name}/{task_result_id}.pkl`
(`.parquet` for frames with `?frames=parquet`), one object per result. An S3 PUT is atomic per
object (a reader sees the whole old object or the whole new one, never half), so no temporary
object is needed; a fenced commit is a conditional PUT (`If-None-Match: *`), which never
replaces an object. Keys are built only from
ids checked by `dp.ids`, so nothing is ever read, listed or deleted outside the manager's own
bucket and prefix, and nothing is unpickled from anywhere else.

Credentials and the region come from boto3's usual chain (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `~/.aws/`, instance roles); the endpoint from
`?endpoint=`, else `DP_S3_ENDPOINT_URL`, else AWS. boto3 is imported here only: `pip install
'dp[s3]'`.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from dp.errors import InvalidResultsURLError, ResultsUnavailableError
from dp.io.codecs import FRAMES
from dp.io.results import ResultStore

__all__ = ["ENDPOINT_VARIABLE", "S3ByteStore", "S3IOManager", "parse_s3_url"]

#: the environment variable naming an S3-compatible endpoint when the URL has no `?endpoint=`
ENDPOINT_VARIABLE: Final = "DP_S3_ENDPOINT_URL"

_BUCKET: Final = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_DELETE_BATCH: Final = 1000  # the most keys one DeleteObjects call takes
_QUERY_KEYS: Final = ("endpoint", "region", "frames")
_clients: dict[tuple[str | None, str | None], Any] = {}
_clients_lock = threading.Lock()


def parse_s3_url(url: str) -> tuple[str, str, dict[str, str]]:
    """`s3://BUCKET/PREFIX?endpoint=URL&region=NAME&frames=parquet` as (bucket, prefix, options).

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
    if options.get("frames", "pickle") not in FRAMES:
        raise InvalidResultsURLError(
            url, f"has frames={options['frames']!r}; it takes {' or '.join(FRAMES)}"
        )
    endpoint = options.get("endpoint")
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise InvalidResultsURLError(
            url, f"has endpoint {endpoint!r}, which is not an http:// or https:// URL"
        )
    return bucket, prefix, options


class S3ByteStore:
    """Bytes as objects in `bucket` under `prefix`, through the S3 API.

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

    @property
    def url(self) -> str:
        """Where results go, as an s3:// URL (the endpoint and region, never credentials)."""
        url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        options = [f"endpoint={_no_password(self.endpoint_url)}"] if self.endpoint_url else []
        options += [f"region={self.region}"] if self.region else []
        return f"{url}?{'&'.join(options)}" if options else url

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"{type(self).__name__}({self.bucket!r}, {self.prefix!r}{endpoint})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.bucket, self.prefix, self.endpoint_url, self.region))

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._root}{key}"

    def put(self, key: str, data: bytes | memoryview, *, replace: bool = True) -> bool:
        extra: dict[str, Any] = {} if replace else {"IfNoneMatch": "*"}
        body = data if isinstance(data, bytes) else bytes(data)
        done = self._call("save", key, "put_object", Key=self._root + key, Body=body, **extra)
        return done is not None

    def get(self, key: str) -> bytes | None:
        response = self._call("load", key, "get_object", Key=self._root + key, missing=True)
        if response is None:
            return None
        data: bytes = response["Body"].read()
        return data

    def exists(self, key: str) -> bool:
        found = self._call("check", key, "head_object", Key=self._root + key, missing=True)
        return found is not None

    def list(self, prefix: str) -> list[str]:
        folder = f"{self._root}{prefix}/" if prefix else self._root
        pages = self._pages(folder, delimiter=True, what=f"list {self.location(prefix)}")
        names = [p["Prefix"][len(folder) :] for page in pages for p in _common(page)]
        names += [o["Key"][len(folder) :] for page in pages for o in page.get("Contents") or ()]
        return names

    def delete(self, key: str) -> int:
        folder = f"{self._root}{key}/"
        pages = self._pages(folder, delimiter=False, what=f"list {self.location(key)}")
        keys = [obj["Key"] for page in pages for obj in page.get("Contents") or ()]
        if not keys:  # not a prefix: one object, or nothing
            if not self.exists(key):
                return 0
            keys = [self._root + key]
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": k} for k in keys[start : start + _DELETE_BATCH]]
            response = self._call(
                "delete", key, "delete_objects", Delete={"Objects": batch, "Quiet": True}
            )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise ResultsUnavailableError(
                    self.url,
                    f"delete {self.location(key)}",
                    f"{len(errors)} objects were not deleted, e.g. {first.get('Key')!r}: "
                    f"{first.get('Code')} {first.get('Message')}",
                )
        return len(keys)

    # --- S3 calls ------------------------------------------------------------------------------

    def _s3(self) -> Any:
        client = self._client
        if client is None:
            client = self._client = _client(self.endpoint_url, self.region)
        return client

    def _call(
        self, action: str, key: str, operation: str, *, missing: bool = False, **params: Any
    ) -> Any:
        """One S3 call; None when `missing` and the object is not there, or when a conditional
        put found one. Any other failure is a `ResultsUnavailableError` naming the object."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._s3(), operation)(Bucket=self.bucket, **params)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if missing and code in ("NoSuchKey", "404", "NotFound"):
                return None
            if code in ("PreconditionFailed", "412") and "IfNoneMatch" in params:
                return None
            problem = f"{code}: {exc.response.get('Error', {}).get('Message', exc)}"
            raise ResultsUnavailableError(
                self.url, f"{action} {self.location(key)}", _hint(code, problem)
            ) from None
        except BotoCoreError as exc:
            raise ResultsUnavailableError(
                self.url, f"{action} {self.location(key)}", _hint("", str(exc))
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


class S3IOManager(ResultStore):
    """Results as objects in an S3 bucket, `{prefix}/{run_id}/{task_name}/{task_result_id}.pkl`.

    Args:
        bucket: an existing bucket.
        prefix: the key prefix results go under; "" for the root.
        endpoint_url: an S3-compatible endpoint (default: `DP_S3_ENDPOINT_URL`, else AWS).
        region: the region (default: boto3's configuration, else `us-east-1`).
        frames: "pickle" or "parquet", how DataFrames and Arrow tables are kept.
    """

    store: S3ByteStore

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        frames: str = "pickle",
    ) -> None:
        super().__init__(
            S3ByteStore(bucket, prefix, endpoint_url=endpoint_url, region=region), frames=frames
        )

    @classmethod
    def from_url(cls, url: str) -> S3IOManager:
        """The manager an `s3://BUCKET/PREFIX?endpoint=...&region=...&frames=...` URL names.

        Raises:
            InvalidResultsURLError: the URL is malformed (see `parse_s3_url`).
        """
        bucket, prefix, options = parse_s3_url(url)
        return cls(
            bucket,
            prefix,
            endpoint_url=options.get("endpoint"),
            region=options.get("region"),
            frames=options.get("frames", "pickle"),
        )

    @property
    def bucket(self) -> str:
        return self.store.bucket

    @property
    def prefix(self) -> str:
        return self.store.prefix

    @property
    def endpoint_url(self) -> str | None:
        return self.store.endpoint_url

    @property
    def region(self) -> str | None:
        return self.store.region

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.store.bucket!r}, {self.store.prefix!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        store = self.store
        return (
            _rebuild_manager,
            (store.bucket, store.prefix, store.endpoint_url, store.region, self.frames),
        )


def _rebuild_manager(
    bucket: str, prefix: str, endpoint_url: str | None, region: str | None, frames: str
) -> S3IOManager:
    return S3IOManager(bucket, prefix, endpoint_url=endpoint_url, region=region, frames=frames)


def _rebuild(bucket: str, prefix: str, endpoint_url: str | None, region: str | None) -> S3ByteStore:
    return S3ByteStore(bucket, prefix, endpoint_url=endpoint_url, region=region)


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


def _no_password(url: str) -> str:
    """`url` without a password in it (an endpoint may carry one)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _common(page: dict[str, Any]) -> list[dict[str, str]]:
    prefixes: list[dict[str, str]] = page.get("CommonPrefixes") or []
    return prefixes


def _hint(code: str, problem: str) -> str:
    if code == "NoSuchBucket":
        return f"{problem}; create the bucket first (aws s3 mb s3://BUCKET, or mc mb for MinIO)"
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return f"{problem}; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy"
    if "credentials" in problem.lower():
        return f"{problem}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials)"
    return f"{problem}; check the endpoint ({ENDPOINT_VARIABLE} or ?endpoint=) and the network"
