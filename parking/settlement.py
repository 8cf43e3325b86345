"""Settlement: what a closed session costs and who pays it (pure; no database).

* A closed session's fee comes from its lot's tariff (``tariff.fee_cents``).
* A free stay (0 cents) is settled with nothing to charge.
* Otherwise, with an account bound to the session's plate (its entry plate, also after a
  look-alike match), the session is settled and the fee is charged to that account; with no
  account it becomes unpaid: a debt on the plate.
* A debt is collected (unpaid -> settled, one charge) when an account is bound to the plate.

The ledger writes the returned session and, when ``charge_cents`` is set, one ``charge``
row; the database's UNIQUE ``charge.session_id`` backs the "at most once".
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from citybrain.parking.matching import Session, SessionStatus, settle
from citybrain.parking.tariff import Tariff, fee_cents


@dataclass(frozen=True)
class Settlement:
    """The decided session and the money that moves now."""

    session: Session  # settled or unpaid
    fee_cents: int
    account: str | None  # who pays (None: unpaid, or a free stay without a binding)
    charge_cents: int | None  # cents to charge now; None when nothing is charged

    @property
    def charged(self) -> bool:
        return self.charge_cents is not None


def stay_fee(session: Session, tariff: Tariff) -> int:
    """The fee of a closed session, in cents."""
    if session.entry_at is None or session.exit_at is None:
        raise ValueError(f"session {session.session_id} needs both an entry and an exit")
    if tariff.lot_id != session.lot_id:
        raise ValueError(f"tariff of {tariff.lot_id} used for a session of {session.lot_id}")
    return fee_cents(tariff, session.entry_at, session.exit_at)


def settle_closed(session: Session, tariff: Tariff, account: str | None) -> Settlement:
    """Settle a closed session with the account bound to its plate (or none)."""
    if session.status is not SessionStatus.CLOSED:
        raise ValueError(f"session {session.session_id} is {session.status}, not closed")
    cents = stay_fee(session, tariff)
    if cents == 0:
        return Settlement(settle(session, account_bound=True), 0, account, None)
    if account is None:
        return Settlement(settle(session, account_bound=False), cents, None, None)
    return Settlement(settle(session, account_bound=True), cents, account, cents)


def collect_debt(session: Session, fee: int, account: str) -> Settlement:
    """An unpaid session paid by ``account``, now bound to its plate."""
    if session.status is not SessionStatus.UNPAID:
        raise ValueError(f"session {session.session_id} is {session.status}, not unpaid")
    if fee <= 0:
        raise ValueError(f"session {session.session_id}: a debt must be positive, not {fee}")
    if not account:
        raise ValueError("an account is needed to collect a debt")
    return Settlement(replace(session, status=SessionStatus.SETTLED), fee, account, fee)
