"""Parking sessions and the pure rules that pair exits with entries.

Everything here is a function of explicit inputs (a plate, a time, the sessions of one lot),
so a database-backed store can load the relevant rows, call the rule and persist the result.
``citybrain.parking.book.SessionBook`` applies these rules to an in-memory state.

Rules (per lot; "the timeline of plate P" is every session whose entry plate or exit plate
is P):

* Exit of plate P at time t — ``match_exit``:
  1. exact: the session of P's timeline with the latest entry at or before t is open;
  2. conflict: that session is already closed with an exit after t (t falls inside a stay
     that is already decided) -> review at once;
  3. look-alike: otherwise, the open sessions of other plates that differ from P only by
     look-alikes and are the latest entry of their own plate before t; exactly one is the
     match (the session keeps its entry plate), two or more are ambiguous;
  4. none: no candidate.
  Ambiguous and none wait (a late entry may still come) and go to review after a grace
  period.
* Entry of plate P at time t — ``entry_conflict``: if the next known passage of P's
  timeline after t is an exit that already belongs to a decided session, the entry falls
  inside a decided stay and goes to review; otherwise it opens a session.
* An open session is stale — ``superseded_by`` — when a later entry of the same plate at the
  lot has been known for the grace period without an exit in between: review (no exit).

A session follows its passages while no money is decided (``revise``; statuses ``open``,
``closed``, ``review``): when a late read joins its entry or exit passage, the entry and
exit times become the passages' first reads again, and the plates their best-supported
readings. A ``settled`` or ``unpaid`` session is final, and so is a stay settlement sent
to ``review`` (entry and exit, accounts disagree): its times, status and money never change
again. Only what it is shown under follows later reads of its passages (``redisplay``: the
displayed plate and the exit plate, both passages known with their reads): a stay is
decided at its first exit read, and the other camera's read of that exit, arriving a moment
later, must not leave the stay shown (or its debt recorded) under a misread.

Displayed plate (``Session.plate``): the entry's plate, as the issue's contract says ("the
session keeps the entry's plate"), unless the exit's plate has STRICTLY stronger support
over all the reads of the stay known when it is decided (entry and exit passages pooled;
``display_plate``): more reads, or as many and a higher summed confidence (the passage
rule). An exact tie keeps the entry's plate; so does a passage known only as a bare
summary without its reads. Typical win: one misread entry frame against a correct exit
read of higher confidence. Evidence split three ways when the stay is decided (entry read
once right and once wrong, first exit frame misread) can show the misread for a moment;
the exit's next read re-decides the display (``redisplay``). The displayed plate does
not decide who pays (settlement looks up every plate of the stay, ``stay_plates``); it is
where an unpaid stay's debt is recorded and what reports show.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from citybrain.parking.passages import Direction, Passage, plate_support
from citybrain.parking.plates import lookalike_key
from citybrain.parking.times import require_aware


class SessionStatus(StrEnum):
    OPEN = "open"  # in, not out
    CLOSED = "closed"  # exit matched; waiting for the charge (settled or unpaid)
    SETTLED = "settled"  # charged to the bound account
    UNPAID = "unpaid"  # closed with no bound account: a debt on the plate
    REVIEW = "review"  # needs a person; never charged automatically


class MatchKind(StrEnum):
    EXACT = "exact"
    LOOKALIKE = "lookalike"


class MatchOutcome(StrEnum):
    EXACT = "exact"
    LOOKALIKE = "lookalike"
    AMBIGUOUS = "ambiguous"  # two or more look-alike candidates
    CONFLICT = "conflict"  # the exit falls inside an already decided stay
    NONE = "none"  # no candidate (yet)


class ReviewReason(StrEnum):
    NO_ENTRY = "no_entry"  # an exit with no entry after the grace period
    # An exit with several look-alike candidates after the grace; or a closed stay whose
    # plates (several readings) are bound to several different accounts (settlement).
    AMBIGUOUS = "ambiguous"
    NO_EXIT = "no_exit"  # an open session superseded by a later entry of the same plate
    CONFLICT = "conflict"  # a passage inside a stay that is already decided


DECIDED = frozenset({SessionStatus.CLOSED, SessionStatus.SETTLED, SessionStatus.UNPAID})
# Statuses whose session still follows its passages (no money decided yet).
REVISABLE = frozenset({SessionStatus.OPEN, SessionStatus.CLOSED, SessionStatus.REVIEW})


@dataclass(frozen=True)
class Session:
    """A stay: an entry, an exit, or both. Flat, so it maps onto one table row.

    ``plate`` is the entry's plate (the exit's when there is no entry); ``exit_plate`` is
    what the exit camera read (differs from ``plate`` after a look-alike match).
    ``received_at`` is when the passage that created the session arrived (for grace
    periods; not a camera time). ``related`` names other sessions: the look-alike candidates
    of an ambiguous exit, the decided session of a conflict, the later entries of a stale
    session, the stay a resolution paired it into.

    A passage comes with its time; a time may come without a passage: an entry or exit a
    person entered when resolving a review (``citybrain.parking.review``).
    """

    session_id: str
    lot_id: str
    plate: str
    status: SessionStatus
    received_at: datetime
    entry_passage_id: str | None = None
    entry_at: datetime | None = None
    exit_passage_id: str | None = None
    exit_at: datetime | None = None
    exit_plate: str | None = None
    matched_by: MatchKind | None = None
    review_reason: ReviewReason | None = None
    related: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require_aware("Session.received_at", self.received_at)
        if self.entry_at is None and self.exit_at is None:
            raise ValueError(f"session {self.session_id} has neither an entry nor an exit")
        if self.entry_passage_id is not None and self.entry_at is None:
            raise ValueError(f"session {self.session_id}: an entry passage needs entry_at")
        if self.exit_passage_id is not None and self.exit_at is None:
            raise ValueError(f"session {self.session_id}: an exit passage needs exit_at")
        if self.entry_at is not None:
            require_aware("Session.entry_at", self.entry_at)
        if self.exit_at is not None:
            require_aware("Session.exit_at", self.exit_at)

    @property
    def plate_key(self) -> str:
        """Look-alike key of ``plate`` (index this column to find candidates)."""
        return lookalike_key(self.plate)

    @property
    def is_open(self) -> bool:
        return self.status is SessionStatus.OPEN


@dataclass(frozen=True)
class MatchResult:
    outcome: MatchOutcome
    session: Session | None = None  # the match (exact or look-alike)
    candidates: tuple[Session, ...] = ()  # look-alike candidates, or the conflicting session

    @property
    def matched_by(self) -> MatchKind | None:
        if self.outcome is MatchOutcome.EXACT:
            return MatchKind.EXACT
        if self.outcome is MatchOutcome.LOOKALIKE:
            return MatchKind.LOOKALIKE
        return None


def session_id_for(lot_id: str, passage_id: str) -> str:
    """A session's id: derived from the passage that created it (replays are idempotent)."""
    return f"{lot_id}/{passage_id}"


def _timeline(plate: str, sessions: Iterable[Session]) -> list[Session]:
    return [s for s in sessions if s.plate == plate or s.exit_plate == plate]


def _latest_entry(plate: str, at: datetime, sessions: Iterable[Session]) -> Session | None:
    """The session of ``plate``'s timeline with the latest entry at or before ``at``."""
    before = [s for s in _timeline(plate, sessions) if s.entry_at is not None and s.entry_at <= at]
    if not before:
        return None
    return max(before, key=lambda s: (s.entry_at, s.session_id))


def _same_lot(lot_id: str, sessions: Iterable[Session]) -> list[Session]:
    return [s for s in sessions if s.lot_id == lot_id]


def match_exit(lot_id: str, plate: str, at: datetime, sessions: Iterable[Session]) -> MatchResult:
    """Decide which session an exit of normalized ``plate`` at ``at`` closes.

    ``sessions``: the lot's sessions whose look-alike key equals the plate's, of any status
    (others are ignored, so passing more is safe). Closed sessions matter: they end a
    plate's previous stay.
    """
    require_aware("at", at)
    key = lookalike_key(plate)
    pool = [s for s in _same_lot(lot_id, sessions) if s.plate_key == key]
    latest = _latest_entry(plate, at, pool)
    if latest is not None:
        if latest.is_open:
            return MatchResult(MatchOutcome.EXACT, latest, (latest,))
        if latest.status in DECIDED and latest.exit_at is not None and latest.exit_at > at:
            return MatchResult(MatchOutcome.CONFLICT, None, (latest,))
    candidates: list[Session] = []
    for other in sorted({s.plate for s in pool if s.is_open and s.plate != plate}):
        own = _latest_entry(other, at, pool)
        if own is not None and own.is_open and own.plate == other:
            candidates.append(own)
    if len(candidates) == 1:
        return MatchResult(MatchOutcome.LOOKALIKE, candidates[0], (candidates[0],))
    if candidates:
        return MatchResult(MatchOutcome.AMBIGUOUS, None, tuple(candidates))
    return MatchResult(MatchOutcome.NONE)


def entry_conflict(
    lot_id: str, plate: str, at: datetime, sessions: Iterable[Session]
) -> Session | None:
    """The decided session an entry at ``at`` falls inside, if any.

    Looks at the next passage of the plate's timeline after ``at``: an exit that already
    belongs to a closed (or reviewed) session means the entry cannot open a normal stay.
    """
    require_aware("at", at)
    following: list[tuple[datetime, int, str, Session]] = []
    for s in _timeline(plate, _same_lot(lot_id, sessions)):
        if s.entry_at is not None and s.entry_at > at:
            following.append((s.entry_at, 0, s.session_id, s))
        if s.exit_at is not None and s.exit_at > at:
            following.append((s.exit_at, 1, s.session_id, s))
    if not following:
        return None
    _, kind, _, nxt = min(following, key=lambda x: (x[0], x[1], x[2]))
    return nxt if kind == 1 else None


def superseded_by(
    session: Session, sessions: Iterable[Session], now: datetime, grace: timedelta
) -> tuple[Session, ...]:
    """Later entries of the same plate and lot that make an open ``session`` stale.

    Only entries received at least ``grace`` before ``now`` count, so a replayed exit has
    time to arrive. Empty when the session is not open or not stale.
    """
    require_aware("now", now)
    if not session.is_open or session.entry_at is None:
        return ()
    entered = session.entry_at
    later = [
        s
        for s in _same_lot(session.lot_id, sessions)
        if s.session_id != session.session_id
        and s.plate == session.plate
        and s.entry_at is not None
        and s.entry_at > entered
        and s.received_at + grace <= now
    ]
    return tuple(sorted(later, key=lambda s: (s.entry_at, s.session_id)))


def open_session(entry: Passage, received_at: datetime) -> Session:
    """A new open session for an entry passage."""
    _check_direction(entry, Direction.IN)
    return Session(
        session_id=session_id_for(entry.lot_id, entry.passage_id),
        lot_id=entry.lot_id,
        plate=entry.plate,
        status=SessionStatus.OPEN,
        received_at=received_at,
        entry_passage_id=entry.passage_id,
        entry_at=entry.first_ts,
    )


def close_session(session: Session, exit_passage: Passage, matched_by: MatchKind) -> Session:
    """``session`` closed by ``exit_passage``; it keeps its entry plate."""
    _check_direction(exit_passage, Direction.OUT)
    if not session.is_open:
        raise ValueError(f"session {session.session_id} is {session.status}, not open")
    return replace(
        session,
        status=SessionStatus.CLOSED,
        exit_passage_id=exit_passage.passage_id,
        exit_at=exit_passage.first_ts,
        exit_plate=exit_passage.plate,
        matched_by=matched_by,
    )


def review_passage(
    passage: Passage,
    reason: ReviewReason,
    received_at: datetime,
    related: Iterable[str] = (),
) -> Session:
    """A review session holding a passage that could not be paired (entry or exit only)."""
    is_entry = passage.direction is Direction.IN
    return Session(
        session_id=session_id_for(passage.lot_id, passage.passage_id),
        lot_id=passage.lot_id,
        plate=passage.plate,
        status=SessionStatus.REVIEW,
        received_at=received_at,
        entry_passage_id=passage.passage_id if is_entry else None,
        entry_at=passage.first_ts if is_entry else None,
        exit_passage_id=None if is_entry else passage.passage_id,
        exit_at=None if is_entry else passage.first_ts,
        exit_plate=None if is_entry else passage.plate,
        review_reason=reason,
        related=tuple(related),
    )


def display_plate(entry: Passage, exit_passage: Passage | None) -> str:
    """The plate a stay is shown (and owed) under: see the module docstring."""
    if exit_passage is None or exit_passage.plate == entry.plate:
        return entry.plate
    if not (entry.has_evidence and exit_passage.has_evidence):
        return entry.plate
    support = {s.plate: s for s in plate_support((*entry.reads, *exit_passage.reads))}
    ours, theirs = support[entry.plate], support[exit_passage.plate]
    return exit_passage.plate if theirs.stronger_than(ours) else entry.plate


def revise(session: Session, entry: Passage | None, exit_passage: Passage | None) -> Session:
    """``session`` brought in line with its passages as they are now (``None``: unknown,
    the session's own fields stand). Settled and unpaid sessions are returned unchanged.

    Entry time and exit time are the passages' first reads; ``exit_plate`` the exit's
    plate; ``plate`` the displayed plate (``display_plate``; the exit's plate for a session
    with no entry); ``matched_by`` exact when entry and exit plates are equal, look-alike
    otherwise (what ``match_exit`` would say of the two passages as they are now).
    """
    if session.status not in REVISABLE or _decided_stay(session):
        return session
    for p, pid, name in (
        (entry, session.entry_passage_id, "entry"),
        (exit_passage, session.exit_passage_id, "exit"),
    ):
        if p is not None and p.passage_id != pid:
            raise ValueError(f"passage {p.passage_id} is not the {name} of {session.session_id}")
    plate, entry_at = session.plate, session.entry_at
    exit_at, exit_plate, matched_by = session.exit_at, session.exit_plate, session.matched_by
    if entry is not None:
        entry_at = entry.first_ts
        plate = display_plate(entry, exit_passage)
    if exit_passage is not None:
        exit_at, exit_plate = exit_passage.first_ts, exit_passage.plate
        if session.entry_passage_id is None:
            plate = exit_passage.plate
    if entry is not None and exit_passage is not None and matched_by is not None:
        same = entry.plate == exit_passage.plate
        matched_by = MatchKind.EXACT if same else MatchKind.LOOKALIKE
    return replace(
        session,
        plate=plate,
        entry_at=entry_at,
        exit_at=exit_at,
        exit_plate=exit_plate,
        matched_by=matched_by,
    )


def redisplay(session: Session, entry: Passage | None, exit_passage: Passage | None) -> Session:
    """A decided stay (settled, unpaid, or sent to review by settlement) shown as its
    passages' reads say now: ``plate`` by ``display_plate``, ``exit_plate`` the exit's
    plate. Nothing else changes (times, status, money are final). Returned unchanged when
    the stay is not decided or either passage is unknown or known without its reads (the
    pooled vote needs them all)."""
    decided = session.status in (SessionStatus.SETTLED, SessionStatus.UNPAID) or _decided_stay(
        session
    )
    if not decided or entry is None or exit_passage is None:
        return session
    if entry.passage_id != session.entry_passage_id:
        raise ValueError(f"passage {entry.passage_id} is not the entry of {session.session_id}")
    if exit_passage.passage_id != session.exit_passage_id:
        raise ValueError(
            f"passage {exit_passage.passage_id} is not the exit of {session.session_id}"
        )
    if not (entry.has_evidence and exit_passage.has_evidence):
        return session
    plate, exit_plate = display_plate(entry, exit_passage), exit_passage.plate
    if (plate, exit_plate) == (session.plate, session.exit_plate):
        return session
    return replace(session, plate=plate, exit_plate=exit_plate)


def _decided_stay(session: Session) -> bool:
    """A review holding both an entry and an exit: settlement sent it there (accounts
    disagree), with its fee; it is as final as a settled stay."""
    return (
        session.status is SessionStatus.REVIEW
        and session.entry_at is not None
        and session.exit_at is not None
    )


def stay_plates(session: Session, passages: Iterable[Passage] = ()) -> tuple[str, ...]:
    """Every plate the stay was read as, sorted: the session's plate and exit plate, and
    the readings of its entry and exit passages among ``passages`` (others are ignored).

    One plate when every read agrees; several when some camera misread the car.
    """
    own = {session.entry_passage_id, session.exit_passage_id} - {None}
    plates = {session.plate}
    if session.exit_plate is not None:
        plates.add(session.exit_plate)
    for p in passages:
        if p.passage_id in own:
            plates.update(p.plates)
    return tuple(sorted(plates))


def send_to_review(session: Session, reason: ReviewReason, related: Iterable[str] = ()) -> Session:
    return replace(
        session, status=SessionStatus.REVIEW, review_reason=reason, related=tuple(related)
    )


def settle(session: Session, *, account_bound: bool) -> Session:
    """Charge a closed session: settled with a bound account, otherwise an unpaid debt."""
    if session.status is not SessionStatus.CLOSED:
        raise ValueError(f"session {session.session_id} is {session.status}, not closed")
    return replace(session, status=SessionStatus.SETTLED if account_bound else SessionStatus.UNPAID)


def _check_direction(passage: Passage, direction: Direction) -> None:
    if passage.direction is not direction:
        raise ValueError(f"passage {passage.passage_id} is {passage.direction}, not {direction}")
