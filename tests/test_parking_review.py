"""The review queue and its resolutions, on both backends (fixtures of
``test_parking_ledger``): what is listed with which evidence and candidates, what each
resolution makes of it, idempotence, and nothing written on error."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from citybrain.parking.ledger import Ledger
from citybrain.parking.office import BackOffice
from citybrain.parking.review import Action, ItemKind, Resolution, ReviewError
from citybrain.parking.settings import ParkingSettings, ReviewSettings
from citybrain.parking.tariff import fee_cents
from tests import test_parking_ledger as shared
from tests.test_parking_ledger import at, record, snapshot

backend = shared.backend
fresh_url = shared.fresh_url
ledger_factory = shared.ledger_factory
ledger = shared.ledger

OP = {"operator": "ana", "reason": "checked the camera footage"}


def office(ledger: Ledger, max_stay_hours: float = 72.0) -> BackOffice:
    return BackOffice(ledger, ParkingSettings(ReviewSettings(max_stay_hours=max_stay_hours)))


def items(office: BackOffice, minutes: float) -> dict[str, tuple[ItemKind, str]]:
    return {i.session_id: (i.kind, i.reason) for i in office.review(at(minutes))}


def test_an_exit_with_no_entry_is_listed_while_it_waits_and_after(ledger: Ledger) -> None:
    record(ledger, "x1", "out", "浙C11111", 60)
    back = office(ledger)
    (waiting,) = back.review(at(61))
    assert (waiting.kind, waiting.reason, waiting.session_id) == (
        ItemKind.WAITING,
        "no_entry",
        "L01/x1",
    )
    assert waiting.due == at(70)  # arrival + the 10 minute grace
    assert [(r.read_id, r.raw_plate, r.camera_id) for r in waiting.reads] == [
        ("x1", "浙C11111", "cam-out")
    ]
    ledger.expire(at(71))
    (review,) = back.review(at(71))
    assert (review.kind, review.reason, review.due) == (ItemKind.REVIEW, "no_entry", None)


def test_entering_the_missing_entry_settles_at_the_tariff_fee(ledger: Ledger) -> None:
    ledger.bind("浙C11111", "acct-c", at=at(-1))
    record(ledger, "x1", "out", "浙C11111", 140)
    ledger.expire(at(151))
    back = office(ledger)
    request = Resolution(Action.ENTRY, at=at(0))
    done = back.resolve("L01/x1", request, at=at(200), **OP)
    want = fee_cents(ledger.tariffs["L01"], at(0), at(140))
    assert (done.session.status, done.session.fee_cents, done.session.account) == (
        "settled",
        want,
        "acct-c",
    )
    assert done.charge is not None and (done.charge.cents, done.charge.account) == (want, "acct-c")
    record_ = done.resolution
    assert (record_.operator, record_.reason, record_.created_at) == ("ana", OP["reason"], at(200))
    assert back.review(at(201)) == []
    # The same resolution again changes nothing; another one is refused, writing nothing.
    before = snapshot(ledger)
    again = back.resolve("L01/x1", request, at=at(300), **OP)
    assert again.again and again.charge is None
    with pytest.raises(ReviewError, match="resolved already: entry by ana"):
        back.resolve("L01/x1", Resolution(Action.WAIVE), at=at(300), **OP)
    assert snapshot(ledger) == before
    assert [c.cents for c in ledger.charges()] == [want]


def test_a_waiting_exit_can_be_resolved_within_its_grace(ledger: Ledger) -> None:
    record(ledger, "x1", "out", "浙C11111", 95)
    back = office(ledger)
    done = back.resolve("L01/x1", Resolution(Action.ENTRY, at=at(0)), at=at(96), **OP)
    assert (done.session.status, done.session.fee_cents) == ("unpaid", 2000)  # a debt
    assert back.review(at(97)) == [] and ledger.expire(at(200)) == ()
    assert [d.session_id for d in ledger.debts()] == ["L01/x1"]


def test_pairing_an_exit_with_an_entry_read_as_another_plate(ledger: Ledger) -> None:
    ledger.bind("浙A12345", "acct-a", at=at(-1))
    record(ledger, "e1", "in", "浙A12345", 0)
    record(ledger, "x1", "out", "皖A12345", 95)  # no look-alike of the entry: no match
    ledger.expire(at(106))
    back = office(ledger)
    assert items(back, 106) == {"L01/x1": (ItemKind.REVIEW, "no_entry")}
    record(ledger, "e9", "in", "浙B55555", 120)
    with pytest.raises(ReviewError, match=r"entered at .* after this exit"):
        back.resolve("L01/x1", Resolution(Action.PAIR, other="L01/e9"), at=at(121), **OP)
    done = back.resolve("L01/x1", Resolution(Action.PAIR, other="L01/e1"), at=at(121), **OP)
    s = done.session
    assert (s.status, s.entry_at, s.exit_at, s.fee_cents, s.account) == (
        "settled",
        at(0),
        at(95),
        2000,
        "acct-a",
    )
    assert s.plate == "浙A12345"  # the plate bound to the account that pays
    by_id = {x.session_id: x for x in ledger.sessions()}
    assert (by_id["L01/e1"].status, by_id["L01/e1"].related) == ("review", ("L01/x1",))
    assert "L01/e1" not in items(back, 122)  # retired into the stay, never listed
    with pytest.raises(ReviewError, match="paired into L01/x1"):
        back.resolve("L01/e1", Resolution(Action.DISMISS), **OP)


def test_an_ambiguous_exit_lists_its_candidates_and_pairs_with_one(ledger: Ledger) -> None:
    record(ledger, "e1", "in", "浙A12345", 0)
    record(ledger, "e2", "in", "浙A1Z345", 5)
    record(ledger, "x1", "out", "浙A1Z34S", 95)
    back = office(ledger)
    (item,) = back.review(at(96))
    assert (item.kind, item.reason) == (ItemKind.WAITING, "ambiguous")
    assert [c.session_id for c in item.candidates] == ["L01/e2", "L01/e1"]  # nearest first
    done = back.resolve("L01/x1", Resolution(Action.PAIR, other="L01/e1"), at=at(97), **OP)
    assert (done.session.entry_at, done.session.fee_cents) == (at(0), 2000)
    open_ = [s.session_id for s in ledger.sessions() if s.status == "open"]
    assert open_ == ["L01/e2"]


def test_a_stay_whose_plates_two_accounts_share_is_charged_to_the_named_one(
    ledger: Ledger,
) -> None:
    ledger.bind("浙A12345", "acct-a", at=at(-1))
    ledger.bind("浙A1234S", "acct-b", at=at(-1))
    record(ledger, "e1", "in", "浙A12345", 0)
    record(ledger, "x1", "out", "浙A1234S", 95)
    back = office(ledger)
    (item,) = back.review(at(96))
    assert (item.reason, item.fee_cents, item.accounts) == (
        "ambiguous",
        2000,
        ("acct-a", "acct-b"),
    )
    before = snapshot(ledger)
    with pytest.raises(ReviewError, match=r"several accounts .*name the one that pays"):
        back.resolve("L01/e1", Resolution(Action.CHARGE), **OP)
    with pytest.raises(ReviewError, match="'acct-x' is not bound"):
        back.resolve("L01/e1", Resolution(Action.CHARGE, account="acct-x"), **OP)
    assert snapshot(ledger) == before
    done = back.resolve("L01/e1", Resolution(Action.CHARGE, account="acct-b"), at=at(99), **OP)
    assert (done.session.status, done.session.account, done.session.plate) == (
        "settled",
        "acct-b",
        "浙A1234S",
    )
    assert [(c.account, c.cents) for c in ledger.charges()] == [("acct-b", 2000)]


def test_waive_fee_and_dismiss(ledger: Ledger) -> None:
    for i, plate in enumerate(("浙C11111", "浙C22222", "浙C33333")):
        record(ledger, f"x{i}", "out", plate, 60 + i)
    ledger.bind("浙C22222", "acct-2", at=at(-1))
    back = office(ledger)
    waived = back.resolve("L01/x0", Resolution(Action.WAIVE), at=at(70), **OP)
    fee = back.resolve("L01/x1", Resolution(Action.FEE, cents=700), at=at(70), **OP)
    dismissed = back.resolve("L01/x2", Resolution(Action.DISMISS), at=at(70), **OP)
    assert (waived.session.status, waived.session.fee_cents, waived.charge) == ("settled", 0, None)
    assert (fee.session.status, fee.session.fee_cents, fee.session.account) == (
        "settled",
        700,
        "acct-2",
    )
    assert (dismissed.session.status, dismissed.session.fee_cents) == ("review", None)
    assert back.review(at(71)) == [] and ledger.expire(at(200)) == ()
    assert [(c.session_id, c.cents) for c in ledger.charges()] == [("L01/x1", 700)]


def test_an_open_stay_past_the_limit_is_listed_and_stays_settleable(ledger: Ledger) -> None:
    record(ledger, "e1", "in", "浙D44444", 0)
    record(ledger, "e2", "in", "浙D55555", 0)
    back = office(ledger, max_stay_hours=48)
    assert items(back, 47 * 60) == {}
    assert items(back, 49 * 60) == {
        "L01/e1": (ItemKind.OVERSTAY, "overstay"),
        "L01/e2": (ItemKind.OVERSTAY, "overstay"),
    }
    back.resolve("L01/e1", Resolution(Action.DISMISS), at=at(49 * 60), **OP)  # still parked
    closed = back.resolve("L01/e2", Resolution(Action.EXIT, at=at(60)), at=at(49 * 60), **OP)
    assert (closed.session.status, closed.session.exit_at, closed.session.fee_cents) == (
        "unpaid",
        at(60),
        1000,
    )
    assert items(back, 50 * 60) == {}
    record(ledger, "x1", "out", "浙D44444", 50 * 60)  # its exit still settles it
    by_id = {s.session_id: s for s in ledger.sessions()}
    assert by_id["L01/e1"].status == "unpaid" and by_id["L01/e1"].exit_at == at(50 * 60)


def test_errors_write_nothing(ledger: Ledger) -> None:
    record(ledger, "x1", "out", "浙C11111", 60)
    record(ledger, "e1", "in", "浙A12345", 0)
    record(ledger, "s1", "out", "浙A12345", 30)  # settled: nothing to resolve
    back = office(ledger)
    before = snapshot(ledger)
    cases: list[tuple[str, Resolution, str]] = [
        ("L01/nope", Resolution(Action.WAIVE), "unknown session"),
        ("L01/e1", Resolution(Action.WAIVE), "unpaid: nothing to resolve"),
        ("L01/x1", Resolution(Action.ENTRY, at=at(61)), "after the exit"),
        ("L01/x1", Resolution(Action.CHARGE), "needs an entry and an exit"),
        ("L01/x1", Resolution(Action.EXIT, at=at(70)), "has an exit already"),
        ("L01/x1", Resolution(Action.PAIR, other="L01/e1"), "only open stays and reviews pair"),
    ]
    for sid, request, message in cases:
        with pytest.raises(ReviewError, match=message):
            back.resolve(sid, request, **OP)
    with pytest.raises(ReviewError, match="operator must be a line of text"):
        back.resolve("L01/x1", Resolution(Action.WAIVE), operator=" ", reason="x")
    assert snapshot(ledger) == before


def test_the_grace_is_configurable(ledger_factory: Callable[..., Ledger]) -> None:
    ledger = ledger_factory(grace=timedelta(minutes=3))
    record(ledger, "x1", "out", "浙C11111", 0)
    (item,) = office(ledger).review(at(1))
    assert item.due == at(3)
    assert ledger.expire(at(2)) == () and ledger.expire(at(3)) == ("L01/x1",)


def test_a_resolution_id_names_one_item(ledger: Ledger) -> None:
    record(ledger, "x1", "out", "浙C11111", 60)
    record(ledger, "x2", "out", "浙C22222", 61)
    back = office(ledger)
    back.resolve("L01/x1", Resolution(Action.DISMISS), resolution_id="R-1", **OP)
    with pytest.raises(ReviewError, match="'R-1' is taken"):
        back.resolve("L01/x2", Resolution(Action.DISMISS), resolution_id="R-1", **OP)
    record_ = ledger.store.resolutions()
    assert [(r.resolution_id, r.item, r.action) for r in record_] == [
        ("R-1", "review:L01/x1", Action.DISMISS)
    ]


def test_an_entry_with_no_exit_pairs_with_a_waiting_exit(ledger: Ledger) -> None:
    record(ledger, "e1", "in", "浙D22222", 0)
    record(ledger, "e2", "in", "浙D22222", 300)  # entered again: e1 lost its exit
    record(ledger, "x1", "out", "皖D22222", 100, received=at(305))  # misread, still waiting
    ledger.expire(at(311))
    back = office(ledger)
    listed = {i.session_id: i for i in back.review(at(311))}
    assert (listed["L01/e1"].reason, listed["L01/x1"].kind) == ("no_exit", ItemKind.WAITING)
    done = back.resolve("L01/e1", Resolution(Action.PAIR, other="L01/x1"), at=at(312), **OP)
    assert (done.session.exit_at, done.session.fee_cents, done.session.status) == (
        at(100),
        2000,  # 4 started half hours at 500
        "unpaid",
    )
    by_id = {s.session_id: s for s in ledger.sessions()}
    assert (by_id["L01/x1"].status, by_id["L01/x1"].related) == ("review", ("L01/e1",))
    assert back.review(at(313)) == [] and ledger.expire(at(400)) == ()
