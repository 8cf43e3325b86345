"""Every amount adds up, to the cent (issue 16): over a random stream with payments paid
and declined, debts collected again, refunds (some declined), resolutions and disputes,
the receipts, the daily reports, the account statements and the CSV export each add up to
the ledger's charges in force minus its refunds in force, counted straight from its
tables. On both backends (fixtures of ``test_parking_ledger``)."""

from __future__ import annotations

import csv
import io
import random
from datetime import timedelta

import pytest
from sqlalchemy import text

from citybrain.parking.daybook import ExportKind
from citybrain.parking.ledger import Ledger, RecordItem
from citybrain.parking.money import MoneyError
from citybrain.parking.office import BackOffice
from citybrain.parking.review import Action, ItemKind, Resolution, ReviewError
from tests import test_parking_ledger as shared
from tests.test_parking_ledger import T0, at, make_stream

backend = shared.backend
fresh_url = shared.fresh_url
ledger_factory = shared.ledger_factory
ledger = shared.ledger

OP = {"operator": "ana", "reason": "sums test"}


def ledger_truth(ledger: Ledger) -> int:
    """Charges in force minus refunds in force, straight from the tables."""
    declined = "SELECT key FROM payment_result WHERE status = 'declined'"
    with ledger.engine.connect() as conn:
        charges = conn.execute(text("SELECT session_id, attempt, cents FROM charge")).all()
        refunds = conn.execute(text("SELECT adjustment_id, cents FROM adjustment")).all()
        lapsed = {row[0] for row in conn.execute(text(declined))}
        conn.rollback()
    charged = sum(c for s, n, c in charges if f"charge:{s}:{n}" not in lapsed)
    refunded = sum(c for a, c in refunds if f"refund:{a}" not in lapsed)
    return charged - refunded


def answer(back: BackOffice, ledger: Ledger, rng: random.Random, minute: float) -> None:
    """Answer every charge not answered yet: paid, or declined one time in five."""
    for c in ledger.charges():
        if back.money(c.session_id).status(c.key).value == "pending":
            status = "declined" if rng.random() < 0.2 else "paid"
            back.record_payment(c.key, status, at=at(minute + rng.uniform(0, 60)))


@pytest.mark.parametrize("seed", [1, 2])
def test_receipts_reports_statements_and_export_add_up(ledger: Ledger, seed: int) -> None:
    rng = random.Random(seed)
    msgs = make_stream(1500, seed=seed)
    plates = sorted({m.plate for m in msgs})
    for plate in plates[::2]:
        ledger.bind(plate, f"acct-{plate[-2:]}", at=at(-1))  # accounts shared by some plates
    items = [RecordItem(m.lot, m.payload, m.received_at) for m in msgs]
    while items:
        size = rng.randint(1, 60)
        ledger.record_many(items[:size])
        items = items[size:]
    end = max(m.received_at for m in msgs)
    span = (end - T0).total_seconds() / 60
    ledger.expire(end + timedelta(hours=1))
    back = BackOffice(ledger)
    answer(back, ledger, rng, span)
    # Resolve part of the review queue.
    for item in back.review(end + timedelta(hours=2)):
        if rng.random() < 0.3 or item.kind is ItemKind.OVERSTAY:
            continue
        if item.entry_at is None and item.exit_at is not None:
            request = rng.choice(
                [
                    Resolution(
                        Action.ENTRY, at=item.exit_at - timedelta(minutes=rng.randint(0, 900))
                    ),
                    Resolution(Action.FEE, cents=rng.randint(0, 4000)),
                    Resolution(Action.WAIVE),
                ]
            )
        elif item.exit_at is None and item.entry_at is not None:
            request = Resolution(
                Action.EXIT, at=item.entry_at + timedelta(minutes=rng.randint(1, 900))
            )
        else:
            request = Resolution(Action.DISMISS)
        try:
            back.resolve(item.session_id, request, at=at(span + 10), **OP)
        except ReviewError as exc:  # left for a person who names the account that pays
            assert "several accounts" in str(exc), str(exc)
    # The rest of the plates bound later: their debts (and declined charges) are collected.
    for plate in plates[1::2] + plates[::8]:
        ledger.bind(plate, f"acct-{plate[-2:]}", at=at(span + 100))
    answer(back, ledger, rng, span + 120)
    # Refunds of paid money, some declined; disputes resolved at a lower fee.
    charged = sorted({c.session_id for c in ledger.charges()})
    for sid in rng.sample(charged, min(40, len(charged))):
        money = back.money(sid)
        if money.refundable_cents <= 0:
            continue
        cents = rng.randint(1, money.refundable_cents)
        done = back.refund(sid, cents, at=at(span + 200 + rng.uniform(0, 600)), **OP)
        if rng.random() < 0.25:
            back.record_payment(done.record.key, "declined", at=at(span + 900))  # type: ignore[union-attr]
        elif rng.random() < 0.5:
            back.record_payment(done.record.key, "paid", at=at(span + 900))  # type: ignore[union-attr]
    for sid in rng.sample(charged, min(10, len(charged))):
        money = back.money(sid)
        if money.refundable_cents <= 0:
            continue
        try:
            back.dispute(sid, at=at(span + 1000), **OP)
        except ReviewError:
            continue
        back.resolve(
            sid, Resolution(Action.FEE, cents=money.charged_cents // 2), at=at(span + 1001), **OP
        )
    with pytest.raises(MoneyError):  # a refund over what was paid changes nothing
        back.refund(charged[0], 10**9, **OP)

    truth = ledger_truth(ledger)
    assert truth > 0

    # Receipts: one per decided stay; every charged stay has one.
    receipts = [
        back.receipt(s.session_id) for s in ledger.sessions() if s.status in ("settled", "unpaid")
    ]
    assert {r.session_id for r in receipts} >= set(charged)
    assert sum(r.net_cents for r in receipts) == truth
    for r in receipts:
        if r.breakdown is not None and r.priced_by == "tariff":
            assert r.breakdown.total_cents == r.fee_cents
            assert sum(w.cents for w in r.breakdown.windows) == r.fee_cents

    # Daily reports, every lot, every local day that has money.
    first = (T0 - timedelta(days=1)).date()
    last = (end + timedelta(days=3)).date()
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    now = end + timedelta(days=3)
    reported = sum(d.net_cents for day in days for d in back.report(day, now))
    assert reported == truth

    # Statements, every account.
    accounts = {c.account for c in ledger.charges()}
    assert sum(back.statement(a).balance_cents for a in accounts) == truth

    # The CSV export of the whole period.
    def rows(kind: ExportKind) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(back.export(kind, first, last), newline="")))

    in_force = lambda r: r["payment"] != "declined"  # noqa: E731
    exported = sum(int(r["cents"]) for r in rows(ExportKind.CHARGES) if in_force(r)) - sum(
        int(r["cents"]) for r in rows(ExportKind.ADJUSTMENTS) if in_force(r)
    )
    assert exported == truth
    assert sum(int(r["net_cents"]) for r in rows(ExportKind.SESSIONS)) == truth
    assert len(rows(ExportKind.REVIEWS)) == len(ledger.store.resolutions())
