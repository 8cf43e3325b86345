"""Money after settlement, on both backends (fixtures of ``test_parking_ledger``): payment
results, declined charges becoming debts, refunds never above what was paid, disputes
through the review queue, account statements; and the pure rules of ``parking.money``."""

from __future__ import annotations

import pytest

from citybrain.parking.ledger import Ledger
from citybrain.parking.money import LineKind, Money, MoneyError, Payment, check_refund, statement
from citybrain.parking.office import BackOffice
from citybrain.parking.reports import AdjustmentRecord, ChargeReport, PaymentResultRecord
from citybrain.parking.review import Action, ItemKind, Resolution, ReviewError
from tests import test_parking_ledger as shared
from tests.test_parking_ledger import at, record, snapshot

backend = shared.backend
fresh_url = shared.fresh_url
ledger_factory = shared.ledger_factory
ledger = shared.ledger

OP = {"operator": "ana", "reason": "the driver showed a receipt"}


def stay(ledger: Ledger, car: str, plate: str, minutes: float, start: float = 0) -> str:
    """A stay of ``minutes`` at L01; returns its session id."""
    record(ledger, f"{car}-in", "in", plate, start)
    record(ledger, f"{car}-out", "out", plate, start + minutes)
    return f"L01/{car}-in"


# ---- pure ----------------------------------------------------------------------------------


def _charge(cents: int, attempt: int = 1, account: str = "a", minute: float = 0) -> ChargeReport:
    return ChargeReport("L01/s", "L01", "浙A1", account, cents, at(minute), attempt)


def _result(key: str, status: str, minute: float) -> PaymentResultRecord:
    return PaymentResultRecord(key, key.split(":")[0], "L01/s", status, at(minute))


def _refund(rid: str, cents: int, minute: float) -> AdjustmentRecord:
    return AdjustmentRecord(rid, "L01/s", "refund", cents, "a", "ana", "why", at(minute))


def test_money_counts_what_is_in_force_and_what_is_paid() -> None:
    first, second = _charge(2000), _charge(2000, attempt=2, minute=50)
    refund = _refund("r1", 500, 60)
    results = {
        first.key: _result(first.key, "declined", 10),
        second.key: _result(second.key, "paid", 55),
    }
    money = Money((first, second), (refund,), results)
    assert (money.charged_cents, money.paid_cents, money.refunded_cents) == (2000, 2000, 500)
    assert (money.refundable_cents, money.net_cents, money.payer) == (1500, 1500, "a")
    check_refund("L01/s", money, 1500)
    with pytest.raises(MoneyError, match="exceeds what was paid"):
        check_refund("L01/s", money, 1501)
    pending = Money((_charge(900),), (), {})
    assert (pending.charged_cents, pending.paid_cents, pending.status(_charge(900).key)) == (
        900,
        0,
        Payment.PENDING,
    )
    with pytest.raises(MoneyError, match=r"0\.00 paid, 0\.00 refunded \(9\.00 charged awaits"):
        check_refund("L01/s", pending, 100)
    with pytest.raises(MoneyError, match="never charged"):
        check_refund("L01/s", Money(), 100)
    # a declined refund gives its money back to what can be refunded
    undone = Money(
        (second,), (refund,), {**results, refund.key: _result(refund.key, "declined", 61)}
    )
    assert (undone.refunded_cents, undone.refundable_cents) == (0, 2000)


def test_a_statement_adds_its_lines_up_in_time_order() -> None:
    first, second = _charge(2000, minute=0), _charge(2000, attempt=2, minute=50)
    other = _charge(700, account="b", minute=5)
    refund = _refund("r1", 500, 60)
    results = {first.key: _result(first.key, "declined", 10)}
    s = statement("a", [first, other, second], [refund], results)
    assert [(x.kind, x.cents) for x in s.lines] == [
        (LineKind.CHARGE, 2000),
        (LineKind.DECLINED, -2000),
        (LineKind.CHARGE, 2000),
        (LineKind.REFUND, -500),
    ]
    assert (s.charged_cents, s.refunded_cents, s.balance_cents) == (2000, 500, 1500)
    assert s.lines[3].status is Payment.PENDING


# ---- on a ledger ---------------------------------------------------------------------------


def test_a_refund_needs_paid_money_and_never_exceeds_it(ledger: Ledger) -> None:
    ledger.bind("浙A12345", "acct-a", at=at(-1))
    sid = stay(ledger, "c1", "浙A12345", 140)  # 25.00
    back = BackOffice(ledger)
    (charge,) = ledger.charges()
    before = snapshot(ledger)
    with pytest.raises(MoneyError, match="awaits the payment side"):
        back.refund(sid, 500, **OP)
    assert snapshot(ledger) == before
    back.record_payment(charge.key, "paid", reference="psp-1", at=at(141))
    first = back.refund(sid, 500, at=at(150), **OP)
    assert not first.again and isinstance(first.record, AdjustmentRecord)
    assert (first.record.account, first.record.cents, first.record.operator) == (
        "acct-a",
        500,
        "ana",
    )
    assert back.refund(sid, 500, at=at(151), **OP).again  # the same refund: one
    before = snapshot(ledger)
    with pytest.raises(MoneyError, match=r"exceeds what was paid .*25\.00 paid, 5\.00 refunded"):
        back.refund(sid, 2001, operator="ana", reason="another")
    with pytest.raises(MoneyError, match="unknown session"):
        back.refund("L01/none", 100, **OP)
    with pytest.raises(MoneyError, match="positive"):
        back.refund(sid, 0, **OP)
    assert snapshot(ledger) == before
    back.refund(sid, 100, refund_id="R1", **OP)
    with pytest.raises(MoneyError, match="'R1' is taken"):
        back.refund(sid, 200, refund_id="R1", **OP)
    assert back.money(sid).refunded_cents == 600
    s = back.statement("acct-a")
    assert [(x.kind, x.cents) for x in s.lines] == [
        (LineKind.CHARGE, 2500),
        (LineKind.REFUND, -500),
        (LineKind.REFUND, -100),
    ]
    assert s.balance_cents == 1900


def test_a_declined_charge_makes_a_debt_collected_by_the_next_attempt(ledger: Ledger) -> None:
    ledger.bind("浙A12345", "acct-a", at=at(-1))
    sid = stay(ledger, "c1", "浙A12345", 140)
    back = BackOffice(ledger)
    (charge,) = ledger.charges()
    outcome = back.record_payment(charge.key, "declined", detail="card expired", at=at(141))
    assert outcome.debt
    assert [(d.session_id, d.cents) for d in ledger.debts()] == [(sid, 2500)]
    assert back.record_payment(charge.key, "paid", at=at(142)).again  # the first answer counts
    assert ledger.charge_totals() == {}
    s = back.statement("acct-a")
    assert [(x.kind, x.cents) for x in s.lines] == [
        (LineKind.CHARGE, 2500),
        (LineKind.DECLINED, -2500),
    ]
    assert (s.balance_cents, s.owed_cents) == (0, 2500)
    # Bound again (a new card): the debt is collected by a second attempt.
    again = ledger.bind("浙A12345", "acct-a", at=at(200))
    assert [(c.attempt, c.source, c.cents) for c in again.charges] == [(2, "debt", 2500)]
    (session,) = ledger.sessions()
    assert (session.status, session.account) == ("settled", "acct-a")
    back.record_payment(again.charges[0].key, "paid", at=at(201))
    s = back.statement("acct-a")
    assert (s.balance_cents, s.owed_cents, len(s.lines)) == (2500, 0, 3)
    assert ledger.charge_totals() == {"acct-a": 2500}
    with pytest.raises(MoneyError, match="unknown payment instruction"):
        back.record_payment("charge:L01/c1-in:7", "paid")
    with pytest.raises(MoneyError, match="unknown payment instruction"):
        back.record_payment("nonsense", "paid")


def test_a_disputed_charge_is_reviewed_and_refunded_down_to_a_fee(ledger: Ledger) -> None:
    ledger.bind("浙A12345", "acct-a", at=at(-1))
    sid = stay(ledger, "c1", "浙A12345", 140)
    back = BackOffice(ledger)
    with pytest.raises(ReviewError, match="nothing to resolve"):
        back.resolve(sid, Resolution(Action.DISMISS), **OP)
    disputed = back.dispute(sid, at=at(150), **OP)
    assert back.dispute(sid, at=at(151), **OP).again
    with pytest.raises(ReviewError, match="disputed already"):
        back.dispute(sid, operator="bo", reason="another complaint")
    (item,) = back.review(at(152))
    assert (item.kind, item.reason, item.fee_cents, item.detail) == (
        ItemKind.DISPUTE,
        "dispute",
        2500,
        OP["reason"],
    )
    assert item.dispute_id == disputed.record.dispute_id  # type: ignore[union-attr]
    with pytest.raises(ReviewError, match="nothing paid"):
        back.resolve(sid, Resolution(Action.WAIVE), **OP)  # not paid yet
    back.record_payment(ledger.charges()[0].key, "paid", at=at(153))
    with pytest.raises(ReviewError, match="can only go down"):
        back.resolve(sid, Resolution(Action.FEE, cents=3000), **OP)
    done = back.resolve(sid, Resolution(Action.FEE, cents=1500), at=at(160), **OP)
    assert done.refund is not None and (done.refund.cents, done.refund.account) == (1000, "acct-a")
    assert back.resolve(sid, Resolution(Action.FEE, cents=1500), **OP).again
    assert back.review(at(161)) == []
    money = back.money(sid)
    assert (money.charged_cents, money.refunded_cents, money.net_cents) == (2500, 1000, 1500)
    # another dispute later: dismissed, nothing moves
    back.dispute(sid, operator="bo", reason="still too much", at=at(170))
    back.resolve(sid, Resolution(Action.DISMISS), at=at(171), **OP)
    assert back.money(sid).net_cents == 1500 and back.review(at(172)) == []
