"""`dp sources list`: the polling sources as the run store records them (every instance's)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dp import config
from dp.errors import DPError
from dp.store.records import SourceRecord

__all__ = ["sources_app"]

sources_app = typer.Typer(
    help="Polling sources: cursors, last polls, circuits, who polls them.",
    no_args_is_help=True,
)

_errors = Console(stderr=True)

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        metavar="URL",
        help="The run store, e.g. postgresql://dp@db/dp (default: $DP_STORE_URL, dp.toml, "
        "then ROOT/runs.db).",
    ),
]
RootOpt = Annotated[Path, typer.Option("--root", help="dp's state folder (the default store).")]


@sources_app.command("list")
def sources_list(
    store: StoreOpt = None,
    root: RootOpt = Path(".dp"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, one object each.")] = False,
) -> None:
    """List every source a `dp serve` polled: interval, last poll, last error, circuit,
    cursor and the instance holding it."""
    try:
        settings = config.resolve({"store": store}, home=root)
        run_store = config.open_store(settings, must_exist=True)
        try:
            records = run_store.list_sources()
        finally:
            run_store.close()
    except DPError as exc:
        _errors.print(f"error: {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
    console = Console()
    if as_json:
        for record in records:
            console.print_json(json.dumps(_jsonable(record)))
        return
    if not records:
        console.print(
            f"no sources polled yet in {config.mask(settings.store)}; `dp serve FILE` polls "
            "the @source functions of FILE.",
            highlight=False,
        )
        return
    table = Table("source", "topic", "every", "circuit", "last poll", "last error", "held by")
    table.add_column("cursor", overflow="fold")
    now = datetime.now(UTC)
    for record in records:
        held = record.holder if record.lease_until and record.lease_until > now else "-"
        table.add_row(
            record.name,
            record.topic,
            f"{record.every:g}s",
            record.circuit + (f" ({record.failures} failures)" if record.failures else ""),
            record.polled_at.isoformat(timespec="seconds") if record.polled_at else "never",
            escape(record.last_error or "-"),
            escape(held or "-"),
            escape(json.dumps(record.cursor)),
        )
    console.print(table)


def _jsonable(record: SourceRecord) -> dict[str, object]:
    return {
        "name": record.name,
        "topic": record.topic,
        "every": record.every,
        "cursor": record.cursor,
        "polled_at": record.polled_at.isoformat() if record.polled_at else None,
        "last_error": record.last_error,
        "failures": record.failures,
        "circuit": record.circuit,
        "holder": record.holder,
        "lease_until": record.lease_until.isoformat() if record.lease_until else None,
    }
