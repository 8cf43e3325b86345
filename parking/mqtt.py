"""The parking MQTT protocol, without any I/O: topics, payloads, plate masking, the
service's ack plan and the gateway's send window (broker URLs and connections:
``citybrain.mqtt``).

Topics (``root`` defaults to ``citybrain/parking``)::

    {root}/{lot_id}/reads   gateway -> service, QoS 1, one camera read per message
    {root}/{lot_id}/acks    service -> gateway, QoS 1, {"read_id": ...} once it is durable

A read payload is one JSON object::

    {"read_id": "...", "lot_id": "...", "camera_id": "...", "direction": "in" | "out",
     "plate": "浙A·12345", "confidence": 0.97, "ts": "2026-11-22T08:00:00+08:00"}

What makes a payload a valid read is decided in ``citybrain.parking.readcontract`` (for
the gateway and the ledger alike); unknown extra fields are allowed (and kept by the
gateway). Nothing here opens a socket, a file or reads a clock: callers pass ``now``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from citybrain.parking.passages import Read
from citybrain.parking.plates import normalize
from citybrain.parking.readcontract import PayloadError, read_id_of

TOPIC_ROOT = "citybrain/parking"
QOS = 1

# A lot id is one topic level and part of a broker user name (gw-<lot>): keep it plain.
_LOT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

TopicKind = Literal["reads", "acks"]
OutcomeKind = Literal["recorded", "duplicate", "dead_letter"]
OUTCOME_KINDS: frozenset[str] = frozenset({"recorded", "duplicate", "dead_letter"})


# ---------------------------------------------------------------------------- topics


def check_lot_id(lot_id: str) -> str:
    """``lot_id`` itself, or ``ValueError``: 1-64 of ``A-Z a-z 0-9 . _ -``, not starting
    with a punctuation character (it is a topic level and part of a user name)."""
    if not isinstance(lot_id, str) or not _LOT_ID.fullmatch(lot_id):
        raise ValueError(f"invalid lot id {lot_id!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    return lot_id


def check_topic_root(root: str) -> str:
    """``root`` itself, or ``ValueError`` if it has wildcards or empty levels."""
    levels = root.split("/")
    if not root or any(
        not level or level in ("+", "#") or "+" in level or "#" in level for level in levels
    ):
        raise ValueError(f"invalid topic root {root!r}")
    return root


def lot_topic(lot_id: str, kind: TopicKind, root: str = TOPIC_ROOT) -> str:
    return f"{check_topic_root(root)}/{check_lot_id(lot_id)}/{kind}"


def reads_topic(lot_id: str, root: str = TOPIC_ROOT) -> str:
    return lot_topic(lot_id, "reads", root)


def acks_topic(lot_id: str, root: str = TOPIC_ROOT) -> str:
    return lot_topic(lot_id, "acks", root)


def all_reads_filter(root: str = TOPIC_ROOT) -> str:
    """The service's subscription: every lot's reads."""
    return f"{check_topic_root(root)}/+/reads"


def shared(topic_filter: str, group: str | None) -> str:
    """``topic_filter`` as a shared subscription of ``group`` (``$share/GROUP/FILTER``:
    MQTT 5, and Mosquitto 2 and EMQX for MQTT 3.1.1 clients too): the broker hands each
    message to one of the group's sessions. ``None``: the filter itself."""
    if group is None:
        return topic_filter
    return f"$share/{check_group(group)}/{topic_filter}"


def check_group(group: str) -> str:
    """``group`` itself, or ``ValueError``: a shared subscription group is one topic level
    (not empty, no ``/``, ``+`` or ``#``)."""
    if not group or any(ch in group for ch in "/+#") or not group.isprintable():
        raise ValueError(f"invalid group {group!r}: one topic level, without / + #")
    return group


def lot_of_topic(topic: str, kind: TopicKind, root: str = TOPIC_ROOT) -> str | None:
    """The lot id of ``{root}/{lot}/{kind}``, or ``None`` for any other topic."""
    prefix = check_topic_root(root) + "/"
    suffix = "/" + kind
    if not (topic.startswith(prefix) and topic.endswith(suffix)):
        return None
    lot = topic[len(prefix) : len(topic) - len(suffix)]
    return lot if _LOT_ID.fullmatch(lot) else None


# ---------------------------------------------------------------------------- payloads


def format_rfc3339(ts: datetime) -> str:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError("ts must be timezone-aware")
    return ts.isoformat()


def encode_object(obj: dict[str, Any]) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate (a JSON \ud800 escape): keep it escaped
        return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def read_object(read: Read) -> dict[str, Any]:
    return {
        "read_id": read.read_id,
        "lot_id": read.lot_id,
        "camera_id": read.camera_id,
        "direction": read.direction.value,
        "plate": read.raw_plate,
        "confidence": read.confidence,
        "ts": format_rfc3339(read.ts),
    }


def encode_read(read: Read) -> bytes:
    return encode_object(read_object(read))


def encode_ack(read_id: str) -> bytes:
    return encode_object({"read_id": read_id})


def parse_ack(payload: bytes) -> str:
    """The read id of an ack message, or ``PayloadError``."""
    read_id = read_id_of(payload)
    if read_id is None:
        raise PayloadError("an ack must be a JSON object with a valid read_id")
    return read_id


# ---------------------------------------------------------------------------- logging


def mask_plate(raw: str) -> str:
    """A plate for logs: province and letter, one more character, the rest starred.

    ``"浙A·12345"`` -> ``"浙A·1****"``; ``"AB1234"`` -> ``"AB·1***"``; 3 characters or
    fewer are fully starred.
    """
    plate = normalize(raw) if isinstance(raw, str) else ""
    if not plate:
        return "<no plate>"
    if len(plate) <= 3:
        return "*" * len(plate)
    return f"{plate[:2]}·{plate[2]}{'*' * (len(plate) - 3)}"


# ---------------------------------------------------------------------------- service


@dataclass(frozen=True)
class AckPlan:
    """What the service sends once a read's transaction has committed: an ack to the
    gateway (``topic``/``payload``, or ``None``), then always the broker's PUBACK."""

    topic: str | None
    payload: bytes | None


def plan_ack(kind: str, read_id: str | None, topic_lot: str, root: str = TOPIC_ROOT) -> AckPlan:
    """Recorded and duplicate reads are acked to their gateway (a duplicate means the
    gateway missed an earlier ack); so are dead letters that have a read id, since
    resending them cannot help. ``ValueError`` for an unknown outcome kind."""
    if kind not in OUTCOME_KINDS:
        raise ValueError(f"unknown record outcome {kind!r}")
    if read_id is None:
        if kind != "dead_letter":
            raise ValueError(f"a {kind} outcome must carry the read id")
        return AckPlan(None, None)
    return AckPlan(acks_topic(topic_lot, root), encode_ack(read_id))


# ---------------------------------------------------------------------------- gateway


class SendWindow:
    """Which outbox reads a gateway (re)sends now.

    The caller passes the ``head``: the ids of the oldest ``size`` unacknowledged reads, in
    outbox order. A read is sent when it is in the head and was not sent in this connection,
    or was sent ``resend_after`` seconds ago or more without an ack. Reads are sent in
    outbox order, so the ones in flight are always the oldest pending: at most ``size`` are
    in flight, whatever the backlog. ``reset`` (on every new connection) makes every pending
    read due again.
    """

    def __init__(self, size: int = 100, resend_after: float = 10.0) -> None:
        if size < 1:
            raise ValueError("window size must be at least 1")
        if resend_after <= 0:
            raise ValueError("resend_after must be positive")
        self.size = size
        self.resend_after = resend_after
        self._sent_at: dict[str, float] = {}

    @property
    def in_flight(self) -> int:
        return len(self._sent_at)

    def reset(self) -> None:
        self._sent_at.clear()

    def acked(self, read_ids: Iterable[str]) -> None:
        for read_id in read_ids:
            self._sent_at.pop(read_id, None)

    def next_due(self, now: float) -> float:
        """Seconds from ``now`` until the earliest read in flight is due again (``inf``
        when none is in flight)."""
        if not self._sent_at:
            return math.inf
        return max(0.0, min(self._sent_at.values()) + self.resend_after - now)

    def due(self, head: Sequence[str], now: float) -> tuple[list[str], list[str]]:
        """``(first_sends, resends)`` among ``head``, recorded as sent at ``now``."""
        head = head[: self.size]
        current = set(head)
        for gone in [rid for rid in self._sent_at if rid not in current]:
            del self._sent_at[gone]  # acked elsewhere, or retired by another path
        first: list[str] = []
        again: list[str] = []
        for read_id in head:
            sent = self._sent_at.get(read_id)
            if sent is None:
                first.append(read_id)
            elif now - sent >= self.resend_after:
                again.append(read_id)
            else:
                continue
            self._sent_at[read_id] = now
        return first, again
