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
        "lot_id": "L01",
        "plate": "浙A12345",
        "entry_at": "2026-11-22T01:00:00+00:00",
        "exit_at": "2026-11-22T02:31:00+00:00",
        "fee_cents": 2000,
        "status": "unpaid",
        "account": None,
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
