"""Saving and rolling back routing rules: the new version and its audit entry commit in
one transaction, then every process is told to load it. The API and the console both
change rules through here, so both leave the same trail and the same checks.

A ``routing:write`` key changes routing: rules, tiers, costs, weights, ``max_per_s``.
Where a provider's messages and credentials go (its ``type``, ``endpoint`` and
``credentials``, or a new provider that has an endpoint or credentials) is the
operator's: only an ``admin`` key may change it (``NeedsAdmin``, HTTP 403).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from dlq import audit
from herald.errors import HeraldError
from router.rules import RoutingRules
from router.source import RulesSource
from router.store import AlsoInTransaction, RulesStore, StoredRules
from router.validation import (
    RulesInvalid,
    ValidationIssue,
    format_path,
    run_check,
    validate_document,
)

#: Provider fields that decide where a provider's traffic and credentials go.
ADMIN_FIELDS = ("type", "endpoint", "credentials")


class NeedsAdmin(HeraldError):
    """The document changes provider fields only an admin key may change."""

    def __init__(self, fields: list[str]) -> None:
        super().__init__(f"only an admin key may change {', '.join(fields)}")
        self.fields = fields


def _providers(document: Any) -> Mapping[Any, Any]:
    providers = document.get("providers") if isinstance(document, Mapping) else None
    return providers if isinstance(providers, Mapping) else {}


def _spec(value: Any) -> Mapping[Any, Any]:
    return value if isinstance(value, Mapping) else {}


def admin_changes(before: Any, after: Any) -> list[str]:
    """Paths of the admin-only provider fields ``after`` changes compared with ``before``
    (``providers.msg91-in.endpoint``, ``providers.x.credentials.auth_key``). Removing a
    provider is routing; removing its endpoint or a credential is not."""
    old = _providers(before)
    changed: list[str] = []
    for name, value in _providers(after).items():
        spec = _spec(value)
        if name not in old:
            changed += [
                format_path(["providers", str(name), f])
                for f in ("endpoint", "credentials")
                if spec.get(f) not in (None, {})
            ]
            continue
        prior = _spec(old[name])
        changed += [
            format_path(["providers", str(name), f])
            for f in ("type", "endpoint")
            if spec.get(f) != prior.get(f)
        ]
        changed += _credential_changes(str(name), prior.get("credentials"), spec.get("credentials"))
    return changed


def _credential_changes(name: str, before: Any, after: Any) -> list[str]:
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        same = (before or None) == (after or None)
        return [] if same else [format_path(["providers", name, "credentials"])]
    return [
        format_path(["providers", name, "credentials", str(field)])
        for field in sorted({*before, *after}, key=str)
        if before.get(field) != after.get(field)
    ]


def document_of(rules: RoutingRules) -> dict[str, Any]:
    """The providers part of parsed rules, as ``admin_changes`` compares them."""
    return {"providers": {name: spec.raw for name, spec in rules.providers.items()}}


def check_privilege(before: Any, after: Any, *, admin: bool) -> None:
    """Raise ``NeedsAdmin`` when a non-admin's document changes admin-only fields."""
    if admin:
        return
    if changed := admin_changes(before, after):
        raise NeedsAdmin(changed)


class RulesEditor:
    def __init__(self, store: RulesStore, source: RulesSource) -> None:
        self.store = store
        self.source = source

    async def validate(self, document: Any) -> list[ValidationIssue]:
        """Every issue of ``document`` under this store's policy, off the event loop."""
        policy = self.store.policy
        return await run_check(lambda: validate_document(document, policy=policy), policy.limits)

    async def save(
        self, document: Any, *, if_match: str, who: str, comment: str | None, admin: bool = False
    ) -> tuple[StoredRules, list[ValidationIssue]]:
        """Check the editor's privilege, validate, save as the next version, broadcast.
        Returns the warnings; raises ``NeedsAdmin``, ``RulesInvalid`` (nothing saved),
        ``DocumentRefused`` (too big or slow) or ``StaleRules``.

        The privilege is checked before validation (a non-admin learns nothing about
        credentials they may not set), and again against the version actually replaced.
        """
        check_privilege((await self.store.current()).document, document, admin=admin)
        issues = await self.validate(document)
        if any(i.severity == "error" for i in issues):
            raise RulesInvalid(issues)
        saved = await self.store.save(
            document,
            if_match=if_match,
            who=who,
            comment=comment,
            also=_audited("routing.save", who, comment),
            check=lambda current: check_privilege(current.document, document, admin=admin),
        )
        await self._announce(saved)
        return saved, issues

    async def rollback(
        self, version: int, *, if_match: str, who: str, comment: str | None, admin: bool = False
    ) -> StoredRules:
        """Put ``version``'s document back in force as a new version (``KeyError`` when
        there is no such version). Rolling back across a change of credentials or
        endpoints needs admin like any other such change, and the old document must
        pass today's policy (``RulesInvalid``)."""
        earlier = await self.store.get(version)
        if earlier is None:
            raise KeyError(version)
        check_privilege((await self.store.current()).document, earlier.document, admin=admin)
        issues = await self.validate(earlier.document)
        if any(i.severity == "error" for i in issues):
            raise RulesInvalid(issues)

        def against_current(old: StoredRules, current: StoredRules) -> None:
            check_privilege(current.document, old.document, admin=admin)

        saved = await self.store.rollback(
            version,
            who=who,
            if_match=if_match,
            also=_audited("routing.rollback", who, comment, restored=version),
            check=against_current,
        )
        await self._announce(saved)
        return saved

    async def _announce(self, saved: StoredRules) -> None:
        await self.source.announce(saved.version)
        await self.source.refresh()


def _audited(action: str, who: str, comment: str | None, **details: Any) -> AlsoInTransaction:
    """The audit entry a rules change commits with its new version."""

    async def record(session: AsyncSession, saved: StoredRules) -> None:
        await audit.record(
            session,
            actor=who,
            action=action,
            target=f"rules version {saved.version}",
            reason=comment,
            details={"version": saved.version, "etag": saved.etag, **details},
        )

    return record
