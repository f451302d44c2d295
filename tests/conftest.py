"""Shared fixtures."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from dp import get_registry, get_sources
from kafka_server import KafkaServer
from postgres_server import FAST, PostgresServer
from redis_server import RedisServer
from s3_server import S3Server


@pytest.fixture
def clean_default_registry() -> Iterator[None]:
    """Tests that load task files into the default registry leave it as they found it."""
    before = get_registry().as_dict()
    sources = list(get_sources())
    modules = set(sys.modules)
    yield
    get_registry().clear()
    for metadata in before.values():
        get_registry().register(metadata)
    get_sources().clear()
    for definition in sources:
        get_sources().register(definition)
    for name in set(sys.modules) - modules:
        path = getattr(sys.modules[name], "__file__", None) or ""
        if not path.startswith((sys.prefix, sys.base_prefix)):  # user task files only
            del sys.modules[name]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for the whole session; `postgres.create_database()` gives
    each test an empty database of its own."""
    with PostgresServer(FAST) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the whole session (tests use their own key prefixes)."""
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch_session: pytest.MonkeyPatch
) -> Iterator[S3Server]:
    """A real S3 API server (moto) for the whole session; its credentials are in the
    environment, so boto3 (and worker processes started from the tests) find them."""
    server = S3Server.start(tmp_path_factory.mktemp("s3"))
    for name, value in server.env.items():
        if name != "DP_S3_ENDPOINT_URL":
            monkeypatch_session.setenv(name, value)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def monkeypatch_session() -> Iterator[pytest.MonkeyPatch]:
    """A MonkeyPatch undone at the end of the session."""
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """A private Kafka-protocol broker (Tansu, in memory) for the whole session (tests use
    their own topic and group names, or brokers that clean up)."""
    server = KafkaServer.start(tmp_path_factory.mktemp("kafka"))
    yield server
    server.stop()
