"""`dp events ...`: the event bus from the command line (dead letters of durable groups)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dp import config
from dp.errors import DPError, InvalidBusURLError
from dp.events.kafka_options import kafka_url
from dp.events.ports import Broker, DeadLetter

__all__ = ["events_app"]

T = TypeVar("T")

events_app = typer.Typer(help="Inspect the event bus.", no_args_is_help=True)
dlq_app = typer.Typer(
    help="Dead letters: events a durable group gave up on (poison at once, with the reason; "
    "others after max_deliveries).",
    no_args_is_help=True,
)
events_app.add_typer(dlq_app, name="dlq")

_console = Console()
_errors = Console(stderr=True)

BusOpt = Annotated[
    str | None,
    typer.Option(
        "--bus",
        help="The bus URL, e.g. redis://127.0.0.1:6379/0 (default: $DP_BUS_URL, then dp.toml).",
    ),
]
GroupOpt = Annotated[str, typer.Option("--group", "-g", help="The durable group, e.g. dp.service.")]
PrefixOpt = Annotated[str, typer.Option("--prefix", help="The bus's key prefix.")]


def _with_broker(url: str | None, prefix: str, work: Callable[..., Awaitable[T]]) -> T:
    try:
        url = config.resolve({"bus": url}).bus  # --bus, then DP_BUS_URL, then dp.toml
        if url.startswith("memory:"):
            raise InvalidBusURLError(
                url,
                "the in-memory bus lives inside its `dp serve` process, so its dead letters "
                "cannot be reached from here; use a redis:// or kafka:// bus",
            )

        async def run() -> T:
            # the networked buses need their extras (aiokafka, redis-py): imported when chosen
            if url.startswith("kafka://"):  # replays need no idempotent producer
                from dp.events.kafka import KafkaBroker

                quick = kafka_url(url, request_timeout=3.0, idempotence=False)
                async with KafkaBroker(quick) as kafka:
                    return await work(kafka)
            from dp.events.redis import RedisBroker

            async with RedisBroker(url, prefix=prefix, publish_timeout=3.0) as broker:
                return await work(broker)

        return asyncio.run(run())
    except DPError as exc:
        _errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


@dlq_app.command("list")
def list_dead_letters(
    group: GroupOpt,
    bus: BusOpt = None,
    prefix: PrefixOpt = "dp",
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List a group's dead letters, oldest first."""

    async def work(broker: Broker) -> list[DeadLetter]:
        return await broker.dead_letters(group, limit=limit)

    letters = _with_broker(bus, prefix, work)
    if as_json:
        for letter in letters:
            print(
                json.dumps(
                    {
                        "id": letter.id,
                        "group": letter.group,
                        "topic": letter.topic,
                        "event_id": letter.event.event_id if letter.event else None,
                        "deliveries": letter.deliveries,
                        "failed_at": letter.failed_at.isoformat(),
                        "error": letter.error,
                        "event": letter.raw,
                    }
                )
            )
        return
    if not letters:
        _console.print(f"no dead letters in group {group!r}")
        return
    table = Table(title=f"dead letters of {group}", title_justify="left")
    for column in ("id", "topic", "event id", "deliveries", "failed at", "error"):
        table.add_column(column)
    for letter in letters:
        table.add_row(
            letter.id,
            letter.topic,
            letter.event.event_id if letter.event else "(undecodable)",
            str(letter.deliveries),
            letter.failed_at.strftime("%Y-%m-%d %H:%M:%S"),
            escape(letter.error),
        )
    _console.print(table)


@dlq_app.command("replay")
def replay_dead_letters(
    group: GroupOpt,
    ids: Annotated[list[str] | None, typer.Argument(help="Dead letter ids (see `list`).")] = None,
    bus: BusOpt = None,
    prefix: PrefixOpt = "dp",
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
) -> None:
    """Deliver dead letters to their group again (the given ids, or --all)."""
    if not ids and not replay_all:
        _errors.print("[bold red]error:[/] name the dead letter ids to replay, or pass --all")
        raise typer.Exit(code=2)

    async def work(broker: Broker) -> int:
        return await broker.replay_dead_letters(group, None if replay_all else ids)

    count = _with_broker(bus, prefix, work)
    _console.print(f"replayed {count} dead letter(s) to group {group!r}")
    if ids and not replay_all and count < len(ids):
        _errors.print(f"{len(ids) - count} id(s) were not dead letters of {group!r}")
        raise typer.Exit(code=1)
