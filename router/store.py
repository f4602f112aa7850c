"""Versioned routing rules in the database. The file at HERALD_ROUTING_FILE is version 1
until the first edit; every save is a new version, kept with who saved it and when."""

from __future__ import annotations

import asyncio
import difflib
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import yaml
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from herald.domain import utcnow
from herald.errors import HeraldError
from herald.storage.db import SessionFactory, insert_ignoring_conflicts
from herald.storage.models import RoutingVersion, table_of
from router.rules import load_document
from router.validation import RulesInvalid, RulesPolicy, validate_document

VERSIONS = table_of(RoutingVersion)

#: Work to commit in the same transaction as a saved version (the audit entry).
AlsoInTransaction = Callable[[AsyncSession, "StoredRules"], Awaitable[None]]
#: A check of the new document against the version it replaces (raise to refuse).
AgainstCurrent = Callable[["StoredRules"], None]


class StaleRules(HeraldError):
    """The caller edited an older version than the one in force (HTTP 412)."""


@dataclass(frozen=True, slots=True)
class StoredRules:
    version: int
    document: dict[str, Any]
    etag: str
    created_by: str
    created_at: datetime
    comment: str | None


def make_etag(version: int, document: dict[str, Any]) -> str:
    digest = hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f'"v{version}-{digest[:16]}"'


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a value shared by two places out twice: the loader refuses aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True)


def diff(a: StoredRules, b: StoredRules) -> str:
    """A unified diff of two versions as YAML, readable in a terminal or a page."""
    return "".join(
        difflib.unified_diff(
            to_yaml(a.document).splitlines(keepends=True),
            to_yaml(b.document).splitlines(keepends=True),
            fromfile=f"version {a.version}",
            tofile=f"version {b.version}",
        )
    )


def _stored(row: Any) -> StoredRules:
    return StoredRules(
        row.version, row.document, row.etag, row.created_by, row.created_at, row.comment
    )


class RulesStore:
    def __init__(
        self, sessions: SessionFactory, seed_file: Path, policy: RulesPolicy | None = None
    ) -> None:
        self.sessions = sessions
        self.seed_file = seed_file
        #: What documents may hold here: every editor of this store validates with it.
        self.policy = policy or RulesPolicy()

    def _read_seed(self) -> Any:
        """The routing file, within the parser's limits and the operator's policy."""
        document = load_document(self.seed_file.read_bytes(), limits=self.policy.limits)
        issues = validate_document(document, check_env=False, policy=self.policy)
        if any(i.severity == "error" for i in issues):
            raise RulesInvalid(issues)
        return document

    async def _seed(self) -> None:
        """Version 1 is the routing file, refused at start-up if it is invalid."""
        document = await asyncio.to_thread(self._read_seed)
        engine = self.sessions.kw["bind"]
        async with self.sessions.begin() as session:
            await session.execute(
                insert_ignoring_conflicts(engine, VERSIONS).values(
                    version=1,
                    document=document,
                    etag=make_etag(1, document),
                    created_by=f"file:{self.seed_file.name}",
                    comment="initial rules from the routing file",
                    created_at=utcnow(),
                )
            )

    async def latest_version(self) -> int:
        async with self.sessions() as session:
            latest = (await session.execute(select(func.max(VERSIONS.c.version)))).scalar()
        if latest is None:
            await self._seed()
            return 1
        return int(latest)

    async def current(self) -> StoredRules:
        stored = await self.get(await self.latest_version())
        assert stored is not None
        return stored

    async def get(self, version: int) -> StoredRules | None:
        async with self.sessions() as session:
            row = (
                await session.execute(select(VERSIONS).where(VERSIONS.c.version == version))
            ).first()
        return _stored(row) if row else None

    async def history(self, limit: int = 50) -> list[StoredRules]:
        await self.latest_version()
        async with self.sessions() as session:
            rows = await session.execute(
                select(VERSIONS).order_by(VERSIONS.c.version.desc()).limit(limit)
            )
            return [_stored(r) for r in rows]

    async def save(
        self,
        document: dict[str, Any],
        *,
        if_match: str,
        who: str,
        comment: str | None = None,
        also: AlsoInTransaction | None = None,
        check: AgainstCurrent | None = None,
    ) -> StoredRules:
        """Store ``document`` as the next version if ``if_match`` names the current one;
        ``check`` sees the version being replaced (so a concurrent save cannot slip a
        change past it: the insert of the next number fails then); ``also`` runs in the
        same transaction."""
        current = await self.current()
        if if_match.strip() not in (current.etag, "*"):
            raise StaleRules(f"rules changed since {if_match}; the current ETag is {current.etag}")
        if check is not None:
            check(current)
        version = current.version + 1
        row = {
            "version": version,
            "document": document,
            "etag": make_etag(version, document),
            "created_by": who,
            "comment": comment,
            "created_at": utcnow(),
        }
        saved = StoredRules(**row)  # type: ignore[arg-type]
        try:
            async with self.sessions.begin() as session:
                await session.execute(insert(VERSIONS).values(**row))
                if also is not None:
                    await also(session, saved)
        except IntegrityError:
            raise StaleRules(
                "another edit was saved at the same moment; reload and retry"
            ) from None
        return saved

    async def rollback(
        self,
        version: int,
        *,
        who: str,
        if_match: str = "*",
        also: AlsoInTransaction | None = None,
        check: Callable[[StoredRules, StoredRules], None] | None = None,
    ) -> StoredRules:
        """Save an earlier version's document again, as a new version; ``check`` sees
        the earlier version and the one in force."""
        earlier = await self.get(version)
        if earlier is None:
            raise KeyError(version)
        return await self.save(
            earlier.document,
            if_match=if_match,
            who=who,
            comment=f"rollback to version {version}",
            also=also,
            check=None if check is None else (lambda current: check(earlier, current)),
        )
