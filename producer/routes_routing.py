"""Routing rules product teams can read, change, test before saving, and roll back."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import yaml
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from herald.domain import Category, Channel
from producer.auth import Principal
from producer.deps import require
from producer.problems import Problem
from producer.routing_changes import RulesEditor
from router.health import BreakerBoard
from router.rules import RoutingRules
from router.simulate import simulate as simulate_plan
from router.store import RulesStore, StaleRules, StoredRules, diff, to_yaml
from router.validation import (
    RulesInvalid,
    ValidationIssue,
    parse_and_validate,
)

router = APIRouter(prefix="/v1/routing", tags=["routing"])
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def _store(request: Request) -> RulesStore:
    store: RulesStore = request.app.state.rules_store
    return store


def _meta(stored: StoredRules) -> dict[str, Any]:
    return {
        "version": stored.version,
        "etag": stored.etag,
        "created_by": stored.created_by,
        "created_at": stored.created_at.isoformat(),
        "comment": stored.comment,
    }


def _issues(issues: list[ValidationIssue]) -> list[dict[str, str]]:
    return [{"field": i.path, "message": i.message, "severity": i.severity} for i in issues]


def _invalid(issues: list[ValidationIssue]) -> Problem:
    errors = [i for i in issues if i.severity == "error"]
    return Problem(
        422,
        "Invalid routing rules",
        "; ".join(f"{i.path}: {i.message}" for i in errors),
        errors=[{"field": i.path, "message": i.message} for i in errors],
    )


async def _document(request: Request) -> Any:
    raw = await request.body()
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    try:
        if content_type in YAML_TYPES:
            return yaml.safe_load(raw)
        return orjson.loads(raw)
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        raise Problem(
            422,
            "Unreadable document",
            f"the body is not valid {content_type}: {exc}",
            errors=[{"field": "$", "message": "not valid YAML or JSON"}],
        ) from None


@router.get("/rules")
async def get_rules(
    request: Request, _: Annotated[Principal, Depends(require("routing:read"))]
) -> Response:
    """The rules in force. ``Accept: application/yaml`` returns the document as YAML."""
    current = await _store(request).current()
    headers = {"ETag": current.etag, "X-Herald-Rules-Version": str(current.version)}
    if any(t in request.headers.get("accept", "") for t in YAML_TYPES):
        return Response(to_yaml(current.document), media_type="application/yaml", headers=headers)
    return JSONResponse({**_meta(current), "document": current.document}, headers=headers)


@router.put("/rules")
async def put_rules(
    request: Request,
    principal: Annotated[Principal, Depends(require("routing:write"))],
    if_match: Annotated[str | None, Header(alias="If-Match")] = None,
    comment: Annotated[str | None, Query(max_length=500)] = None,
) -> JSONResponse:
    """Replace the rules (YAML or JSON). Needs the ETag you read as ``If-Match``."""
    if not if_match:
        raise Problem(
            428,
            "Precondition required",
            "send the ETag of the rules you edited as If-Match",
            errors=[{"field": "If-Match", "message": "is required"}],
        )
    document = await _document(request)
    editor: RulesEditor = request.app.state.rules_editor
    try:
        saved, issues = await editor.save(
            document, if_match=if_match, who=principal.name, comment=comment
        )
    except RulesInvalid as exc:
        raise _invalid(list(exc.issues)) from None
    except StaleRules as exc:
        raise Problem(412, "Precondition failed", str(exc)) from None
    return JSONResponse(
        {"version": saved.version, "etag": saved.etag, "warnings": _issues(issues)},
        headers={"ETag": saved.etag},
    )


@router.get("/rules/versions")
async def list_versions(
    request: Request,
    _: Annotated[Principal, Depends(require("routing:read"))],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    return {"items": [_meta(s) for s in await _store(request).history(limit)]}


@router.get("/rules/versions/{version}")
async def get_version(
    request: Request, version: int, _: Annotated[Principal, Depends(require("routing:read"))]
) -> dict[str, Any]:
    stored = await _store(request).get(version)
    if stored is None:
        raise Problem(404, "Not found", f"no rules version {version}")
    return {**_meta(stored), "document": stored.document}


@router.get("/rules/diff")
async def diff_versions(
    request: Request,
    _: Annotated[Principal, Depends(require("routing:read"))],
    from_version: Annotated[int | None, Query(alias="from")] = None,
    to_version: Annotated[int | None, Query(alias="to")] = None,
) -> dict[str, Any]:
    """A unified diff between two versions (default: the previous and the current)."""
    store = _store(request)
    to_stored = await store.get(to_version) if to_version else await store.current()
    if to_stored is None:
        raise Problem(404, "Not found", f"no rules version {to_version}")
    from_number = from_version if from_version is not None else max(to_stored.version - 1, 1)
    from_stored = await store.get(from_number)
    if from_stored is None:
        raise Problem(404, "Not found", f"no rules version {from_number}")
    return {
        "from": from_stored.version,
        "to": to_stored.version,
        "diff": diff(from_stored, to_stored),
    }


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int
    comment: str | None = None


@router.post("/rules/rollback")
async def rollback(
    request: Request,
    body: RollbackRequest,
    principal: Annotated[Principal, Depends(require("routing:write"))],
    if_match: Annotated[str | None, Header(alias="If-Match")] = None,
) -> JSONResponse:
    """Put an earlier version back in force (saved as a new version)."""
    editor: RulesEditor = request.app.state.rules_editor
    try:
        saved = await editor.rollback(
            body.version, if_match=if_match or "*", who=principal.name, comment=body.comment
        )
    except KeyError:
        raise Problem(
            404,
            "Not found",
            f"no rules version {body.version}",
            errors=[{"field": "version", "message": "no such version"}],
        ) from None
    except StaleRules as exc:
        raise Problem(412, "Precondition failed", str(exc)) from None
    return JSONResponse(
        {"version": saved.version, "etag": saved.etag}, headers={"ETag": saved.etag}
    )


class SimulateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    to: str
    category: Category = Category.TRANSACTIONAL
    caller: str | None = None
    rules: dict[str, Any] | None = None


@router.post("/simulate")
async def simulate(
    request: Request,
    body: SimulateRequest,
    _: Annotated[Principal, Depends(require("routing:read"))],
) -> dict[str, Any]:
    """Where would this message go, and why? Optionally against an unsaved document."""
    if body.rules is not None:
        try:
            rules: RoutingRules = parse_and_validate(body.rules, version=0, check_env=False)
        except RulesInvalid as exc:
            raise _invalid(list(exc.issues)) from None
    else:
        rules = request.app.state.rules_source.current()
    board: BreakerBoard = request.app.state.breakers
    return await simulate_plan(
        rules, board, channel=body.channel, to=body.to, category=body.category, caller=body.caller
    )
