"""The review queue and its resolutions: what needs a person, and what a person's decision
makes of it (pure: no SQL, no clock; the office, ``citybrain.parking.office``, loads and
writes).

What needs a person (``ReviewItem``, each with its reason, the reads as evidence and the
candidate entries or exits):

* ``review``: a session the rules sent to review (``matching.ReviewReason``): an exit with
  no entry after the grace (``no_entry``), an exit with several look-alike candidates
  (``ambiguous``), a stay whose plates are bound to several accounts (``ambiguous``, entry
  and exit known, its fee recorded), an entry superseded by a later one (``no_exit``), a
  passage inside a stay already decided (``conflict``);
* ``waiting``: an exit still within its grace period (no entry yet, or ambiguous): listed
  with the time its grace ends, so that it is not invisible meanwhile;
* ``overstay``: an open stay older than the maximum duration (``[review] max_stay_hours``).
  It stays open (its exit still settles it as usual); it is listed until a person resolves
  it;
* ``dispute``: a charge the driver disputes.

What a person decides (``Resolution``), and what it makes (``decide``):

* ``pair`` with another session: an exit with no entry takes the entry of an open (or
  entry-only review) session of the same lot that entered before it; an entry with no exit
  takes the exit of an exit-only one. The stay is priced by the tariff and settled as any
  (charged to the account bound to its plates, or a debt); the other session is retired to
  review, its ``related`` naming the stay, and never listed again;
* ``entry`` / ``exit``: the missing time entered by hand; priced by the tariff;
* ``charge``: a stay with both times (settlement sent it to review because its plates are
  bound to several accounts) priced by the tariff and charged to ``account``;
* ``fee``: the fee set by hand, in cents (0 waives it);
* ``waive``: a stay that happened, free of charge;
* ``dismiss``: not a stay (a stray read), an overstay that is fine, a dispute rejected.

Who pays: the accounts bound to the plates the stay was read as (both sessions' readings
when paired). One account: charged to it; none: a debt on the stay's plate; several: the
person names one with ``account`` (it must be one of them). The stay is then shown under a
plate bound to the account that pays (``settlement.bound_label``).

A dispute is resolved by ``dismiss`` (the charge stands), ``waive`` (everything paid is
refunded) or ``fee`` (the stay should have cost that: the difference is refunded). A
refund never exceeds what was paid and not refunded yet (``Case.refundable_cents``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from citybrain.errors import CitybrainError
from citybrain.parking.book import PendingExit
from citybrain.parking.matching import (
    ReviewReason,
    Session,
    SessionStatus,
    review_passage,
    session_id_for,
)
from citybrain.parking.passages import Passage, Read
from citybrain.parking.settlement import AccountChoice, Settlement, bound_label, settle_fee
from citybrain.parking.tariff import Fee, Tariff, fee


class ReviewError(CitybrainError):
    """A resolution that cannot be applied as asked (one line; nothing is written)."""


class ItemKind(StrEnum):
    REVIEW = "review"  # a session the rules sent to review
    WAITING = "waiting"  # an exit within its grace period
    OVERSTAY = "overstay"  # an open stay older than the maximum duration
    DISPUTE = "dispute"  # a charge the driver disputes


class Action(StrEnum):
    PAIR = "pair"
    ENTRY = "entry"
    EXIT = "exit"
    CHARGE = "charge"
    FEE = "fee"
    WAIVE = "waive"
    DISMISS = "dismiss"


def item_key(kind: ItemKind, session_id: str, dispute_id: str | None = None) -> str:
    """What a resolution resolves, as stored (UNIQUE: an item is resolved once). A waiting
    exit is resolved as the review session it becomes."""
    if kind is ItemKind.DISPUTE:
        if dispute_id is None:
            raise ValueError("a dispute item needs its dispute id")
        return f"dispute:{dispute_id}"
    if kind is ItemKind.OVERSTAY:
        return f"overstay:{session_id}"
    return f"review:{session_id}"


@dataclass(frozen=True)
class Candidate:
    """A session a person may pair an item with."""

    session_id: str
    plate: str
    status: str  # open, review, or waiting (an exit within its grace)
    entry_at: datetime | None
    exit_at: datetime | None


@dataclass(frozen=True)
class ReviewItem:
    """One thing that needs a person."""

    key: str  # ``item_key``
    kind: ItemKind
    reason: str  # no_entry, ambiguous, no_exit, conflict, overstay, dispute
    session_id: str
    lot_id: str
    plate: str
    entry_at: datetime | None
    exit_at: datetime | None
    since: datetime  # since when it needs a person (arrival, end of stay limit, dispute)
    due: datetime | None  # a waiting exit: when its grace period ends
    fee_cents: int | None  # a stay's recorded fee, or the disputed charge
    accounts: tuple[str, ...]  # accounts bound to the plates it was read as
    reads: tuple[Read, ...]  # the evidence, by time
    candidates: tuple[Candidate, ...]  # whom it may be paired with, nearest first
    related: tuple[str, ...] = ()
    detail: str = ""  # a dispute's reason
    dispute_id: str | None = None


@dataclass(frozen=True)
class Resolution:
    """What a person decided (see the module docstring)."""

    action: Action
    other: str | None = None  # pair: the other session
    at: datetime | None = None  # entry / exit: the time entered
    cents: int | None = None  # fee
    account: str | None = None  # who pays, among the stay's accounts

    def __post_init__(self) -> None:
        needs = {
            Action.PAIR: ("other", self.other),
            Action.ENTRY: ("at", self.at),
            Action.EXIT: ("at", self.at),
            Action.FEE: ("cents", self.cents),
        }
        if self.action in needs:
            name, value = needs[self.action]
            if value is None:
                raise ReviewError(f"{self.action} needs {name}")
        if self.cents is not None and self.cents < 0:
            raise ReviewError(f"a fee must not be negative, not {self.cents}")
        if self.at is not None and (self.at.tzinfo is None or self.at.utcoffset() is None):
            raise ReviewError(f"a time needs its zone: {self.at.isoformat()}")

    def same_as(self, other: Resolution) -> bool:
        """The same decision (a resolution given twice changes nothing)."""
        return self == other


@dataclass(frozen=True)
class Case:
    """What a resolution decides on, loaded by the office in its transaction."""

    kind: ItemKind
    session: Session  # the item's session (a waiting exit made a review session already)
    fee_cents: int | None = None  # its recorded fee (a stay settlement sent to review)
    other: Session | None = None  # pair: the other session
    plates: tuple[str, ...] = ()  # every plate the stay (and the other) was read as
    bindings: Mapping[str, str] | None = None  # plate -> account, for those plates
    refundable_cents: int = 0  # a dispute: paid and not refunded yet


@dataclass(frozen=True)
class Decision:
    """What a resolution makes."""

    session: Session  # the item's session afterwards
    other: Session | None = None  # pair: the other session, retired to review
    money: Settlement | None = None  # the stay settled (None: no stay decided)
    fee: Fee | None = None  # the tariff's breakdown, when the tariff priced the stay
    refund_cents: int = 0  # a dispute: what is paid back


# ---- the queue ---------------------------------------------------------------------------


def waiting_session(pending: PendingExit, passage: Passage) -> Session:
    """The review session a waiting exit becomes (what its expiry would make of it)."""
    return review_passage(passage, pending.reason, pending.since, pending.candidates)


def candidates_for(
    session: Session, pool: Iterable[Session | PendingExit]
) -> tuple[Candidate, ...]:
    """The sessions ``session`` may be paired with, nearest in time first: for an exit with
    no entry, the open or entry-only sessions of its lot that entered before it; for an
    entry with no exit, the exit-only ones (and waiting exits) that left after it."""
    out: list[tuple[timedelta, str, Candidate]] = []
    for other in pool:
        c = _candidate(other)
        if c.session_id == session.session_id or other.lot_id != session.lot_id:
            continue
        if session.entry_at is None and session.exit_at is not None:
            if c.entry_at is None or c.exit_at is not None or c.status == "waiting":
                continue
            if c.status not in (SessionStatus.OPEN, SessionStatus.REVIEW):
                continue
            if c.entry_at > session.exit_at:
                continue
            out.append((session.exit_at - c.entry_at, c.session_id, c))
        elif session.exit_at is None and session.entry_at is not None:
            if c.exit_at is None or c.entry_at is not None:
                continue
            if c.status not in (SessionStatus.REVIEW, "waiting") or c.exit_at < session.entry_at:
                continue
            out.append((c.exit_at - session.entry_at, c.session_id, c))
    return tuple(c for _, _, c in sorted(out, key=lambda x: (x[0], x[1])))


def _candidate(other: Session | PendingExit) -> Candidate:
    if isinstance(other, PendingExit):
        sid = session_id_for(other.lot_id, other.passage_id)
        return Candidate(sid, other.plate, "waiting", None, other.at)
    return Candidate(other.session_id, other.plate, other.status, other.entry_at, other.exit_at)


@dataclass(frozen=True)
class Disputed:
    """A dispute not decided yet: the disputed stay and what is charged for it in force."""

    dispute_id: str
    session: Session
    reason: str
    since: datetime
    charged_cents: int


def queue(
    reviews: Iterable[tuple[Session, int | None]],
    overstays: Iterable[Session],
    pending: Iterable[PendingExit],
    passages: Mapping[str, Passage],
    pool: Iterable[Session | PendingExit],
    bindings: Mapping[str, str],
    *,
    grace: timedelta,
    max_stay: timedelta,
    disputes: Iterable[Disputed] = (),
) -> list[ReviewItem]:
    """The review queue: sessions in review (with their recorded fee), open stays past the
    limit, exits waiting for their entry, disputes; oldest first. ``passages`` must hold
    their passages with the reads, ``pool`` the sessions of their lots and look-alike keys
    that they may be paired with, ``bindings`` the accounts of their plates."""
    pool = list(pool)
    items: list[ReviewItem] = []

    def item(
        kind: ItemKind,
        s: Session,
        reason: str,
        since: datetime,
        fee_cents: int | None = None,
        due: datetime | None = None,
        dispute: Disputed | None = None,
    ) -> ReviewItem:
        ids = (s.entry_passage_id, s.exit_passage_id)
        own = [passages[p] for p in ids if p is not None and p in passages]
        reads = sorted((r for p in own for r in p.reads), key=lambda r: (r.ts, r.read_id))
        plates = {s.plate, *(p for x in own for p in x.plates)}
        dispute_id = None if dispute is None else dispute.dispute_id
        return ReviewItem(
            key=item_key(kind, s.session_id, dispute_id),
            kind=kind,
            reason=reason,
            session_id=s.session_id,
            lot_id=s.lot_id,
            plate=s.plate,
            entry_at=s.entry_at,
            exit_at=s.exit_at,
            since=since,
            due=due,
            fee_cents=fee_cents,
            accounts=tuple(sorted({bindings[p] for p in plates if p in bindings})),
            reads=tuple(reads),
            candidates=() if dispute is not None else candidates_for(s, pool),
            related=s.related,
            detail="" if dispute is None else dispute.reason,
            dispute_id=dispute_id,
        )

    for s, fee_cents in reviews:
        items.append(item(ItemKind.REVIEW, s, reason_of(s), s.received_at, fee_cents))
    for s in overstays:
        assert s.entry_at is not None
        items.append(item(ItemKind.OVERSTAY, s, "overstay", s.entry_at + max_stay))
    for x in pending:
        s = waiting_session(x, passages[x.passage_id])
        items.append(item(ItemKind.WAITING, s, x.reason.value, x.since, due=x.since + grace))
    for d in disputes:
        kind = ItemKind.DISPUTE
        items.append(item(kind, d.session, "dispute", d.since, d.charged_cents, dispute=d))
    return sorted(items, key=lambda i: (i.since, i.session_id))


def reason_of(session: Session) -> str:
    return session.review_reason.value if session.review_reason is not None else "review"


# ---- decisions -----------------------------------------------------------------------------


def decide(case: Case, request: Resolution, tariff: Tariff | None) -> Decision:
    """What ``request`` makes of ``case`` (``ReviewError`` when it does not apply)."""
    if case.kind is ItemKind.DISPUTE:
        return _dispute(case, request)
    s = case.session
    if request.action is Action.DISMISS:
        return Decision(s)
    entry_at, exit_at = s.entry_at, s.exit_at
    other: Session | None = None
    action = request.action
    if action is Action.PAIR:
        other = _paired(case)
        if entry_at is None:
            entry_at = other.entry_at
        else:
            exit_at = other.exit_at
    elif action is Action.ENTRY:
        if entry_at is not None:
            raise ReviewError(f"{s.session_id} has an entry already ({entry_at.isoformat()})")
        assert request.at is not None and exit_at is not None
        if request.at > exit_at:
            raise ReviewError(
                f"an entry at {request.at.isoformat()} is after the exit at {exit_at.isoformat()}"
            )
        entry_at = request.at
    elif action is Action.EXIT:
        if exit_at is not None:
            raise ReviewError(f"{s.session_id} has an exit already ({exit_at.isoformat()})")
        assert request.at is not None and entry_at is not None
        if request.at < entry_at:
            raise ReviewError(
                f"an exit at {request.at.isoformat()} is before the entry at {entry_at.isoformat()}"
            )
        exit_at = request.at
    elif action is Action.CHARGE and (entry_at is None or exit_at is None):
        raise ReviewError(
            f"{s.session_id} needs an entry and an exit to be priced: pair it, or enter the "
            "missing time"
        )
    stay = replace(s, status=SessionStatus.CLOSED, entry_at=entry_at, exit_at=exit_at)
    breakdown: Fee | None = None
    if action is Action.WAIVE:
        cents = 0
    elif action is Action.FEE:
        assert request.cents is not None
        cents = request.cents
    else:
        if tariff is None:
            raise ReviewError(f"no tariff for lot {s.lot_id}")
        assert entry_at is not None and exit_at is not None
        breakdown = fee(tariff, entry_at, exit_at)
        cents = breakdown.total_cents
    bindings = dict(case.bindings or {})
    choice = _accounts(stay, case.plates, bindings)
    account = _payer(stay, choice, request.account, cents)
    if account is not None:
        stay = bound_label(stay, AccountChoice(choice.plates, (account,)), bindings)
    money = settle_fee(stay, cents, account, breakdown)
    return Decision(money.session, other, money, breakdown)


def _paired(case: Case) -> Session:
    s, other = case.session, case.other
    if other is None:
        raise ReviewError("pairing needs the other session")
    if other.session_id == s.session_id:
        raise ReviewError(f"{s.session_id} cannot be paired with itself")
    if other.lot_id != s.lot_id:
        raise ReviewError(f"{other.session_id} is at lot {other.lot_id}, not {s.lot_id}")
    if s.entry_at is not None and s.exit_at is not None:
        raise ReviewError(f"{s.session_id} has an entry and an exit: nothing to pair")
    pairable = other.status in (SessionStatus.OPEN, SessionStatus.REVIEW)
    if s.entry_at is None:
        assert s.exit_at is not None
        if not pairable or other.entry_at is None or other.exit_at is not None:
            raise ReviewError(
                f"{other.session_id} is not an entry without an exit ({other.status})"
            )
        if other.entry_at > s.exit_at:
            raise ReviewError(
                f"{other.session_id} entered at {other.entry_at.isoformat()}, after this exit "
                f"at {s.exit_at.isoformat()}"
            )
    else:
        if other.status is not SessionStatus.REVIEW or other.exit_at is None:
            raise ReviewError(f"{other.session_id} is not an exit without an entry")
        if other.entry_at is not None:
            raise ReviewError(f"{other.session_id} has an entry already")
        if other.exit_at < s.entry_at:
            raise ReviewError(
                f"{other.session_id} left at {other.exit_at.isoformat()}, before this entry "
                f"at {s.entry_at.isoformat()}"
            )
    return replace(other, status=SessionStatus.REVIEW, related=(s.session_id,))


def _accounts(stay: Session, plates: Iterable[str], bindings: Mapping[str, str]) -> AccountChoice:
    """The accounts bound to every plate the stay was read as. A person decided these reads
    are one car's, so no look-alike filter here (``settlement.choose_account`` has one)."""
    considered = sorted({stay.plate, *plates})
    accounts = sorted({bindings[p] for p in considered if p in bindings})
    return AccountChoice(tuple(considered), tuple(accounts))


def _payer(stay: Session, choice: AccountChoice, named: str | None, cents: int) -> str | None:
    if named is not None:
        if named not in choice.accounts:
            bound = ", ".join(choice.accounts) or "none"
            raise ReviewError(
                f"account {named!r} is not bound to a plate of {stay.session_id} "
                f"(bound: {bound}); bind the plate first"
            )
        return named
    if choice.ambiguous and cents > 0:
        raise ReviewError(
            f"the plates of {stay.session_id} are bound to several accounts "
            f"({', '.join(choice.accounts)}): name the one that pays"
        )
    return choice.account


def _dispute(case: Case, request: Resolution) -> Decision:
    s = case.session
    if request.action is Action.DISMISS:
        return Decision(s)
    if request.action not in (Action.WAIVE, Action.FEE):
        raise ReviewError("a dispute is dismissed, waived, or settled at a fee set by hand")
    paid = case.refundable_cents
    if request.action is Action.WAIVE:
        if paid <= 0:
            raise ReviewError(f"nothing paid for {s.session_id} is left to refund")
        return Decision(s, refund_cents=paid)
    assert request.cents is not None
    charged = case.fee_cents or 0
    if request.cents > charged:
        raise ReviewError(
            f"a disputed charge can only go down: {request.cents} is more than the "
            f"{charged} charged"
        )
    refund = paid - request.cents
    if refund <= 0:
        raise ReviewError(
            f"{s.session_id} has {paid} paid and not refunded: nothing to refund down to "
            f"{request.cents}"
        )
    return Decision(s, refund_cents=refund)


__all__ = [
    "Action",
    "Candidate",
    "Case",
    "Decision",
    "Disputed",
    "ItemKind",
    "Resolution",
    "ReviewError",
    "ReviewItem",
    "ReviewReason",
    "candidates_for",
    "decide",
    "item_key",
    "queue",
    "reason_of",
    "waiting_session",
]
