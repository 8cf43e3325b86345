"""Money after settlement: what was charged, paid, declined and refunded (pure: plain
records in, numbers out; no database).

A charge asks an account for a stay's fee (``ChargeReport``); the payment side answers
``paid`` or ``declined`` (``PaymentResultRecord``; the first answer for an instruction
counts); until then it is ``pending``. A refund (``AdjustmentRecord``) pays money back to
the account that paid, answered the same way.

In force: a charge or a refund that was not declined (paid, or pending). The ledger's
money is the charges in force minus the refunds in force; receipts, reports, statements
and the CSV export all count it so, each from these same records, so that they add up to
the cent.

Rules:

* a refund never exceeds what was paid (charges answered ``paid``) minus the refunds in
  force (``refundable_cents``; ``check_refund``);
* a declined charge turns its stay into a debt on its plate (``settlement.declined``),
  collected as debts are: by a later attempt, when a plate is bound;
* a declined refund did not happen: its money can be refunded again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from citybrain.errors import CitybrainError
from citybrain.parking.reports import (
    AdjustmentRecord,
    ChargeReport,
    DebtReport,
    PaymentResultRecord,
)


class MoneyError(CitybrainError):
    """A refund or payment that cannot be applied as asked (one line; nothing written)."""


class Payment(StrEnum):
    PENDING = "pending"  # not answered yet: in force
    PAID = "paid"
    DECLINED = "declined"


def status_of(key: str, results: Mapping[str, PaymentResultRecord]) -> Payment:
    found = results.get(key)
    return Payment.PENDING if found is None else Payment(found.status)


@dataclass(frozen=True)
class Money:
    """One session's money: its charges (every attempt), refunds, and the answers."""

    charges: tuple[ChargeReport, ...] = ()
    refunds: tuple[AdjustmentRecord, ...] = ()
    results: Mapping[str, PaymentResultRecord] | None = None

    def status(self, key: str) -> Payment:
        return status_of(key, self.results or {})

    def in_force(self, key: str) -> bool:
        return self.status(key) is not Payment.DECLINED

    @property
    def charged_cents(self) -> int:
        """Charges in force (paid or pending)."""
        return sum(c.cents for c in self.charges if self.in_force(c.key))

    @property
    def paid_cents(self) -> int:
        """Charges the payment side answered paid."""
        return sum(c.cents for c in self.charges if self.status(c.key) is Payment.PAID)

    @property
    def refunded_cents(self) -> int:
        """Refunds in force (paid back, or pending)."""
        return sum(r.cents for r in self.refunds if self.in_force(r.key))

    @property
    def refundable_cents(self) -> int:
        return max(0, self.paid_cents - self.refunded_cents)

    @property
    def net_cents(self) -> int:
        return self.charged_cents - self.refunded_cents

    @property
    def payer(self) -> str | None:
        """The account whose charge was paid (refunds go back to it)."""
        paid = [c for c in self.charges if self.status(c.key) is Payment.PAID]
        return paid[-1].account if paid else None


def check_refund(session_id: str, money: Money, cents: int) -> None:
    """``MoneyError`` unless ``cents`` may be refunded now."""
    if cents <= 0:
        raise MoneyError(f"a refund must be a positive number of cents, not {cents}")
    if not money.charges:
        raise MoneyError(f"{session_id} was never charged: nothing to refund")
    refundable = money.refundable_cents
    if cents > refundable:
        pending = money.charged_cents - money.paid_cents
        wait = f" ({pending / 100:.2f} charged awaits the payment side)" if pending else ""
        raise MoneyError(
            f"a refund of {cents / 100:.2f} exceeds what was paid for {session_id}: "
            f"{money.paid_cents / 100:.2f} paid, {money.refunded_cents / 100:.2f} refunded"
            f"{wait}"
        )


class LineKind(StrEnum):
    CHARGE = "charge"
    DECLINED = "declined"  # a charge the payment side declined: the stay is a debt again
    REFUND = "refund"
    REFUND_DECLINED = "refund_declined"


@dataclass(frozen=True)
class StatementLine:
    at: datetime
    kind: LineKind
    session_id: str
    lot_id: str
    plate: str
    cents: int  # what it does to the balance (a charge +, a refund or a decline -)
    key: str  # the payment instruction
    status: Payment  # the instruction's answer so far


@dataclass(frozen=True)
class Statement:
    """An account's money in time order: charges, declines, refunds; and its debts (stays
    whose charge to it was declined, not collected since)."""

    account: str
    lines: tuple[StatementLine, ...]
    debts: tuple[DebtReport, ...]

    @property
    def charged_cents(self) -> int:
        return sum(x.cents for x in self.lines if x.kind is LineKind.CHARGE) + sum(
            x.cents for x in self.lines if x.kind is LineKind.DECLINED
        )

    @property
    def refunded_cents(self) -> int:
        return -sum(x.cents for x in self.lines if x.kind in _REFUNDS)

    @property
    def balance_cents(self) -> int:
        """What the account paid net: its charges in force minus its refunds in force."""
        return sum(x.cents for x in self.lines)

    @property
    def owed_cents(self) -> int:
        return sum(d.cents for d in self.debts)


_REFUNDS = frozenset({LineKind.REFUND, LineKind.REFUND_DECLINED})


def statement(
    account: str,
    charges: Iterable[ChargeReport],
    refunds: Iterable[AdjustmentRecord],
    results: Mapping[str, PaymentResultRecord],
    debts: Iterable[DebtReport] = (),
    lots: Mapping[str, tuple[str, str]] | None = None,
) -> Statement:
    """``account``'s statement from its charges and refunds (other accounts' are ignored)
    and the answers to them; ``lots``: session -> (lot, plate) for the refunds' lines."""
    where = dict(lots or {})
    lines: list[tuple[datetime, int, StatementLine]] = []
    for c in charges:
        if c.account != account:
            continue
        where.setdefault(c.session_id, (c.lot_id, c.plate))
        status = status_of(c.key, results)
        line = StatementLine(
            c.charged_at, LineKind.CHARGE, c.session_id, c.lot_id, c.plate, c.cents, c.key, status
        )
        lines.append((c.charged_at, 0, line))
        if status is Payment.DECLINED:
            at = results[c.key].received_at
            kind = LineKind.DECLINED
            back = StatementLine(at, kind, c.session_id, c.lot_id, c.plate, -c.cents, c.key, status)
            lines.append((at, 1, back))
    for r in refunds:
        if r.account != account:
            continue
        lot, plate = where.get(r.session_id, ("", ""))
        status = status_of(r.key, results)
        line = StatementLine(
            r.created_at, LineKind.REFUND, r.session_id, lot, plate, -r.cents, r.key, status
        )
        lines.append((r.created_at, 2, line))
        if status is Payment.DECLINED:
            at = results[r.key].received_at
            kind = LineKind.REFUND_DECLINED
            back = StatementLine(at, kind, r.session_id, lot, plate, r.cents, r.key, status)
            lines.append((at, 3, back))
    ordered = sorted(lines, key=lambda x: (x[0], x[1], x[2].key))
    return Statement(account, tuple(x for _, _, x in ordered), tuple(debts))


__all__ = [
    "LineKind",
    "Money",
    "MoneyError",
    "Payment",
    "Statement",
    "StatementLine",
    "check_refund",
    "statement",
    "status_of",
]
