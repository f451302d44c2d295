"""`dp events dlq list|replay` against a real Redis bus."""

from __future__ import annotations

import asyncio
import itertools
import json

from typer.testing import CliRunner

from dp.cli import app
from dp.events import EventBase
from dp.events.redis import RedisBroker
from redis_server import RedisServer

runner = CliRunner()
_prefixes = itertools.count(1)


def bury(url: str, prefix: str, count: int) -> list[str]:
    """Publish `count` events that the group `billing` fails for good; return their ids."""

    async def fail_them() -> list[str]:
        async with RedisBroker(url, prefix=prefix) as broker:
            group = broker.durable("orders.*", group="billing", max_deliveries=1)
            ids = []
            for n in range(count):
                event = EventBase(topic="orders.created", payload={"n": n})
                ids.append(event.event_id)
                await broker.publish(event.topic, event)
                got = await asyncio.wait_for(anext(group), 10)
                await group.nack(got, f"KeyError: 'customer' ({n})")
            await group.aclose()
            return ids

    return asyncio.run(fail_them())


def test_dlq_list_shows_each_dead_letter_with_its_error(redis_server: RedisServer) -> None:
    """`dp events dlq list --json` prints one line per dead letter: event, deliveries, error."""
    prefix = f"cli{next(_prefixes)}"
    ids = bury(redis_server.url, prefix, 2)
    result = runner.invoke(
        app,
        ["events", "dlq", "list", "--bus", redis_server.url, "--prefix", prefix, "-g", "billing",
         "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    letters = [json.loads(line) for line in result.output.splitlines()]
    assert [letter["event_id"] for letter in letters] == ids
    assert letters[0]["error"] == "KeyError: 'customer' (0)"
    assert (letters[0]["topic"], letters[0]["deliveries"]) == ("orders.created", 1)


def test_dlq_replay_all_moves_them_back_to_the_group(redis_server: RedisServer) -> None:
    """`dp events dlq replay --all` replays every dead letter; the list is empty afterwards."""
    prefix = f"cli{next(_prefixes)}"
    bury(redis_server.url, prefix, 3)
    common = ["--bus", redis_server.url, "--prefix", prefix, "--group", "billing"]
    result = runner.invoke(app, ["events", "dlq", "replay", "--all", *common])
    assert result.exit_code == 0, result.output
    assert "replayed 3 dead letter(s) to group 'billing'" in result.output
    listed = runner.invoke(app, ["events", "dlq", "list", *common])
    assert "no dead letters in group 'billing'" in listed.output


def test_dlq_commands_refuse_unknown_groups_and_missing_buses(redis_server: RedisServer) -> None:
    """An unknown group, an unknown bus scheme and the in-memory bus each get a clear error."""
    unknown = runner.invoke(
        app, ["events", "dlq", "list", "--bus", redis_server.url, "--group", "nobody"]
    )
    assert unknown.exit_code == 2
    assert "'nobody': no such group" in unknown.output
    bad = runner.invoke(app, ["events", "dlq", "list", "--bus", "kafka://x", "--group", "g"])
    assert bad.exit_code == 2
    assert "kafka" in bad.output
    memory = runner.invoke(app, ["events", "dlq", "list", "--bus", "memory://", "-g", "g"])
    assert "lives inside its `dp serve` process" in memory.output
    nothing = runner.invoke(app, ["events", "dlq", "replay", "--bus", redis_server.url, "-g", "g"])
    assert nothing.exit_code == 2
    assert "or pass --all" in nothing.output
