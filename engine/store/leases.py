"""Leases: several people sorting one inbox are shown different images. A sorter holds the image it is looking at
for a short while (renewed by each call); a lease ends when the image is acted on, after its time, or when released.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from engine.store.errors import storage_errors
from engine.store.index import ProjectIndex, record_columns
from engine.store.records import ImageRecord

LEASE_SECONDS = 90.0  # how long a sorter holds the inbox image it is looking at without touching the page


class InboxLeases(ProjectIndex):
    """A project index that hands each sorter its own next inbox image."""

    @storage_errors("Sorting")
    def lease_next(self, session: str, skip: Iterable[str] = (), ttl: float = LEASE_SECONDS) -> ImageRecord | None:
        """The inbox image this session should sort next, leased to it for `ttl` seconds (renewed by each call).

        It keeps the image it already holds (unless skipped); otherwise it gets the oldest inbox image nobody else
        holds. A lease ends when the image is acted on, after `ttl`, or with release_leases()."""
        skip = set(skip)
        now = time.time()
        with self.transaction() as db:
            db.execute("DELETE FROM leases WHERE expires < ?", (now,))
            rows = db.execute(
                f"SELECT {record_columns('i.')} FROM images i LEFT JOIN leases l ON l.sha256 = i.sha256 "
                "WHERE i.status = 'ok' AND i.class IS NULL AND (l.session IS NULL OR l.session = ?) "
                "ORDER BY (l.session IS NULL), l.expires DESC, i.added_at, i.filename LIMIT ?",
                (session, len(skip) + 4)).fetchall()
            pick = next((r for r in rows if r[0] not in skip), None)
            db.execute("DELETE FROM leases WHERE session = ? AND sha256 != ?", (session, pick[0] if pick else ""))
            if pick is None:
                return None
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (pick[0], session, now + ttl))
        return self.record(pick)

    @storage_errors("Sorting")
    def lease_in_order(self, session: str, order: Sequence[str], skip: Iterable[str] = (),
                       ttl: float = LEASE_SECONDS) -> ImageRecord | None:
        """lease_next, but a new lease follows `order` (sha256s, e.g. least confident model suggestion first;
        engine.curate.suggestions); inbox images missing from `order` come after it, oldest first."""
        skip = set(skip)
        now = time.time()
        with self.transaction() as db:
            db.execute("DELETE FROM leases WHERE expires < ?", (now,))
            held = dict(db.execute("SELECT sha256, session FROM leases ORDER BY expires DESC").fetchall())
            inbox = {r[0]: r for r in db.execute(
                f"SELECT {record_columns()} FROM images WHERE status = 'ok' AND class IS NULL "
                "ORDER BY added_at, filename")}
            mine = [s for s, who in held.items() if who == session and s in inbox and s not in skip]
            rank = {s: i for i, s in enumerate(order)}
            free = sorted((s for s in inbox if s not in held and s not in skip), key=lambda s: rank.get(s, len(rank)))
            pick = (mine or free or [None])[0]
            db.execute("DELETE FROM leases WHERE session = ? AND sha256 != ?", (session, pick or ""))
            if pick is None:
                return None
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (pick, session, now + ttl))
        return self.record(inbox[pick])

    def inbox_queue(self, session: str, skip: Iterable[str] = (), limit: int = 6) -> list[ImageRecord]:
        """Inbox images nobody else is looking at (for a 'next up' preview; not leased)."""
        skip = set(skip)
        with self.connect() as db:
            rows = db.execute(
                f"SELECT {record_columns('i.')} FROM images i LEFT JOIN leases l "
                "ON l.sha256 = i.sha256 AND l.expires >= ? WHERE i.status = 'ok' AND i.class IS NULL "
                "AND (l.session IS NULL OR l.session = ?) ORDER BY i.added_at, i.filename LIMIT ?",
                (time.time(), session, len(skip) + limit)).fetchall()
        return [self.record(r) for r in rows if r[0] not in skip][:limit]

    def leased_by_others(self, session: str) -> int:
        with self.connect() as db:
            return db.execute("SELECT COUNT(*) FROM leases WHERE session != ? AND expires >= ?",
                              (session, time.time())).fetchone()[0]

    @storage_errors("Sorting")
    def release_leases(self, session: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM leases WHERE session = ?", (session,))

