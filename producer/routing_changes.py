"""Saving and rolling back routing rules: the new version and its audit entry commit in
one transaction, then every process is told to load it. The API and the console both
change rules through here, so both leave the same trail."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from dlq import audit
from router.source import RulesSource
from router.store import AlsoInTransaction, RulesStore, StoredRules
from router.validation import RulesInvalid, ValidationIssue, validate_document


class RulesEditor:
    def __init__(self, store: RulesStore, source: RulesSource) -> None:
        self.store = store
        self.source = source

    async def save(
        self, document: Any, *, if_match: str, who: str, comment: str | None
    ) -> tuple[StoredRules, list[ValidationIssue]]:
        """Validate, save as the next version, broadcast. Returns the warnings; raises
        ``RulesInvalid`` (nothing saved) or ``StaleRules``."""
        issues = validate_document(document)
        if any(i.severity == "error" for i in issues):
            raise RulesInvalid(issues)

        saved = await self.store.save(
            document,
            if_match=if_match,
            who=who,
            comment=comment,
            also=_audited("routing.save", who, comment),
        )
        await self._announce(saved)
        return saved, issues

    async def rollback(
        self, version: int, *, if_match: str, who: str, comment: str | None
    ) -> StoredRules:
        """Put ``version``'s document back in force as a new version (``KeyError`` when
        there is no such version)."""
        saved = await self.store.rollback(
            version,
            who=who,
            if_match=if_match,
            also=_audited("routing.rollback", who, comment, restored=version),
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
