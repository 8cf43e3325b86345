"""``citybrain parking ...``: the settlement service, the gateway, bindings, reports and the
back office (review queue, resolutions, ...)."""

from __future__ import annotations

import argparse
import csv
import json
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TypedDict

from citybrain.errors import CitybrainError

if TYPE_CHECKING:
    from citybrain.parking.office import BackOffice
    from citybrain.parking.review import ReviewItem

DEFAULT_DB = "sqlite:///citybrain-parking.db"


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parking = top.add_parser("parking", help="leave first, pay later: settlement and gateways")
    cmds = parking.add_subparsers(dest="parking_command", required=True, metavar="SUBCOMMAND")

    serve = cmds.add_parser("serve", help="record plate reads from MQTT and settle stays")
    serve.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    serve.add_argument("--db", default=DEFAULT_DB, help="SQLAlchemy URL (SQLite or PostgreSQL)")
    serve.add_argument("--tariffs", type=Path, help="tariff TOML (default: configs/tariffs.toml)")
    serve.add_argument(
        "--config", type=Path, help="parking settings TOML (default: configs/parking.toml)"
    )
    serve.add_argument(
        "--batch-size",
        type=_positive_int,
        default=200,
        help="at most this many reads per database transaction (default 200; 1: no batching)",
    )
    serve.add_argument(
        "--batch-window-ms",
        type=_non_negative_float,
        default=5.0,
        help="wait up to this long after a read for more to share its transaction (default 5)",
    )
    serve.add_argument(
        "--client-id",
        default="citybrain-parking-service",
        help="this service's MQTT session (one per service; default citybrain-parking-service)",
    )
    serve.add_argument(
        "--group",
        help="share the reads with the other services of this group (MQTT shared subscription)",
    )
    serve.add_argument("--topic-root", default="citybrain/parking", help=argparse.SUPPRESS)
    _credentials(serve)
    serve.set_defaults(handler=_serve)

    adapter = cmds.add_parser(
        "pay-adapter", help="a reference payment side: pays everything, or declines by rule"
    )
    adapter.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    adapter.add_argument(
        "--book", type=Path, default=Path("payment-adapter.db"), help="its answers (SQLite)"
    )
    adapter.add_argument(
        "--decline-account",
        action="append",
        default=[],
        metavar="PATTERN",
        help="decline the charges of accounts matching this pattern (repeatable)",
    )
    adapter.add_argument(
        "--decline-over-cents", type=_cents, help="decline charges above this many cents"
    )
    adapter.add_argument("--client-id", default="citybrain-payment-adapter")
    adapter.add_argument("--topic-root", default="citybrain/parking", help=argparse.SUPPRESS)
    _credentials(adapter)
    adapter.set_defaults(handler=_pay_adapter)

    gw = cmds.add_parser("gateway", help="publish a lot's camera reads, keeping an outbox")
    gw.add_argument("--lot", required=True)
    gw.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    gw.add_argument("--feed", required=True, help="JSON lines file, or - for standard input")
    gw.add_argument("--outbox", type=Path, help="outbox file (default: gateway-LOT.outbox)")
    gw.add_argument(
        "--exit-when-drained",
        action="store_true",
        help="stop once the feed has ended and every read is acknowledged",
    )
    _credentials(gw)
    gw.set_defaults(handler=_gateway)

    bind = cmds.add_parser("bind", help="bind plates to payment accounts (charges their debts)")
    bind.add_argument("--db", default=DEFAULT_DB)
    bind.add_argument("--plate")
    bind.add_argument("--account")
    bind.add_argument("--file", type=Path, help="CSV with columns plate,account")
    bind.set_defaults(handler=_bind)

    review = cmds.add_parser("review", help="list what needs a person, with the evidence")
    _office_options(review)
    review.add_argument("--lot")
    review.set_defaults(handler=_review)

    resolve = cmds.add_parser("resolve", help="resolve an item of the review queue")
    resolve.add_argument("session", help="the session id the review queue lists")
    how = resolve.add_mutually_exclusive_group(required=True)
    how.add_argument("--pair", metavar="SESSION", help="pair it with this entry (or exit)")
    how.add_argument("--entry-at", metavar="TIME", help="the entry time (lot's time if no zone)")
    how.add_argument("--exit-at", metavar="TIME", help="the exit time (lot's time if no zone)")
    how.add_argument("--charge", action="store_true", help="charge the tariff's fee of the stay")
    how.add_argument("--fee-cents", type=_cents, metavar="CENTS", help="a fee set by hand")
    how.add_argument("--waive", action="store_true", help="a stay that happened, free of charge")
    how.add_argument("--dismiss", action="store_true", help="not a stay / nothing to do")
    resolve.add_argument("--account", help="who pays, when the stay's plates name several")
    _record_options(resolve)
    _office_options(resolve)
    resolve.set_defaults(handler=_resolve)

    refund = cmds.add_parser("refund", help="pay money back for a stay (at most what was paid)")
    refund.add_argument("session")
    refund.add_argument("--cents", type=_cents, required=True, help="how much, in cents")
    _record_options(refund)
    _office_options(refund)
    refund.set_defaults(handler=_refund)

    dispute = cmds.add_parser("dispute", help="a driver disputes a charge: put it in review")
    dispute.add_argument("session")
    _record_options(dispute)
    _office_options(dispute)
    dispute.set_defaults(handler=_dispute)

    receipt = cmds.add_parser("receipt", help="a stay's receipt: the tariff's steps and money")
    receipt.add_argument("session")
    _office_options(receipt)
    receipt.set_defaults(handler=_receipt)

    occupancy = cmds.add_parser("occupancy", help="cars in each lot against its capacity")
    occupancy.add_argument("--date", help="hour by hour over this local day (YYYY-MM-DD)")
    occupancy.add_argument("--lot")
    _office_options(occupancy)
    occupancy.set_defaults(handler=_occupancy)

    report = cmds.add_parser("report", help="a lot's day: stays, revenue, debts, occupancy")
    report.add_argument("--date", required=True, help="the lot's local day (YYYY-MM-DD)")
    report.add_argument("--lot")
    _office_options(report)
    report.set_defaults(handler=_day_report)

    export = cmds.add_parser("export", help="CSV (RFC 4180, UTF-8) on standard output")
    export.add_argument("kind", choices=["sessions", "charges", "adjustments", "reviews"])
    export.add_argument("--from", dest="first", required=True, help="first local day")
    export.add_argument("--to", dest="last", required=True, help="last local day (included)")
    export.add_argument("--lot")
    export.add_argument("--db", default=DEFAULT_DB, help="SQLAlchemy URL (SQLite or PostgreSQL)")
    export.add_argument("--config", type=Path, help="parking settings TOML")
    export.set_defaults(handler=_export)

    statement = cmds.add_parser("statement", help="an account's charges, refunds and debts")
    statement.add_argument("--account", required=True)
    _office_options(statement)
    statement.set_defaults(handler=_statement)

    for name, help_text in (
        ("sessions", "list parking sessions"),
        ("charges", "list charges (and totals per account)"),
        ("debts", "list unpaid stays"),
        ("dead-letters", "list rejected reads with their reason"),
    ):
        report = cmds.add_parser(name, help=help_text)
        report.add_argument("--db", default=DEFAULT_DB)
        report.add_argument("--lot")
        report.add_argument("--json", action="store_true")
        report.set_defaults(handler=_report, report=name)

    val = cmds.add_parser(
        "validate", help="validate settlement end to end in SUMO (cameras -> MQTT -> ledger)"
    )
    val.add_argument("--out", type=Path, default=Path("parking-validation"))
    val.add_argument(
        "--broker", help="MQTT broker URL (default: a private Mosquitto, else embedded amqtt)"
    )
    val.add_argument("--db", help="an empty ledger's URL (default: OUT/ledger.db, SQLite)")
    val.add_argument("--seed", type=int, default=1)
    val.add_argument("--vehicles", type=int, default=40)
    val.add_argument("--ocr-error-rate", type=float, help="per read (default 0.03)")
    val.add_argument("--double-rate", type=float, help="repeated frame per camera (0.3)")
    val.add_argument("--drop-rate", type=float, help="one camera misses a passage (0.1)")
    val.add_argument("--unread-rate", type=float, help="no camera reads a passage (0)")
    val.set_defaults(handler=_validate)


def _whole(minimum: int, what: str = "an integer") -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


_positive_int = _whole(1)
_cents = _whole(0, "a whole number of cents")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text}")
    return value


def _date(text: str, flag: str = "--date") -> date:
    """A date given on the command line (a bad one: a one-line error)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CitybrainError(f"{flag}: not a date (YYYY-MM-DD): {text!r}") from None


def _office_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_DB, help="SQLAlchemy URL (SQLite or PostgreSQL)")
    p.add_argument(
        "--config", type=Path, help="parking settings TOML (default: configs/parking.toml)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def _record_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--operator", required=True, help="who decides (kept with the record)")
    p.add_argument("--reason", required=True, help="why (kept with the record)")
    p.add_argument("--id", dest="record_id", help="the record's id (default: derived)")


def _credentials(p: argparse.ArgumentParser) -> None:
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--ca-file", help="CA certificate for mqtts:// brokers")


def _ledger(url: str, tariffs: Path | None = None, config: Path | None = None):  # type: ignore[no-untyped-def]
    from citybrain.parking.ledger import open_ledger
    from citybrain.parking.settings import load_parking_settings
    from citybrain.parking.tariff import load_tariffs

    settings = load_parking_settings(config)
    try:
        return open_ledger(
            url,
            tariffs=load_tariffs(tariffs) if tariffs else None,
            grace=settings.review.grace,
        )
    except CitybrainError:
        raise
    except Exception as exc:  # a bad URL or an unreachable database
        raise CitybrainError(f"cannot open the ledger at {url}: {exc}") from None


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def _serve(args: argparse.Namespace) -> int:
    from citybrain.parking.outbox import start_dispatcher, stop_dispatcher
    from citybrain.parking.service import run_service
    from citybrain.parking.settings import load_parking_settings

    if args.group is not None:
        from citybrain.parking.mqtt import check_group

        try:
            check_group(args.group)
        except ValueError as exc:
            raise CitybrainError(str(exc)) from None
    settings = load_parking_settings(args.config)
    ledger = _ledger(args.db, args.tariffs, args.config)
    stop = _stop_on_signals()

    def expire_loop() -> None:  # pending exits with no entry go to review after their grace
        while not stop.wait(60.0):
            ledger.expire(datetime.now(UTC))

    threading.Thread(target=expire_loop, daemon=True).start()
    payments = None
    if settings.payments.enabled:  # in a process of its own
        payments = start_dispatcher(
            ledger.opener(),
            settings,
            args.broker,
            client_id=f"{args.client_id}-payments",
            group=args.group,
            **_mqtt_options(args),
        )
    print(f"serving {args.broker} into {args.db} as {args.client_id}", file=sys.stderr)
    stats = run_service(
        args.broker,
        ledger,
        client_id=args.client_id,
        group=args.group,
        stop=stop,
        batch_size=args.batch_size,
        batch_window=args.batch_window_ms / 1000,
        **_mqtt_options(args),
    )
    if payments is not None:
        stop_dispatcher(payments)
    print(f"stopped: {stats}", file=sys.stderr)
    return 0


class _MqttOptions(TypedDict):
    topic_root: str
    username: str | None
    password: str | None
    ca_file: str | None


def _mqtt_options(args: argparse.Namespace) -> _MqttOptions:
    """The broker options a command's MQTT clients share."""
    return _MqttOptions(
        topic_root=args.topic_root,
        username=args.username,
        password=args.password,
        ca_file=args.ca_file,
    )


def _pay_adapter(args: argparse.Namespace) -> int:
    from citybrain.parking.payadapter import DeclineRules, run_adapter

    rules = DeclineRules(tuple(args.decline_account), args.decline_over_cents)
    stop = _stop_on_signals()
    print(f"answering payment instructions on {args.broker}", file=sys.stderr)
    stats = run_adapter(
        args.broker,
        args.book,
        rules,
        client_id=args.client_id,
        stop=stop,
        on_ready=lambda: print("READY", file=sys.stderr, flush=True),
        **_mqtt_options(args),
    )
    print(f"stopped: {stats}", file=sys.stderr)
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from citybrain.parking.gateway import run_gateway

    if args.feed != "-" and not Path(args.feed).is_file():
        raise CitybrainError(f"feed file not found: {args.feed}")
    stop = _stop_on_signals()
    outbox = args.outbox or Path(f"gateway-{args.lot}.outbox")
    stats = run_gateway(
        args.lot,
        args.broker,
        args.feed,
        outbox,
        username=args.username,
        password=args.password,
        ca_file=args.ca_file,
        exit_when_drained=args.exit_when_drained,
        stop=stop,
    )
    print(f"stopped: {stats}", file=sys.stderr)
    return 0


def _bind(args: argparse.Namespace) -> int:
    if args.file is not None:
        if not args.file.is_file():
            raise CitybrainError(f"binding file not found: {args.file}")
        with args.file.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if rows and not {"plate", "account"} <= set(rows[0]):
            raise CitybrainError(f"{args.file}: needs the columns plate,account")
        pairs = [(r["plate"], r["account"]) for r in rows]
    elif args.plate and args.account:
        pairs = [(args.plate, args.account)]
    else:
        raise CitybrainError("bind needs --plate and --account, or --file plates.csv")
    ledger = _ledger(args.db)
    charged = 0
    for plate, account in pairs:
        outcome = ledger.bind(plate, account)
        charged += sum(c.cents for c in outcome.charges)
        for c in outcome.charges:
            print(f"charged {c.cents / 100:.2f} to {account} for {c.session_id}")
    print(f"bound {len(pairs)} plate(s); debts charged: {charged / 100:.2f}")
    return 0


def _report(args: argparse.Namespace) -> int:
    ledger = _ledger(args.db)
    name = args.report
    if name == "sessions":
        rows = [s.to_json() for s in ledger.sessions(args.lot)]
    elif name == "charges":
        rows = [_plain(c) for c in ledger.charges() if args.lot in (None, c.lot_id)]
    elif name == "debts":
        rows = [_plain(d) for d in ledger.debts() if args.lot in (None, d.lot_id)]
    else:
        rows = [_plain(d) for d in ledger.dead_letters(args.lot)]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    if name == "charges":
        for account, cents in sorted(ledger.charge_totals().items()):
            print(f"total {account}: {cents / 100:.2f}")
    print(f"{len(rows)} {name.replace('-', ' ')}")
    return 0


def _office(args: argparse.Namespace) -> BackOffice:
    from citybrain.parking.office import BackOffice
    from citybrain.parking.settings import load_parking_settings

    settings = load_parking_settings(args.config)
    return BackOffice(_ledger(args.db, config=args.config), settings)


def _review(args: argparse.Namespace) -> int:
    back = _office(args)
    items = back.review(datetime.now(UTC), args.lot)
    if args.json:
        print(json.dumps([_item_json(i) for i in items], ensure_ascii=False, indent=2))
        return 0
    local = _local_time(back)
    for i in items:
        times = "  ".join(
            f"{name} {local(i.lot_id, t)}"
            for name, t in (("in", i.entry_at), ("out", i.exit_at))
            if t
        )
        head = f"{i.session_id}  {i.kind} {i.reason}  {i.plate}  {times}"
        if i.due is not None:
            head += f"  (waits until {local(i.lot_id, i.due)})"
        if i.fee_cents is not None:
            head += f"  fee {i.fee_cents / 100:.2f}"
        if i.accounts:
            head += f"  accounts {', '.join(i.accounts)}"
        print(head)
        for r in i.reads:
            print(
                f"    read {r.read_id} {r.direction} {r.raw_plate!r} {r.camera_id} "
                f"{local(i.lot_id, r.ts)} confidence {r.confidence:.2f}"
            )
        for c in i.candidates:
            when = local(i.lot_id, c.entry_at or c.exit_at)
            print(f"    candidate {c.session_id} {c.status} {c.plate} {when}")
    print(f"{len(items)} item(s) to review")
    return 0


def _resolve(args: argparse.Namespace) -> int:
    from citybrain.parking.review import Action, Resolution

    back = _office(args)
    lot = args.session.partition("/")[0]
    if args.pair:
        request = Resolution(Action.PAIR, other=args.pair, account=args.account)
    elif args.entry_at:
        request = Resolution(Action.ENTRY, at=_time(back, lot, args.entry_at), account=args.account)
    elif args.exit_at:
        request = Resolution(Action.EXIT, at=_time(back, lot, args.exit_at), account=args.account)
    elif args.charge:
        request = Resolution(Action.CHARGE, account=args.account)
    elif args.fee_cents is not None:
        request = Resolution(Action.FEE, cents=args.fee_cents, account=args.account)
    elif args.waive:
        request = Resolution(Action.WAIVE)
    else:
        request = Resolution(Action.DISMISS)
    done = back.resolve(
        args.session,
        request,
        operator=args.operator,
        reason=args.reason,
        resolution_id=args.record_id,
    )
    s = done.session
    if args.json:
        out = {
            "resolution": _plain(done.resolution),
            "session": s.to_json(),
            "charge": None if done.charge is None else _plain(done.charge),
            "refund": None if done.refund is None else _plain(done.refund),
            "again": done.again,
        }
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    if done.again:
        print(f"{s.session_id} was resolved so already ({done.resolution.action}): nothing changed")
        return 0
    fee = "" if s.fee_cents is None else f", fee {s.fee_cents / 100:.2f}"
    paid = "" if done.charge is None else f", charged to {done.charge.account}"
    if done.refund is not None:
        paid += f", {done.refund.cents / 100:.2f} refunded to {done.refund.account}"
    print(f"resolved {s.session_id} ({done.resolution.action}): {s.status}{fee}{paid}")
    return 0


def _refund(args: argparse.Namespace) -> int:
    back = _office(args)
    done = back.refund(
        args.session,
        args.cents,
        operator=args.operator,
        reason=args.reason,
        refund_id=args.record_id,
    )
    r = done.record
    if args.json:
        print(json.dumps({**_plain(r), "again": done.again}, ensure_ascii=False, indent=2))
        return 0
    verb = "was refunded so already" if done.again else "refunded"
    to = getattr(r, "account", "?")
    print(f"{args.session} {verb}: {args.cents / 100:.2f} to {to} (id {_id_of(r)})")
    return 0


def _dispute(args: argparse.Namespace) -> int:
    back = _office(args)
    done = back.dispute(
        args.session, operator=args.operator, reason=args.reason, dispute_id=args.record_id
    )
    if args.json:
        print(
            json.dumps({**_plain(done.record), "again": done.again}, ensure_ascii=False, indent=2)
        )
        return 0
    verb = "was disputed so already" if done.again else "disputed"
    print(f"{args.session} {verb} (id {_id_of(done.record)}): it is in the review queue")
    return 0


def _receipt(args: argparse.Namespace) -> int:
    from citybrain.parking.receipts import render_text, to_json

    r = _office(args).receipt(args.session)
    if args.json:
        print(json.dumps(to_json(r), ensure_ascii=False, indent=2))
    else:
        print(render_text(r), end="")
    return 0


def _occupancy(args: argparse.Namespace) -> int:
    back = _office(args)
    now = datetime.now(UTC)
    if args.date is None:
        lots = back.occupancy(now, args.lot)
        if args.json:
            rows = [{**_plain(o), "free": o.free, "percent": o.percent} for o in lots]
            print(json.dumps(rows, ensure_ascii=False, indent=2))
            return 0
        print(f"{'lot':<8} {'capacity':>8} {'occupied':>8} {'free':>6} {'%':>6}  over the limit")
        for o in lots:
            cap = "-" if o.capacity is None else str(o.capacity)
            free = "-" if o.free is None else str(o.free)
            pct = "-" if o.percent is None else f"{o.percent:.0f}"
            over = f"{o.overstays} (in the review queue)" if o.overstays else "0"
            print(f"{o.lot_id:<8} {cap:>8} {o.occupied:>8} {free:>6} {pct:>6}  {over}")
        return 0
    days = back.occupancy_day(_date(args.date), now, args.lot)
    if args.json:
        out = [
            {
                "lot_id": d.lot_id,
                "date": d.day.isoformat(),
                "capacity": d.capacity,
                "peak": d.peak,
                "peak_at": None if d.peak_at is None else d.peak_at.isoformat(),
                "hours": [
                    {"start": h.start.isoformat(), "at_start": h.at_start, "peak": h.peak}
                    for h in d.hours
                ],
            }
            for d in days
        ]
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    for d in days:
        print(f"{d.lot_id} {d.day.isoformat()}: peak {_peak(d.peak, d.capacity, d.peak_at)}")
        for h in d.hours:
            print(
                f"  {h.start.strftime('%H:%M')}  {h.at_start:>5} at the start, {h.peak:>5} at most"
            )
    return 0


def _peak(cars: int, capacity: int | None, at: datetime | None) -> str:
    """``3 of 400 at 07:20``."""
    of = "" if capacity is None else f" of {capacity}"
    return f"{cars}{of}" + ("" if at is None else f" at {at.strftime('%H:%M')}")


def _day_report(args: argparse.Namespace) -> int:
    day = _date(args.date)
    back = _office(args)
    days = back.report(day, datetime.now(UTC), args.lot)
    if args.json:
        rows = []
        for d in days:
            row = _plain(d)
            row["net_cents"] = d.net_cents
            for name in ("mean_stay", "longest_stay"):
                span = getattr(d, name)
                row[name] = None if span is None else round(span.total_seconds())
            row["day"] = d.day.isoformat()
            rows.append(row)
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    for d in days:
        print(f"{d.lot_id} {d.day.isoformat()}")
        print(f"  stays            {d.stays} ({d.free_stays} free)")
        print(f"  revenue          {d.revenue_cents / 100:.2f}")
        print(f"  refunds          {d.refunds_cents / 100:.2f}")
        print(f"  net              {d.net_cents / 100:.2f}")
        print(f"  debts created    {d.debts_created} ({d.debts_created_cents / 100:.2f})")
        print(f"  debts collected  {d.debts_collected} ({d.debts_collected_cents / 100:.2f})")
        print(f"  mean stay        {_minutes(d.mean_stay)}")
        print(f"  longest stay     {_minutes(d.longest_stay)}")
        print(f"  peak occupancy   {_peak(d.peak_occupancy, d.capacity, d.peak_at)}")
    return 0


def _minutes(span: timedelta | None) -> str:
    return "-" if span is None else f"{span.total_seconds() / 60:.0f} min"


def _export(args: argparse.Namespace) -> int:
    from citybrain.parking.daybook import ExportKind

    first, last = _date(args.first, "--from"), _date(args.last, "--to")
    if last < first:
        raise CitybrainError(f"--from {first.isoformat()} is after --to {last.isoformat()}")
    text = _office(args).export(ExportKind(args.kind), first, last, args.lot)
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.buffer.flush()
    return 0


def _statement(args: argparse.Namespace) -> int:
    back = _office(args)
    s = back.statement(args.account)
    if args.json:
        out = {
            "account": s.account,
            "lines": [_plain(x) for x in s.lines],
            "debts": [_plain(d) for d in s.debts],
            "charged_cents": s.charged_cents,
            "refunded_cents": s.refunded_cents,
            "balance_cents": s.balance_cents,
            "owed_cents": s.owed_cents,
        }
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    local = _local_time(back)
    print(f"statement of {s.account}")
    for x in s.lines:
        print(
            f"  {local(x.lot_id, x.at)}  {x.kind:<15} {x.session_id:<24} {x.plate:<10} "
            f"{x.cents / 100:>10.2f}  {x.status}"
        )
    print(
        f"charged {s.charged_cents / 100:.2f}, refunded {s.refunded_cents / 100:.2f}, "
        f"balance {s.balance_cents / 100:.2f}"
    )
    for d in s.debts:
        print(f"  owes {d.cents / 100:.2f} for {d.session_id} ({d.plate}): its charge was declined")
    return 0


def _id_of(record: object) -> str:
    for name in ("adjustment_id", "dispute_id", "resolution_id", "key"):
        if hasattr(record, name):
            return str(getattr(record, name))
    return "?"


def _local_time(back: BackOffice) -> Callable[[str, datetime | None], str]:
    def local(lot: str, t: datetime | None) -> str:
        if t is None:
            return "-"
        tariff = back.ledger.tariffs.get(lot)
        shown = t if tariff is None else t.astimezone(tariff.timezone)
        return shown.isoformat(sep=" ", timespec="seconds")

    return local


def _time(back: BackOffice, lot: str, text: str) -> datetime:
    """An ISO 8601 time; without a zone, in the lot's time zone."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CitybrainError(
            f"not a time: {text!r} (use 2026-11-22T09:00 or with +08:00)"
        ) from None
    if value.tzinfo is None:
        tariff = back.ledger.tariffs.get(lot)
        if tariff is None:
            raise CitybrainError(f"{text!r} has no zone and lot {lot!r} has no tariff to say it")
        value = value.replace(tzinfo=tariff.timezone)
    return value


def _item_json(i: ReviewItem) -> dict[str, object]:
    out = _plain(i)
    out["reads"] = [_plain(r) for r in i.reads]
    out["candidates"] = [_plain(c) for c in i.candidates]
    return out


def _validate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from citybrain.sim.parking_cameras import CameraOptions
    from citybrain.sim.parking_validate import DEFAULT_CAMERAS, run_parking_validation

    rates = {
        "ocr_error_rate": args.ocr_error_rate,
        "double_rate": args.double_rate,
        "drop_rate": args.drop_rate,
        "unread_rate": args.unread_rate,
    }
    for name, value in rates.items():
        if value is not None and not 0.0 <= value <= 1.0:
            raise CitybrainError(f"--{name.replace('_', '-')} must be between 0 and 1")
    if args.vehicles < 1:
        raise CitybrainError("--vehicles must be at least 1")
    chosen = {k: v for k, v in rates.items() if v is not None}
    cameras: CameraOptions = replace(DEFAULT_CAMERAS, seed=args.seed, **chosen)
    run = run_parking_validation(
        args.out,
        broker=args.broker,
        db=args.db,
        seed=args.seed,
        vehicles=args.vehicles,
        cameras=cameras,
    )
    print(run.report_txt.read_text(encoding="utf-8"), end="")
    print(f"report: {run.report_json}\nchart: {run.plot}")
    return 0 if run.report.ok else 1


def _plain(row: object) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in vars(row).items() if hasattr(row, "__dict__") else _slots(row):
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, bytes):
            continue
        out[key] = value
    return out


def _slots(row: object) -> list[tuple[str, object]]:
    import dataclasses

    return [(f.name, getattr(row, f.name)) for f in dataclasses.fields(row)]  # type: ignore[arg-type]
