"""The payment side's wire contract, without any I/O: topics, instructions, answers, and
when an unanswered instruction is sent again.

Topics (``root`` defaults to ``citybrain/parking``)::

    {root}/payments/instructions   service -> payment side, QoS 1
    {root}/payments/results        payment side -> service, QoS 1

An instruction asks the payment side to move money once::

    {"key": "charge:L01/cam1-000123:1", "kind": "charge", "account": "acct-1",
     "cents": 2500, "currency": "CNY", "session_id": "L01/cam1-000123", "lot_id": "L01",
     "created_at": "2026-11-22T02:31:00+00:00"}

``kind`` is ``charge`` (collect ``cents`` from ``account``) or ``refund`` (pay ``cents``
back to it). ``key`` is the idempotency key: one per charge (``charge:SESSION:ATTEMPT``) or
refund (``refund:ID``), never reused for anything else. An answer::

    {"key": "charge:L01/cam1-000123:1", "status": "paid", "detail": "",
     "reference": "psp-8812"}

``status`` is ``paid`` (the money moved) or ``declined`` (it did not; ``detail`` says why);
``reference`` (optional) is the provider's own id. The contract, both ways:

* every charge and refund is written to the ledger's outbox in the transaction that makes
  it, so that exactly one instruction exists for it, whatever dies when;
* the service sends an instruction until an answer for its key is recorded, again after
  ``resend_after_s``, doubling up to ``MAX_RESEND_S`` (``next_send``), on every connection;
  it may send it more than once (a resend, two services, a restart);
* the payment side moves money at most once per key: an instruction whose key it has seen
  gets the same answer again, without moving money again;
* the service records the first answer per key (a later, different one is ignored) and
  only then PUBACKs the answer's message: an answer lost before that is sent again by the
  payment side's broker session, or answered again when the instruction is resent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from citybrain.errors import CitybrainError
from citybrain.parking.mqtt import check_topic_root, encode_object
from citybrain.parking.times import require_aware

KINDS = ("charge", "refund")
STATUSES = ("paid", "declined")
MAX_RESEND_S = 600.0  # an instruction is sent again at least every ten minutes


class PaymentError(CitybrainError):
    """A payment message that does not keep the contract."""


def instructions_topic(root: str) -> str:
    return f"{check_topic_root(root)}/payments/instructions"


def results_topic(root: str) -> str:
    return f"{check_topic_root(root)}/payments/results"


@dataclass(frozen=True)
class Instruction:
    """One outbox entry: money to move once (see the module docstring)."""

    key: str
    kind: str  # charge, refund
    session_id: str
    lot_id: str
    account: str
    cents: int
    created_at: datetime
    due_at: datetime  # when it is sent (again) next
    sends: int = 0  # how many times it was sent

    def payload(self, currency: str) -> bytes:
        return encode_object(
            {
                "key": self.key,
                "kind": self.kind,
                "account": self.account,
                "cents": self.cents,
                "currency": currency,
                "session_id": self.session_id,
                "lot_id": self.lot_id,
                "created_at": self.created_at.isoformat(),
            }
        )


@dataclass(frozen=True)
class Order:
    """An instruction as the payment side reads it."""

    key: str
    kind: str
    account: str
    cents: int
    currency: str
    session_id: str
    lot_id: str


@dataclass(frozen=True)
class Answer:
    key: str
    status: str  # paid, declined
    detail: str = ""
    reference: str | None = None

    def payload(self) -> bytes:
        out: dict[str, Any] = {"key": self.key, "status": self.status, "detail": self.detail}
        if self.reference is not None:
            out["reference"] = self.reference
        return encode_object(out)


def _object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise PaymentError(f"{what} is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise PaymentError(f"{what} must be a JSON object")
    return data


def _text(data: dict[str, Any], name: str, what: str, *, optional: bool = False) -> str:
    value = data.get(name)
    if value is None and optional:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise PaymentError(f"{what}: {name} must be a non-empty string")
    return value


def parse_order(payload: bytes) -> Order:
    """An instruction's message, checked (``PaymentError``)."""
    data = _object(payload, "an instruction")
    kind = _text(data, "kind", "an instruction")
    if kind not in KINDS:
        raise PaymentError(f"an instruction: kind must be charge or refund, not {kind!r}")
    cents = data.get("cents")
    if not isinstance(cents, int) or isinstance(cents, bool) or cents <= 0:
        raise PaymentError("an instruction: cents must be a positive whole number")
    return Order(
        key=_text(data, "key", "an instruction"),
        kind=kind,
        account=_text(data, "account", "an instruction"),
        cents=cents,
        currency=_text(data, "currency", "an instruction"),
        session_id=_text(data, "session_id", "an instruction"),
        lot_id=_text(data, "lot_id", "an instruction"),
    )


def parse_answer(payload: bytes) -> Answer:
    """An answer's message, checked (``PaymentError``)."""
    data = _object(payload, "an answer")
    status = _text(data, "status", "an answer")
    if status not in STATUSES:
        raise PaymentError(f"an answer: status must be paid or declined, not {status!r}")
    detail = data.get("detail", "")
    reference = data.get("reference")
    if not isinstance(detail, str) or (reference is not None and not isinstance(reference, str)):
        raise PaymentError("an answer: detail and reference must be strings")
    return Answer(_text(data, "key", "an answer"), status, detail, reference)


def next_send(now: datetime, sends: int, resend_after_s: float) -> datetime:
    """When an instruction sent ``sends`` times (this one included) is due again:
    ``resend_after_s`` after the first send, twice that after the second, ... at most
    ``MAX_RESEND_S``."""
    require_aware("now", now)
    wait = min(resend_after_s * 2 ** max(0, sends - 1), max(resend_after_s, MAX_RESEND_S))
    return now + timedelta(seconds=wait)


__all__ = [
    "KINDS",
    "MAX_RESEND_S",
    "STATUSES",
    "Answer",
    "Instruction",
    "Order",
    "PaymentError",
    "instructions_topic",
    "next_send",
    "parse_answer",
    "parse_order",
    "results_topic",
]
