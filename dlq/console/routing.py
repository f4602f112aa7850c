"""The routing page: the rules in force as YAML, an editor that validates as you type,
a simulator (against the saved rules or the draft), the diff with the previous version,
and rollback. Saving goes through the same editor as the API, audit entry included."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import yaml
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from dlq.console.web import ConsoleRefused, Viewer, checked_form, go, needs, render
from herald.domain import Category, Channel
from producer.routing_changes import NeedsAdmin, RulesEditor, check_privilege, document_of
from router.health import BreakerBoard
from router.rules import DocumentRefused, RoutingRules, RulesError, load_yaml, parse_rules
from router.simulate import simulate
from router.store import RulesStore, StaleRules, diff, to_yaml
from router.validation import (
    RulesInvalid,
    RulesPolicy,
    ValidationIssue,
    run_check,
    validate_document,
)

router = APIRouter(prefix="/console/routing", include_in_schema=False)
Reader = Annotated[Viewer, Depends(needs("routing:read"))]
Writer = Annotated[Viewer, Depends(needs("routing:write"))]


def parse_draft(
    text: str, policy: RulesPolicy, *, check_env: bool = True
) -> tuple[Any, list[ValidationIssue]]:
    """The edited YAML (or JSON, which is YAML) and every issue with it (blocking: call
    it through ``checked_draft``)."""
    try:
        document = load_yaml(text, policy.limits)
    except DocumentRefused as exc:
        return None, [ValidationIssue(exc.path, exc.message)]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "the document"
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [ValidationIssue("$", f"not valid YAML at {where}: {problem}")]
    return document, validate_document(document, policy=policy, check_env=check_env)


async def checked_draft(
    request: Request, text: str, *, check_env: bool = True
) -> tuple[Any, list[ValidationIssue]]:
    """``parse_draft`` off the event loop, within the store's limits and time."""
    policy = _store(request).policy
    try:
        return await run_check(
            lambda: parse_draft(text, policy, check_env=check_env), policy.limits
        )
    except DocumentRefused as exc:
        return None, [ValidationIssue(exc.path, exc.message)]


def _store(request: Request) -> RulesStore:
    store: RulesStore = request.app.state.rules_store
    return store


def _admin_only(exc: NeedsAdmin) -> str:
    return (
        "Only an admin key may change a provider's type, endpoint or credentials "
        f"({', '.join(exc.fields)}). Ask an admin to make that change."
    )


async def _page(
    request: Request,
    seen: Viewer,
    *,
    draft: str | None = None,
    issues: list[ValidationIssue] | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    store = _store(request)
    current = await store.current()
    previous = await store.get(current.version - 1) if current.version > 1 else None
    return render(
        request,
        "routing.html",
        seen,
        status=status,
        current=current,
        draft=draft if draft is not None else to_yaml(current.document),
        issues=issues,
        error=error,
        diff_lines=diff(previous, current).splitlines() if previous else None,
        previous=previous,
        versions=await store.history(20),
        channels=[c.value for c in Channel],
        categories=[c.value for c in Category],
        notice=request.query_params.get("notice"),
    )


@router.get("", response_class=HTMLResponse)
async def routing_page(request: Request, seen: Reader) -> HTMLResponse:
    return await _page(request, seen)


@router.post("/validate", response_class=HTMLResponse)
async def validate(request: Request, seen: Reader) -> HTMLResponse:
    """Called by htmx as the draft changes: the issues, each at its path, or a pass."""
    form = await checked_form(request, seen)
    _, issues = await checked_draft(request, str(form.get("document") or ""))
    return render(request, "_validation.html", seen, issues=issues)


@router.post("", response_class=HTMLResponse)
async def save(request: Request, seen: Writer) -> Response:
    form = await checked_form(request, seen)
    text = str(form.get("document") or "")
    document, issues = await checked_draft(request, text)
    if document is not None:  # the privilege first, as the API: 403 before any 422
        try:
            current = await _store(request).current()
            check_privilege(current.document, document, admin=seen.can("admin"))
        except NeedsAdmin as exc:
            return await _page(request, seen, draft=text, status=403, error=_admin_only(exc))
    if any(i.severity == "error" for i in issues):
        return await _page(request, seen, draft=text, issues=issues, status=422)
    editor: RulesEditor = request.app.state.rules_editor
    try:
        saved, warnings = await editor.save(
            document,
            if_match=str(form.get("etag") or ""),
            who=seen.principal.name,
            comment=str(form.get("comment") or "").strip() or None,
            admin=seen.can("admin"),
        )
    except NeedsAdmin as exc:
        return await _page(request, seen, draft=text, status=403, error=_admin_only(exc))
    except RulesInvalid as exc:  # the editor validates again: the same rules as the API
        return await _page(request, seen, draft=text, issues=list(exc.issues), status=422)
    except DocumentRefused as exc:
        issues = [ValidationIssue(exc.path, exc.message)]
        return await _page(request, seen, draft=text, issues=issues, status=422)
    except StaleRules:
        return await _page(
            request,
            seen,
            draft=text,
            status=409,
            error="Someone saved another version while you edited. Your draft is below; "
            "compare it with the new version, then save again.",
        )
    notice = f"Saved version {saved.version}" + (
        f" with {len(warnings)} warning(s)." if warnings else "."
    )
    return go(request, "/console/routing?" + _query(notice=notice))


@router.post("/simulate", response_class=HTMLResponse)
async def simulate_message(request: Request, seen: Reader) -> HTMLResponse:
    form = await checked_form(request, seen)
    try:
        channel = Channel(str(form.get("channel")))
        category = Category(str(form.get("category") or "transactional"))
    except ValueError:
        raise ConsoleRefused(422, "Pick a channel and a category.") from None
    to = str(form.get("to") or "").strip()
    if not to:
        return render(request, "_simulation.html", seen, error="Enter a recipient.")
    rules: RoutingRules = request.app.state.rules_source.current()
    if form.get("against") == "draft":
        text = str(form.get("document") or "")
        document, issues = await checked_draft(request, text, check_env=False)
        if any(i.severity == "error" for i in issues):
            return render(
                request,
                "_simulation.html",
                seen,
                error="The draft has errors; fix them to simulate against it.",
                issues=issues,
            )
        try:
            check_privilege(document_of(rules), document, admin=seen.can("admin"))
        except NeedsAdmin as exc:
            return render(request, "_simulation.html", seen, error=_admin_only(exc))
        try:  # only planned over: no provider is built from a draft, nothing is sent
            rules = parse_rules(document, version=0)
        except RulesError as exc:
            return render(request, "_simulation.html", seen, error=str(exc))
    board: BreakerBoard = request.app.state.breakers
    result = await simulate(
        rules,
        board,
        channel=channel,
        to=to,
        category=category,
        caller=str(form.get("caller") or "") or None,
    )
    return render(request, "_simulation.html", seen, result=result, against=form.get("against"))


@router.post("/rollback")
async def rollback(request: Request, seen: Writer) -> Response:
    form = await checked_form(request, seen)
    try:
        version = int(str(form.get("version")))
    except ValueError:
        raise ConsoleRefused(422, "Pick a version to roll back to.") from None
    editor: RulesEditor = request.app.state.rules_editor
    try:
        saved = await editor.rollback(
            version,
            if_match=str(form.get("etag") or ""),
            who=seen.principal.name,
            comment=str(form.get("comment") or "").strip() or None,
            admin=seen.can("admin"),
        )
    except KeyError:
        raise ConsoleRefused(404, f"There is no rules version {version}.") from None
    except NeedsAdmin as exc:
        return await _page(request, seen, status=403, error=_admin_only(exc))
    except (RulesInvalid, DocumentRefused) as exc:
        issues = list(exc.issues) if isinstance(exc, RulesInvalid) else []
        return await _page(
            request,
            seen,
            status=422,
            issues=issues,
            error=f"Version {version} does not pass today's checks: {exc}",
        )
    except StaleRules:
        return await _page(
            request, seen, status=409, error="The rules changed since you loaded this page."
        )
    notice = f"Rolled back: version {saved.version} restores version {version}."
    return go(request, "/console/routing?" + _query(notice=notice))


def _query(**params: str) -> str:
    return urlencode(params)
