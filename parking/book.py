"""SessionBook: the matching rules applied to an in-memory state, as a state machine.

Feed it reads (``add_read``) or already grouped passages (``add_passage``) and call
``expire(now)`` periodically; each call returns the events it caused. It never reads a
clock: the arrival time of each input and ``now`` are arguments.

Lifecycle:

* entry passage -> ``SessionOpened`` (or ``SentToReview`` CONFLICT when it falls inside a
  decided stay); pending exits of the same look-alike key at the lot are then re-matched.
* exit passage -> ``SessionClosed`` (exact / look-alike), ``SentToReview`` CONFLICT, or
  ``ExitPending`` (no entry yet, or ambiguous). A pending exit waits ``grace`` from its
  arrival; a later entry with a time before it can still pair with it.
* ``expire(now)`` -> pending exits older than ``grace`` become review sessions (NO_ENTRY or
  AMBIGUOUS); open sessions superseded by a later entry of the same plate known for
  ``grace`` go to review (NO_EXIT).
* a read within the passage window of a known passage of the same lot, direction and
  look-alike key -> ``ReadAbsorbed``. The passage's plate is re-voted and its time is its
  earliest read again (``passages``). Then:
  - a pending exit follows it (time, plate) and is matched again;
  - a session holding it that has no money decided yet (open, closed, review) follows it
    (``matching.revise``) -> ``SessionRevised``; an open session whose plate changed may
    now match a pending exit, which is retried;
  - a decided stay (settled, unpaid, or sent to review by settlement) keeps its times,
    status and money; only its displayed plate and exit plate follow the reads
    (``matching.redisplay``) -> ``SessionRevised``. A stay an account pays for keeps its
    label too (the reading bound to that account: ``settlement.bound_label``); only its
    exit plate follows.
  A close itself is final: a read that changes an exit passage's plate after it closed a
  session does not re-pair it (the stay's plates, which settlement looks accounts up by,
  include every reading, so money is never moved on the strength of one reading).

Order of arrival: the grouping of reads, each passage's plate and time, and the sessions
of a car's stays depend only on the set of reads, as long as a car's stays are not
interleaved with each other (an exit arriving before the previous stay's passages: see
``test_passages_inside_an_already_decided_stay_go_to_review``). Ids are the exception:
a passage (and its session) is named after the first of its reads to arrive. A read
within the window of two passages of the same key joins the earliest; passages are
never merged.

Passage and read ids make inputs idempotent: a replayed read or passage changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from citybrain.parking.matching import (
    MatchKind,
    MatchOutcome,
    ReviewReason,
    Session,
    SessionStatus,
    close_session,
    entry_conflict,
    match_exit,
    open_session,
    redisplay,
    review_passage,
    revise,
    send_to_review,
    settle,
    stay_plates,
    superseded_by,
)
from citybrain.parking.passages import (
    PASSAGE_WINDOW,
    Direction,
    Passage,
    Read,
    belongs_to,
    extend,
    start_passage,
)
from citybrain.parking.plates import lookalike_key
from citybrain.parking.times import require_aware

DEFAULT_GRACE = timedelta(minutes=10)


@dataclass(frozen=True)
class PendingExit:
    """An exit waiting for its entry. ``reason`` is what it becomes if it expires."""

    passage_id: str
    lot_id: str
    plate: str
    at: datetime  # camera time of the exit
    since: datetime  # arrival time: the grace period counts from here
    reason: ReviewReason  # NO_ENTRY or AMBIGUOUS
    candidates: tuple[str, ...] = ()  # session ids, when ambiguous


@dataclass(frozen=True)
class SessionOpened:
    session: Session


@dataclass(frozen=True)
class SessionClosed:
    session: Session
    exit: Passage
    matched_by: MatchKind


@dataclass(frozen=True)
class ExitPending:
    pending: PendingExit


@dataclass(frozen=True)
class SentToReview:
    session: Session
    reason: ReviewReason


@dataclass(frozen=True)
class ReadAbsorbed:
    read: Read
    passage: Passage


@dataclass(frozen=True)
class SessionRevised:
    """A session changed because a read joined one of its passages: entry or exit time,
    plate, exit plate or match kind (open, closed or review), or only the displayed and
    exit plates (a decided stay). Persist it; its money does not change."""

    session: Session


Event = SessionOpened | SessionClosed | ExitPending | SentToReview | ReadAbsorbed | SessionRevised

_Key = tuple[str, str]  # (lot_id, look-alike key)


class SessionBook:
    """In-memory sessions of all lots. See the module docstring for the lifecycle."""

    def __init__(
        self,
        *,
        grace: timedelta = DEFAULT_GRACE,
        window: timedelta = PASSAGE_WINDOW,
        sessions: Iterable[Session] = (),
        pending: Iterable[PendingExit] = (),
        passages: Iterable[Passage] = (),
        labelled: Iterable[str] = (),
    ) -> None:
        """``labelled``: ids of decided sessions whose plate is final (an account pays for
        them: ``decide(..., label_fixed=True)``)."""
        if grace < timedelta(0) or window < timedelta(0):
            raise ValueError("grace and window must not be negative")
        self.grace = grace
        self.window = window
        self._sessions: dict[str, Session] = {}
        self._by_key: dict[_Key, set[str]] = defaultdict(set)
        self._pending: dict[str, PendingExit] = {}
        self._passages: dict[str, Passage] = {}
        self._read_passage: dict[str, str] = {}
        self._held_by: dict[str, str] = {}  # passage id -> the session holding it
        self._labelled: set[str] = set(labelled)
        # (lot, direction, look-alike key) -> passage ids, in the order they were created
        self._by_gate: dict[tuple[str, Direction, str], list[str]] = defaultdict(list)
        for p in passages:
            self._remember(p)
        for s in sessions:
            self._store(s)
        for x in pending:
            if x.passage_id not in self._passages:
                raise ValueError(f"pending exit {x.passage_id} needs its passage")
            self._pending[x.passage_id] = x

    # ---- inputs -------------------------------------------------------------------------

    def add_read(self, read: Read, received_at: datetime) -> list[Event]:
        """One camera read, arrived at ``received_at``."""
        require_aware("received_at", received_at)
        if read.read_id in self._read_passage:
            return []
        near = [
            self._passages[pid]
            for pid in self._by_gate[(read.lot_id, read.direction, read.plate_key)]
            if belongs_to(self._passages[pid], read, self.window)
        ]
        if near:
            return self._absorb(min(near, key=lambda p: (p.first_ts, p.passage_id)), read)
        return self.add_passage(start_passage(read), received_at)

    def add_passage(self, passage: Passage, received_at: datetime) -> list[Event]:
        """A passage (grouped reads), arrived at ``received_at``."""
        require_aware("received_at", received_at)
        if self._handled(passage.passage_id):
            return []
        self._remember(passage)
        if passage.direction is Direction.IN:
            return self._entry(passage, received_at)
        return self._exit(passage, received_at)

    def expire(self, now: datetime) -> list[Event]:
        """Declare what waited too long: pending exits and stale open sessions -> review."""
        require_aware("now", now)
        events: list[Event] = []
        for pending in sorted(self._pending.values(), key=lambda x: (x.since, x.at, x.passage_id)):
            if pending.since + self.grace <= now:
                del self._pending[pending.passage_id]
                session = review_passage(
                    self._passages[pending.passage_id],
                    pending.reason,
                    pending.since,
                    pending.candidates,
                )
                self._store(session)
                events.append(SentToReview(session, pending.reason))
        for session in sorted(self.open_sessions(), key=lambda s: (s.entry_at, s.session_id)):
            later = superseded_by(
                session, self._pool(session.lot_id, session.plate_key), now, self.grace
            )
            if later:
                reviewed = send_to_review(
                    session, ReviewReason.NO_EXIT, (s.session_id for s in later)
                )
                self._store(reviewed)
                events.append(SentToReview(reviewed, ReviewReason.NO_EXIT))
        return events

    def settle(self, session_id: str, *, account_bound: bool) -> Session:
        """Record the charge of a closed session (settled, or unpaid without an account)."""
        session = settle(self._sessions[session_id], account_bound=account_bound)
        self._store(session)
        return session

    def decide(self, decided: Session, *, label_fixed: bool = False) -> None:
        """Record what settlement made of a closed session (``settlement.settle_stay``:
        settled, unpaid, or review). From then on the session no longer follows its
        passages. A store that settles at the close should call this right after the
        ``SessionClosed`` event, before the next input: then the close is final whatever
        the inputs are grouped into (one by one or in batches). ``label_fixed``: an account
        pays for the stay, and its plate (the reading bound to it) stays as decided."""
        current = self._sessions[decided.session_id]
        if current.status is not SessionStatus.CLOSED:
            raise ValueError(f"session {current.session_id} is {current.status}, not closed")
        if decided.status is SessionStatus.CLOSED or decided.status is SessionStatus.OPEN:
            raise ValueError(f"session {decided.session_id}: {decided.status} is not a decision")
        self._store(decided)
        if label_fixed:
            self._labelled.add(decided.session_id)

    # ---- queries ------------------------------------------------------------------------

    def session(self, session_id: str) -> Session:
        return self._sessions[session_id]

    def sessions(self, lot_id: str | None = None) -> list[Session]:
        """All sessions (of one lot), by the time of their first passage."""
        chosen = [s for s in self._sessions.values() if lot_id is None or s.lot_id == lot_id]
        return sorted(chosen, key=_session_order)

    def open_sessions(self, lot_id: str | None = None) -> list[Session]:
        return [s for s in self.sessions(lot_id) if s.status is SessionStatus.OPEN]

    def pending_exits(self) -> list[PendingExit]:
        return sorted(self._pending.values(), key=lambda x: (x.at, x.passage_id))

    def passage(self, passage_id: str) -> Passage:
        return self._passages[passage_id]

    def stay_plates(self, session_id: str) -> tuple[str, ...]:
        """Every plate the session's stay was read as (``matching.stay_plates``), from
        the session and whichever of its passages the book holds. Settlement looks the
        account up by these (``settlement.settle_stay``)."""
        s = self._sessions[session_id]
        return stay_plates(s, self._own_passages(s))

    # ---- internals ----------------------------------------------------------------------

    def _absorb(self, passage: Passage, read: Read) -> list[Event]:
        """``read`` joins ``passage``; what waits on or holds the passage follows it."""
        grown = extend(passage, read)
        self._remember(grown)
        events: list[Event] = [ReadAbsorbed(read, grown)]
        pid = grown.passage_id
        waiting = self._pending.get(pid)
        if waiting is not None:
            moved = replace(waiting, at=grown.ts, plate=grown.plate)
            self._pending[pid] = moved
            if moved.plate != waiting.plate:
                events.extend(self._retry_pending(grown.lot_id, grown.plate_key))
            return events
        sid = self._held_by.get(pid)
        if sid is None:
            return events
        before = self._sessions[sid]
        pair = self._own_passages_pair(before)
        after = revise(before, *pair)
        if after == before:
            after = redisplay(before, *pair)
            if sid in self._labelled:
                after = replace(after, plate=before.plate)
        if after != before:
            self._store(after)
            events.append(SessionRevised(after))
            if after.is_open and after.plate != before.plate:
                events.extend(self._retry_pending(after.lot_id, after.plate_key))
        return events

    def _own_passages_pair(self, s: Session) -> tuple[Passage | None, Passage | None]:
        entry = None if s.entry_passage_id is None else self._passages.get(s.entry_passage_id)
        out = None if s.exit_passage_id is None else self._passages.get(s.exit_passage_id)
        return entry, out

    def _own_passages(self, s: Session) -> list[Passage]:
        return [p for p in self._own_passages_pair(s) if p is not None]

    def _entry(self, passage: Passage, received_at: datetime) -> list[Event]:
        pool = self._pool(passage.lot_id, passage.plate_key)
        events: list[Event] = []
        conflict = entry_conflict(passage.lot_id, passage.plate, passage.ts, pool)
        if conflict is not None:
            session = review_passage(
                passage, ReviewReason.CONFLICT, received_at, (conflict.session_id,)
            )
            events.append(SentToReview(session, ReviewReason.CONFLICT))
        else:
            session = open_session(passage, received_at)
            events.append(SessionOpened(session))
        self._store(session)
        events.extend(self._retry_pending(passage.lot_id, passage.plate_key))
        return events

    def _exit(self, passage: Passage, received_at: datetime) -> list[Event]:
        events, pending = self._try_exit(passage, received_at)
        if pending is not None:
            self._pending[passage.passage_id] = pending
            events.append(ExitPending(pending))
        return events

    def _try_exit(
        self, passage: Passage, since: datetime
    ) -> tuple[list[Event], PendingExit | None]:
        """Match an exit now; returns the events, or the pending record if it must wait."""
        pool = self._pool(passage.lot_id, passage.plate_key)
        result = match_exit(passage.lot_id, passage.plate, passage.ts, pool)
        kind = result.matched_by
        if kind is not None and result.session is not None:
            closed = close_session(result.session, passage, kind)
            entry_pid = closed.entry_passage_id
            entry = None if entry_pid is None else self._passages.get(entry_pid)
            closed = revise(closed, entry, passage)  # the displayed plate of the stay
            self._store(closed)
            return [SessionClosed(closed, passage, kind)], None
        if result.outcome is MatchOutcome.CONFLICT:
            related = tuple(s.session_id for s in result.candidates)
            session = review_passage(passage, ReviewReason.CONFLICT, since, related)
            self._store(session)
            return [SentToReview(session, ReviewReason.CONFLICT)], None
        ambiguous = result.outcome is MatchOutcome.AMBIGUOUS
        return [], PendingExit(
            passage_id=passage.passage_id,
            lot_id=passage.lot_id,
            plate=passage.plate,
            at=passage.ts,
            since=since,
            reason=ReviewReason.AMBIGUOUS if ambiguous else ReviewReason.NO_ENTRY,
            candidates=tuple(s.session_id for s in result.candidates),
        )

    def _retry_pending(self, lot_id: str, key: str) -> list[Event]:
        """Re-match the pending exits of one lot and look-alike key, oldest exit first."""
        events: list[Event] = []
        waiting = [
            x
            for x in self._pending.values()
            if x.lot_id == lot_id and self._passages[x.passage_id].plate_key == key
        ]
        for pending in sorted(waiting, key=lambda x: (x.at, x.passage_id)):
            got, still = self._try_exit(self._passages[pending.passage_id], pending.since)
            events.extend(got)
            if still is None:
                del self._pending[pending.passage_id]
            else:
                self._pending[pending.passage_id] = still
        return events

    def _handled(self, passage_id: str) -> bool:
        return passage_id in self._pending or passage_id in self._held_by

    def _pool(self, lot_id: str, key: str) -> list[Session]:
        return [self._sessions[i] for i in self._by_key[(lot_id, key)]]

    def _store(self, session: Session) -> None:
        self._sessions[session.session_id] = session
        self._by_key[(session.lot_id, session.plate_key)].add(session.session_id)
        for pid in (session.entry_passage_id, session.exit_passage_id):
            if pid is not None:
                self._held_by[pid] = session.session_id

    def _remember(self, passage: Passage) -> None:
        if passage.passage_id not in self._passages:
            gate = (passage.lot_id, passage.direction, lookalike_key(passage.plate))
            self._by_gate[gate].append(passage.passage_id)
        self._passages[passage.passage_id] = passage
        for rid in passage.read_ids:
            self._read_passage[rid] = passage.passage_id


def _session_order(s: Session) -> tuple[datetime, str]:
    first = s.entry_at if s.entry_at is not None else s.exit_at
    assert first is not None
    return (first, s.session_id)
