"""Receipts: the tariff's steps kept with the settlement, shown in the lot's time, with the
stay's money; on both backends (fixtures of ``test_parking_ledger``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import text

from citybrain.parking.ledger import Ledger, default_tariffs, open_ledger
from citybrain.parking.office import BackOffice
from citybrain.parking.receipts import (
    ReceiptError,
    breakdown_json,
    breakdown_of,
    parse_breakdown,
    render_text,
    to_json,
)
from citybrain.parking.review import Action, Resolution
from citybrain.parking.tariff import fee, parse_tariffs
from tests import test_parking_ledger as shared
from tests.test_parking_ledger import T0, at, record

backend = shared.backend
fresh_url = shared.fresh_url
ledger_factory = shared.ledger_factory
ledger = shared.ledger

TARIFFS = default_tariffs()


def test_the_breakdown_keeps_every_step_and_reads_back() -> None:
    # 09:00 to 09:00 two days later plus 3 h, L01: 30 min units, 500 by day, 200 by night,
    # 60.00 a day at most
    entry = T0 - timedelta(hours=1)
    priced = fee(TARIFFS["L01"], entry, entry + timedelta(days=2, hours=3))
    b = breakdown_of(priced)
    assert (b.free_minutes, b.unit_minutes, b.daily_cap_cents, b.units) == (15, 30, 6000, 102)
    assert [(w.units, w.raw_cents, w.cents) for w in b.windows] == [
        (48, 24 * 500 + 24 * 200, 6000),
        (48, 24 * 500 + 24 * 200, 6000),
        (6, 6 * 500, 3000),
    ]
    assert [(x.start, x.end, x.cents_per_unit, x.units) for x in b.windows[0].bands] == [
        ("08:00", "20:00", 500, 24),
        ("20:00", "08:00", 200, 24),
    ]
    assert b.total_cents == priced.total_cents == 15000
    assert parse_breakdown(breakdown_json(priced)) == b


def test_a_receipt_shows_the_numbers_the_settlement_used(
    ledger: Ledger, fresh_url: Callable[[], str]
) -> None:
    ledger.bind("浙A12345", "acct-a", at=at(-1))
    record(ledger, "e1", "in", "浙A12345", 0)
    record(ledger, "x1", "out", "浙A12345", 26 * 60 + 5)  # 26 h 5 min: a capped first day
    back = BackOffice(ledger)
    r = back.receipt("L01/e1")
    (session,) = ledger.sessions()
    (charge,) = ledger.charges()
    assert r.fee_cents == session.fee_cents == charge.cents == r.breakdown.total_cents  # type: ignore[union-attr]
    assert r.priced_by == "tariff" and r.entry_at is not None
    assert r.entry_at.isoformat() == "2024-05-01T10:00:00+08:00"  # the lot's local time
    text_ = render_text(r)
    assert "day 1 from 2024-05-01 10:00" in text_ and "daily cap applied" in text_
    assert "Charged  " in text_ and f"Net      {charge.cents // 100}.00" in text_
    data = to_json(r)
    assert data["tariff"]["windows"][0]["capped"] is True
    assert data["charges"][0]["payment"] == "pending"
    assert sum(w["cents"] for w in data["tariff"]["windows"]) == data["fee_cents"]
    # A tariff changed afterwards does not change the receipt.
    doubled = parse_tariffs(
        {
            "lots": {
                "L01": {
                    "timezone": "Asia/Shanghai",
                    "free_minutes": 0,
                    "unit_minutes": 60,
                    "rates": [{"start": "00:00", "end": "00:00", "cents_per_unit": 999}],
                }
            }
        }
    )
    url = ledger.engine.url.render_as_string(hide_password=False)
    later = open_ledger(url, tariffs=doubled)
    try:
        again = BackOffice(later).receipt("L01/e1")
        assert (again.breakdown, again.fee_cents) == (r.breakdown, r.fee_cents)
        # A stay settled before receipts kept the steps is priced again, and says so.
        with later.engine.begin() as conn:
            conn.execute(text("UPDATE session SET breakdown = NULL"))
        old = BackOffice(later).receipt("L01/e1")
        assert old.priced_by == "recomputed" and "as it is now" in render_text(old)
    finally:
        later.close()


def test_receipts_of_resolved_and_refunded_stays(ledger: Ledger) -> None:
    ledger.bind("浙C11111", "acct-c", at=at(-1))
    record(ledger, "x1", "out", "浙C11111", 60)
    record(ledger, "x2", "out", "浙C22222", 61)
    back = BackOffice(ledger)
    op = {"operator": "ana", "reason": "ticket shown"}
    back.resolve("L01/x1", Resolution(Action.FEE, cents=800), **op)
    back.resolve("L01/x2", Resolution(Action.ENTRY, at=at(0)), **op)
    (charge,) = ledger.charges()
    back.record_payment(charge.key, "paid")
    back.refund("L01/x1", 300, operator="ana", reason="goodwill")
    hand = back.receipt("L01/x1")
    assert (hand.priced_by, hand.fee_cents, hand.net_cents) == ("hand", 800, 500)
    shown = render_text(hand)
    assert "Fee set by hand (fee by ana: ticket shown)" in shown
    assert "Refunded 3.00 to acct-c (pending): goodwill" in shown
    priced = back.receipt("L01/x2")
    assert (priced.priced_by, priced.status, priced.fee_cents) == ("tariff", "unpaid", 1500)
    assert "Owed     15.00" in render_text(priced)  # 61 min: 3 started half hours
    record(ledger, "e9", "in", "浙D99999", 5)
    with pytest.raises(ReceiptError, match="open: no receipt"):
        back.receipt("L01/e9")
    with pytest.raises(ReceiptError, match="unknown session"):
        back.receipt("L01/none")
