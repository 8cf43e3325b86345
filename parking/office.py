"""The back office on a ledger: the review queue and its resolutions.

Decisions are the pure cores' (``citybrain.parking.review``); this module loads what they
need in one transaction of the ledger's store, and writes what they decided in the same
transaction: all of it or, on any error, nothing (errors are one line, ``ReviewError``).

Locks (PostgreSQL): a resolution holds its lot's lock (as recording a read of the lot
does, so that the rules and a person never decide on the same stay at once), then the
locks of every plate the stay was read as (its money), taken in sorted order in one
statement, as the ledger does.

Every resolution is an append-only ``resolution`` row with the operator, the reason and
the time; one per item. Giving the same resolution again changes nothing and answers what
the first one did; another resolution of a resolved item is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from citybrain.parking.book import PendingExit
from citybrain.parking.ledger import Ledger, Writes
from citybrain.parking.matching import Session, SessionStatus, stay_plates
from citybrain.parking.readcontract import text_fault
from citybrain.parking.reports import ChargeReport, ResolutionRecord, SessionReport
from citybrain.parking.review import (
    Action,
    Case,
    Decision,
    ItemKind,
    Resolution,
    ReviewError,
    ReviewItem,
    decide,
    item_key,
    queue,
    waiting_session,
)
from citybrain.parking.settings import ParkingSettings
from citybrain.parking.store.port import Transaction
from citybrain.parking.store.rows import CHARGES, RESOLUTIONS, StoredSession, session_values
from citybrain.parking.times import require_aware


@dataclass(frozen=True)
class Resolved:
    """What ``BackOffice.resolve`` did."""

    resolution: ResolutionRecord
    session: SessionReport  # the item's session as it stands now
    charge: ChargeReport | None  # the charge this call made
    again: bool = False  # the same resolution was given before: nothing changed


@dataclass(frozen=True)
class _Target:
    """A session a resolution works on, as loaded (a waiting exit: made a review session)."""

    kind: ItemKind | None  # None: decided (settled or unpaid), not an item
    session: Session
    stored: StoredSession | None  # None: a waiting exit, not stored as a session yet
    pending: PendingExit | None


class BackOffice:
    """The operator's side of a ledger. Thread-safe as the ledger is."""

    def __init__(self, ledger: Ledger, settings: ParkingSettings | None = None) -> None:
        self.ledger = ledger
        self.settings = settings if settings is not None else ParkingSettings()

    # ---- the review queue --------------------------------------------------------------------

    def review(self, now: datetime, lot: str | None = None) -> list[ReviewItem]:
        """What needs a person now (of one lot), oldest first."""
        require_aware("now", now)
        review = self.settings.review
        state = self.ledger.store.review_state(lot, now - review.max_stay)
        return queue(
            [(s.session, s.fee_cents) for s in state.reviews],
            [s.session for s in state.overstays],
            state.pending,
            state.passages,
            state.pool,
            state.bindings,
            grace=self.ledger.grace,
            max_stay=review.max_stay,
        )

    def resolve(
        self,
        session_id: str,
        request: Resolution,
        *,
        operator: str,
        reason: str,
        at: datetime | None = None,
        resolution_id: str | None = None,
    ) -> Resolved:
        """Resolve the review item of ``session_id`` (a session in review, a waiting exit,
        an open stay) as ``request`` says; see ``citybrain.parking.review``."""
        who, why = _text("operator", operator), _text("reason", reason)
        rid = None if resolution_id is None else _text("resolution id", resolution_id)
        when = datetime.now(UTC) if at is None else at
        require_aware("at", when)
        when = when.astimezone(UTC)
        record, charge, again = self.ledger.retrying(
            lambda: self._resolve(session_id, request, who, why, when, rid)
        )
        report = self.ledger.store.session(session_id)
        assert report is not None
        return Resolved(record, report, charge, again)

    def _resolve(
        self,
        sid: str,
        request: Resolution,
        operator: str,
        reason: str,
        when: datetime,
        rid: str | None,
    ) -> tuple[ResolutionRecord, ChargeReport | None, bool]:
        store = self.ledger.store
        with store.transaction() as tx:
            lot = _lot_of(tx, sid)
            tx.lock([f"lot:{lot}"])
            target = _target(tx, sid, lot)
            if target.kind is None:  # decided: by a resolution of its own, maybe
                assert target.stored is not None
                done = _resolution_of(tx, sid)
                if done is None:
                    raise ReviewError(f"{sid} is {target.session.status}: nothing to resolve")
                if done.request.same_as(request):
                    return done, None, True
                raise ReviewError(
                    f"{sid} was resolved already: {done.action} by {done.operator} at "
                    f"{done.created_at.isoformat()}"
                )
            key = item_key(target.kind, sid)
            done = tx.resolution(key)
            if done is not None:
                if done.request.same_as(request):
                    return done, None, True
                raise ReviewError(
                    f"{sid} was resolved already: {done.action} by {done.operator} at "
                    f"{done.created_at.isoformat()}"
                )
            into = tx.paired_into(sid)
            if into is not None:
                raise ReviewError(f"{sid} was paired into {into}")
            rid = key if rid is None else rid
            if tx.resolution_by_id(rid) is not None:
                raise ReviewError(f"resolution id {rid!r} is taken by another item")
            other = None
            if request.action is Action.PAIR:
                assert request.other is not None
                other = _target(tx, request.other, lot, pairing=True)
                taken = tx.resolution(item_key(ItemKind.REVIEW, other.session.session_id))
                if taken is not None or tx.paired_into(other.session.session_id):
                    raise ReviewError(f"{request.other} is resolved already")
            sessions = [t.session for t in (target, other) if t is not None]
            pids = [pid for s in sessions for pid in (s.entry_passage_id, s.exit_passage_id) if pid]
            passages = list(tx.passages(pids).values())
            plates = sorted({p for s in sessions for p in stay_plates(s, passages)})
            tx.lock(f"plate:{p}" for p in plates)
            case = Case(
                kind=ItemKind.REVIEW if target.kind is None else target.kind,
                session=target.session,
                fee_cents=None if target.stored is None else target.stored.fee_cents,
                other=None if other is None else other.session,
                plates=tuple(plates),
                bindings=tx.bound_accounts(plates),
            )
            decision = decide(case, request, self.ledger.tariffs.get(lot))
            record = ResolutionRecord(
                resolution_id=rid,
                item=key,
                session_id=sid,
                action=request.action,
                operator=operator,
                reason=reason,
                created_at=when,
                other_session_id=request.other,
                at=request.at,
                cents=request.cents,
                account=request.account,
            )
            charge = _write(tx, target, other, decision, record)
        return record, charge, False


def _write(
    tx: Transaction,
    target: _Target,
    other: _Target | None,
    decision: Decision,
    record: ResolutionRecord,
) -> ChargeReport | None:
    """The decision's rows: waiting exits made sessions, the sessions, the resolution, the
    charge (parents before children)."""
    writes = Writes(tx)
    gone = [t.pending.passage_id for t in (target, other) if t is not None and t.pending]
    writes.delete("pending_exit", "passage_id", gone)
    new: list[dict[str, Any]] = []
    old: list[dict[str, Any]] = []
    for t, s, money in ((target, decision.session, decision.money), (other, decision.other, None)):
        if t is None or s is None:
            continue
        (new if t.stored is None else old).append(session_values(s, money, t.stored))
    writes.insert("session", new)
    writes.update("session", "session_id", old)
    writes.insert("resolution", [RESOLUTIONS.values(record)])
    charge = None
    money = decision.money
    if money is not None and money.charge_cents is not None and money.account is not None:
        s = money.session
        charge = ChargeReport(
            s.session_id, s.lot_id, s.plate, money.account, money.charge_cents, record.created_at
        )
        writes.insert("charge", [CHARGES.values(charge)])
    writes.flush()
    return charge


def _lot_of(tx: Transaction, sid: str) -> str:
    stored = tx.stored_session(sid)
    if stored is not None:
        return stored.session.lot_id
    lot, sep, _ = sid.partition("/")  # a waiting exit: matching.session_id_for
    if not sep or not lot:
        raise ReviewError(f"unknown session {sid!r}")
    return lot


def _target(tx: Transaction, sid: str, lot: str, *, pairing: bool = False) -> _Target:
    """The session ``sid`` and the kind of item it is (its lot's lock is held)."""
    stored = tx.stored_session(sid)
    if stored is None:
        lot_of, _, pid = sid.partition("/")
        pending = tx.pending_exit(lot_of, pid) if lot_of == lot else None
        if pending is None:
            if pairing and lot_of != lot:
                raise ReviewError(f"{sid} is not at lot {lot}")
            raise ReviewError(f"unknown session {sid!r}")
        passage = tx.passages([pid])[pid]
        return _Target(ItemKind.WAITING, waiting_session(pending, passage), None, pending)
    s = stored.session
    if s.status is SessionStatus.REVIEW:
        return _Target(ItemKind.REVIEW, s, stored, None)
    if s.status is SessionStatus.OPEN:
        return _Target(ItemKind.OVERSTAY, s, stored, None)
    if pairing:
        raise ReviewError(f"{sid} is {s.status}: only open stays and reviews pair")
    return _Target(None, s, stored, None)


def _resolution_of(tx: Transaction, sid: str) -> ResolutionRecord | None:
    """The resolution that decided ``sid`` (as a review, or as an open stay)."""
    for kind in (ItemKind.REVIEW, ItemKind.OVERSTAY):
        done = tx.resolution(item_key(kind, sid))
        if done is not None:
            return done
    return None


def _text(name: str, value: str, max_chars: int = 500) -> str:
    text = value.strip()
    if text_fault(text, max_chars) is not None:
        raise ReviewError(f"{name} must be a line of text, not {value!r}")
    return text
