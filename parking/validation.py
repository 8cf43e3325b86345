"""Validation of settlement against ground truth: every stay settled once, every fee exact.

Pure: plain records in, a report out (no SQL, no SUMO, no MQTT). The caller supplies

* ``TrueStay``: the stays that really happened (from a simulator's own stop records), with
  the true plate;
* ``GateRead``: what the gate cameras produced for each passage through a gate (the raw
  texts, possibly none: a passage nobody read);
* the binding plan: which plates had an account bound before their stays, only after them
  (their debts are collected at binding), or never;
* the tariffs, and the ledger's ``SessionReport``s and ``LedgerCharge``s at report time
  (after the grace period, after the late bindings).

Expectations per stay, from what the cameras could know:

* entry and exit both read (``settleable``): exactly one session of this stay, with the
  true entry and exit times and the true plate; its fee is the tariff's fee of the true
  times; ``settled`` with the bound account (a free stay: ``settled`` with the account bound
  at its exit, if any), or ``unpaid`` when the plate never gets an account; exactly one
  charge of the fee to that account when the fee is positive and the plate is bound, no
  charge otherwise;
* exit never read by any camera: it cannot be settled. Expected: one session holding the
  entry, ``open`` or ``review``, never charged;
* entry never read: expected one ``review`` session holding the exit, never charged;
* neither read: no session at all.

Stays of the last three kinds are counted apart (``unreadable``): they are honest failures
of the cameras, not of the settlement, as long as the ledger neither charges nor invents
them. Anything else is a ``Mismatch``: a missing or duplicated session, a session that
pairs one stay's entry with another's exit, a session timed by a later read of a passage
than its first, a wrong fee, status, account or plate, a
missing, repeated or wrong charge, a session that matches no stay (phantom), a charge
for an unknown session, a dead letter.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from citybrain.parking.plates import lookalike_key, normalize
from citybrain.parking.reports import SessionReport
from citybrain.parking.tariff import Tariff, fee_cents
from citybrain.parking.times import require_aware

Binding = Literal["start", "later", "never"]
Coverage = Literal["settleable", "exit_unread", "entry_unread", "unread"]

MISMATCH_KINDS: tuple[str, ...] = (
    "missing",  # expected a session for the stay, found none
    "duplicate",  # an extra session (no money) holds the stay's entry or exit
    "double_charge",  # an extra session of the stay charged or owed money
    "crossed",  # a session pairs this stay's entry with another passage's exit
    "wrong_times",  # the stay's session starts or ends at another read of a passage
    "wrong_fee",
    "wrong_status",
    "wrong_account",
    "wrong_plate",  # the session is on another plate than the car's
    "charge_count",  # not charged, or charged more than once
    "wrong_charge",  # a charge of the wrong amount or to the wrong account
    "charged_unreadable",  # money moved for a stay whose passage nobody read
    "phantom",  # a session that matches no stay
    "orphan_charge",  # a charge for a session the ledger does not list
    "dead_letter",  # a camera read the service rejected
)


@dataclass(frozen=True)
class TrueStay:
    """A stay that really happened: the car (true plate) was in ``lot_id`` in between."""

    stay_id: str
    vehicle_id: str
    plate: str
    lot_id: str
    entry_at: datetime
    exit_at: datetime

    def __post_init__(self) -> None:
        require_aware("TrueStay.entry_at", self.entry_at)
        require_aware("TrueStay.exit_at", self.exit_at)


@dataclass(frozen=True)
class GateRead:
    """What the cameras of one gate printed for one passage (``raw_plates`` may be empty)."""

    plate: str  # the car's true plate
    lot_id: str
    direction: Literal["in", "out"]
    at: datetime
    raw_plates: tuple[str, ...]

    def __post_init__(self) -> None:
        require_aware("GateRead.at", self.at)

    @property
    def read(self) -> bool:
        return bool(self.raw_plates)

    @property
    def misread(self) -> bool:
        return any(normalize(r) != normalize(self.plate) for r in self.raw_plates)


@dataclass(frozen=True)
class LedgerCharge:
    session_id: str
    account: str
    cents: int


@dataclass(frozen=True)
class Mismatch:
    kind: str
    detail: str
    stay_id: str | None = None
    session_id: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {
            "kind": self.kind,
            "stay_id": self.stay_id,
            "session_id": self.session_id,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class StayCheck:
    """One true stay, what was expected of the ledger and what it holds."""

    stay: TrueStay
    coverage: Coverage
    binding: Binding
    expected_fee_cents: int
    expected_status: tuple[str, ...]  # acceptable statuses
    expected_account: str | None
    sessions: tuple[SessionReport, ...]
    charged_cents: int  # sum of the charges of its sessions
    charges: int
    misread: bool  # some camera printed another plate for one of its passages
    mismatches: tuple[Mismatch, ...]

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def status(self) -> str:
        """The ledger's status of the stay ("-" without a session, "+" joins several)."""
        return "+".join(s.status for s in self.sessions) or "-"

    def to_json(self) -> dict[str, object]:
        s = self.stay
        return {
            "stay_id": s.stay_id,
            "vehicle_id": s.vehicle_id,
            "plate": s.plate,
            "lot_id": s.lot_id,
            "entry_at": s.entry_at.isoformat(),
            "exit_at": s.exit_at.isoformat(),
            "duration_s": int((s.exit_at - s.entry_at).total_seconds()),
            "coverage": self.coverage,
            "binding": self.binding,
            "misread": self.misread,
            "expected_fee_cents": self.expected_fee_cents,
            "expected_status": list(self.expected_status),
            "expected_account": self.expected_account,
            "sessions": [x.session_id for x in self.sessions],
            "status": self.status,
            "fee_cents": [x.fee_cents for x in self.sessions],
            "account": [x.account for x in self.sessions],
            "charges": self.charges,
            "charged_cents": self.charged_cents,
            "ok": self.ok,
        }


@dataclass(frozen=True)
class ValidationReport:
    stays: tuple[StayCheck, ...]
    mismatches: tuple[Mismatch, ...]  # all of them: per stay, then phantoms and the rest
    sessions: int
    charges: int
    expected_cents: int  # what should have been charged (settleable, bound)
    charged_cents: int  # what was charged in all
    unpaid_cents: int  # open debts in the ledger
    dead_letters: int
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def counts(self) -> dict[str, int]:
        by_cov = Counter(c.coverage for c in self.stays)
        settleable = [c for c in self.stays if c.coverage == "settleable"]
        return {
            "stays": len(self.stays),
            "settleable": by_cov["settleable"],
            "unreadable": len(self.stays) - by_cov["settleable"],
            "exit_unread": by_cov["exit_unread"],
            "entry_unread": by_cov["entry_unread"],
            "unread": by_cov["unread"],
            "settled_ok": sum(1 for c in settleable if c.ok),
            "free": sum(1 for c in settleable if c.expected_fee_cents == 0),
            "stays_with_misreads": sum(1 for c in self.stays if c.misread),
            "sessions": self.sessions,
            "charges": self.charges,
            "expected_cents": self.expected_cents,
            "charged_cents": self.charged_cents,
            "unpaid_cents": self.unpaid_cents,
            "dead_letters": self.dead_letters,
            "mismatches": len(self.mismatches),
        }

    def mismatch_counts(self) -> dict[str, int]:
        found = Counter(m.kind for m in self.mismatches)
        return {k: found[k] for k in MISMATCH_KINDS if found[k]}

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "counts": self.counts(),
            "mismatch_counts": self.mismatch_counts(),
            "mismatches": [m.to_json() for m in self.mismatches],
            "stays": [c.to_json() for c in self.stays],
            **self.extra,
        }


def coverage_of(entry_read: bool, exit_read: bool) -> Coverage:
    if entry_read and exit_read:
        return "settleable"
    if entry_read:
        return "exit_unread"
    if exit_read:
        return "entry_unread"
    return "unread"


def _key(lot: str, plate: str, at: datetime) -> tuple[str, str, datetime]:
    return (lot, lookalike_key(plate), at)


def validate(
    stays: Sequence[TrueStay],
    gate_reads: Iterable[GateRead],
    bindings: Mapping[str, tuple[Binding, str | None]],
    tariffs: Mapping[str, Tariff],
    sessions: Sequence[SessionReport],
    charges: Sequence[LedgerCharge],
    *,
    dead_letters: int = 0,
) -> ValidationReport:
    """Compare the ledger with the true stays (see the module docstring).

    ``bindings``: true plate -> (when its account is bound, the account). A plate missing
    from it is never bound.
    """
    read_at: set[tuple[str, str, str, datetime]] = set()
    misread_at: set[tuple[str, str, str, datetime]] = set()
    for g in gate_reads:
        k = (g.lot_id, normalize(g.plate), g.direction, g.at)
        if g.read:
            read_at.add(k)
        if g.misread:
            misread_at.add(k)

    by_entry: dict[tuple[str, str, datetime], list[TrueStay]] = defaultdict(list)
    by_exit: dict[tuple[str, str, datetime], list[TrueStay]] = defaultdict(list)
    for s in stays:
        by_entry[_key(s.lot_id, s.plate, s.entry_at)].append(s)
        by_exit[_key(s.lot_id, s.plate, s.exit_at)].append(s)

    charges_of: dict[str, list[LedgerCharge]] = defaultdict(list)
    for c in charges:
        charges_of[c.session_id].append(c)
    known = {s.session_id for s in sessions}

    attached: dict[str, list[SessionReport]] = defaultdict(list)
    owner: dict[str, str] = {}  # session -> the stay that reports it when it is crossed
    other: list[Mismatch] = []
    for x in sessions:
        e = _one(by_entry, x.lot_id, x.plate, x.entry_at)
        o = _one(by_exit, x.lot_id, x.exit_plate or x.plate, x.exit_at)
        if e is None and o is None:
            money = sum(c.cents for c in charges_of[x.session_id])
            near = _near(stays, x)
            like = stays[0].entry_at if stays else None
            other.append(
                Mismatch(
                    "phantom",
                    f"{x.lot_id} {x.plate} {_when(x.entry_at, like)}..{_when(x.exit_at, like)} "
                    f"{x.status}, fee {x.fee_cents}, charged {money} cents: matches no stay"
                    + (f" (within a minute of {near}'s passage)" if near else ""),
                    session_id=x.session_id,
                )
            )
            continue
        owner[x.session_id] = (e or o or stays[0]).stay_id
        for stay in {s.stay_id: s for s in (e, o) if s is not None}.values():
            attached[stay.stay_id].append(x)
    for sid, cs in sorted(charges_of.items()):
        if sid not in known:
            total = sum(c.cents for c in cs)
            other.append(Mismatch("orphan_charge", f"{total} cents", session_id=sid))
    if dead_letters:
        other.append(Mismatch("dead_letter", f"{dead_letters} reads were dead-lettered"))

    checks: list[StayCheck] = []
    expected_total = 0
    for stay in stays:
        k_in = (stay.lot_id, normalize(stay.plate), "in", stay.entry_at)
        k_out = (stay.lot_id, normalize(stay.plate), "out", stay.exit_at)
        check = _check_stay(
            stay,
            coverage_of(k_in in read_at, k_out in read_at),
            k_in in misread_at or k_out in misread_at,
            bindings.get(stay.plate, ("never", None)),
            tariffs,
            tuple(sorted(attached.get(stay.stay_id, ()), key=lambda x: x.session_id)),
            charges_of,
            owner,
        )
        if check.coverage == "settleable" and check.expected_account is not None:
            expected_total += check.expected_fee_cents
        checks.append(check)

    all_mismatches = tuple(m for c in checks for m in c.mismatches) + tuple(other)
    return ValidationReport(
        stays=tuple(checks),
        mismatches=all_mismatches,
        sessions=len(sessions),
        charges=len(charges),
        expected_cents=expected_total,
        charged_cents=sum(c.cents for c in charges),
        unpaid_cents=sum(x.fee_cents or 0 for x in sessions if x.status == "unpaid"),
        dead_letters=dead_letters,
    )


def _one(
    index: Mapping[tuple[str, str, datetime], list[TrueStay]],
    lot: str,
    plate: str,
    at: datetime | None,
) -> TrueStay | None:
    if at is None:
        return None
    found = index.get(_key(lot, plate, at), [])
    return found[0] if len(found) == 1 else None


def _close(a: datetime | None, b: datetime) -> bool:
    """Within one passage window (60 s) of each other."""
    return a is not None and abs((a - b).total_seconds()) <= 60


def _near(stays: Sequence[TrueStay], x: SessionReport) -> str | None:
    """The stay of the same look-alike plate and lot with a passage within 60 s of ``x``'s."""
    key = lookalike_key(x.plate)
    for s in stays:
        if s.lot_id != x.lot_id or lookalike_key(s.plate) != key:
            continue
        for mine, theirs in ((x.entry_at, s.entry_at), (x.exit_at, s.exit_at)):
            if mine is not None and abs((mine - theirs).total_seconds()) <= 60:
                return s.stay_id
    return None


def _when(at: datetime | None, like: datetime | None = None) -> str:
    """``at`` in ISO form, in the time zone of ``like`` when given (the lot's)."""
    if at is None:
        return "?"
    if like is not None and like.tzinfo is not None:
        at = at.astimezone(like.tzinfo)
    return at.isoformat(timespec="seconds")


def _check_stay(
    stay: TrueStay,
    coverage: Coverage,
    misread: bool,
    binding_plan: tuple[Binding, str | None],
    tariffs: Mapping[str, Tariff],
    sessions: tuple[SessionReport, ...],
    charges_of: Mapping[str, list[LedgerCharge]],
    owner: Mapping[str, str],
) -> StayCheck:
    binding, account = binding_plan
    if binding == "never":
        account = None
    tariff = tariffs.get(stay.lot_id)
    fee = fee_cents(tariff, stay.entry_at, stay.exit_at) if tariff is not None else -1
    my_charges = [c for x in sessions for c in charges_of.get(x.session_id, ())]
    charged = sum(c.cents for c in my_charges)
    found: list[Mismatch] = []

    def bad(kind: str, detail: str, session: SessionReport | None = None) -> None:
        found.append(
            Mismatch(kind, detail, stay.stay_id, None if session is None else session.session_id)
        )

    def extra(x: SessionReport, why: str) -> None:
        """A session beyond the one the stay should have."""
        money = sum(c.cents for c in charges_of.get(x.session_id, ()))
        if (
            x.entry_at is not None
            and x.exit_at is not None
            and not (_close(x.entry_at, stay.entry_at) and _close(x.exit_at, stay.exit_at))
        ):
            if owner.get(x.session_id) == stay.stay_id:
                bad(
                    "crossed",
                    f"{x.status} on {x.plate}, fee {x.fee_cents}, charged {money}: pairs "
                    f"{_when(x.entry_at, stay.entry_at)} with {_when(x.exit_at, stay.entry_at)}"
                    f"; the stay is {_when(stay.entry_at)}..{_when(stay.exit_at)}",
                    x,
                )
            return
        moved = money > 0 or (x.status == "unpaid" and (x.fee_cents or 0) > 0)
        bad(
            "double_charge" if moved else "duplicate",
            f"{why}: {x.status} on {x.plate} "
            f"({_when(x.entry_at, stay.entry_at)}..{_when(x.exit_at, stay.entry_at)}), "
            f"fee {x.fee_cents}, charged {money}",
            x,
        )

    if coverage != "settleable":
        statuses: tuple[str, ...]
        if coverage == "exit_unread":
            statuses = ("open", "review")
        elif coverage == "entry_unread":
            statuses = ("review",)
        else:
            statuses = ()
        expected_account = None
        if statuses and not sessions:
            bad("missing", f"{coverage}: expected a {'/'.join(statuses)} session, found none")
        for i, x in enumerate(sessions):
            if not statuses:
                extra(x, "no camera read this stay, yet a session holds it")
            elif x.entry_at is not None and x.exit_at is not None:
                extra(x, "a passage of this stay was never read, yet a session pairs it")
            elif i > 0:
                extra(x, "another session")
            elif x.status not in statuses:
                bad("wrong_status", f"{coverage}: {x.status}, expected {'/'.join(statuses)}", x)
        if my_charges or any(x.status in ("settled", "unpaid") for x in sessions):
            bad("charged_unreadable", f"{coverage} stay charged {charged} cents / settled")
        return StayCheck(
            stay, coverage, binding, fee, statuses, expected_account, sessions, charged,
            len(my_charges), misread, tuple(found),
        )  # fmt: skip

    if fee > 0:
        expected_status: tuple[str, ...] = ("unpaid",) if account is None else ("settled",)
        expected_account = account
    else:
        expected_status = ("settled",)
        expected_account = account if binding == "start" else None
    if tariff is None:
        bad("wrong_fee", f"no tariff for lot {stay.lot_id}")
    main = [x for x in sessions if x.entry_at == stay.entry_at and x.exit_at == stay.exit_at]
    near = [
        x for x in sessions if _close(x.entry_at, stay.entry_at) and _close(x.exit_at, stay.exit_at)
    ]
    if not main and near:
        main = near[:1]
        x = main[0]
        bad(
            "wrong_times",
            f"the session has {_when(x.entry_at, stay.entry_at)}..{_when(x.exit_at, stay.entry_at)}"
            f" (a later read of the same passage); the stay is "
            f"{_when(stay.entry_at)}..{_when(stay.exit_at)}",
            x,
        )
    if not main:
        bad("missing", "no session pairs this stay's entry with its exit")
    for x in sessions:
        if main and x is not main[0]:
            extra(x, "a second session")
        elif not main:
            extra(x, "a partial session")
    if main:
        x = main[0]
        if x.fee_cents != fee:
            bad("wrong_fee", f"charged fee {x.fee_cents}, tariff says {fee}", x)
        if x.status not in expected_status:
            bad("wrong_status", f"{x.status}, expected {expected_status[0]}", x)
        if x.account != expected_account:
            bad("wrong_account", f"{x.account}, expected {expected_account}", x)
        if normalize(x.plate) != normalize(stay.plate):
            bad("wrong_plate", f"session on {x.plate}, the car is {stay.plate}", x)
        mine = charges_of.get(x.session_id, [])
        want = 1 if fee > 0 and account is not None else 0
        if len(mine) != want:
            bad("charge_count", f"{len(mine)} charges, expected {want}", x)
        for c in mine:
            if c.cents != fee or c.account != account:
                bad("wrong_charge", f"{c.cents} cents to {c.account}, expected {fee} to {account}")
    return StayCheck(
        stay, coverage, binding, fee, expected_status, expected_account, sessions, charged,
        len(my_charges), misread, tuple(found),
    )  # fmt: skip


def _list(sessions: Iterable[SessionReport]) -> str:
    return ", ".join(f"{x.session_id} ({x.status}, {x.plate})" for x in sessions)


def table(report: ValidationReport, *, limit: int | None = None) -> str:
    """A plain-text table of the stays (mismatched first) and the summary."""
    rows = sorted(report.stays, key=lambda c: (c.ok, c.stay.entry_at, c.stay.stay_id))
    if limit is not None:
        rows = rows[:limit]
    head = (
        f"{'stay':<12} {'lot':<4} {'plate':<10} {'entry':<16} {'hours':>6} {'coverage':<12} "
        f"{'binding':<7} {'fee':>7} {'charged':>7} {'status':<14} ok"
    )
    lines = [head, "-" * len(head)]
    for c in rows:
        s = c.stay
        hours = (s.exit_at - s.entry_at).total_seconds() / 3600
        lines.append(
            f"{s.stay_id:<12} {s.lot_id:<4} {s.plate:<10} "
            f"{s.entry_at.strftime('%a %H:%M:%S'):<16} {hours:>6.2f} {c.coverage:<12} "
            f"{c.binding:<7} {c.expected_fee_cents / 100:>7.2f} {c.charged_cents / 100:>7.2f} "
            f"{c.status:<14} {'yes' if c.ok else 'NO'}"
        )
    if limit is not None and len(report.stays) > limit:
        lines.append(f"... {len(report.stays) - limit} more in report.json")
    lines.append("")
    lines.append(summary(report))
    return "\n".join(lines)


def summary(report: ValidationReport) -> str:
    n = report.counts()
    text = (
        f"{n['stays']} stays: {n['settleable']} read at both gates "
        f"({n['settled_ok']} settled exactly, {n['free']} free), {n['unreadable']} with a "
        f"passage no camera read ({n['exit_unread']} exit, {n['entry_unread']} entry, "
        f"{n['unread']} both; expected open/review, not charged); {n['stays_with_misreads']} "
        f"with look-alike misreads. Ledger: {n['sessions']} sessions, {n['charges']} charges, "
        f"{report.charged_cents / 100:.2f} charged (expected {report.expected_cents / 100:.2f}), "
        f"{report.unpaid_cents / 100:.2f} unpaid. Mismatches: {n['mismatches']}"
    )
    if report.mismatches:
        text += " (" + ", ".join(f"{k} {v}" for k, v in report.mismatch_counts().items()) + ")"
    return text
