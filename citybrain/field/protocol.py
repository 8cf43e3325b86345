"""The field's wire contract, without any I/O: topics, payloads, encode and decode.

Topics (``root`` defaults to ``citybrain``)::

    {root}/signals/{x}/detectors    cabinet -> service, QoS 0, every second: loop and camera counts
    {root}/signals/{x}/shown        cabinet -> anyone, QoS 1, retained, every second: what the
                                    signal actually shows, its mode (local or remote) and lease
    {root}/signals/{x}/events       cabinet -> anyone, QoS 1: refusals, fallbacks, grants, denials
    {root}/signals/{x}/command      service -> cabinet, QoS 1, never retained: a state to show
                                    (under a lease), a claim of the lease, or its release
    {root}/escort/requests          dispatcher -> service, QoS 1 (request or cancel)
    {root}/escort/{vehicle}/gps     vehicle -> service, 1 Hz
    {root}/escort/{vehicle}/status  service -> dispatcher, QoS 1
    {root}/control/services/{id}    one service's liveness, QoS 1, retained (and its will)
    {root}/clock                    SUMO-in-the-loop host -> services: the simulated second

The lease (one controller per signal). A cabinet obeys one service at a time, named with an
epoch that grows by one at every grant. A service that wants a signal sends a claim; a
cabinet with no live holder grants it when it shows a phase's green (a claim that arrives in
a change interval waits for the green), reports the grant (``shown``: ``holder``, ``epoch``;
``mode`` stays what it was) and an event ``granted``, and keeps that green as it is until
the holder's first command. The service resumes from the shown phase and its green start and
sends commands with that epoch; the first valid one puts the cabinet in ``mode: remote``. A
claim from the holder itself (a restarted service with the same id) is answered with the
same lease (event ``granted``, same epoch): it resumes from what the cabinet shows. Service
ids must be unique. A claim while another service holds a live lease is answered by an event
``denied`` naming the holder, unless the holder sent no valid command for the cabinet's
``handover_after_s`` (a hot standby then takes over). No valid command from the holder for
the watchdog time (the cabinet's own clock, so a service's clock may be off) ends the lease:
the cabinet falls back to its local plan through a change interval (event ``fallback``). A
``release`` ends it at once. Commands of another service or another epoch are ignored (event
``refused``, reason ``not the holder``); a command no newer than the last one taken is
dropped (duplicates, reordering).

Every payload is one JSON object (UTF-8); ``ts`` is seconds since the Unix epoch (a number;
in SUMO-in-the-loop, the simulated second). Unknown extra fields are ignored. A payload that
breaks the contract raises ``FieldPayloadError`` naming the field
(``loops.cb_s_x_0.count: ...``). Nothing here opens a socket or reads a clock.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from citybrain.control.port import GpsFix

TOPIC_ROOT = "citybrain"
REQUEST_QOS = 1
COMMAND_QOS = 1
SHOWN_QOS = 1
EVENT_QOS = 1


class FieldPayloadError(ValueError):
    """A message that breaks the wire contract; ``field`` names the offending field."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}" if field_name else problem)
        self.field = field_name


# ---------------------------------------------------------------------------- topics


_NOT_IN_LEVEL = re.compile("[/+#\0]")


def check_level(name: str, what: str = "topic level") -> str:
    """``name`` itself, or ``ValueError`` if it cannot be one MQTT topic level."""
    if not isinstance(name, str) or not name or _NOT_IN_LEVEL.search(name):
        raise ValueError(f"invalid {what} {name!r}: it must be non-empty, without / + #")
    return name


@functools.lru_cache(maxsize=64)
def check_root(root: str) -> str:
    """``root`` itself, or ``ValueError`` if it has wildcards or empty levels (a root found
    good is remembered: topics are built and parsed with it thousands of times a second)."""
    if not root:
        raise ValueError("empty topic root")
    for level in root.split("/"):
        check_level(level, "topic root level")
    return root


def detectors_topic(intersection: str, root: str = TOPIC_ROOT) -> str:
    return f"{check_root(root)}/signals/{check_level(intersection, 'intersection id')}/detectors"


def shown_topic(intersection: str, root: str = TOPIC_ROOT) -> str:
    return f"{check_root(root)}/signals/{check_level(intersection, 'intersection id')}/shown"


def events_topic(intersection: str, root: str = TOPIC_ROOT) -> str:
    return f"{check_root(root)}/signals/{check_level(intersection, 'intersection id')}/events"


def command_topic(intersection: str, root: str = TOPIC_ROOT) -> str:
    return f"{check_root(root)}/signals/{check_level(intersection, 'intersection id')}/command"


def service_topic(service: str, root: str = TOPIC_ROOT) -> str:
    return f"{check_root(root)}/control/services/{check_level(service, 'service id')}"


def clock_topic(root: str = TOPIC_ROOT) -> str:
    return f"{check_root(root)}/clock"


def cabinet_subscriptions(intersection: str, root: str = TOPIC_ROOT) -> tuple[tuple[str, int], ...]:
    """What one cabinet subscribes to: its own commands, nothing else."""
    return ((command_topic(intersection, root), COMMAND_QOS),)


def requests_topic(root: str = TOPIC_ROOT) -> str:
    return f"{check_root(root)}/escort/requests"


def gps_topic(vehicle: str, root: str = TOPIC_ROOT) -> str:
    return f"{check_root(root)}/escort/{check_level(vehicle, 'vehicle id')}/gps"


def escort_status_topic(vehicle: str, root: str = TOPIC_ROOT) -> str:
    return f"{check_root(root)}/escort/{check_level(vehicle, 'vehicle id')}/status"


def subscriptions(
    root: str = TOPIC_ROOT, signals: tuple[str, ...] | None = None
) -> tuple[tuple[str, int], ...]:
    """What a service subscribes to, with the QoS: detectors and GPS at 0 (a late second is
    worth nothing, a newer one follows), the rest at 1. ``signals``: the intersections of its
    shard, each subscribed by name (None: every intersection, by wildcard)."""
    r = check_root(root)
    names = ("+",) if signals is None else tuple(check_level(x, "intersection id") for x in signals)
    per_signal = [
        (f"{r}/signals/{x}/{kind}", qos)
        for x in names
        for kind, qos in (("detectors", 0), ("shown", SHOWN_QOS), ("events", EVENT_QOS))
    ]
    return (
        *per_signal,
        (f"{r}/escort/+/gps", 0),
        (requests_topic(r), REQUEST_QOS),
        (f"{r}/control/services/+", 1),
        (clock_topic(r), 1),
    )


TopicKind = Literal["detectors", "shown", "events", "gps", "requests", "service", "clock"]
_SIGNAL_KINDS: dict[str, TopicKind] = {
    "detectors": "detectors",
    "shown": "shown",
    "events": "events",
}


def parse_topic(topic: str, root: str = TOPIC_ROOT) -> tuple[TopicKind, str] | None:
    """What an incoming topic carries, with its intersection, vehicle or service ('' for
    requests and the clock); ``None`` for a topic a service does not read."""
    prefix = check_root(root) + "/"
    if not topic.startswith(prefix):
        return None
    levels = topic[len(prefix) :].split("/")
    if len(levels) == 3 and levels[0] == "signals" and levels[1]:
        kind = _SIGNAL_KINDS.get(levels[2])
        return None if kind is None else (kind, levels[1])
    if len(levels) == 3 and levels[0] == "escort" and levels[2] == "gps" and levels[1]:
        return "gps", levels[1]
    if len(levels) == 3 and levels[:2] == ["control", "services"] and levels[2]:
        return "service", levels[2]
    if levels == ["escort", "requests"]:
        return "requests", ""
    if levels == ["clock"]:
        return "clock", ""
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


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _object(payload: bytes) -> dict[str, Any]:
    try:
        obj = _DECODER.decode(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise FieldPayloadError("", "not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise FieldPayloadError("", f"not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise FieldPayloadError("", "not a JSON object")
    return obj


def _encode(obj: Mapping[str, Any]) -> bytes:
    return _ENCODER.encode(obj).encode()


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
        # the common case first (a service reads a thousand of these a second): an integer
        # count and an occupancy in [0, 1]; anything else is judged field by field
        count, occupancy = entry.get("count"), entry.get("occupancy")
        if (
            type(count) is int
            and count >= 0
            and type(occupancy) in _NUMBER_TYPES
            and 0.0 <= occupancy <= 1.0
        ):
            loops[key] = LoopReading(count, float(occupancy))
            continue
        path = f"loops.{key}"
        occupancy = _number(entry, "occupancy", f"{path}.occupancy")
        if not 0.0 <= occupancy <= 1.0:
            raise FieldPayloadError(f"{path}.occupancy", f"must be from 0 to 1, not {occupancy}")
        loops[key] = LoopReading(_count(entry, "count", f"{path}.count"), occupancy)
    cameras: dict[str, CameraReading] = {}
    for key, entry in _table(obj, "cameras").items():
        count, queue = entry.get("count"), entry.get("queue")
        if type(count) is int and type(queue) is int and count >= 0 and queue >= 0:
            cameras[key] = CameraReading(count, queue)
            continue
        path = f"cameras.{key}"
        cameras[key] = CameraReading(
            _count(entry, "count", f"{path}.count"), _count(entry, "queue", f"{path}.queue")
        )
    return DetectorReport(intersection, ts, loops, cameras)


_NUMBER_TYPES = (int, float)


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
    """A service's liveness (``control/services/{id}``): ``online`` and what it reports."""
    obj: dict[str, Any] = {"online": online}
    if ts is not None:
        obj["ts"] = ts
    obj.update(info)
    return _encode(obj)


def decode_service_status(payload: bytes) -> bool:
    """Whether a service's liveness message says it is online (other fields ignored)."""
    obj = _object(payload)
    if "online" not in obj:
        raise FieldPayloadError("online", "missing")
    return _flag(obj, "online")


@dataclass(frozen=True, slots=True)
class Liveness:
    """What a SUMO-in-the-loop host needs of a service's liveness message: whether it is
    online, and the lockstep tick (of which run) it has finished, if any."""

    service: str
    online: bool
    tick: float | None = None
    run: str | None = None
    instance: str | None = None
    """The nonce of the process (two processes under one service id must not both run)."""
    started: float | None = None
    """When that process started (the younger of two under one id stops)."""


def decode_liveness(payload: bytes, topic_service: str) -> Liveness:
    obj = _object(payload)
    online = decode_service_status(payload)
    tick = None if obj.get("tick") is None else _number(obj, "tick")
    run = obj.get("run")
    if run is not None and not isinstance(run, str):
        raise FieldPayloadError("run", "must be a string")
    instance = obj.get("instance")
    if instance is not None and not isinstance(instance, str):
        raise FieldPayloadError("instance", "must be a string")
    started = None if obj.get("started") is None else _number(obj, "started")
    return Liveness(topic_service, online, tick, run, instance or None, started)


# ---------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Command:
    """A state for a cabinet to show from ``ts`` on, under the lease ``(service, epoch)``."""

    intersection: str
    service: str
    epoch: int
    ts: float
    state: str
    phase: int
    """The green phase shown, or the one the change interval leads to."""
    hold: bool = False
    clearance: bool = False


@dataclass(frozen=True, slots=True)
class Claim:
    """A service asks a cabinet for its lease."""

    intersection: str
    service: str
    ts: float


@dataclass(frozen=True, slots=True)
class Release:
    """The holder gives a lease back (a service that stops): the cabinet goes local at once."""

    intersection: str
    service: str
    epoch: int
    ts: float


CommandMessage = Command | Claim | Release


def encode_command(message: CommandMessage) -> bytes:
    obj: dict[str, Any] = {"service": message.service, "ts": message.ts}
    if isinstance(message, Claim):
        obj["claim"] = True
    elif isinstance(message, Release):
        obj["release"] = True
        obj["epoch"] = message.epoch
    else:
        obj.update(
            epoch=message.epoch,
            state=message.state,
            phase=message.phase,
            hold=message.hold,
            clearance=message.clearance,
        )
    return _encode(obj)


def _link_states(obj: Mapping[str, Any], name: str) -> str:
    state = _text(obj, name)
    if not all(c in "rRyYgGuoOs" for c in state):
        raise FieldPayloadError(name, f"has letters that are not link states: {state!r}")
    return state


def _index(obj: Mapping[str, Any], name: str) -> int:
    value = obj.get(name)
    if name not in obj:
        raise FieldPayloadError(name, "missing")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FieldPayloadError(name, f"must be an integer >= 0, not {value!r}")
    return value


def _flag(obj: Mapping[str, Any], name: str) -> bool:
    value = obj.get(name, False)
    if not isinstance(value, bool):
        raise FieldPayloadError(name, "must be true or false")
    return value


def decode_command(payload: bytes, intersection: str) -> CommandMessage:
    """A message of a cabinet's command topic (``intersection`` comes from the topic)."""
    obj = _object(payload)
    service = _level(obj, "service")
    ts = _number(obj, "ts")
    claim, release = _flag(obj, "claim"), _flag(obj, "release")
    if claim and release:
        raise FieldPayloadError("claim", "a message is a claim or a release, not both")
    if claim:
        return Claim(intersection, service, ts)
    epoch = _index(obj, "epoch")
    if release:
        return Release(intersection, service, epoch, ts)
    return Command(
        intersection,
        service,
        epoch,
        ts,
        _link_states(obj, "state"),
        _index(obj, "phase"),
        _flag(obj, "hold"),
        _flag(obj, "clearance"),
    )


# ---------------------------------------------------------------------------- what a cabinet shows

CabinetMode = Literal["local", "remote"]
CABINET_MODES: tuple[str, ...] = ("local", "remote")


@dataclass(frozen=True, slots=True)
class Shown:
    """What one signal shows from ``ts`` on, by its cabinet's own report."""

    intersection: str
    ts: float
    state: str
    phase: int | None
    """The green phase shown, or the one a change interval leads to; None if unknown."""
    clearance: bool
    green_since: float | None
    """When the green phase shown began (None in a change interval)."""
    mode: CabinetMode
    """``local``: the cabinet's own plan; ``remote``: the holder's commands."""
    holder: str | None
    """The service holding the lease (granted and not yet used, while ``mode`` is local)."""
    epoch: int
    refusals: int = 0
    """Commands refused by the cabinet's monitor since it started."""
    fallbacks: int = 0
    """Times it went to its local plan since it started."""


def encode_shown(shown: Shown) -> bytes:
    return _encode(
        {
            "ts": shown.ts,
            "state": shown.state,
            "phase": shown.phase,
            "clearance": shown.clearance,
            "green_since": shown.green_since,
            "mode": shown.mode,
            "holder": shown.holder,
            "epoch": shown.epoch,
            "refusals": shown.refusals,
            "fallbacks": shown.fallbacks,
        }
    )


def decode_shown(payload: bytes, intersection: str) -> Shown:
    obj = _object(payload)
    mode = obj.get("mode")
    if mode not in CABINET_MODES:
        raise FieldPayloadError("mode", f"must be one of {', '.join(CABINET_MODES)}")
    phase = None if obj.get("phase") is None else _index(obj, "phase")
    since = None if obj.get("green_since") is None else _number(obj, "green_since")
    holder = obj.get("holder")
    if holder is not None:
        holder = _level(obj, "holder")
    counts = [_count(obj, name, name) if name in obj else 0 for name in ("refusals", "fallbacks")]
    kind: CabinetMode = mode
    return Shown(
        intersection,
        _number(obj, "ts"),
        _link_states(obj, "state"),
        phase,
        _flag(obj, "clearance"),
        since,
        kind,
        holder,
        _index(obj, "epoch"),
        counts[0],
        counts[1],
    )


CabinetEventKind = Literal["refused", "fallback", "granted", "denied", "released", "remote"]
CABINET_EVENTS: tuple[str, ...] = ("refused", "fallback", "granted", "denied", "released", "remote")


@dataclass(frozen=True, slots=True)
class CabinetEvent:
    """Something a cabinet decided: a refused command (``reason`` says which rule), a
    fallback to its local plan, a lease granted, denied or released, control handed over
    (``remote``: the first command of a new lease taken)."""

    intersection: str
    ts: float
    kind: CabinetEventKind
    service: str = ""
    epoch: int = 0
    reason: str = ""


def encode_event(event: CabinetEvent) -> bytes:
    return _encode(
        {
            "ts": event.ts,
            "kind": event.kind,
            "service": event.service,
            "epoch": event.epoch,
            "reason": event.reason,
        }
    )


def decode_event(payload: bytes, intersection: str) -> CabinetEvent:
    obj = _object(payload)
    kind = obj.get("kind")
    if kind not in CABINET_EVENTS:
        raise FieldPayloadError("kind", f"must be one of {', '.join(CABINET_EVENTS)}")
    service = obj.get("service", "")
    reason = obj.get("reason", "")
    if not isinstance(service, str) or not isinstance(reason, str):
        raise FieldPayloadError(
            "service" if not isinstance(service, str) else "reason", "must be a string"
        )
    epoch = _index(obj, "epoch") if "epoch" in obj else 0
    event_kind: CabinetEventKind = kind
    return CabinetEvent(intersection, _number(obj, "ts"), event_kind, service, epoch, reason)


# ---------------------------------------------------------------------------- the lockstep clock


@dataclass(frozen=True, slots=True)
class ClockTick:
    """SUMO-in-the-loop, lockstep: every cabinet's readings of second ``t`` are published;
    services answer with their commands for ``t`` (the run waits for them)."""

    t: float
    run: str
    """The run's id (a service follows one run at a time)."""


def encode_tick(tick: ClockTick) -> bytes:
    return _encode({"t": tick.t, "run": tick.run})


def decode_tick(payload: bytes) -> ClockTick:
    obj = _object(payload)
    return ClockTick(_number(obj, "t"), _text(obj, "run"))
