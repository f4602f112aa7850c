"""The ``herald`` command line (typer)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from config.settings import Settings, get_settings
from herald.logs import configure_logging

app = typer.Typer(help="Herald: notification and OTP delivery.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
config_app = typer.Typer(help="Settings.", no_args_is_help=True)
routing_app = typer.Typer(help="Routing rules.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(config_app, name="config")
app.add_typer(routing_app, name="routing")


def _settings() -> Settings:
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    return settings


def _run(coro: object) -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations to HERALD_DATABASE_URL."""
    from herald.storage.migrate import upgrade

    upgrade(_settings().database_url, revision)
    typer.echo(f"database at {revision}")


@app.command()
def dev(migrate: bool = True) -> None:
    """API, workers, outbox relay and dead-letter ingester in one process (the quick start)."""
    from herald.service import run_dev
    from herald.storage.migrate import upgrade

    settings = _settings()
    if migrate:
        upgrade(settings.database_url)
    _run(run_dev(settings))


@app.command()
def api() -> None:
    """The send API with its outbox relay."""
    from herald.service import run_api

    _run(run_api(_settings()))


@app.command()
def worker(
    queues: Annotated[
        list[str] | None, typer.Option("--queues", "-q", help="Queue names; default all.")
    ] = None,
    ingest: Annotated[bool, typer.Option(help="Also run the dead-letter ingester.")] = True,
) -> None:
    """A stateless delivery worker."""
    from herald.service import run_worker

    _run(run_worker(_settings(), queues, ingest=ingest))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Who uses the key (shown in audit logs).")],
    scopes: Annotated[
        str, typer.Option("--scopes", help="Comma-separated: send,otp,dlq:read,…")
    ] = "send",
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    from herald.storage.db import make_engine, make_session_factory
    from producer.auth import KeyStore

    settings = _settings()

    async def create() -> str:
        engine = make_engine(settings.database_url)
        try:
            return await KeyStore(make_session_factory(engine)).create(
                name, [s.strip() for s in scopes.split(",") if s.strip()]
            )
        finally:
            await engine.dispose()

    try:
        key = asyncio.run(create())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scopes") from None
    typer.echo(key)


@config_app.command("show")
def config_show() -> None:
    """Print the effective settings, secrets masked."""
    typer.echo(json.dumps(_settings().masked(), indent=2, default=str))


@routing_app.command("validate")
def routing_validate(file: Path) -> None:
    """Check a routing-rules document; print each problem with its path."""
    from router.rules import RulesError, load_rules_file

    try:
        rules = load_rules_file(file)
    except RulesError as exc:
        typer.echo(f"{file}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{file}: ok ({len(rules.providers)} providers, {len(rules.rules)} rules)")


if __name__ == "__main__":
    app()
