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
from producer.routing_changes import RulesEditor
from router.health import BreakerBoard
from router.simulate import simulate
from router.store import RulesStore, StaleRules, diff, to_yaml
from router.validation import RulesInvalid, ValidationIssue, parse_and_validate, validate_document

router = APIRouter(prefix="/console/routing", include_in_schema=False)
Reader = Annotated[Viewer, Depends(needs("routing:read"))]
Writer = Annotated[Viewer, Depends(needs("routing:write"))]


def parse_draft(text: str) -> tuple[Any, list[ValidationIssue]]:
    """The edited YAML (or JSON, which is YAML) and every issue with it."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "the document"
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [ValidationIssue("$", f"not valid YAML at {where}: {problem}")]
    return document, validate_document(document)


async def _page(
    request: Request,
    seen: Viewer,
    *,
    draft: str | None = None,
    issues: list[ValidationIssue] | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    store: RulesStore = request.app.state.rules_store
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
    _, issues = parse_draft(str(form.get("document") or ""))
    return render(request, "_validation.html", seen, issues=issues)


@router.post("", response_class=HTMLResponse)
async def save(request: Request, seen: Writer) -> Response:
    form = await checked_form(request, seen)
    text = str(form.get("document") or "")
    document, issues = parse_draft(text)
    if any(i.severity == "error" for i in issues):
        return await _page(request, seen, draft=text, issues=issues, status=422)
    editor: RulesEditor = request.app.state.rules_editor
    try:
        saved, warnings = await editor.save(
            document,
            if_match=str(form.get("etag") or ""),
            who=seen.principal.name,
            comment=str(form.get("comment") or "").strip() or None,
        )
    except RulesInvalid as exc:  # the editor validates again: the same rules as the API
        return await _page(request, seen, draft=text, issues=list(exc.issues), status=422)
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
    if form.get("against") == "draft":
        document, issues = parse_draft(str(form.get("document") or ""))
        try:
            rules = parse_and_validate(document, version=0, check_env=False)
        except RulesInvalid:
            return render(
                request,
                "_simulation.html",
                seen,
                error="The draft has errors; fix them to simulate against it.",
                issues=issues,
            )
    else:
        rules = request.app.state.rules_source.current()
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
        )
    except KeyError:
        raise ConsoleRefused(404, f"There is no rules version {version}.") from None
    except StaleRules:
        return await _page(
            request, seen, status=409, error="The rules changed since you loaded this page."
        )
    notice = f"Rolled back: version {saved.version} restores version {version}."
    return go(request, "/console/routing?" + _query(notice=notice))


def _query(**params: str) -> str:
    return urlencode(params)
