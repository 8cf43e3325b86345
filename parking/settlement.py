"""Settlement: what a closed session costs and who pays it (pure; no database).

* A closed session's fee comes from its lot's tariff (``tariff.fee_cents``).
* A free stay (0 cents) is settled with nothing to charge.
* Otherwise, with an account bound to the session's plate (its entry plate, also after a
  look-alike match), the session is settled and the fee is charged to that account; with no
  account it becomes unpaid: a debt on the plate.
* A debt is collected (unpaid -> settled, one charge) when an account is bound to the plate.

Which account (``settle_stay``): the plates the stay was read as (``matching.stay_plates``:
the session's plate and every reading of its entry and exit passages) are looked up, not
only the displayed plate, because an OCR misread at the entry must not turn a bound car's
stay into a debt on a plate nobody has. When every read agrees that is the one plate, as
before. Among the stay's plates (only look-alikes of the session's plate count):

* no bound account: unpaid, a debt on the session's (displayed) plate;
* exactly one account (one plate bound, or several plates bound to the same account):
  charged to it;
* several different accounts: never guessed. The stay goes to ``review`` (reason
  ``ambiguous``) with its fee recorded and nothing charged, whatever the fee.

Which label (``bound_label``): a stay that an account pays for is shown under a reading
bound to that account, whatever the vote of its reads said (``matching.display_plate``): the
bound reading wins the label. A car read ``浙V257F7`` at the entry and ``浙V2S7F7`` twice at
the exit is the bound ``浙V257F7``'s stay, charged to its account, and shown so on every
report and receipt. The label is then final (``SessionBook.decide`` with ``label_fixed``):
later reads of its passages no longer re-vote it.

Known risk, accepted by that rule: an unbound car whose exit is misread as a look-alike
plate that IS bound (a different car) is charged to that account. The passage vote
(``passages``) keeps a single misread frame from becoming the passage's plate, but a stay
read once at each gate has only the two readings to go on.

The ledger writes the returned session and, when ``charge_cents`` is set, one ``charge``
row; the database's UNIQUE ``charge.session_id`` backs the "at most once".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from citybrain.parking.matching import (
    ReviewReason,
    Session,
    SessionStatus,
    send_to_review,
    settle,
)
from citybrain.parking.plates import lookalike_key
from citybrain.parking.tariff import Fee, Tariff, fee


@dataclass(frozen=True)
class Settlement:
    """The decided session and the money that moves now."""

    session: Session  # settled or unpaid; review when the stay's accounts disagree
    fee_cents: int
    account: str | None  # who pays (None: unpaid, review, or a free stay without binding)
    charge_cents: int | None  # cents to charge now; None when nothing is charged
    candidates: tuple[str, ...] = ()  # the accounts of a stay sent to review, sorted
    breakdown: Fee | None = None  # the tariff's steps, when the tariff priced the stay now

    @property
    def charged(self) -> bool:
        return self.charge_cents is not None


def stay_breakdown(session: Session, tariff: Tariff) -> Fee:
    """The fee of a closed session with its steps (``tariff.Fee``)."""
    if session.entry_at is None or session.exit_at is None:
        raise ValueError(f"session {session.session_id} needs both an entry and an exit")
    if tariff.lot_id != session.lot_id:
        raise ValueError(f"tariff of {tariff.lot_id} used for a session of {session.lot_id}")
    return fee(tariff, session.entry_at, session.exit_at)


def stay_fee(session: Session, tariff: Tariff) -> int:
    """The fee of a closed session, in cents."""
    return stay_breakdown(session, tariff).total_cents


def settle_closed(session: Session, tariff: Tariff, account: str | None) -> Settlement:
    """Settle a closed session with the account bound to its plate (or none)."""
    if session.status is not SessionStatus.CLOSED:
        raise ValueError(f"session {session.session_id} is {session.status}, not closed")
    priced = stay_breakdown(session, tariff)
    return settle_fee(session, priced.total_cents, account, priced)


def settle_fee(
    session: Session, cents: int, account: str | None, breakdown: Fee | None = None
) -> Settlement:
    """Settle a closed session at ``cents`` (its tariff's fee, with its ``breakdown``, or
    one a person set): free, charged to ``account``, or a debt on its plate."""
    if session.status is not SessionStatus.CLOSED:
        raise ValueError(f"session {session.session_id} is {session.status}, not closed")
    if cents < 0:
        raise ValueError(f"session {session.session_id}: a fee must not be negative, not {cents}")
    if cents == 0:
        return Settlement(settle(session, account_bound=True), 0, account, None, (), breakdown)
    if account is None:
        unpaid = settle(session, account_bound=False)
        return Settlement(unpaid, cents, None, None, (), breakdown)
    return Settlement(settle(session, account_bound=True), cents, account, cents, (), breakdown)


def collect_debt(session: Session, fee: int, account: str) -> Settlement:
    """An unpaid session paid by ``account``, now bound to its plate."""
    if session.status is not SessionStatus.UNPAID:
        raise ValueError(f"session {session.session_id} is {session.status}, not unpaid")
    if fee <= 0:
        raise ValueError(f"session {session.session_id}: a debt must be positive, not {fee}")
    if not account:
        raise ValueError("an account is needed to collect a debt")
    return Settlement(replace(session, status=SessionStatus.SETTLED), fee, account, fee)


def declined(session: Session, fee: int) -> Settlement:
    """A settled stay whose charge the payment side declined: a debt again, on its plate
    (unpaid), collected as debts are (a later attempt, when a plate is bound)."""
    if session.status is not SessionStatus.SETTLED:
        raise ValueError(f"session {session.session_id} is {session.status}, not settled")
    if fee <= 0:
        raise ValueError(f"session {session.session_id}: a debt must be positive, not {fee}")
    return Settlement(replace(session, status=SessionStatus.UNPAID), fee, None, None)


@dataclass(frozen=True)
class AccountChoice:
    """The accounts bound to the plates a stay was read as."""

    plates: tuple[str, ...]  # the plates looked up (the stay's, look-alikes only), sorted
    accounts: tuple[str, ...]  # distinct accounts bound to them, sorted

    @property
    def account(self) -> str | None:
        """The one account to charge; None when there is none or several."""
        return self.accounts[0] if len(self.accounts) == 1 else None

    @property
    def ambiguous(self) -> bool:
        return len(self.accounts) > 1


def choose_account(
    session: Session, plates: Iterable[str], bindings: Mapping[str, str]
) -> AccountChoice:
    """The accounts bound (``bindings``: normalized plate -> account) to the session's
    plate and to ``plates`` (the stay's readings; plates that are not look-alikes of the
    session's plate are ignored: they cannot be this car)."""
    key = session.plate_key
    considered = sorted({session.plate, *(p for p in plates if lookalike_key(p) == key)})
    accounts = sorted({bindings[p] for p in considered if p in bindings})
    return AccountChoice(tuple(considered), tuple(accounts))


def bound_label(session: Session, choice: AccountChoice, bindings: Mapping[str, str]) -> Session:
    """``session`` shown under the reading bound to the account that pays for it: its own
    plate when that one is bound to the account (or no one account pays), else the first
    (sorted) of the stay's plates bound to it."""
    account = choice.account
    if account is None or bindings.get(session.plate) == account:
        return session
    bound = [p for p in choice.plates if bindings.get(p) == account]
    return replace(session, plate=bound[0]) if bound else session


def settle_stay(
    session: Session, tariff: Tariff, plates: Iterable[str], bindings: Mapping[str, str]
) -> Settlement:
    """Settle a closed session with the account bound to the plates its stay was read as
    (see the module docstring): settled, unpaid, or review when accounts disagree.

    ``plates``: ``SessionBook.stay_plates`` / ``matching.stay_plates``; ``bindings`` must
    hold the binding of every one of them that has one.
    """
    choice = choose_account(session, plates, bindings)
    if not choice.ambiguous:
        return settle_closed(bound_label(session, choice, bindings), tariff, choice.account)
    if session.status is not SessionStatus.CLOSED:
        raise ValueError(f"session {session.session_id} is {session.status}, not closed")
    priced = stay_breakdown(session, tariff)
    review = send_to_review(session, ReviewReason.AMBIGUOUS, session.related)
    return Settlement(review, priced.total_cents, None, None, choice.accounts, priced)
