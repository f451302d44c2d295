"""What only the S3 IO manager does: URLs, its own prefix, and clear errors from the store."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import pytest

from dp import config
from dp.errors import ConfigError, ResultsUnavailableError, SerializationError
from dp.io.s3 import S3IOManager, parse_s3_url
from s3_server import S3Server


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> Iterator[str]:
    return s3_server.create_bucket("dp-s3-specifics")


@pytest.fixture
def client(s3_server: S3Server) -> Any:
    return s3_server.client()


def test_a_url_names_bucket_prefix_and_endpoint() -> None:
    """s3://BUCKET/PREFIX?endpoint=URL gives the bucket, the prefix and the endpoint."""
    io = S3IOManager.from_url("s3://my-bucket/dp/results/?endpoint=http://127.0.0.1:9000")
    assert (io.bucket, io.prefix, io.endpoint_url) == (
        "my-bucket",
        "dp/results",
        "http://127.0.0.1:9000",
    )


def test_the_endpoint_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ?endpoint=, DP_S3_ENDPOINT_URL names the S3-compatible store."""
    monkeypatch.setenv("DP_S3_ENDPOINT_URL", "http://minio:9000")
    assert S3IOManager.from_url("s3://my-bucket").endpoint_url == "http://minio:9000"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("s3://UPPER/x", "names bucket 'UPPER'"),
        ("s3://b/x", "names bucket 'b'"),
        ("s3://my-bucket/a//b", "empty, '.' or '..' segment"),
        ("s3://my-bucket/a/../b", "empty, '.' or '..' segment"),
        ("s3://my-bucket/x?endpiont=http://h", "unknown option 'endpiont'"),
        ("s3://my-bucket/x?endpoint=", "empty endpoint="),
        ("s3://my-bucket/x?endpoint=ftp://h", "not an http:// or https:// URL"),
    ],
)
def test_a_bad_url_is_refused_saying_what_is_wrong(url: str, problem: str) -> None:
    """Bad bucket names, prefixes and options are ValueErrors naming the part."""
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace("?", r"\?")):
        parse_s3_url(url)


def test_results_setting_accepts_s3_urls(tmp_path: Any) -> None:
    """--results s3://... resolves, and open_results gives an S3IOManager on it."""
    settings = config.resolve(
        {"results": "s3://my-bucket/dp?endpoint=http://127.0.0.1:1"}, env={}, cwd=tmp_path
    )
    io = config.open_results(settings)
    assert isinstance(io, S3IOManager)
    assert (io.bucket, io.prefix, io.endpoint_url) == ("my-bucket", "dp", "http://127.0.0.1:1")


def test_a_bad_s3_results_setting_names_the_setting_and_its_source(tmp_path: Any) -> None:
    """DP_RESULTS_URL with a bad bucket is a ConfigError naming results and DP_RESULTS_URL."""
    with pytest.raises(ConfigError, match=r"results 's3://Bad_Bucket' \(from DP_RESULTS_URL\)"):
        config.resolve(env={"DP_RESULTS_URL": "s3://Bad_Bucket"}, cwd=tmp_path)


def test_saves_go_under_the_prefix_as_one_object_each(
    s3_server: S3Server, bucket: str, client: Any
) -> None:
    """A result is the object PREFIX/run/task/result.pkl, holding the pickle."""
    io = S3IOManager(bucket, "layout", endpoint_url=s3_server.url)
    assert io.save("run_1", "extract", "r", [1, 2]) == f"s3://{bucket}/layout/run_1/extract/r.pkl"
    body = client.get_object(Bucket=bucket, Key="layout/run_1/extract/r.pkl")["Body"].read()
    assert pickle.loads(body) == [1, 2]


def test_nothing_outside_the_prefix_is_listed_loaded_or_cleared(
    s3_server: S3Server, bucket: str, client: Any
) -> None:
    """Objects of another prefix, and stray keys, are invisible and survive clear_run."""
    client.put_object(Bucket=bucket, Key="other/run_1/extract/r.pkl", Body=pickle.dumps("theirs"))
    client.put_object(Bucket=bucket, Key="mine/run_1/extract/notes.txt", Body=b"x")
    client.put_object(Bucket=bucket, Key="mine/.hidden/t/r.pkl", Body=b"x")
    io = S3IOManager(bucket, "mine", endpoint_url=s3_server.url)
    io.save("run_1", "extract", "r", "mine")
    assert (io.list_runs(), io.list_results("run_1", "extract")) == (["run_1"], ["r"])
    assert io.clear_run("run_1") == 1
    theirs = client.get_object(Bucket=bucket, Key="other/run_1/extract/r.pkl")["Body"].read()
    assert pickle.loads(theirs) == "theirs"


def test_a_corrupt_object_is_a_serialization_error_naming_it(
    s3_server: S3Server, bucket: str, client: Any
) -> None:
    """An object that is not a pickle raises SerializationError with the ids and the key."""
    client.put_object(Bucket=bucket, Key="corrupt/run_1/extract/r.pkl", Body=b"not a pickle")
    io = S3IOManager(bucket, "corrupt", endpoint_url=s3_server.url)
    with pytest.raises(SerializationError, match=r"s3://dp-s3-specifics/corrupt/run_1/extract/r"):
        io.load("run_1", "extract", "r")


def test_a_missing_bucket_is_an_error_naming_the_ids_and_what_to_do(s3_server: S3Server) -> None:
    """Saving into a bucket that does not exist says which result and to create the bucket."""
    io = S3IOManager("no-such-bucket", endpoint_url=s3_server.url)
    with pytest.raises(ResultsUnavailableError) as info:
        io.save("run_1", "extract", "r", 1)
    message = str(info.value)
    assert "s3://no-such-bucket/run_1/extract/r.pkl" in message
    assert "NoSuchBucket" in message
    assert "create the bucket" in message


def test_an_unreachable_endpoint_is_an_error_naming_it(s3_server: S3Server) -> None:
    """A store nobody listens on fails with the endpoint hint, not a boto3 traceback."""
    from ports import free_port

    io = S3IOManager("b-1", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ResultsUnavailableError, match="check the endpoint"):
        io.exists("run_1", "extract", "r")
    with pytest.raises(ResultsUnavailableError, match="cannot list s3://b-1/"):
        io.list_runs()


def test_clear_run_deletes_more_than_one_batch(
    s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of more objects than one DeleteObjects call takes is cleared whole."""
    monkeypatch.setattr("dp.io.s3._DELETE_BATCH", 3)  # S3's own limit is 1000 keys a call
    io = S3IOManager(bucket, "big", endpoint_url=s3_server.url)
    for i in range(7):
        io.save("run_1", "stream", f"chunk_{i}", i)
    assert io.clear_run("run_1") == 7
    assert io.list_runs() == []
