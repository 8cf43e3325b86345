"""The back office on a ledger: the review queue and its resolutions, disputes, refunds,
payment results and statements.

Decisions are the pure cores' (``citybrain.parking.review``); this module loads what they
need in one transaction of the ledger's store, and writes what they decided in the same
transaction: all of it or, on any error, nothing (errors are one line, ``ReviewError``).

Locks (PostgreSQL): a resolution holds its lot's lock (as recording a read of the lot
does, so that the rules and a person never decide on the same stay at once), then the
locks of every plate the stay was read as (its money), taken in sorted order in one
statement, as the ledger does.

Every resolution is an append-only ``resolution`` row with the operator, the reason and
the time; one per item. Giving the same resolution again changes nothing and answers what
the first one did; another resolution of a resolved item is refused. Refunds and disputes
are append-only rows too, with an id (given, or derived from what they say: the same
refund twice is one), the operator, the reason and the time; a refund holds its session's
lock (``session:ID``) while it checks that it does not exceed what was paid
(``citybrain.parking.money``). A payment result takes the session's lot, plate and session
locks (a declined charge makes the stay a debt again, which the rules and bindings read).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from citybrain.parking.book import PendingExit
from citybrain.parking.daybook import ExportKind, LotDay, csv_text, export_rows, lot_day
from citybrain.parking.ledger import Ledger, Writes, money_writes
from citybrain.parking.matching import Session, SessionStatus, stay_plates
from citybrain.parking.money import Money, MoneyError, Statement, check_refund, statement
from citybrain.parking.occupancy import DayOccupancy, LotNow, day_bounds, day_profile
from citybrain.parking.payments import Answer, Instruction, next_send
from citybrain.parking.readcontract import text_fault
from citybrain.parking.receipts import Receipt, ReceiptError, receipt
from citybrain.parking.reports import (
    AdjustmentRecord,
    ChargeReport,
    DisputeRecord,
    PaymentResultRecord,
    ResolutionRecord,
    SessionReport,
)
from citybrain.parking.review import (
    Action,
    Case,
    Decision,
    Disputed,
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
from citybrain.parking.settlement import declined
from citybrain.parking.store.port import Transaction
from citybrain.parking.store.rows import (
    DISPUTES,
    PAYMENT_RESULTS,
    RESOLUTIONS,
    StoredSession,
    session_values,
)
from citybrain.parking.tables import ChargeSource, PaymentKind, PaymentStatus
from citybrain.parking.times import require_aware


@dataclass(frozen=True)
class Resolved:
    """What ``BackOffice.resolve`` did."""

    resolution: ResolutionRecord
    session: SessionReport  # the item's session as it stands now
    charge: ChargeReport | None  # the charge this call made
    again: bool = False  # the same resolution was given before: nothing changed
    refund: AdjustmentRecord | None = None  # a dispute's refund, made by this call


@dataclass(frozen=True)
class Recorded:
    """What a refund, a dispute or a payment result call did (``again``: it was recorded
    before, nothing changed)."""

    record: AdjustmentRecord | DisputeRecord | PaymentResultRecord
    again: bool = False
    debt: bool = False  # a declined charge made its stay a debt again


@dataclass(frozen=True)
class _Target:
    """A session a resolution works on, as loaded (a waiting exit: made a review session)."""

    kind: ItemKind | None  # None: decided (settled or unpaid), not an item
    session: Session
    stored: StoredSession | None  # None: a waiting exit, not stored as a session yet
    pending: PendingExit | None
    dispute: DisputeRecord | None = None


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
            disputes=[
                Disputed(d.dispute_id, session, d.reason, d.created_at, money.charged_cents)
                for d, session, money in state.disputes
            ],
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
        an open stay, a disputed charge) as ``request`` says; see
        ``citybrain.parking.review``."""
        who, why = _text("operator", operator), _text("reason", reason)
        rid = None if resolution_id is None else _text("resolution id", resolution_id)
        when = _when(at)
        record, charge, refund, again = self.ledger.retrying(
            lambda: self._resolve(session_id, request, who, why, when, rid)
        )
        report = self.ledger.store.session(session_id)
        assert report is not None
        return Resolved(record, report, charge, again, refund)

    def _resolve(
        self,
        sid: str,
        request: Resolution,
        operator: str,
        reason: str,
        when: datetime,
        rid: str | None,
    ) -> tuple[ResolutionRecord, ChargeReport | None, AdjustmentRecord | None, bool]:
        with self.ledger.store.transaction() as tx:
            lot = _lot_of(tx, sid)
            tx.lock([f"lot:{lot}"])
            target = _target(tx, sid, lot)
            if target.kind is None:  # decided: by a resolution of its own, maybe
                assert target.stored is not None
                done = tx.last_resolution(sid)
                if done is None:
                    raise ReviewError(
                        f"{sid} is {target.session.status}: nothing to resolve (dispute its "
                        "charge first)"
                    )
                if done.request.same_as(request):
                    return done, None, None, True
                raise ReviewError(
                    f"{sid} was resolved already: {done.action} by {done.operator} at "
                    f"{done.created_at.isoformat()}"
                )
            dispute_id = None if target.dispute is None else target.dispute.dispute_id
            key = item_key(target.kind, sid, dispute_id)
            done = tx.resolution(key)
            if done is not None:
                if done.request.same_as(request):
                    return done, None, None, True
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
            fee_cents = None if target.stored is None else target.stored.fee_cents
            money = Money()
            if target.kind is ItemKind.DISPUTE:
                tx.lock([f"session:{sid}"])
                money = tx.money(sid)
                fee_cents = money.charged_cents
            case = Case(
                kind=target.kind,
                session=target.session,
                fee_cents=fee_cents,
                other=None if other is None else other.session,
                plates=tuple(plates),
                bindings=tx.bound_accounts(plates),
                refundable_cents=money.refundable_cents,
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
            refund = None
            if decision.refund_cents:
                payer = money.payer
                assert payer is not None
                refund = AdjustmentRecord(
                    f"{rid}/refund",
                    sid,
                    "refund",
                    decision.refund_cents,
                    payer,
                    operator,
                    reason,
                    when,
                    rid,
                )
            charge = _write(tx, target, other, decision, record, refund)
        return record, charge, refund, False

    # ---- refunds, disputes, payment results, statements ------------------------------------

    def refund(
        self,
        session_id: str,
        cents: int,
        *,
        operator: str,
        reason: str,
        at: datetime | None = None,
        refund_id: str | None = None,
    ) -> Recorded:
        """Pay ``cents`` of the session's paid money back to the account that paid it (at
        most what was paid and not refunded yet). The same refund again changes nothing."""
        who, why = _text("operator", operator), _text("reason", reason)
        when = _when(at)
        if isinstance(cents, bool) or not isinstance(cents, int) or cents <= 0:
            raise MoneyError(f"a refund must be a positive number of cents, not {cents!r}")
        aid = _text("refund id", refund_id) if refund_id else _derived("rf", session_id, cents, why)

        def work() -> Recorded:
            with self.ledger.store.transaction() as tx:
                stored = tx.stored_session(session_id)
                if stored is None:
                    raise MoneyError(f"unknown session {session_id!r}")
                tx.lock([f"session:{session_id}"])
                done = tx.adjustment(aid)
                if done is not None:
                    if (done.session_id, done.cents) == (session_id, cents):
                        return Recorded(done, again=True)
                    raise MoneyError(f"refund id {aid!r} is taken by another refund")
                money = tx.money(session_id)
                check_refund(session_id, money, cents)
                payer = money.payer
                assert payer is not None
                record = AdjustmentRecord(aid, session_id, "refund", cents, payer, who, why, when)
                writes = Writes(tx)
                money_writes(writes, refunds=[(record, stored.session.lot_id)])
                writes.flush()
                return Recorded(record)

        return self.ledger.retrying(work)

    def dispute(
        self,
        session_id: str,
        *,
        operator: str,
        reason: str,
        at: datetime | None = None,
        dispute_id: str | None = None,
    ) -> Recorded:
        """The driver disputes the session's charge: it joins the review queue until a
        resolution decides it (dismiss, waive: refund everything paid, fee: refund down to
        it). The same dispute again changes nothing."""
        who, why = _text("operator", operator), _text("reason", reason)
        when = _when(at)
        did = _text("dispute id", dispute_id) if dispute_id else _derived("dp", session_id, why)

        def work() -> Recorded:
            with self.ledger.store.transaction() as tx:
                if tx.stored_session(session_id) is None:
                    raise ReviewError(f"unknown session {session_id!r}")
                tx.lock([f"session:{session_id}"])
                done = tx.dispute(did)
                if done is not None:
                    if done.session_id == session_id:
                        return Recorded(done, again=True)
                    raise ReviewError(f"dispute id {did!r} is taken by another dispute")
                open_ = tx.open_dispute(session_id)
                if open_ is not None:
                    raise ReviewError(f"{session_id} is disputed already ({open_.dispute_id})")
                if tx.money(session_id).charged_cents <= 0:
                    raise ReviewError(f"{session_id} has no charge to dispute")
                record = DisputeRecord(did, session_id, who, why, when)
                writes = Writes(tx)
                writes.insert("dispute", [DISPUTES.values(record)])
                writes.flush()
                return Recorded(record)

        return self.ledger.retrying(work)

    def record_payment(
        self,
        key: str,
        status: PaymentStatus | str,
        *,
        detail: str = "",
        reference: str | None = None,
        at: datetime | None = None,
    ) -> Recorded:
        """The payment side's answer to instruction ``key`` (the first answer counts; a
        repeat changes nothing). A declined charge makes its stay a debt again."""
        answer = Answer(key, PaymentStatus(status).value, detail, reference)
        (done,) = self.record_payments([answer], at=at)
        if done is None:
            raise MoneyError(f"unknown payment instruction {key!r}")
        return done

    def record_payments(
        self, answers: Sequence[Answer], *, at: datetime | None = None
    ) -> list[Recorded | None]:
        """Several answers in one transaction; one outcome each (None: no instruction of
        that key exists: nothing recorded). Answered instructions leave the outbox."""
        when = _when(at)
        return self.ledger.retrying(lambda: self._record_payments(answers, when))

    def _record_payments(self, answers: Sequence[Answer], when: datetime) -> list[Recorded | None]:
        """The answers' instructions are found in the outbox by key (an answered one has
        left it: its answer is recorded already); a paid answer only writes its result
        and removes the instruction. A declined charge takes its stay's locks and, if it
        is the stay's last attempt and still charged to that account, makes it a debt."""
        with self.ledger.store.transaction() as tx:
            keys = list(dict.fromkeys(a.key for a in answers))
            waiting = tx.outbox_entries(keys)
            known = tx.payment_results([k for k in keys if k not in waiting])
            lapsing = sorted(
                {
                    waiting[a.key].session_id
                    for a in answers
                    if a.key in waiting
                    and a.status == PaymentStatus.DECLINED
                    and waiting[a.key].kind == PaymentKind.CHARGE
                }
            )
            stored: dict[str, StoredSession] = {}
            money: dict[str, Money] = {}
            if lapsing:  # the stays may become debts: the rules' and the bindings' locks
                found = tx.stored_sessions(lapsing)
                locks = set()
                for lapse in found.values():
                    s = lapse.session
                    locks |= {f"lot:{s.lot_id}", f"plate:{s.plate}", f"session:{s.session_id}"}
                tx.lock(locks)
                stored = tx.stored_sessions(lapsing)  # again, under the locks
                money = tx.moneys(lapsing)
            out: list[Recorded | None] = []
            fresh: list[PaymentResultRecord] = []
            lapsed: list[dict[str, Any]] = []
            for a in answers:
                if a.key in known:
                    out.append(Recorded(known[a.key], again=True))
                    continue
                entry = waiting.get(a.key)
                if entry is None:
                    out.append(None)
                    continue
                sid = entry.session_id
                record = PaymentResultRecord(
                    a.key, entry.kind, sid, a.status, when, a.detail, a.reference
                )
                known[a.key] = record
                fresh.append(record)
                debt = False
                row = stored.get(sid)
                m = money.get(sid, Money())
                charge = next((c for c in m.charges if c.key == a.key), None)
                last = max((c.attempt for c in m.charges), default=0)
                if (
                    a.status == PaymentStatus.DECLINED
                    and row is not None
                    and charge is not None
                    and charge.attempt == last
                    and row.charged
                    and row.account == charge.account
                ):
                    gone = declined(row.session, charge.cents)
                    lapsed.append(session_values(gone.session, gone, row))
                    stored[sid] = row._replace(session=gone.session, account=None, charged=False)
                    debt = True
                out.append(Recorded(record, debt=debt))
            writes = Writes(tx)
            writes.insert(
                "payment_result", [PAYMENT_RESULTS.values(r) for r in fresh], ignore="key"
            )
            writes.delete("payment_outbox", "key", [r.key for r in fresh])
            writes.update("session", "session_id", lapsed)
            writes.flush()
            return out

    def claim_payments(self, now: datetime, limit: int) -> list[Instruction]:
        """Up to ``limit`` instructions due at ``now``, marked sent (due again after the
        resend interval, doubling): the dispatcher sends them next. Two dispatchers never
        claim the same one at once."""
        require_aware("now", now)
        resend = self.settings.payments.resend_after_s

        def work() -> list[Instruction]:
            with self.ledger.store.transaction() as tx:
                due = tx.due_instructions(now, limit)
                sent = [
                    replace(i, sends=i.sends + 1, due_at=next_send(now, i.sends + 1, resend))
                    for i in due
                ]
                writes = Writes(tx)
                marks = [{"key": i.key, "sends": i.sends, "due_at": i.due_at} for i in sent]
                writes.update("payment_outbox", "key", marks)
                writes.flush()
                return sent

        return self.ledger.retrying(work)

    def receipt(self, session_id: str) -> Receipt:
        """The receipt of a decided stay: its tariff steps as the settlement used them, and
        its money (``citybrain.parking.receipts``)."""
        with self.ledger.store.transaction() as tx:
            stored = tx.stored_session(session_id)
            if stored is None:
                raise ReceiptError(f"unknown session {session_id!r}")
            money = tx.money(session_id)
            priced = tx.resolution(item_key(ItemKind.REVIEW, session_id))
            if priced is None:
                priced = tx.resolution(item_key(ItemKind.OVERSTAY, session_id))
        return receipt(_report_of(stored), stored.breakdown, self.ledger.tariffs, money, priced)

    # ---- occupancy ---------------------------------------------------------------------------

    def lots(self) -> list[str]:
        """Every lot the tariffs or the settings name."""
        return sorted(set(self.ledger.tariffs) | set(self.settings.lots))

    def occupancy(self, now: datetime, lot: str | None = None) -> list[LotNow]:
        """Open stays per lot against its capacity, and how many are past the review limit."""
        require_aware("now", now)
        counts = self.ledger.store.occupancy(now - self.settings.review.max_stay)
        lots = sorted(set(self.lots()) | set(counts)) if lot is None else [lot]
        return [
            LotNow(name, self.settings.capacity(name), *counts.get(name, (0, 0))) for name in lots
        ]

    def occupancy_day(self, day: date, now: datetime, lot: str | None = None) -> list[DayOccupancy]:
        """Occupancy hour by hour over the lots' local ``day``."""
        require_aware("now", now)
        out = []
        for name in self.lots() if lot is None else [lot]:
            zone = self._zone(name)
            start, end = day_bounds(day, zone)
            stays = self.ledger.store.stays_between(name, start, end)
            capacity = self.settings.capacity(name)
            out.append(day_profile(name, day, zone, stays, now=now, capacity=capacity))
        return out

    # ---- reports and export ----------------------------------------------------------------

    def report(self, day: date, now: datetime, lot: str | None = None) -> list[LotDay]:
        """Each lot's numbers for its local ``day`` (``citybrain.parking.daybook``)."""
        require_aware("now", now)
        out = []
        for name in self.lots() if lot is None else [lot]:
            zone = self._zone(name)
            start, end = day_bounds(day, zone)
            period = self.ledger.store.period(name, start, end)
            stays = self.ledger.store.stays_between(name, start, end)
            capacity = self.settings.capacity(name)
            occupied = day_profile(name, day, zone, stays, now=now, capacity=capacity)
            out.append(lot_day(period, day, zone, occupied))
        return out

    def export(self, kind: ExportKind, first: date, last: date, lot: str | None = None) -> str:
        """RFC 4180 CSV of ``kind`` over the lots' local days ``first`` to ``last``."""
        if last < first:
            raise ReviewError(
                f"the date range is backwards: from {first.isoformat()} to {last.isoformat()}"
            )
        rows: list[dict[str, str | int | None]] = []
        for name in self.lots() if lot is None else [lot]:
            zone = self._zone(name)
            start, end = day_bounds(first, zone)[0], day_bounds(last, zone)[1]
            rows.extend(export_rows(kind, self.ledger.store.period(name, start, end), zone))
        return csv_text(kind, rows)

    def _zone(self, lot: str) -> ZoneInfo:
        tariff = self.ledger.tariffs.get(lot)
        if tariff is None:
            raise ReviewError(f"unknown lot {lot!r} (no tariff names its time zone)")
        return tariff.timezone

    def money(self, session_id: str) -> Money:
        """The session's charges, refunds and the payment side's answers."""
        with self.ledger.store.transaction() as tx:
            return tx.money(session_id)

    def statement(self, account: str) -> Statement:
        """The account's charges, declines and refunds in order, and its debts."""
        charges, refunds, results, debts = self.ledger.store.account_money(account)
        return statement(account, charges, refunds, results, debts)


def _write(
    tx: Transaction,
    target: _Target,
    other: _Target | None,
    decision: Decision,
    record: ResolutionRecord,
    refund: AdjustmentRecord | None,
) -> ChargeReport | None:
    """The decision's rows: waiting exits made sessions, the sessions, the resolution, the
    charge or the refund (parents before children)."""
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
        attempt = tx.charge_attempts([s.session_id]).get(s.session_id, 0) + 1
        charge = ChargeReport(
            s.session_id,
            s.lot_id,
            s.plate,
            money.account,
            money.charge_cents,
            record.created_at,
            attempt,
            ChargeSource.REVIEW.value,
        )
    lot = target.session.lot_id
    money_writes(
        writes, [] if charge is None else [charge], [] if refund is None else [(refund, lot)]
    )
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
    disputed = tx.open_dispute(sid)
    if disputed is not None:
        return _Target(ItemKind.DISPUTE, s, stored, None, disputed)
    return _Target(None, s, stored, None)


def _text(name: str, value: str, max_chars: int = 500) -> str:
    text = value.strip()
    if text_fault(text, max_chars) is not None:
        raise ReviewError(f"{name} must be a line of text, not {value!r}")
    return text


def _when(at: datetime | None) -> datetime:
    when = datetime.now(UTC) if at is None else at
    require_aware("at", when)
    return when.astimezone(UTC)


def _derived(prefix: str, *parts: object) -> str:
    """An id derived from what a record says: the same record twice gets the same id."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8", "surrogatepass"))
    return f"{prefix}-{digest.hexdigest()[:16]}"


def _report_of(stored: StoredSession) -> SessionReport:
    s = stored.session
    reason = None if s.review_reason is None else s.review_reason.value
    return SessionReport(
        s.session_id,
        s.lot_id,
        s.plate,
        s.exit_plate,
        s.entry_at,
        s.exit_at,
        stored.fee_cents,
        s.status.value,
        stored.account,
        reason,
        s.related,
    )
