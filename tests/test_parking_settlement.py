"""Settlement: fees, settled vs unpaid, debts collected on binding, at most one charge.

The pure rules (``citybrain.parking.settlement``) first, then the ledger on both backends
(fixtures shared with ``test_parking_ledger``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session as DbSession
from sqlmodel import select

from citybrain.parking.ledger import Ledger, LedgerError, OutcomeKind, default_tariffs
from citybrain.parking.matching import (
    MatchKind,
    Session,
    SessionStatus,
    close_session,
    open_session,
)
from citybrain.parking.passages import Direction, Read, start_passage
from citybrain.parking.settlement import collect_debt, settle_closed, stay_fee
from citybrain.parking.tables import Binding, Charge, SessionRow
from tests import test_parking_ledger as shared
from tests.test_parking_ledger import at, record, run_threads

# The database fixtures (both backends) of test_parking_ledger.
backend = shared.backend
fresh_url = shared.fresh_url
ledger_factory = shared.ledger_factory
ledger = shared.ledger

TARIFFS = default_tariffs()


def closed(minutes: float, *, lot: str = "L01", plate: str = "浙A12345") -> Session:
    entry = start_passage(Read("e", lot, "c1", Direction.IN, plate, 0.9, at(0)))
    exit_ = start_passage(Read("x", lot, "c2", Direction.OUT, plate, 0.9, at(minutes)))
    return close_session(open_session(entry, at(0)), exit_, MatchKind.EXACT)


# ---- pure rules ------------------------------------------------------------------------------


def test_bound_account_is_charged_the_tariff_fee() -> None:
    s = settle_closed(closed(140), TARIFFS["L01"], "acct-1")
    assert (s.session.status, s.fee_cents, s.account, s.charge_cents) == (
        SessionStatus.SETTLED,
        2500,
        "acct-1",
        2500,
    )
    assert s.charged


def test_no_account_makes_a_debt() -> None:
    s = settle_closed(closed(140), TARIFFS["L01"], None)
    assert (s.session.status, s.fee_cents, s.account, s.charge_cents) == (
        SessionStatus.UNPAID,
        2500,
        None,
        None,
    )
    paid = collect_debt(s.session, s.fee_cents, "acct-2")
    assert (paid.session.status, paid.account, paid.charge_cents) == (
        SessionStatus.SETTLED,
        "acct-2",
        2500,
    )


@pytest.mark.parametrize("account", [None, "acct-1"])
def test_free_stay_is_settled_with_nothing_to_charge(account: str | None) -> None:
    s = settle_closed(closed(15), TARIFFS["L01"], account)
    assert (s.session.status, s.fee_cents, s.account, s.charge_cents) == (
        SessionStatus.SETTLED,
        0,
        account,
        None,
    )


def test_fee_uses_the_lot_tariff_and_its_daily_cap() -> None:
    two_days = 48 * 60
    assert stay_fee(closed(two_days), TARIFFS["L01"]) == 2 * 6000
    assert stay_fee(closed(two_days, lot="L03"), TARIFFS["L03"]) == 2 * 1500
    with pytest.raises(ValueError, match="tariff of L03"):
        stay_fee(closed(60), TARIFFS["L03"])


def test_only_closed_sessions_settle_and_only_debts_are_collected() -> None:
    opened = open_session(
        start_passage(Read("e", "L01", "c", Direction.IN, "浙A1", 0.9, at())), at()
    )
    with pytest.raises(ValueError, match="not closed"):
        settle_closed(opened, TARIFFS["L01"], "a")
    settled = settle_closed(closed(60), TARIFFS["L01"], "a").session
    with pytest.raises(ValueError, match="not unpaid"):
        collect_debt(settled, 1000, "a")
    unpaid = settle_closed(closed(60), TARIFFS["L01"], None).session
    with pytest.raises(ValueError, match="positive"):
        collect_debt(unpaid, 0, "a")
    with pytest.raises(ValueError, match="account"):
        collect_debt(unpaid, 1000, "")


# ---- in the ledger ------------------------------------------------------------------------


def test_unpaid_then_bind_charges_exactly_once(ledger: Ledger) -> None:
    record(ledger, "a", "in", "浙A12345", 0)
    record(ledger, "b", "out", "浙A12345", 60)
    record(ledger, "c", "in", "浙A12345", 100, lot="L02")
    record(ledger, "d", "out", "浙A12345", 400, lot="L02")
    debts = ledger.debts()
    assert [(d.lot_id, d.cents) for d in debts] == [("L01", 1000), ("L02", 3000)]
    assert ledger.debts("浙A·12345") == debts and ledger.debts("浙B1") == []
    assert [s.status for s in ledger.sessions()] == ["unpaid", "unpaid"]
    assert ledger.charges() == []

    first = ledger.bind("浙a·12345", "acct-1", at=at(500))
    assert (first.plate, first.account, first.previous) == ("浙A12345", "acct-1", None)
    assert [(c.session_id, c.cents) for c in first.charges] == [("L01/a", 1000), ("L02/c", 3000)]
    again = ledger.bind("浙A12345", "acct-1", at=at(600))
    assert (again.previous, again.charges) == ("acct-1", ())

    assert ledger.debts() == []
    assert [(c.session_id, c.account, c.cents, c.charged_at) for c in ledger.charges()] == [
        ("L01/a", "acct-1", 1000, at(500)),
        ("L02/c", "acct-1", 3000, at(500)),
    ]
    assert [(s.status, s.account) for s in ledger.sessions()] == [("settled", "acct-1")] * 2
    assert ledger.charge_totals() == {"acct-1": 4000}


def _read(
    ledger: Ledger, read_id: str, direction: str, plate: str, minutes: float, conf: float
) -> None:
    ts = at(minutes)
    body = shared.payload(
        read_id=read_id,
        camera_id=f"cam-{direction}-{read_id}",
        direction=direction,
        plate=plate,
        confidence=conf,
        ts=ts.isoformat(),
    )
    assert ledger.record("L01", body, ts).kind is OutcomeKind.RECORDED


def test_binding_the_true_plate_collects_a_debt_recorded_under_a_misread(
    ledger: Ledger,
) -> None:
    # An unbound car, 浙A12345: at the entry one camera misread it 浙A1234S (more sure of
    # itself, so the passage's plate), the other read it right; the exit read it wrong.
    _read(ledger, "e1", "in", "浙A·1234S", 0, 0.95)
    _read(ledger, "e2", "in", "浙A·12345", 0.1, 0.50)
    _read(ledger, "x1", "out", "浙A·1234S", 60, 0.95)
    # A different car whose plate is a look-alike (浙A1Z345), never read as 浙A12345.
    _read(ledger, "f1", "in", "浙A1Z345", 200, 0.9)
    _read(ledger, "f2", "out", "浙A1Z345", 260, 0.9)
    debts = {d.session_id: (d.plate, d.cents) for d in ledger.debts()}
    assert debts == {"L01/e1": ("浙A1234S", 1000), "L01/f1": ("浙A1Z345", 1000)}

    first = ledger.bind("浙A12345", "acct-1", at=at(300))
    # paid by 浙A12345's account: shown under 浙A12345 from now on (the bound reading)
    assert [(c.session_id, c.plate, c.account, c.cents) for c in first.charges] == [
        ("L01/e1", "浙A12345", "acct-1", 1000)
    ]
    again = ledger.bind("浙A12345", "acct-1", at=at(310))
    assert again.charges == ()
    assert [(c.session_id, c.account, c.cents) for c in ledger.charges()] == [
        ("L01/e1", "acct-1", 1000)
    ]
    assert [d.session_id for d in ledger.debts()] == ["L01/f1"]  # the other car still owes
    # Its own plate collects it.
    other = ledger.bind("浙A1Z345", "acct-2", at=at(320))
    assert [(c.session_id, c.account) for c in other.charges] == [("L01/f1", "acct-2")]
    assert ledger.charge_totals() == {"acct-1": 1000, "acct-2": 1000}


def test_a_misread_debt_is_not_collected_when_its_accounts_disagree(ledger: Ledger) -> None:
    # A stay read as 浙A1234S (the passage's plate), 浙A12345 and 浙A1Z345, unbound: a debt.
    _read(ledger, "e1", "in", "浙A1234S", 0, 0.95)
    _read(ledger, "e2", "in", "浙A1Z345", 0.1, 0.50)
    _read(ledger, "x1", "out", "浙A1234S", 60, 0.95)
    _read(ledger, "x2", "out", "浙A12345", 60.1, 0.50)
    # 浙A1Z345 gets bound in the bind's table without collecting it (as a concurrent bind
    # that committed between the debt and this bind might leave it).
    with DbSession(ledger.engine) as db, db.begin():
        db.add(Binding(plate="浙A1Z345", account="acct-2", bound_at=at(100)))
    outcome = ledger.bind("浙A12345", "acct-1", at=at(120))
    assert outcome.charges == ()  # two accounts for one stay: never guessed
    assert [d.session_id for d in ledger.debts()] == ["L01/e1"]
    assert ledger.charges() == []


def test_rebinding_moves_later_stays_only(ledger: Ledger) -> None:
    ledger.bind("浙A12345", "old", at=at(-1))
    record(ledger, "a", "in", "浙A12345", 0)
    record(ledger, "b", "out", "浙A12345", 60)
    moved = ledger.bind("浙A12345", "new", at=at(70))
    assert (moved.previous, moved.charges) == ("old", ())
    record(ledger, "c", "in", "浙A12345", 120)
    record(ledger, "d", "out", "浙A12345", 180)
    assert [(c.account, c.cents) for c in ledger.charges()] == [("old", 1000), ("new", 1000)]
    assert ledger.charge_totals() == {"new": 1000, "old": 1000}


def test_bind_refuses_what_is_not_a_plate_or_an_account(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="not a plate"):
        ledger.bind(" · ", "acct")
    with pytest.raises(LedgerError, match="not an account"):
        ledger.bind("浙A12345", "  ")
    outcomes = ledger.bind_many([("浙A1", "x"), ("浙B2", "y")], at=at())
    assert [(o.plate, o.account) for o in outcomes] == [("浙A1", "x"), ("浙B2", "y")]


def test_database_refuses_a_second_charge_for_a_session(ledger: Ledger) -> None:
    ledger.bind("浙A12345", "acct-1", at=at(-1))
    record(ledger, "a", "in", "浙A12345", 0)
    record(ledger, "b", "out", "浙A12345", 60)
    (charge,) = ledger.charges()
    with (
        pytest.raises(IntegrityError, match=r"(?i)unique|duplicate"),
        DbSession(ledger.engine) as db,
        db.begin(),
    ):
        db.add(Charge(session_id=charge.session_id, account="acct-2", cents=1, charged_at=at(61)))
    assert len(ledger.charges()) == 1


def test_database_refuses_inconsistent_money(ledger: Ledger) -> None:
    record(ledger, "a", "in", "浙A12345", 0)
    for change in ({"charged": True}, {"status": "unpaid"}, {"status": "closed"}):
        with pytest.raises(IntegrityError), DbSession(ledger.engine) as db, db.begin():
            row = db.exec(select(SessionRow)).one()
            for name, value in change.items():
                setattr(row, name, value)
            db.add(row)
    with pytest.raises(IntegrityError), DbSession(ledger.engine) as db, db.begin():
        db.add(Charge(session_id="L01/a", account="x", cents=0, charged_at=at(1)))


def test_binding_while_exits_arrive_charges_each_stay_once(
    ledger_factory: Callable[..., Ledger],
) -> None:
    ledger = ledger_factory()
    plates = [f"浙E{i:05d}" for i in range(40)]
    for i, plate in enumerate(plates):
        record(ledger, f"in-{i}", "in", plate, 0)

    def exits() -> None:
        for i, plate in enumerate(plates):
            record(ledger, f"out-{i}", "out", plate, 60)

    def binds() -> None:
        for i, plate in enumerate(plates):
            ledger.bind(plate, f"acct-{i}", at=at(30) + timedelta(seconds=i))

    run_threads([exits, binds])
    assert ledger.debts() == []
    charges = ledger.charges()
    assert sorted(c.plate for c in charges) == plates
    assert all(c.cents == 1000 and c.account == f"acct-{plates.index(c.plate)}" for c in charges)
    assert {s.status for s in ledger.sessions()} == {"settled"}
