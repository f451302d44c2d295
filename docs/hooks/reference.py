"""MkDocs hook: the reference pages that are generated from the code, so they cannot drift.

- `reference/cli.md`: every `dp` command and option, from the typer app (typer's own generator);
- `reference/http.md`: every HTTP endpoint, from the service's OpenAPI schema;
- `reference/store-schema.md`: every table and column of the run store, from its SQLAlchemy
  metadata, for people who query it with psql or sqlite3.

The pages are built in memory on every `mkdocs build` / `mkdocs serve`; nothing is written to
`docs/`.
"""

from __future__ import annotations

import json
from typing import Any

import click
import sqlalchemy as sa
import typer
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from typer.cli import get_docs_for_click

GENERATED = "<!-- generated from the code by docs/hooks/reference.py: edit the code, not this -->\n\n"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for uri, content in (
        ("reference/cli.md", cli_reference()),
        ("reference/http.md", http_reference()),
        ("reference/store-schema.md", store_schema_reference()),
    ):
        files.append(File.generated(config, uri, content=GENERATED + content))
    return files


def cli_reference() -> str:
    from dp.cli import app

    command = typer.main.get_command(app)
    text: str = get_docs_for_click(obj=command, ctx=click.Context(command), name="dp")
    return "# Command line\n\n" + text.split("\n", 1)[1].lstrip()


def http_reference() -> str:
    from dp.engine import Orchestrator
    from dp.io import InMemoryIOManager
    from dp.service import Service
    from dp.service.api import create_app

    app = create_app(Service([], orchestrator=Orchestrator(io_manager=InMemoryIOManager())))
    schema = app.openapi()
    lines = [
        "# HTTP API",
        "",
        "`dp serve` serves this API (and the dashboard at `/`). The live, interactive version of",
        "this page is at `/docs` of a running server, and the schema at `/openapi.json`.",
        "Requests that change state need `Authorization: Bearer <token>` (see Serving).",
        "",
    ]
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            lines += [f"## `{method.upper()} {path}`", ""]
            if operation.get("summary"):
                lines += [f"**{operation['summary']}**", ""]
            if operation.get("description"):
                lines += [operation["description"].strip(), ""]
            parameters = operation.get("parameters", [])
            if parameters:
                lines += ["| parameter | in | type | required |", "|---|---|---|---|"]
                lines += [
                    f"| `{p['name']}` | {p['in']} | {_type(p.get('schema', {}))} | "
                    f"{'yes' if p.get('required') else 'no'} |"
                    for p in parameters
                ]
                lines.append("")
            body = operation.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                lines += [f"Request body ({media}): {_type(content.get('schema', {}))}", ""]
            responses = operation.get("responses", {})
            lines += ["| status | meaning | body |", "|---|---|---|"]
            for status, response in responses.items():
                content = response.get("content", {})
                shown = ", ".join(
                    f"{_type(c.get('schema', {}))} ({m})" for m, c in content.items()
                )
                lines.append(f"| {status} | {response.get('description', '')} | {shown} |")
            lines.append("")
    lines += ["## Schemas", ""]
    for name, component in schema.get("components", {}).get("schemas", {}).items():
        lines += [f"### {name}", ""]
        if component.get("description"):
            lines += [component["description"].strip(), ""]
        properties = component.get("properties", {})
        if properties:
            required = set(component.get("required", []))
            lines += ["| field | type | required | description |", "|---|---|---|---|"]
            for field, spec in properties.items():
                about = " ".join(spec.get("description", "").split())
                lines.append(
                    f"| `{field}` | {_type(spec)} | {'yes' if field in required else 'no'} "
                    f"| {about} |"
                )
            lines.append("")
    return "\n".join(lines)


def _type(schema: dict[str, Any]) -> str:
    """A JSON schema as a short type name, linking `$ref`s to their section."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{name.lower()})"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_type(s) for s in schema[key])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        extra = schema["additionalProperties"]
        return f"object of {_type(extra) if isinstance(extra, dict) else 'any'}"
    if "enum" in schema:
        return " \\| ".join(json.dumps(v) for v in schema["enum"])
    return str(kind or "any")


def store_schema_reference() -> str:
    from dp.store import schema

    metadata: sa.MetaData = schema._metadata
    lines = [
        "# Run store schema",
        "",
        f"Schema version {schema.SCHEMA_VERSION}, the same tables on SQLite and PostgreSQL.",
        "The version of a database is in `dp_meta`; opening an older one migrates it. Query",
        "the tables freely; write only through dp (the engine's writes are fenced by `epoch`).",
        "Times are UTC.",
        "",
        (schema.__doc__ or "").split("\n\n", 1)[1].strip(),
        "",
    ]
    for table in metadata.sorted_tables:
        lines += [f"## `{table.name}`", ""]
        if table.comment:
            lines += [table.comment, ""]
        lines += ["| column | type | null | key |", "|---|---|---|---|"]
        for column in table.columns:
            key = "primary" if column.primary_key else ""
            if column.foreign_keys:
                key = ", ".join(f"-> `{fk.target_fullname}`" for fk in column.foreign_keys)
            lines.append(
                f"| `{column.name}` | {_sql_type(column.type)} | "
                f"{'yes' if column.nullable else 'no'} | {key} |"
            )
        indexes = sorted(table.indexes, key=lambda i: str(i.name))
        for index in indexes:
            unique = "unique " if index.unique else ""
            columns = ", ".join(f"`{c.name}`" for c in index.columns)
            lines.append(f"\n{unique}index `{index.name}` on {columns}")
        for constraint in table.constraints:
            if isinstance(constraint, sa.UniqueConstraint) and constraint.columns:
                columns = ", ".join(f"`{c.name}`" for c in constraint.columns)
                lines.append(f"\nunique ({columns})")
        lines.append("")
    return "\n".join(lines)


def _sql_type(kind: sa.types.TypeEngine[Any]) -> str:
    try:
        return str(kind.compile(dialect=sa.dialects.postgresql.dialect()))
    except Exception:  # a type of dp's own with no PostgreSQL rendering: its class name
        return type(kind).__name__
