"""The SUMO parking validation: the pure comparison (known answers), the simulated cameras,
the scenario, and one real end-to-end run (SUMO -> gateways -> MQTT -> service -> ledger).

The end-to-end test uses the machine's broker (``CITYBRAIN_TEST_MQTT_URL`` or
127.0.0.1:1883), else a private Mosquitto, else the embedded amqtt broker
(``tests/brokers.py``), and PostgreSQL as the ledger tests do; under ``CI=true`` a missing
service fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from citybrain.parking.plates import lookalike_key, normalize
from citybrain.parking.reports import SessionReport
from citybrain.parking.scratch import fresh_database
from citybrain.parking.tariff import parse_tariffs
from citybrain.parking.validation import (
    GateRead,
    LedgerCharge,
    TrueStay,
    ValidationReport,
    summary,
    table,
    validate,
)
from citybrain.sim.parking_cameras import CameraOptions, misread, printed, simulate_cameras
from citybrain.sim.parking_gates import GateEvent
from citybrain.sim.parking_scenario import STAY_CLASSES, plan_cars

from .brokers import shared_broker
from .test_parking_ledger import PG_URL, require_pg

TZ = ZoneInfo("Asia/Shanghai")
TARIFFS = parse_tariffs(
    {
        "lots": {
            "L01": {
                "timezone": "Asia/Shanghai",
                "free_minutes": 15,
                "unit_minutes": 30,
                "daily_cap_cents": 6000,
                "rates": [
                    {"start": "08:00", "end": "20:00", "cents_per_unit": 500},
                    {"start": "20:00", "end": "08:00", "cents_per_unit": 200},
                ],
            }
        }
    }
)


def at(hour: int, minute: int = 0, day: int = 20) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=TZ)


# ---- the pure comparison: hand-built truth and ledger -------------------------------------

# Hand-checked fees (L01: free 15 min, 30 min units, 5.00 by day, 2.00 from 20:00):
#   A 10:00-11:10: 3 day units = 1500;  B 19:00-21:00: 2 day + 2 night units = 1400;
#   C 12:00-12:10: free;  D 13:00-13:20: 1 unit = 500;  E: its exit was never read.
STAYS = [
    TrueStay("A", "car1", "浙A·10000", "L01", at(10), at(11, 10)),
    TrueStay("B", "car2", "浙A·20000", "L01", at(19), at(21)),
    TrueStay("C", "car3", "浙A·30000", "L01", at(12), at(12, 10)),
    TrueStay("D", "car4", "浙A·40000", "L01", at(13), at(13, 20)),
    TrueStay("E", "car5", "浙A·50000", "L01", at(14), at(15)),
]
BINDINGS = {
    "浙A·10000": ("start", "acct-a"),
    "浙A·20000": ("never", None),
    "浙A·30000": ("never", None),
    "浙A·40000": ("later", "acct-d"),
    "浙A·50000": ("start", "acct-e"),
}


def gate_reads() -> list[GateRead]:
    reads = []
    for s in STAYS:
        reads.append(GateRead(s.plate, s.lot_id, "in", s.entry_at, (s.plate, s.plate)))
        seen = () if s.stay_id == "E" else (s.plate,)
        reads.append(GateRead(s.plate, s.lot_id, "out", s.exit_at, seen))
    return reads


def sess(
    sid: str, plate: str, entry: datetime | None, exit_: datetime | None, fee: int | None,
    status: str, account: str | None,
) -> SessionReport:  # fmt: skip
    return SessionReport(
        session_id=sid,
        lot_id="L01",
        plate=normalize(plate),
        exit_plate=None if exit_ is None else normalize(plate),
        entry_at=None if entry is None else entry.astimezone(ZoneInfo("UTC")),
        exit_at=None if exit_ is None else exit_.astimezone(ZoneInfo("UTC")),
        fee_cents=fee,
        status=status,
        account=account,
    )


def good_ledger() -> tuple[list[SessionReport], list[LedgerCharge]]:
    sessions = [
        sess("sA", "浙A·10000", at(10), at(11, 10), 1500, "settled", "acct-a"),
        sess("sB", "浙A·20000", at(19), at(21), 1400, "unpaid", None),
        sess("sC", "浙A·30000", at(12), at(12, 10), 0, "settled", None),
        sess("sD", "浙A·40000", at(13), at(13, 20), 500, "settled", "acct-d"),
        sess("sE", "浙A·50000", at(14), None, None, "open", None),
    ]
    charges = [LedgerCharge("sA", "acct-a", 1500), LedgerCharge("sD", "acct-d", 500)]
    return sessions, charges


def check(sessions: list[SessionReport], charges: list[LedgerCharge]) -> ValidationReport:
    return validate(STAYS, gate_reads(), BINDINGS, TARIFFS, sessions, charges)


def kinds(report: ValidationReport) -> list[tuple[str, str | None]]:
    return sorted((m.kind, m.stay_id or m.session_id) for m in report.mismatches)


def test_a_correct_ledger_has_no_mismatch() -> None:
    report = check(*good_ledger())
    assert report.ok, report.mismatches
    by_id = {c.stay.stay_id: c for c in report.stays}
    assert [by_id[k].expected_fee_cents for k in "ABCD"] == [1500, 1400, 0, 500]
    assert by_id["E"].coverage == "exit_unread"
    assert by_id["E"].expected_status == ("open", "review")
    n = report.counts()
    assert (n["settleable"], n["unreadable"], n["settled_ok"], n["free"]) == (4, 1, 4, 1)
    assert report.expected_cents == report.charged_cents == 2000
    assert report.unpaid_cents == 1400
    assert "Mismatches: 0" in summary(report)
    assert "A " in table(report)
    json.dumps(report.to_json())  # serializable


def test_wrong_fee_is_reported() -> None:
    sessions, charges = good_ledger()
    sessions[0] = replace(sessions[0], fee_cents=1000)
    charges[0] = replace(charges[0], cents=1000)
    assert kinds(check(sessions, charges)) == [("wrong_charge", "A"), ("wrong_fee", "A")]


def test_double_charge_is_reported() -> None:
    sessions, charges = good_ledger()
    charges.append(LedgerCharge("sA", "acct-a", 1500))
    report = check(sessions, charges)
    assert kinds(report) == [("charge_count", "A")]
    assert report.charged_cents == 3500


def test_missing_session_is_reported() -> None:
    sessions, charges = good_ledger()
    del sessions[1]
    assert kinds(check(sessions, charges)) == [("missing", "B")]


def test_a_second_session_for_one_stay_is_reported() -> None:
    sessions, charges = good_ledger()
    # A misread entry frame opened a second session, which an exit misread then closed:
    # a second debt for the same stay.
    sessions.append(sess("sA2", "浙A·1OOOO", at(10), at(11, 10), 1500, "unpaid", None))
    sessions.append(sess("sB2", "浙A·2OOOO", at(19), None, None, "open", None))
    assert kinds(check(sessions, charges)) == [("double_charge", "A"), ("duplicate", "B")]


def test_a_session_timed_by_a_later_frame_is_reported() -> None:
    sessions, charges = good_ledger()
    sessions[0] = replace(sessions[0], entry_at=at(10) + timedelta(seconds=30))
    assert kinds(check(sessions, charges)) == [("wrong_times", "A")]  # same fee: 3 units


def test_wrong_status_account_and_plate_are_reported() -> None:
    sessions, charges = good_ledger()
    sessions[3] = replace(sessions[3], status="unpaid", account=None, plate="浙A4OOOO")
    charges.pop()
    assert kinds(check(sessions, charges)) == [
        ("charge_count", "D"),
        ("wrong_account", "D"),
        ("wrong_plate", "D"),
        ("wrong_status", "D"),
    ]


def test_crossed_phantom_and_charged_unreadable_are_reported() -> None:
    sessions, charges = good_ledger()
    # E's entry paired with an exit at 16:00 that no stay had, and charged.
    sessions[4] = sess("sE", "浙A·50000", at(14), at(16), 1000, "settled", "acct-e")
    charges.append(LedgerCharge("sE", "acct-e", 1000))
    sessions.append(sess("sX", "浙A·99999", None, at(9), None, "review", None))
    charges.append(LedgerCharge("nope", "acct-x", 100))
    assert kinds(check(sessions, charges)) == [
        ("charged_unreadable", "E"),
        ("crossed", "E"),
        ("orphan_charge", "nope"),
        ("phantom", "sX"),
    ]


def test_unreadable_stays_expect_no_charge() -> None:
    sessions, charges = good_ledger()
    sessions[4] = replace(sessions[4], status="review")  # superseded: review is fine too
    assert check(sessions, charges).ok
    # Entry never read: a review session holding the exit is expected.
    reads = [g for g in gate_reads() if not (g.plate == "浙A·20000" and g.direction == "in")]
    reads.append(GateRead("浙A·20000", "L01", "in", at(19), ()))
    sessions[1] = sess("sB", "浙A·20000", None, at(21), None, "review", None)
    report = validate(STAYS, reads, BINDINGS, TARIFFS, sessions, charges)
    assert report.ok, report.mismatches
    assert report.counts()["entry_unread"] == 1
    # ... and a settled one would be wrong.
    sessions[1] = replace(sessions[1], status="settled")
    report = validate(STAYS, reads, BINDINGS, TARIFFS, sessions, charges)
    assert kinds(report) == [("charged_unreadable", "B"), ("wrong_status", "B")]


def test_dead_letters_count_as_mismatches() -> None:
    report = validate(STAYS, gate_reads(), BINDINGS, TARIFFS, *good_ledger(), dead_letters=2)
    assert kinds(report) == [("dead_letter", None)]


# ---- the simulated cameras ----------------------------------------------------------------


START = datetime(2026, 11, 20, 6, 0, tzinfo=TZ)
ZONES = {"L01": TZ, "L02": TZ}


def gate_events(n: int) -> tuple[list[GateEvent], dict[str, str]]:
    rng = random.Random(7)
    plates = {f"v{i}": f"浙A·{rng.randint(10000, 99999)}" for i in range(n)}
    events = []
    for i in range(n):
        t = 600.0 * i
        lot = "L01" if i % 2 else "L02"
        events.append(GateEvent(f"v{i}", lot, "in", t))
        events.append(GateEvent(f"v{i}", lot, "out", t + 300 + i))
    return events, plates


def test_cameras_are_seeded_and_follow_the_contract() -> None:
    events, plates = gate_events(50)
    opts = CameraOptions(ocr_error_rate=0.1, double_rate=0.3, drop_rate=0.2, seed=3)
    one = simulate_cameras(events, plates, START, ZONES, opts)
    two = simulate_cameras(events, plates, START, ZONES, opts)
    assert one == two
    other = simulate_cameras(events, plates, START, ZONES, replace(opts, seed=4))
    assert other.reads != one.reads
    ids = [r.read_id for r in one.reads]
    assert len(ids) == len(set(ids))
    wire = one.reads[0].wire()
    assert set(wire) == {"read_id", "lot_id", "camera_id", "direction", "plate", "confidence",
                         "ts"}  # fmt: skip
    ts = datetime.fromisoformat(str(wire["ts"]))
    assert ts.utcoffset() == timedelta(hours=8)
    assert ts == START + timedelta(seconds=events[0].time_s)
    assert {r.plate[2] for r in one.reads} == {"·", " "}  # camera a and camera b


def test_misreads_swap_look_alikes_only() -> None:
    rng = random.Random(1)
    for _ in range(500):
        plate = f"浙{rng.choice('ABCDEFGH')}·{rng.randint(0, 99999):05d}"
        wrong = misread(plate, rng)
        assert wrong != plate or not any(ch in "012568" for ch in plate[1:])
        assert lookalike_key(wrong) == lookalike_key(plate)
        assert wrong[0] == plate[0] and wrong[2] == "·"
        assert sum(a != b for a, b in zip(plate, wrong, strict=True)) <= 1
    assert misread("浙A·77777", rng) == "浙A·77777"  # nothing to confuse
    assert normalize(printed("浙A·12345", "b")) == normalize("浙A·12345")


def test_error_rates() -> None:
    events, plates = gate_events(1000)
    feed = simulate_cameras(events, plates, START, ZONES, CameraOptions(ocr_error_rate=0.2, seed=1))
    assert len(feed.reads) == 2 * len(events)  # both cameras, no repeats
    share = sum(r.misread for r in feed.reads) / len(feed.reads)
    assert 0.17 < share < 0.23
    for r in feed.reads:
        assert lookalike_key(r.plate) == lookalike_key(r.true_plate)

    feed = simulate_cameras(events, plates, START, ZONES, CameraOptions(drop_rate=1.0))
    assert len(feed.reads) == len(events) == feed.one_camera
    assert all(p.read for p in feed.passages)

    feed = simulate_cameras(events, plates, START, ZONES, CameraOptions(unread_rate=1.0))
    assert not feed.reads and not any(p.read for p in feed.passages)

    feed = simulate_cameras(events, plates, START, ZONES, CameraOptions(double_rate=1.0))
    assert len(feed.reads) == 4 * len(events)
    first = {(r.camera_id, r.vehicle_id): r.ts for r in feed.reads if not r.repeat}
    for r in feed.reads:
        if r.repeat:
            gap = (r.ts - first[(r.camera_id, r.vehicle_id)]).total_seconds()
            assert 1 <= gap <= 45  # within the 60 s that make one passage

    with pytest.raises(ValueError, match="drop_rate"):
        CameraOptions(drop_rate=1.5)


# ---- the scenario plan --------------------------------------------------------------------


def test_plan_covers_every_stay_class_and_a_return() -> None:
    cars = plan_cars(40, seed=1)
    assert cars == plan_cars(40, seed=1)
    classes = {s.stay_class for c in cars for s in c.stays}
    assert classes == {c[0] for c in STAY_CLASSES}
    assert len({lookalike_key(c.plate) for c in cars}) == len(cars)
    back = cars[len(STAY_CLASSES)]
    assert back.stays[0].lot_id == back.stays[-1].lot_id and len(back.stays) == 3
    assert {c.binding for c in cars} == {"start", "later", "never"}
    longest = max(s.duration_s for c in cars for s in c.stays)
    assert longest > 24 * 3600
    assert min(s.duration_s for c in cars for s in c.stays) <= 10 * 60


# ---- one real run: SUMO -> cameras -> gateways -> MQTT -> service -> ledger ----------------


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with shared_broker(tmp_path_factory.mktemp("broker")) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    require_pg()
    with fresh_database("postgresql", tmp_path, PG_URL, prefix="cbval") as url:
        yield url


@pytest.mark.sumo
def test_end_to_end_in_sumo_has_no_mismatch(
    tmp_path: Path, broker_url: str, ledger_url: str
) -> None:
    from citybrain.sim.parking_validate import DEFAULT_CAMERAS, run_parking_validation

    # The default cameras (look-alike misreads, repeated frames, a camera missing cars),
    # plus passages nobody read at all.
    cameras = replace(DEFAULT_CAMERAS, unread_rate=0.06, seed=5)
    assert cameras.ocr_error_rate > 0 and cameras.double_rate > 0 and cameras.drop_rate > 0
    run = run_parking_validation(
        tmp_path / "out",
        broker=broker_url,
        db=ledger_url,
        seed=5,
        vehicles=10,
        cameras=cameras,
        progress=False,
        timeout_s=120,
    )
    report = run.report
    assert report.ok, [m.to_json() for m in report.mismatches]
    n = report.counts()
    assert n["stays"] >= 10 and n["settled_ok"] == n["settleable"] > 0
    assert n["unreadable"] >= 1  # seed 5 leaves some passages unread
    assert report.charges > 0 and report.charged_cents == report.expected_cents
    data = json.loads(run.report_json.read_text(encoding="utf-8"))
    assert data["ok"] is True
    assert data["cameras"]["misreads"] > 0  # seed 5 misreads some plates
    assert data["transport"]["ledger_outcomes"].get("dead_letter", 0) == 0
    assert data["scenario"]["simulated_hours"] > 24
    assert run.plot.stat().st_size > 10_000
