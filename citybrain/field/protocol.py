"""The field service's wire contract, without any I/O: topics, payloads, encode and decode.

Topics (``root`` defaults to ``citybrain``)::

    {root}/signals/{intersection}/detectors  roadside unit -> service, every second
    {root}/signals/{intersection}/state      service -> signal, QoS 1, retained, every second
    {root}/escort/requests                   dispatcher -> service, QoS 1 (request or cancel)
    {root}/escort/{vehicle}/gps              vehicle -> service, 1 Hz
    {root}/escort/{vehicle}/status           service -> dispatcher, QoS 1
    {root}/control/status                    service liveness, QoS 1, retained (and the will)

Every payload is one JSON object (UTF-8); ``ts`` is seconds since the Unix epoch (a number).
Unknown extra fields are ignored. A payload that breaks the contract raises
``FieldPayloadError`` naming the field (``loops.cb_s_x_0.count: ...``). Nothing here opens a
socket or reads a clock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from citybrain.control.port import GpsFix

TOPIC_ROOT = "citybrain"
STATE_QOS = 1
REQUEST_QOS = 1


class FieldPayloadError(ValueError):
    """A message that breaks the wire contract; ``field`` names the offending field."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}" if field_name else problem)
        self.field = field_name


# ---------------------------------------------------------------------------- topics


def check_level(name: str, what: str = "topic level") -> str:
    """``name`` itself, or ``ValueError`` if it cannot be one MQTT topic level."""
    if not isinstance(name, str) or not name or any(c in name for c in "/+#\0"):
        raise ValueError(f"invalid {what} {name!r}: it must be non-empty, without / + #")
    return name


def check_root(root: str) -> str:
    """``root`` itself, or ``ValueError`` if it has wildcards or empty levels."""
    if not root:
        raise ValueError("empty topic root")
    for level in root.split("/"):
        check_level(level, "topic root level")
    return root


def detectors_topic(intersection: str, root: str = TOPIC_ROOT) -> str:
    return f"{check_root(root)}/signals/{check_level(intersection, 'intersection id')}/detectors"


def state_topic(intersection: str, root: str = TOPIC_ROOT) -> str:
    return f"{check_root(root)}/signals/{check_level(intersection, 'intersection id')}/state"


def requests_topic(root: str = TOPIC_ROOT) -> str:
    return f"{check_root(root)}/escort/requests"


def gps_topic(vehicle: str, root: str = TOPIC_ROOT) -> str:
    return f"{check_root(root)}/escort/{check_level(vehicle, 'vehicle id')}/gps"


def escort_status_topic(vehicle: str, root: str = TOPIC_ROOT) -> str:
    return f"{check_root(root)}/escort/{check_level(vehicle, 'vehicle id')}/status"


def service_status_topic(root: str = TOPIC_ROOT) -> str:
    return f"{check_root(root)}/control/status"


def subscriptions(root: str = TOPIC_ROOT) -> tuple[tuple[str, int], ...]:
    """What the service subscribes to, with the QoS: detectors and GPS at 0 (a late second
    is worth nothing, a newer one follows), requests at 1."""
    r = check_root(root)
    return (
        (f"{r}/signals/+/detectors", 0),
        (f"{r}/escort/+/gps", 0),
        (requests_topic(r), REQUEST_QOS),
    )


TopicKind = Literal["detectors", "gps", "requests"]


def parse_topic(topic: str, root: str = TOPIC_ROOT) -> tuple[TopicKind, str] | None:
    """What an incoming topic carries, with its intersection or vehicle ('' for requests);
    ``None`` for a topic the service does not read."""
    prefix = check_root(root) + "/"
    if not topic.startswith(prefix):
        return None
    levels = topic[len(prefix) :].split("/")
    if len(levels) == 3 and levels[0] == "signals" and levels[2] == "detectors" and levels[1]:
        return "detectors", levels[1]
    if len(levels) == 3 and levels[0] == "escort" and levels[2] == "gps" and levels[1]:
        return "gps", levels[1]
    if levels == ["escort", "requests"]:
        return "requests", ""
    return None


# ---------------------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class LoopReading:
    count: int
    """Vehicles counted since the unit's previous message."""
    occupancy: float
    """Fraction of the last interval the loop was occupied (0..1)."""


@dataclass(frozen=True, slots=True)
class CameraReading:
    count: int
    """Vehicles seen in the zone."""
    queue: int
    """Of them, those seen standing."""


@dataclass(frozen=True)
class DetectorReport:
    """One roadside unit's message: its intersection's detectors, by detector id."""

    intersection: str
    ts: float
    loops: Mapping[str, LoopReading] = field(default_factory=dict)
    cameras: Mapping[str, CameraReading] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EscortCall:
    """Ask for an escort along ``route`` (edge ids, in order)."""

    vehicle: str
    route: tuple[str, ...]
    priority: int = 1
    ts: float | None = None


@dataclass(frozen=True, slots=True)
class EscortCancel:
    vehicle: str
    ts: float | None = None


@dataclass(frozen=True, slots=True)
class SignalState:
    """What one intersection shows from ``ts`` on."""

    intersection: str
    ts: float
    state: str
    phase: int
    hold: bool
    clearance: bool = False


EscortStatusKind = Literal["active", "rejected", "cancelled", "ended", "expired"]
ESCORT_STATUSES: tuple[str, ...] = ("active", "rejected", "cancelled", "ended", "expired")


@dataclass(frozen=True, slots=True)
class EscortStatus:
    vehicle: str
    ts: float
    status: EscortStatusKind
    signals: tuple[str, ...] = ()
    """The signals of the corridor, in route order (``active``)."""
    reason: str = ""


# ---------------------------------------------------------------------------- helpers


def _reject_constant(name: str) -> float:
    raise FieldPayloadError("", f"not JSON: {name} is not a number")


def _object(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise FieldPayloadError("", "not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise FieldPayloadError("", f"not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise FieldPayloadError("", "not a JSON object")
    return obj


def _encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _number(obj: Mapping[str, Any], name: str, path: str | None = None) -> float:
    where = path or name
    if name not in obj:
        raise FieldPayloadError(where, "missing")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldPayloadError(where, f"must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise FieldPayloadError(where, "must be finite")
    return float(value)


def _count(obj: Mapping[str, Any], name: str, path: str) -> int:
    value = obj.get(name)
    if name not in obj:
        raise FieldPayloadError(path, "missing")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FieldPayloadError(path, f"must be an integer >= 0, not {value!r}")
    return value


def _text(obj: Mapping[str, Any], name: str) -> str:
    if name not in obj:
        raise FieldPayloadError(name, "missing")
    value = obj[name]
    if not isinstance(value, str) or not value:
        raise FieldPayloadError(name, "must be a non-empty string")
    return value


def _level(obj: Mapping[str, Any], name: str) -> str:
    value = _text(obj, name)
    try:
        return check_level(value, name)
    except ValueError as exc:
        raise FieldPayloadError(name, str(exc)) from None


def _optional_ts(obj: Mapping[str, Any]) -> float | None:
    return None if obj.get("ts") is None else _number(obj, "ts")


def _table(obj: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = obj.get(name, {})
    if not isinstance(value, dict):
        raise FieldPayloadError(name, "must be an object keyed by detector id")
    for key, entry in value.items():
        if not isinstance(entry, dict):
            raise FieldPayloadError(f"{name}.{key}", "must be an object")
    return value


# ---------------------------------------------------------------------------- detectors


def encode_detectors(report: DetectorReport) -> bytes:
    return _encode(
        {
            "ts": report.ts,
            "loops": {
                k: {"count": v.count, "occupancy": v.occupancy} for k, v in report.loops.items()
            },
            "cameras": {k: {"count": v.count, "queue": v.queue} for k, v in report.cameras.items()},
        }
    )


def decode_detectors(payload: bytes, intersection: str) -> DetectorReport:
    """A roadside unit's message (``intersection`` comes from its topic)."""
    obj = _object(payload)
    ts = _number(obj, "ts")
    loops: dict[str, LoopReading] = {}
    for key, entry in _table(obj, "loops").items():
        path = f"loops.{key}"
        occupancy = _number(entry, "occupancy", f"{path}.occupancy")
        if not 0.0 <= occupancy <= 1.0:
            raise FieldPayloadError(f"{path}.occupancy", f"must be from 0 to 1, not {occupancy}")
        loops[key] = LoopReading(_count(entry, "count", f"{path}.count"), occupancy)
    cameras: dict[str, CameraReading] = {}
    for key, entry in _table(obj, "cameras").items():
        path = f"cameras.{key}"
        cameras[key] = CameraReading(
            _count(entry, "count", f"{path}.count"), _count(entry, "queue", f"{path}.queue")
        )
    return DetectorReport(intersection, ts, loops, cameras)


# ---------------------------------------------------------------------------- GPS


def encode_gps(fix: GpsFix) -> bytes:
    return _encode(
        {
            "vehicle": fix.vehicle,
            "ts": fix.time_s,
            "x": fix.x,
            "y": fix.y,
            "speed_mps": fix.speed_mps,
        }
    )


def decode_gps(payload: bytes, topic_vehicle: str | None = None) -> GpsFix:
    """A GPS fix; ``x``/``y`` are metres in the net's coordinates. The payload's vehicle must
    be its topic's."""
    obj = _object(payload)
    vehicle = _level(obj, "vehicle")
    if topic_vehicle is not None and vehicle != topic_vehicle:
        raise FieldPayloadError(
            "vehicle", f"{vehicle!r} differs from the topic's {topic_vehicle!r}"
        )
    speed = _number(obj, "speed_mps")
    if speed < 0:
        raise FieldPayloadError("speed_mps", f"must not be negative, not {speed}")
    return GpsFix(vehicle, _number(obj, "ts"), _number(obj, "x"), _number(obj, "y"), speed)


# ---------------------------------------------------------------------------- escort requests


def encode_call(call: EscortCall) -> bytes:
    obj: dict[str, Any] = {
        "vehicle": call.vehicle,
        "route": list(call.route),
        "priority": call.priority,
    }
    if call.ts is not None:
        obj["ts"] = call.ts
    return _encode(obj)


def encode_cancel(cancel: EscortCancel) -> bytes:
    obj: dict[str, Any] = {"vehicle": cancel.vehicle, "cancel": True}
    if cancel.ts is not None:
        obj["ts"] = cancel.ts
    return _encode(obj)


def decode_escort(payload: bytes) -> EscortCall | EscortCancel:
    """A message of the requests topic: a request, or (``"cancel": true``) a cancellation."""
    obj = _object(payload)
    vehicle = _level(obj, "vehicle")
    cancel = obj.get("cancel", False)
    if not isinstance(cancel, bool):
        raise FieldPayloadError("cancel", "must be true or false")
    ts = _optional_ts(obj)
    if cancel:
        return EscortCancel(vehicle, ts)
    route = obj.get("route")
    if "route" not in obj:
        raise FieldPayloadError("route", "missing")
    if not isinstance(route, list) or not route:
        raise FieldPayloadError("route", "must be a non-empty list of edge ids")
    for k, edge in enumerate(route):
        if not isinstance(edge, str) or not edge:
            raise FieldPayloadError(f"route[{k}]", "must be a non-empty string")
    priority = obj.get("priority", 1)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise FieldPayloadError("priority", f"must be an integer, not {priority!r}")
    return EscortCall(vehicle, tuple(route), priority, ts)


# ---------------------------------------------------------------------------- signal states


def encode_state(state: SignalState) -> bytes:
    return _encode(
        {
            "ts": state.ts,
            "state": state.state,
            "phase": state.phase,
            "hold": state.hold,
            "clearance": state.clearance,
        }
    )


def decode_state(payload: bytes, intersection: str) -> SignalState:
    obj = _object(payload)
    state = _text(obj, "state")
    if not all(c in "rRyYgGuoOs" for c in state):
        raise FieldPayloadError("state", f"has letters that are not link states: {state!r}")
    phase = obj.get("phase")
    if isinstance(phase, bool) or not isinstance(phase, int) or phase < 0:
        raise FieldPayloadError("phase", f"must be an integer >= 0, not {phase!r}")
    flags = []
    for name in ("hold", "clearance"):
        value = obj.get(name, False)
        if not isinstance(value, bool):
            raise FieldPayloadError(name, "must be true or false")
        flags.append(value)
    return SignalState(intersection, _number(obj, "ts"), state, phase, flags[0], flags[1])


# ---------------------------------------------------------------------------- escort status


def encode_status(status: EscortStatus) -> bytes:
    return _encode(
        {
            "vehicle": status.vehicle,
            "ts": status.ts,
            "status": status.status,
            "signals": list(status.signals),
            "reason": status.reason,
        }
    )


def decode_status(payload: bytes) -> EscortStatus:
    obj = _object(payload)
    vehicle = _text(obj, "vehicle")
    status = obj.get("status")
    if status not in ESCORT_STATUSES:
        raise FieldPayloadError("status", f"must be one of {', '.join(ESCORT_STATUSES)}")
    signals = obj.get("signals", [])
    if not isinstance(signals, list) or not all(isinstance(s, str) for s in signals):
        raise FieldPayloadError("signals", "must be a list of intersection ids")
    reason = obj.get("reason", "")
    if not isinstance(reason, str):
        raise FieldPayloadError("reason", "must be a string")
    kind: EscortStatusKind = status
    return EscortStatus(vehicle, _number(obj, "ts"), kind, tuple(signals), reason)


def encode_service_status(online: bool, ts: float | None = None, **info: Any) -> bytes:
    obj: dict[str, Any] = {"online": online}
    if ts is not None:
        obj["ts"] = ts
    obj.update(info)
    return _encode(obj)
