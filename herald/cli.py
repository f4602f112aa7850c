"""The ``herald`` command line (typer)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
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
sandbox_app = typer.Typer(help="Sandbox providers (development and tests).", no_args_is_help=True)
app.add_typer(routing_app, name="routing")
app.add_typer(sandbox_app, name="sandbox")
providers_app = typer.Typer(help="Providers: health, breakers, drain.", no_args_is_help=True)
app.add_typer(providers_app, name="providers")
otp_app = typer.Typer(help="One-time passcodes.", no_args_is_help=True)
app.add_typer(otp_app, name="otp")
dlq_app = typer.Typer(help="Dead letters: list, show, replay, discard.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


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

    settings = _settings().model_copy(update={"dev_mode": True})
    if migrate:
        upgrade(settings.database_url)
    _run(run_dev(settings))


def _production_settings(*, serves_api: bool = True) -> Settings:
    """The settings of ``herald api`` or ``worker``: refused with one line on stderr (no
    traceback) and exit status 78 when a secret is the default, short or missing."""
    from herald.service import EX_CONFIG, StartupRefused, refuse_insecure_start

    settings = _settings()
    try:
        refuse_insecure_start(settings, serves_api=serves_api)
    except StartupRefused as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EX_CONFIG) from None
    return settings


@app.command()
def api(
    workers: Annotated[
        int, typer.Option("--workers", "-w", min=1, help="API processes sharing the port.")
    ] = 1,
    reuse_port: Annotated[bool, typer.Option(hidden=True)] = False,
) -> None:
    """The send API with its outbox relay (``--workers N``: N processes on one port)."""
    from herald.service import run_api

    settings = _production_settings()
    if workers > 1:
        _supervise([["api", "--reuse-port"]] * workers, [{}] * workers, settings)
        return
    _run(run_api(settings, reuse_port=reuse_port))


@app.command()
def worker(
    queues: Annotated[
        list[str] | None, typer.Option("--queues", "-q", help="Queue names; default all.")
    ] = None,
    ingest: Annotated[bool, typer.Option(help="Also run the dead-letter ingester.")] = True,
    processes: Annotated[
        int, typer.Option("--processes", "-p", min=1, help="Worker processes to run.")
    ] = 1,
) -> None:
    """A stateless delivery worker (``--processes N``: N of them, one per core)."""
    from herald.service import run_worker

    settings = _production_settings(serves_api=False)
    if processes > 1:
        args = [
            "worker",
            *(f"--queues={q}" for q in queues or []),
            f"--{'' if ingest else 'no-'}ingest",
        ]
        # Each child serves its probes and metrics on a port of its own.
        envs = [
            {"HERALD_METRICS_PORT": str(settings.metrics_port + i)} if settings.metrics_port else {}
            for i in range(processes)
        ]
        _supervise([args] * processes, envs, settings)
        return
    _run(run_worker(settings, queues, ingest=ingest))


def _supervise(args: list[list[str]], envs: list[dict[str, str]], settings: Settings) -> None:
    """Run the children until SIGTERM; exit with their verdict."""
    from herald.supervisor import ChildSpec, Supervisor

    children = [ChildSpec(a, e) for a, e in zip(args, envs, strict=True)]
    supervisor = Supervisor(children, grace_s=settings.shutdown_grace_s)
    raise typer.Exit(asyncio.run(supervisor.run()))


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
        engine = make_engine(settings.database_url, wait_s=settings.database_wait_s)
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


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="The key's id, or its name if only one has it.")],
) -> None:
    """Revoke an API key: every running process refuses it at once (it is broadcast on
    Redis), and within HERALD_API_KEY_CACHE_S seconds if that broadcast is missed."""
    from herald.resources import make_redis
    from herald.storage.db import make_engine, make_session_factory
    from producer.auth import AmbiguousKey, KeyNotFound, KeyStore, Revoked

    settings = _settings()

    async def revoke() -> tuple[Revoked, bool]:
        engine = make_engine(settings.database_url, wait_s=settings.database_wait_s)
        redis = make_redis(settings)
        try:
            revoked = await KeyStore(make_session_factory(engine)).revoke(key)
            return revoked, await KeyStore.announce_revoked(redis, revoked.id)
        finally:
            await redis.aclose()
            await engine.dispose()

    try:
        revoked, told = asyncio.run(revoke())
    except (KeyNotFound, AmbiguousKey) as exc:
        typer.echo(f"herald: {exc}", err=True)
        raise typer.Exit(1) from None
    state = "was already revoked" if revoked.already else "revoked"
    typer.echo(f"{revoked.id} ({revoked.name}) {state}")
    if not told:
        typer.echo(
            f"warning: Redis is unreachable: running processes refuse the key within "
            f"{settings.api_key_cache_s:g} s, as their caches expire",
            err=True,
        )


@keys_app.command("list")
def keys_list() -> None:
    """Every API key (never the key itself): id, name, scopes, created, revoked."""
    from sqlalchemy import select

    from herald.storage.db import make_engine
    from herald.storage.models import ApiKey

    settings = _settings()

    async def rows() -> list[Any]:
        engine = make_engine(settings.database_url, wait_s=settings.database_wait_s)
        try:
            async with engine.connect() as conn:
                query = select(
                    ApiKey.id, ApiKey.name, ApiKey.scopes, ApiKey.created_at, ApiKey.revoked_at
                ).order_by(ApiKey.created_at)
                return list(await conn.execute(query))
        finally:
            await engine.dispose()

    for row in asyncio.run(rows()):
        revoked = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        typer.echo(
            f"{row.id}  {row.name:<24} {','.join(row.scopes):<32} "
            f"{row.created_at:%Y-%m-%d %H:%M}  {revoked}"
        )


@config_app.command("show")
def config_show() -> None:
    """Print the effective settings, secrets masked."""
    typer.echo(json.dumps(_settings().masked(), indent=2, default=str))


def _client(url: str | None, key: str | None) -> httpx.Client:
    if not key:
        raise typer.BadParameter("set HERALD_API_KEY or pass --key", param_hint="--key")
    base = url or f"http://127.0.0.1:{get_settings().api_port}"
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def _show(response: httpx.Response) -> None:
    """Print the answer; a problem+json error goes to stderr with a non-zero exit."""
    body = response.json() if response.content else {}
    if response.is_error:
        typer.echo(
            f"{response.status_code} {body.get('title', '')}: {body.get('detail', '')}", err=True
        )
        for error in body.get("errors", []):
            typer.echo(f"  {error['field']}: {error['message']}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(body, indent=2))


UrlOption = Annotated[str | None, typer.Option("--url", help="Herald's base URL.")]
KeyOption = Annotated[str | None, typer.Option("--key", envvar="HERALD_API_KEY", help="API key.")]


@app.command()
def send(
    channel: Annotated[str, typer.Option(help="sms, email or push")],
    to: Annotated[str, typer.Option(help="E.164 number, e-mail address or device token")],
    body: Annotated[str, typer.Option(help="The message text")],
    category: str = "transactional",
    subject: Annotated[str | None, typer.Option(help="E-mail subject or push title")] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Send one notification through the API (for on-call checks and demos)."""
    payload = {"channel": channel, "to": to, "category": category, "body": body}
    if subject is not None:
        payload["subject"] = subject
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    with _client(url, key) as client:
        _show(client.post("/v1/notifications", json=payload, headers=headers))


@sandbox_app.command("set")
def sandbox_set(
    name: str,
    mode: Annotated[str, typer.Option(help="ok, transient or permanent")] = "ok",
    fail_rate: Annotated[float, typer.Option(help="Share of sends that fail, 0..1")] = 1.0,
    latency_ms: Annotated[float, typer.Option(help="Added latency per send")] = 0,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Make a sandbox provider slow or failing, for every worker at once."""
    with _client(url, key) as client:
        _show(
            client.put(
                f"/v1/sandbox/providers/{name}",
                json={"mode": mode, "fail_rate": fail_rate, "latency_ms": latency_ms},
            )
        )


@sandbox_app.command("messages")
def sandbox_messages(
    notification_id: Annotated[str | None, typer.Option("--id")] = None,
    limit: int = 20,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """What the sandbox providers "sent", newest first."""
    params: dict[str, str | int] = {"limit": limit}
    if notification_id:
        params["notification_id"] = notification_id
    with _client(url, key) as client:
        _show(client.get("/v1/sandbox/messages", params=params))


@routing_app.command("validate")
def routing_validate(
    file: Path,
    check_env: Annotated[
        bool,
        typer.Option(
            "--env/--no-env",
            help="Check that every credential's env: variable is set here (--no-env for CI).",
        ),
    ] = True,
) -> None:
    """Check a routing-rules document (YAML or JSON); print every problem with its path."""
    import yaml

    from router.rules import RulesError, load_document, parse_rules
    from router.validation import RulesPolicy, validate_document

    policy = RulesPolicy.from_settings(Settings())  # this deployment's prefixes, endpoints
    try:
        raw = file.read_bytes()
        as_json = file.suffix.lower() == ".json"
        doc = load_document(raw, as_json=as_json, limits=policy.limits)
    except RulesError as exc:  # too big, too deep, or YAML aliases
        typer.echo(f"{file}: {exc}", err=True)
        raise typer.Exit(1) from None
    except (OSError, ValueError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())
        typer.echo(f"{file}: $: cannot read the document: {reason}", err=True)
        raise typer.Exit(1) from None
    issues = validate_document(doc, check_env=check_env, policy=policy)
    for issue in issues:
        typer.echo(f"{file}: {issue}", err=True)
    if any(issue.severity == "error" for issue in issues):
        raise typer.Exit(1)
    try:
        rules = parse_rules(doc)
    except RulesError as exc:  # the schema and the parser disagree: still a named path
        typer.echo(f"{file}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{file}: ok ({len(rules.providers)} providers, {len(rules.rules)} rules)")


if __name__ == "__main__":
    app()


def _read_document(path: Path) -> Any:
    import yaml

    from router.rules import RulesError, load_yaml

    try:
        return load_yaml(path.read_bytes())
    except (OSError, yaml.YAMLError, RulesError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="FILE") from None


@routing_app.command("get")
def routing_get(url: UrlOption = None, key: KeyOption = None) -> None:
    """Print the rules in force as YAML (the version and ETag go to stderr)."""
    with _client(url, key) as client:
        response = client.get("/v1/routing/rules", headers={"Accept": "application/yaml"})
        if response.is_error:
            _show(response)
        typer.echo(
            f"# version {response.headers['x-herald-rules-version']}, "
            f"ETag {response.headers['etag']}",
            err=True,
        )
        typer.echo(response.text, nl=False)


@routing_app.command("put")
def routing_put(
    file: Path,
    if_match: Annotated[
        str | None, typer.Option("--if-match", help="ETag you edited; default: the current one")
    ] = None,
    comment: Annotated[str | None, typer.Option(help="Why (kept with the version)")] = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Save FILE as the new rules (validated by the server; every version is kept)."""
    document = _read_document(file)
    with _client(url, key) as client:
        etag = if_match or client.get("/v1/routing/rules").headers.get("etag", "*")
        params = {"comment": comment} if comment else {}
        _show(
            client.put(
                "/v1/routing/rules", json=document, headers={"If-Match": etag}, params=params
            )
        )


@routing_app.command("versions")
def routing_versions(url: UrlOption = None, key: KeyOption = None) -> None:
    """Every saved version, newest first, with who saved it and why."""
    with _client(url, key) as client:
        response = client.get("/v1/routing/rules/versions")
        if response.is_error:
            _show(response)
        for item in response.json()["items"]:
            typer.echo(
                f"{item['version']:>5}  {item['created_at'][:19]}  {item['created_by']:<20} "
                f"{item['comment'] or ''}"
            )


@routing_app.command("diff")
def routing_diff(
    from_version: Annotated[int | None, typer.Argument(help="default: the previous")] = None,
    to_version: Annotated[int | None, typer.Argument(help="default: the current")] = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """What changed between two versions (unified diff)."""
    params = {k: v for k, v in (("from", from_version), ("to", to_version)) if v is not None}
    with _client(url, key) as client:
        response = client.get("/v1/routing/rules/diff", params=params)
        if response.is_error:
            _show(response)
        typer.echo(response.json()["diff"] or "(no difference)", nl=False)


@routing_app.command("rollback")
def routing_rollback(version: int, url: UrlOption = None, key: KeyOption = None) -> None:
    """Put an earlier version back in force (saved as a new version)."""
    with _client(url, key) as client:
        _show(client.post("/v1/routing/rules/rollback", json={"version": version}))


@routing_app.command("simulate")
def routing_simulate(
    channel: Annotated[str, typer.Option()],
    to: Annotated[str, typer.Option()],
    category: str = "transactional",
    caller: str | None = None,
    file: Annotated[Path | None, typer.Option("--file", help="An unsaved rules document")] = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Where would this message go, and why?"""
    body: dict[str, Any] = {"channel": channel, "to": to, "category": category}
    if caller:
        body["caller"] = caller
    if file is not None:
        body["rules"] = _read_document(file)
    with _client(url, key) as client:
        response = client.post("/v1/routing/simulate", json=body)
        if response.is_error:
            _show(response)
        result = response.json()
        typer.echo(
            f"rule: {result['rule'] or '(none matches)'}   rules version {result['version']}"
        )
        for c in result["candidates"]:
            health = "healthy" if c["healthy"] else "UNHEALTHY"
            typer.echo(
                f"  tier {c['tier']}  {c['provider']:<24} {c['cost']:<8} {health:<9} {c['reason']}"
            )


@providers_app.command("list")
def providers_list(url: UrlOption = None, key: KeyOption = None) -> None:
    """Every provider: breaker, recent success rate, p95 latency, cost."""
    with _client(url, key) as client:
        response = client.get("/v1/providers")
        if response.is_error:
            _show(response)
        typer.echo(
            f"{'provider':<24} {'channel':<7} {'breaker':<10} {'success':>8} {'p95 ms':>8}  cost"
        )
        for p in response.json()["items"]:
            rate = "-" if p["success_rate"] is None else f"{p['success_rate']:.1%}"
            p95 = "-" if p["p95_ms"] is None else f"{p['p95_ms']:.0f}"
            forced = " (forced)" if p["override"] else ""
            typer.echo(
                f"{p['name']:<24} {p['channel']:<7} {p['breaker'] + forced:<10} {rate:>8} "
                f"{p95:>8}  {p['cost']}"
            )


def _breaker(name: str, state: str, url: str | None, key: str | None) -> None:
    with _client(url, key) as client:
        _show(client.put(f"/v1/providers/{name}/breaker", json={"state": state}))


@providers_app.command("drain")
def providers_drain(name: str, url: UrlOption = None, key: KeyOption = None) -> None:
    """Force a provider's breaker open: it gets no traffic until `herald providers auto`."""
    _breaker(name, "open", url, key)


@providers_app.command("force-close")
def providers_force_close(name: str, url: UrlOption = None, key: KeyOption = None) -> None:
    """Force a provider's breaker closed, whatever its failure rate."""
    _breaker(name, "closed", url, key)


@providers_app.command("auto")
def providers_auto(name: str, url: UrlOption = None, key: KeyOption = None) -> None:
    """Hand the breaker back to the failure rate."""
    _breaker(name, "auto", url, key)


@otp_app.command("send")
def otp_send(
    to: Annotated[str, typer.Option(help="E.164 number or e-mail address")],
    channel: Annotated[str, typer.Option(help="sms or email")] = "sms",
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Send a one-time passcode (on-call check: does OTP delivery work end to end?)."""
    with _client(url, key) as client:
        _show(client.post("/v1/otp", json={"to": to, "channel": channel}))


@otp_app.command("verify")
def otp_verify(
    to: Annotated[str, typer.Option(help="The recipient the code was sent to")],
    code: Annotated[str, typer.Option(help="The code as received")],
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Check a code: prints {valid, attempts_left}; exit 1 when locked (429)."""
    with _client(url, key) as client:
        _show(client.post("/v1/otp/verify", json={"to": to, "code": code}))


def _given(**options: Any) -> dict[str, Any]:
    """The options the user set (a filter left out is not sent as null)."""
    return {name: value for name, value in options.items() if value is not None}


@dlq_app.command("list")
def dlq_list(
    channel: str | None = None,
    provider: str | None = None,
    reason: str | None = None,
    since: Annotated[
        str | None, typer.Option(help="ISO time with zone, e.g. 2026-01-01T00:00Z")
    ] = None,
    limit: int = 50,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Dead letters, newest first, as a table."""
    params = _given(channel=channel, provider=provider, reason=reason, since=since, limit=limit)
    with _client(url, key) as client:
        response = client.get("/v1/dlq", params=params)
        if response.is_error:
            _show(response)
        items = response.json()["items"]
        typer.echo(
            f"{'dead letter':<36}  {'when':<19}  {'ch':<5} {'reason':<16} {'provider':<18} error"
        )
        for i in items:
            typer.echo(
                f"{i['id']:<36}  {i['dead_lettered_at'][:19]}  {i['channel']:<5} {i['reason']:<16} "
                f"{(i['last_provider'] or '-'):<18} {(i['last_error'] or '')[:60]}"
            )
        typer.echo(
            f"{len(items)} shown"
            + (" (more: use the API's cursor)" if response.json()["next_cursor"] else "")
        )


@dlq_app.command("show")
def dlq_show(dead_letter_id: str, url: UrlOption = None, key: KeyOption = None) -> None:
    """One dead letter with its payload (masked) and attempt history."""
    with _client(url, key) as client:
        _show(client.get(f"/v1/dlq/{dead_letter_id}"))


@dlq_app.command("replay")
def dlq_replay(
    dead_letter_id: str,
    provider: Annotated[str | None, typer.Option(help="Send through this provider instead")] = None,
    reason: str | None = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Send one dead letter again (refused when expired, skipped when already sent)."""
    body = {k: v for k, v in {"provider": provider, "reason": reason}.items() if v}
    with _client(url, key) as client:
        _show(client.post(f"/v1/dlq/{dead_letter_id}/replay", json=body))


@dlq_app.command("discard")
def dlq_discard(
    dead_letter_id: str,
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log)")],
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Give up on a dead letter for good."""
    with _client(url, key) as client:
        response = client.request("DELETE", f"/v1/dlq/{dead_letter_id}", json={"reason": reason})
        if response.is_error:
            _show(response)
        typer.echo(f"discarded {dead_letter_id}")


@dlq_app.command("replay-all")
def dlq_replay_all(
    channel: str | None = None,
    provider: Annotated[str | None, typer.Option(help="Whose last provider was this")] = None,
    reason: str | None = None,
    since: str | None = None,
    override_provider: Annotated[str | None, typer.Option(help="Send through this one")] = None,
    max_per_s: Annotated[float, typer.Option(help="At most this many replays a second")] = 10,
    dry_run: Annotated[bool, typer.Option(help="Only count them and show a sample")] = False,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Replay every open dead letter matching the filter, with a progress bar."""
    body = _given(
        channel=channel,
        provider=provider,
        reason=reason,
        since=since,
        override_provider=override_provider,
    )
    with _client(url, key) as client:
        if dry_run:
            _show(client.post("/v1/dlq/replay", json={**body, "dry_run": True}))
            return
        started = client.post("/v1/dlq/replay", json={**body, "max_per_s": max_per_s})
        if started.is_error:
            _show(started)
        replay_id, total = started.json()["replay_id"], started.json()["count"]
        typer.echo(f"bulk replay {replay_id}: {total} dead letters at most {max_per_s}/s")
        with typer.progressbar(length=total, label="replaying") as bar:
            seen = 0
            while True:
                state = client.get(f"/v1/dlq/replays/{replay_id}").json()
                handled = state["replayed"] + state["skipped"] + state["refused"]
                bar.update(handled - seen)
                seen = handled
                if state["state"] == "done":
                    break
                time.sleep(0.5)
        typer.echo(
            f"replayed {state['replayed']}, skipped {state['skipped']} (already sent), "
            f"refused {state['refused']} (expired or already handled)"
        )
