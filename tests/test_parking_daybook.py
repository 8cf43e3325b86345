"""A lot's day report and the CSV export, on both backends (fixtures of
``test_parking_ledger``); the CSV is RFC 4180 and UTF-8."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta

import pytest

from citybrain.cli import main
from citybrain.parking.daybook import COLUMNS, ExportKind
from citybrain.parking.ledger import Ledger
from citybrain.parking.office import BackOffice
from citybrain.parking.review import ReviewError
from tests import test_parking_ledger as shared
from tests.test_parking_ledger import at, record

backend = shared.backend
fresh_url = shared.fresh_url
ledger_factory = shared.ledger_factory
ledger = shared.ledger

DAY = date(2024, 5, 1)  # T0 is 2024-05-01 10:00 Shanghai time


def a_day(ledger: Ledger) -> BackOffice:
    """On 2024-05-01 at L01: a free stay, two charged ones (one refunded in part, one
    declined: a debt), an unpaid one; the next day that debt is collected."""
    back = BackOffice(ledger)
    ledger.bind("浙A11111", "acct-1", at=at(-1))
    ledger.bind("浙A22222", "acct-2", at=at(-1))
    for car, plate, start, minutes in (
        ("f", "浙A00000", 0, 10),  # free
        ("p", "浙A11111", 5, 95),  # 20.00, paid, 5.00 refunded
        ("d", "浙A22222", 10, 60),  # 10.00, declined: a debt
        ("u", "浙A33333", 20, 30),  # 5.00, nobody bound: a debt
    ):
        record(ledger, f"{car}-in", "in", plate, start)
        record(ledger, f"{car}-out", "out", plate, start + minutes)
    keys = {c.session_id: c.key for c in ledger.charges()}
    back.record_payment(keys["L01/p-in"], "paid", at=at(200))
    back.record_payment(keys["L01/d-in"], "declined", detail="card expired", at=at(201))
    back.refund("L01/p-in", 500, operator="ana", reason='said "barrier, stuck"', at=at(210))
    ledger.bind("浙A22222", "acct-2", at=at(24 * 60 + 30))  # the next day: collected again
    return back


def test_a_lots_day_in_numbers(ledger: Ledger) -> None:
    back = a_day(ledger)
    (day,) = back.report(DAY, at(3 * 24 * 60), "L01")
    assert (day.stays, day.free_stays) == (4, 1)
    assert (day.revenue_cents, day.refunds_cents, day.net_cents) == (2000, 500, 1500)
    assert (day.debts_created, day.debts_created_cents) == (2, 1000 + 500)
    assert (day.debts_collected, day.debts_collected_cents) == (0, 0)
    assert day.longest_stay == timedelta(minutes=95)
    assert day.mean_stay == timedelta(minutes=(10 + 95 + 60 + 30) / 4)
    assert (day.peak_occupancy, day.peak_at) == (3, at(20))  # the free stay left at 10
    (next_day,) = back.report(DAY + timedelta(days=1), at(3 * 24 * 60), "L01")
    assert (next_day.stays, next_day.revenue_cents, next_day.debts_collected_cents) == (
        0,
        1000,
        1000,
    )
    (l02,) = back.report(DAY, at(3 * 24 * 60), "L02")
    assert (l02.stays, l02.net_cents, l02.peak_occupancy) == (0, 0, 0)


def test_the_csv_export_is_rfc_4180_and_utf8(ledger: Ledger) -> None:
    back = a_day(ledger)
    text = back.export(ExportKind.ADJUSTMENTS, DAY, DAY, "L01")
    assert text.endswith("\r\n") and "\r\n" in text
    assert text.splitlines()[0] == ",".join(COLUMNS[ExportKind.ADJUSTMENTS])
    assert ',"said ""barrier, stuck""",' in text  # quoted, quotes doubled
    (row,) = list(csv.DictReader(io.StringIO(text, newline="")))
    assert (row["cents"], row["account"], row["payment"]) == ("500", "acct-1", "pending")
    assert row["created_at"] == "2024-05-01T13:30:00+08:00"  # the lot's local time
    charges = list(csv.DictReader(io.StringIO(back.export(ExportKind.CHARGES, DAY, DAY))))
    assert sorted((r["session_id"], r["cents"], r["payment"]) for r in charges) == [
        ("L01/d-in", "1000", "declined"),
        ("L01/p-in", "2000", "paid"),
    ]
    sessions = list(csv.DictReader(io.StringIO(back.export(ExportKind.SESSIONS, DAY, DAY))))
    assert {r["plate"] for r in sessions} == {"浙A00000", "浙A11111", "浙A22222", "浙A33333"}
    by_id = {r["session_id"]: r for r in sessions}
    assert (by_id["L01/p-in"]["net_cents"], by_id["L01/d-in"]["net_cents"]) == ("1500", "1000")
    two_days = back.export(ExportKind.CHARGES, DAY, DAY + timedelta(days=1), "L01")
    assert len(list(csv.DictReader(io.StringIO(two_days)))) == 3  # and the collection
    with pytest.raises(ReviewError, match="backwards"):
        back.export(ExportKind.CHARGES, DAY, DAY - timedelta(days=1))


def test_report_and_export_on_the_command_line(
    ledger: Ledger, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    a_day(ledger)
    db = ledger.engine.url.render_as_string(hide_password=False)
    assert main(["parking", "report", "--date", "2024-05-01", "--lot", "L01", "--db", db]) == 0
    shown = capsysbinary.readouterr().out.decode()
    assert "  stays            4 (1 free)" in shown and "  net              15.00" in shown
    assert "  peak occupancy   3 of 400 at 10:20" in shown
    args = ["parking", "export", "sessions", "--from", "2024-05-01", "--to", "2024-05-01"]
    assert main([*args, "--db", db]) == 0
    out = capsysbinary.readouterr().out
    assert out.decode("utf-8").count("\r\n") == 5 and "浙A33333".encode() in out
    assert main([*args[:-4], "--from", "2024-05-02", "--to", "2024-05-01", "--db", db]) == 2
    err = capsysbinary.readouterr().err.decode()
    assert err == "citybrain: error: --from 2024-05-02 is after --to 2024-05-01\n"
