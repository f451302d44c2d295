"""The Kafka bus's settings, read from its URL: `kafka://host:9092,host2:9092?acks=all&...`.

The URL is the one place they are set, so `--bus`, `DP_BUS_URL`, `dp.toml`'s `bus` and
`KafkaBroker(url)` all take the same options. This module needs no aiokafka: `dp config`
and `dp.config.resolve()` validate a Kafka URL before anything connects.

Options (defaults from the original design: acks=all with the idempotent producer):

    acks             all | 1 | 0                      all
    idempotence      true | false                      true (needs acks=all)
    compression      none | gzip | snappy | lz4 | zstd none (snappy/lz4/zstd need cramjam)
    linger           seconds the producer waits to fill a batch                      0
    request_timeout  seconds a produce (aiokafka retries inside) may take            10
    partitions       partitions of the topics dp creates                             1
    replication      their replication factor                                        1
    topic_refresh    seconds between metadata refreshes (metadata.max.age.ms)        0.5
    session_timeout  seconds a group member may miss heartbeats                      10
    fetch_wait       seconds the broker may hold an empty fetch (fetch.max.wait.ms)  0.5
    prefetch         records a subscription reads ahead                              1000
    outbox           publish_nowait events that may wait to be sent                  10000
    namespace        prefix of every topic and group dp uses, e.g. staging.         (none)
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from dp.errors import InvalidBusURLError

__all__ = ["KafkaOptions", "bootstrap_servers", "kafka_url", "parse_kafka_url"]

COMPRESSIONS = ("gzip", "snappy", "lz4", "zstd")


class _BadValue(Exception):
    """An option's value a parser cannot take; `parse_kafka_url` names the option and URL."""


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    """The settings of one Kafka bus; see the module docstring for each option."""

    acks: str = "all"
    idempotence: bool = True
    compression: str | None = None
    linger: float = 0.0
    request_timeout: float = 10.0
    partitions: int = 1
    replication: int = 1
    topic_refresh: float = 0.5
    session_timeout: float = 10.0
    fetch_wait: float = 0.5
    prefetch: int = 1_000
    outbox: int = 10_000
    namespace: str = ""

    @property
    def producer_acks(self) -> str | int:
        """`acks` as aiokafka takes it."""
        return "all" if self.acks == "all" else int(self.acks)


def bootstrap_servers(url: str) -> str:
    """`host:port,host2:port2` from `kafka://host:port[,host2:port2][?options]` (port 9092
    by default).

    Raises:
        InvalidBusURLError: naming the URL and what is wrong.
    """
    scheme, sep, rest = url.partition("://")
    if scheme != "kafka" or not sep:
        raise InvalidBusURLError(url, f"scheme {scheme!r} is not kafka, e.g. kafka://host:9092")
    hosts = re.split(r"[/?#]", rest, maxsplit=1)[0]
    servers = []
    for item in hosts.split(","):
        try:
            parts = urlsplit(f"//{item}")
            port = parts.port or 9092
        except ValueError:
            parts, port = None, 0
        if parts is None or not parts.hostname:
            raise InvalidBusURLError(
                url,
                f"names server {item!r}; list host:port pairs, "
                "e.g. kafka://10.0.0.1:9092,10.0.0.2:9092",
            )
        servers.append(f"{parts.hostname}:{port}")
    return ",".join(servers)


def parse_kafka_url(url: str) -> tuple[str, KafkaOptions]:
    """The bootstrap servers and the options of a `kafka://` URL.

    Raises:
        InvalidBusURLError: a malformed server, an unknown or repeated option, or a bad
            value; the message names the option and what it accepts.
    """
    servers = bootstrap_servers(url)
    query = urlsplit(url).query
    given: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in _PARSERS:
            close = difflib.get_close_matches(key, _PARSERS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InvalidBusURLError(
                url, f"unknown option {key!r}; {hint}Kafka takes {', '.join(_PARSERS)}"
            )
        if key in given:
            raise InvalidBusURLError(url, f"option {key!r} is given twice")
        given[key] = value
    values: dict[str, object] = {}
    for key, text in given.items():
        try:
            values[key] = _PARSERS[key](text)
        except _BadValue as exc:
            raise InvalidBusURLError(url, f"option {key}={text!r}: {exc}") from None
    options = KafkaOptions(**values)  # type: ignore[arg-type]
    if options.idempotence and options.acks != "all":
        raise InvalidBusURLError(
            url,
            f"option acks={options.acks} needs idempotence=false: the idempotent producer "
            "(on by default) needs acks=all",
        )
    if options.compression not in (None, "gzip") and importlib.util.find_spec("cramjam") is None:
        raise InvalidBusURLError(
            url,
            f"option compression={options.compression} needs the cramjam package, which is "
            "not installed: pip install cramjam, or use compression=gzip",
        )
    return servers, options


def kafka_url(url: str, **options: object) -> str:
    """`url` with these options set (replacing the same ones in its query), e.g.
    `kafka_url("kafka://h:9092", idempotence=False)` -> `kafka://h:9092?idempotence=false`."""
    head, _, query = url.partition("?")
    pairs = dict(parse_qsl(query, keep_blank_values=True))
    for key, value in options.items():
        pairs[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return f"{head}?{urlencode(pairs)}" if pairs else head


# --- the values ----------------------------------------------------------------------------


def _choice(*accepted: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in accepted:
            raise _BadValue(f"must be one of {', '.join(accepted)}")
        return text.lower()

    return parse


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise _BadValue("must be true or false")


def _compression(text: str) -> str | None:
    lowered = text.lower()
    if lowered in ("", "none"):
        return None
    if lowered not in COMPRESSIONS:
        raise _BadValue(f"must be none, {', '.join(COMPRESSIONS)}")
    return lowered


def _seconds(low: float, *, above: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or (above and value == low):
            raise _BadValue(f"must be a number of seconds {'>' if above else '>='} {low:g}")
        return value

    return parse


def _count(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < low:
            raise _BadValue(f"must be a whole number >= {low}")
        return int(text)

    return parse


def _namespace(text: str) -> str:
    if text and not re.fullmatch(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?", text):
        raise _BadValue("must be a topic prefix of letters, digits, _, - and dots, e.g. staging.")
    return text


_PARSERS: dict[str, Callable[[str], object]] = {
    "acks": _choice("all", "1", "0"),
    "idempotence": _flag,
    "compression": _compression,
    "linger": _seconds(0),
    "request_timeout": _seconds(0, above=True),
    "partitions": _count(1),
    "replication": _count(1),
    "topic_refresh": _seconds(0.05),
    "session_timeout": _seconds(0.1),
    "fetch_wait": _seconds(0),
    "prefetch": _count(1),
    "outbox": _count(1),
    "namespace": _namespace,
}
assert set(_PARSERS) == {f.name for f in dataclasses.fields(KafkaOptions)}
