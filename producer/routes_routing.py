"""Routing rules product teams can read, change, test before saving, and roll back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import orjson
import yaml
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from herald.domain import Category, Channel
from producer.auth import Principal
from producer.deps import require
from producer.jsonbody import check_values, is_json
from producer.problems import Problem
from producer.routing_changes import NeedsAdmin, RulesEditor, check_privilege, document_of
from producer.validation import INT32_MAX, StrictInt
from router.health import BreakerBoard
from router.rules import DocumentRefused, RoutingRules, load_document
from router.simulate import simulate as simulate_plan
from router.store import RulesStore, StaleRules, StoredRules, diff, to_yaml
from router.validation import (
    RulesInvalid,
    ValidationIssue,
    parse_and_validate,
    run_check,
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


def _refused(exc: DocumentRefused) -> Problem:
    return Problem(
        422,
        "Unreadable document",
        f"{exc.path}: {exc.message}",
        errors=[{"field": exc.path, "message": exc.message}],
    )


def _needs_admin(exc: NeedsAdmin) -> Problem:
    return Problem(
        403,
        "Forbidden",
        f"only an admin key may change a provider's type, endpoint or credentials: "
        f"{', '.join(exc.fields)}",
        errors=[
            {
                "field": f,
                "message": "changing this needs an admin key (routing:write is not enough)",
            }
            for f in exc.fields
        ],
    )


async def _document(request: Request) -> Any:
    """The body as a document: YAML (no aliases) or JSON, within the store's limits,
    parsed off the event loop."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if content_type not in YAML_TYPES and not is_json(content_type):
        raise Problem(
            415,
            "Unsupported media type",
            "send the rules as application/json or application/yaml",
            errors=[{"field": "Content-Type", "message": "must be JSON or YAML"}],
        )
    limits = _store(request).policy.limits
    as_json = content_type not in YAML_TYPES
    try:
        document = await run_check(
            lambda: load_document(raw, as_json=as_json, limits=limits), limits
        )
        if not as_json:  # a JSON body had these checks before any route (producer.jsonbody)
            check_values(document, max_depth=limits.max_depth)
        return document
    except DocumentRefused as exc:
        raise _refused(exc) from None
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise Problem(
            422,
            "Unreadable document",
            f"the body is not valid {'JSON' if as_json else 'YAML'}: {reason}",
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
    with _edit_problems():
        saved, issues = await editor.save(
            document,
            if_match=if_match,
            who=principal.name,
            comment=comment,
            admin=principal.allows("admin"),
        )
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
    request: Request,
    version: Annotated[int, Path(ge=1, le=INT32_MAX)],
    _: Annotated[Principal, Depends(require("routing:read"))],
) -> dict[str, Any]:
    stored = await _store(request).get(version)
    if stored is None:
        raise Problem(404, "Not found", f"no rules version {version}")
    return {**_meta(stored), "document": stored.document}


@router.get("/rules/diff")
async def diff_versions(
    request: Request,
    _: Annotated[Principal, Depends(require("routing:read"))],
    from_version: Annotated[int | None, Query(alias="from", ge=1, le=INT32_MAX)] = None,
    to_version: Annotated[int | None, Query(alias="to", ge=1, le=INT32_MAX)] = None,
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

    version: StrictInt = Field(ge=1, le=INT32_MAX)
    comment: str | None = Field(None, max_length=500)


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
        with _edit_problems():
            saved = await editor.rollback(
                body.version,
                if_match=if_match or "*",
                who=principal.name,
                comment=body.comment,
                admin=principal.allows("admin"),
            )
    except KeyError:
        raise Problem(
            404,
            "Not found",
            f"no rules version {body.version}",
            errors=[{"field": "version", "message": "no such version"}],
        ) from None
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
    principal: Annotated[Principal, Depends(require("routing:read"))],
) -> dict[str, Any]:
    """Where would this message go, and why? Optionally against an unsaved document,
    which is only planned over: no provider is built from it, nothing is sent."""
    in_force: RoutingRules = request.app.state.rules_source.current()
    rules = in_force
    if body.rules is not None:
        rules = await draft_rules(
            body.rules, in_force, _store(request), admin=principal.allows("admin")
        )
    board: BreakerBoard = request.app.state.breakers
    return await simulate_plan(
        rules, board, channel=body.channel, to=body.to, category=body.category, caller=body.caller
    )


async def draft_rules(
    draft: Any, in_force: RoutingRules, store: RulesStore, *, admin: bool
) -> RoutingRules:
    """A draft to simulate: the same privilege and policy as a save (``Problem``)."""
    try:
        check_privilege(document_of(in_force), draft, admin=admin)
    except NeedsAdmin as exc:
        raise _needs_admin(exc) from None
    policy = store.policy
    try:
        return await run_check(
            lambda: parse_and_validate(draft, version=0, check_env=False, policy=policy),
            policy.limits,
        )
    except RulesInvalid as exc:
        raise _invalid(list(exc.issues)) from None
    except DocumentRefused as exc:
        raise _refused(exc) from None


@contextmanager
def _edit_problems() -> Iterator[None]:
    """The answers a save and a rollback share: 403, 422, 422 refused, 412 stale."""
    try:
        yield
    except NeedsAdmin as exc:
        raise _needs_admin(exc) from None
    except RulesInvalid as exc:
        raise _invalid(list(exc.issues)) from None
    except DocumentRefused as exc:
        raise _refused(exc) from None
    except StaleRules as exc:
        raise Problem(412, "Precondition failed", str(exc)) from None
