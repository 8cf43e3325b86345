"""``citybrain parking`` reports and bindings, through the command line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from citybrain.cli import main
from citybrain.parking.ledger import open_ledger


def read(read_id: str, direction: str, plate: str, ts: str) -> bytes:
    return json.dumps(
        {
            "read_id": read_id,
            "lot_id": "L01",
            "camera_id": "c1",
            "direction": direction,
            "plate": plate,
            "confidence": 0.9,
            "ts": ts,
        }
    ).encode()


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = open_ledger(url)
    now = datetime.now(UTC)
    # 09:00 to 10:31 Shanghai time: 91 min = 4 started units of 30 min at 500 = 2000 cents
    ledger.record("L01", read("a", "in", "浙A·12345", "2026-11-22T09:00:00+08:00"), now)
    ledger.record("L01", read("b", "out", "浙A12345", "2026-11-22T10:31:00+08:00"), now)
    return url


def test_sessions_json_and_bind_charges_the_debt(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["parking", "sessions", "--db", db, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row == {
        "session_id": "L01/a",
        "lot_id": "L01",
        "plate": "浙A12345",
        "entry_at": "2026-11-22T01:00:00+00:00",
        "exit_at": "2026-11-22T02:31:00+00:00",
        "fee_cents": 2000,
        "status": "unpaid",
        "account": None,
        "review_reason": None,
    }
    assert main(["parking", "bind", "--db", db, "--plate", "浙A-12345", "--account", "acc"]) == 0
    assert "debts charged: 20.00" in capsys.readouterr().out
    assert main(["parking", "bind", "--db", db, "--plate", "浙A12345", "--account", "acc"]) == 0
    assert "debts charged: 0.00" in capsys.readouterr().out  # charged once only
    main(["parking", "sessions", "--db", db, "--json"])
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["status"], row["account"]) == ("settled", "acc")


def test_bind_from_csv(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "plates.csv"
    f.write_text("plate,account\n浙A12345,acc-1\n沪C99999,acc-2\n", encoding="utf-8")
    assert main(["parking", "bind", "--db", db, "--file", str(f)]) == 0
    assert "bound 2 plate(s); debts charged: 20.00" in capsys.readouterr().out


def test_errors_are_one_line(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parking", "bind", "--db", db]) == 2
    assert capsys.readouterr().err.strip() == (
        "citybrain: error: bind needs --plate and --account, or --file plates.csv"
    )
    missing = tmp_path / "none.jsonl"
    assert main(["parking", "gateway", "--lot", "L01", "--feed", str(missing)]) == 2
    assert f"feed file not found: {missing}" in capsys.readouterr().err


def test_review_and_resolve(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = open_ledger(db)
    ledger.record(
        "L01", read("x", "out", "浙C11111", "2026-11-22T11:00:00+08:00"), datetime.now(UTC)
    )
    ledger.bind("浙C11111", "acct-c")
    assert main(["parking", "review", "--db", db, "--json"]) == 0
    listed = {i["session_id"]: i for i in json.loads(capsys.readouterr().out)}
    assert listed["L01/x"]["kind"] == "waiting" and listed["L01/x"]["accounts"] == ["acct-c"]
    assert [r["raw_plate"] for r in listed["L01/x"]["reads"]] == ["浙C11111"]
    args = ["parking", "resolve", "L01/x", "--db", db, "--operator", "ana", "--reason", "video"]
    assert main([*args, "--entry-at", "2026-11-22T12:00"]) == 2  # after the exit: refused
    assert "is after the exit" in capsys.readouterr().err
    assert main([*args, "--entry-at", "2026-11-22T10:00"]) == 0  # Shanghai time: 1 h
    assert capsys.readouterr().out.strip() == (
        "resolved L01/x (entry): settled, fee 10.00, charged to acct-c"
    )
    assert main([*args, "--entry-at", "2026-11-22T10:00", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["again"] is True
    assert main([*args, "--waive"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was resolved already: entry by ana" in err
    assert [(c.session_id, c.cents) for c in ledger.charges()] == [("L01/x", 1000)]


def test_refund_dispute_and_statement(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    from citybrain.parking.office import BackOffice

    ledger = open_ledger(db)
    ledger.bind("浙A12345", "acc")  # collects the fixture's stay: 20.00
    (charge,) = ledger.charges()
    who = ["--db", db, "--operator", "ana", "--reason", "barrier was open"]
    assert main(["parking", "refund", "L01/a", "--cents", "500", *who]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "awaits the payment side" in err
    BackOffice(ledger).record_payment(charge.key, "paid")
    assert main(["parking", "refund", "L01/a", "--cents", "2500", *who]) == 2
    assert "exceeds what was paid for L01/a: 20.00 paid" in capsys.readouterr().err
    assert main(["parking", "refund", "L01/a", "--cents", "500", *who]) == 0
    assert capsys.readouterr().out.startswith("L01/a refunded: 5.00 to acc (id rf-")
    assert main(["parking", "refund", "L01/a", "--cents", "500", *who]) == 0
    assert "was refunded so already" in capsys.readouterr().out
    assert main(["parking", "dispute", "L01/a", *who]) == 0
    assert "it is in the review queue" in capsys.readouterr().out
    assert main(["parking", "resolve", "L01/a", "--waive", *who]) == 0
    assert "15.00 refunded to acc" in capsys.readouterr().out
    assert main(["parking", "statement", "--account", "acc", "--db", db, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert [(x["kind"], x["cents"]) for x in s["lines"]] == [
        ("charge", 2000),
        ("refund", -500),
        ("refund", -1500),
    ]
    assert (s["balance_cents"], s["owed_cents"]) == (0, 0)
    assert main(["parking", "refund", "L01/zz", "--cents", "1", *who]) == 2
    assert "unknown session 'L01/zz'" in capsys.readouterr().err


def test_receipt(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parking", "receipt", "L01/a", "--db", db]) == 0
    shown = capsys.readouterr().out
    assert "Entry    2026-11-22 09:00:00" in shown and "Exit     2026-11-22 10:31:00" in shown
    assert "08:00-20:00  4 x 5.00 = 20.00" in shown and "Owed     20.00" in shown
    assert main(["parking", "receipt", "L01/a", "--db", db, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["fee_cents"], data["priced_by"], data["net_cents"]) == (2000, "tariff", 0)
    assert main(["parking", "receipt", "L01/b", "--db", db]) == 2
    assert capsys.readouterr().err.strip() == "citybrain: error: unknown session 'L01/b'"


def test_occupancy(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = open_ledger(db)
    ledger.record(
        "L01", read("c", "in", "浙B11111", "2026-11-22T11:00:00+08:00"), datetime.now(UTC)
    )
    config = tmp_path / "parking.toml"
    config.write_text("[lots.L01]\ncapacity = 4\n", encoding="utf-8")
    assert main(["parking", "occupancy", "--db", db, "--config", str(config), "--json"]) == 0
    rows = {r["lot_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert (rows["L01"]["occupied"], rows["L01"]["free"], rows["L01"]["percent"]) == (1, 3, 25.0)
    assert rows["L01"]["overstays"] == 1  # it entered long ago (more than 72 h)
    args = ["parking", "occupancy", "--db", db, "--date", "2026-11-22", "--lot", "L01"]
    assert main(args) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("L01 2026-11-22: peak 1 of 400 at 09:00")  # shipped capacity
    assert "  10:00      1 at the start,     1 at most" in shown  # the stay until 10:31
    assert "  11:00      1 at the start,     1 at most" in shown  # the car still there
    assert main([*args[:-4], "--date", "22/11/2026"]) == 2
    assert capsys.readouterr().err == (
        "citybrain: error: --date: not a date (YYYY-MM-DD): '22/11/2026'\n"
    )
    config.write_text("[lots.L01]\ncapacity = -4\n", encoding="utf-8")
    assert main(["parking", "occupancy", "--db", db, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert (
        err.strip() == f"citybrain: error: {config}: lots.L01.capacity must be at least 1, not -4"
    )
