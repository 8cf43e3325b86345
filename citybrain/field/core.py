"""The field service's logic, without any I/O: messages in, one driving step per second, the
messages to publish out.

``FieldCore.handle`` takes each incoming message (topic and payload) as it arrives;
``FieldCore.tick(t)`` assembles the readings of the second that ends at ``t``, runs the
controller (wrapped in the ``EscortController``) and the envelopes through the same
``SignalDriver`` step as ``sim/``, and returns each intersection's state to publish. The
caller (``citybrain.field.service``) owns the broker connection and the clock.

Readings of one tick: each loop's counts are summed over the messages received since the
previous tick, its occupancy and each camera's counts are the latest message's; a detector
without a message in that second reads zero (the detector layer then sees it as quiet, and
as dead if it stays so). A detector message older than ``stale_after_s`` when it arrives is
dropped (a backlog after a reconnection says nothing about this second).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from citybrain.control.corridor import EscortRequest
from citybrain.control.drive import DriveStep, SignalDriver
from citybrain.control.envelope import EnvelopeTiming
from citybrain.control.escort import CorridorSource, EscortController, EscortMode, EscortSettings
from citybrain.control.port import Controller, GpsFix, Layout
from citybrain.errors import CitybrainError, ConfigError
from citybrain.field.protocol import (
    STATE_QOS,
    TOPIC_ROOT,
    DetectorReport,
    EscortCall,
    EscortCancel,
    EscortStatus,
    EscortStatusKind,
    FieldPayloadError,
    SignalState,
    check_level,
    check_root,
    decode_detectors,
    decode_escort,
    decode_gps,
    encode_state,
    encode_status,
    escort_status_topic,
    parse_topic,
    state_topic,
)

log = logging.getLogger("citybrain.field")


@dataclass(frozen=True, slots=True)
class Publish:
    """A message for the caller to publish."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class FieldSettings:
    stale_after_s: float = 5.0
    """Detector messages older than this on arrival are dropped."""
    request_max_age_s: float = 300.0
    """Escort requests (and cancellations) older than this on arrival are refused."""
    escort_expire_s: float = 600.0
    """An escort without a GPS fix for this long (or since its request) is ended."""

    def __post_init__(self) -> None:
        for name in ("stale_after_s", "request_max_age_s", "escort_expire_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"field.{name} must be a positive number, not {value}")


class FieldCore:
    """One controller and its envelopes, driven by field messages."""

    def __init__(
        self,
        layout: Layout,
        controller: Controller,
        corridor_of: CorridorSource,
        *,
        escort: EscortMode | str = EscortMode.CORRIDOR,
        envelope: EnvelopeTiming | None = None,
        escort_settings: EscortSettings | None = None,
        settings: FieldSettings | None = None,
        root: str = TOPIC_ROOT,
    ) -> None:
        if controller.signal_program is not None:
            raise ConfigError(
                f"controller {controller.name!r} runs inside the signal; the field service "
                "needs one whose requests go through the envelope"
            )
        self.root = check_root(root)
        self.layout = layout
        for x in layout.intersections:
            try:
                check_level(x.id, "intersection id")
            except ValueError as exc:
                raise ConfigError(f"{exc} (it names an MQTT topic level)") from None
        self.timing = envelope or EnvelopeTiming()
        self.settings = settings or FieldSettings()
        self.escort = EscortController(
            controller, escort, layout, corridor_of, self.timing, escort_settings
        )
        self.driver: SignalDriver | None = None
        """Created at the first tick (the envelopes start from its time)."""
        self._loop_index = {d.id: (i, d.intersection) for i, d in enumerate(layout.loops)}
        self._camera_index = {d.id: (i, d.intersection) for i, d in enumerate(layout.cameras)}
        self._known = {x.id for x in layout.intersections}
        n_loops, n_cams = len(layout.loops), len(layout.cameras)
        self._loop_count = np.zeros(n_loops, dtype=np.int64)
        self._loop_occ = np.zeros(n_loops, dtype=np.float64)
        self._cam_count = np.zeros(n_cams, dtype=np.int64)
        self._cam_queue = np.zeros(n_cams, dtype=np.int64)
        self._gps: list[GpsFix] = []
        self._last_fix: dict[str, float] = {}
        """Per escorted vehicle: when its last fix (or its request) arrived, service time."""
        self.counts: Counter[str] = Counter()
        """Messages handled by kind: detectors, gps, requests, cancels, stale, rejected."""
        self.last: DriveStep | None = None

    # ------------------------------------------------------------------ incoming messages

    def handle(self, topic: str, payload: bytes, now_s: float) -> list[Publish]:
        """Take one incoming message. A payload that breaks the contract raises
        ``FieldPayloadError`` (nothing of it is used); a topic the service does not read is
        ignored."""
        parsed = parse_topic(topic, self.root)
        if parsed is None:
            return []
        kind, key = parsed
        try:
            if kind == "detectors":
                self._detectors(decode_detectors(payload, key), now_s)
                return []
            if kind == "gps":
                fix = decode_gps(payload, key)
                self._gps.append(fix)
                if fix.vehicle in self._last_fix:
                    self._last_fix[fix.vehicle] = now_s
                self.counts["gps"] += 1
                return []
            return self._escort_message(decode_escort(payload), now_s)
        except FieldPayloadError:
            self.counts["rejected"] += 1
            raise

    def _detectors(self, report: DetectorReport, now_s: float) -> None:
        if report.intersection not in self._known:
            raise FieldPayloadError("", f"no intersection {report.intersection!r} in the net")
        for key in report.loops:
            found = self._loop_index.get(key)
            if found is None or found[1] != report.intersection:
                raise FieldPayloadError(
                    f"loops.{key}", f"not a loop of intersection {report.intersection}"
                )
        for key in report.cameras:
            found = self._camera_index.get(key)
            if found is None or found[1] != report.intersection:
                raise FieldPayloadError(
                    f"cameras.{key}", f"not a camera of intersection {report.intersection}"
                )
        if now_s - report.ts > self.settings.stale_after_s:
            self.counts["stale"] += 1
            return
        for key, loop in report.loops.items():
            i = self._loop_index[key][0]
            self._loop_count[i] += loop.count
            self._loop_occ[i] = loop.occupancy
        for key, cam in report.cameras.items():
            i = self._camera_index[key][0]
            self._cam_count[i] = cam.count
            self._cam_queue[i] = cam.queue
        self.counts["detectors"] += 1

    def _escort_message(self, message: EscortCall | EscortCancel, now_s: float) -> list[Publish]:
        vehicle = message.vehicle
        if message.ts is not None and now_s - message.ts > self.settings.request_max_age_s:
            self.counts["stale"] += 1
            return [self._status(vehicle, now_s, "rejected", reason="request too old")]
        if isinstance(message, EscortCancel):
            self.counts["cancels"] += 1
            if vehicle not in self.escort.escorts:
                return [self._status(vehicle, now_s, "cancelled", reason="no active escort")]
            self.escort.finish(vehicle, now_s)
            self._last_fix.pop(vehicle, None)
            return [self._status(vehicle, now_s, "cancelled")]
        self.counts["requests"] += 1
        request = _request(message, now_s)
        try:
            self.escort.request(request)
        except CitybrainError as exc:  # a route the net does not have
            log.warning("escort request for %s refused: %s", vehicle, exc)
            return [self._status(vehicle, now_s, "rejected", reason=str(exc))]
        self._last_fix[vehicle] = now_s
        signals = tuple(s.intersection for s in self.escort.escorts[vehicle].corridor.signals)
        log.info("escorting %s through %s", vehicle, ", ".join(signals) or "no signal")
        return [self._status(vehicle, now_s, "active", signals)]

    # ------------------------------------------------------------------ one second

    def tick(self, t: float) -> list[Publish]:
        """Run the second that ends at ``t``: readings, decision, envelopes; the states."""
        if self.driver is None:
            self.driver = SignalDriver(self.escort, self.layout.intersections, self.timing, t)
        gps = tuple(sorted(self._gps, key=lambda f: f.time_s))
        readings = self.driver.readings(
            t,
            self._loop_count.copy(),
            self._loop_occ.copy(),
            self._cam_count.copy(),
            self._cam_queue.copy(),
            gps,
        )
        self._gps.clear()
        self._loop_count[:] = 0
        self._loop_occ[:] = 0.0
        self._cam_count[:] = 0
        self._cam_queue[:] = 0
        step = self.driver.step(readings)
        self.last = step
        out = [
            Publish(
                state_topic(o.intersection, self.root),
                encode_state(
                    SignalState(o.intersection, t, o.state, o.phase, o.hold, o.in_clearance)
                ),
                STATE_QOS,
                retain=True,
            )
            for o in step.outputs
        ]
        out.extend(self._end_escorts(t))
        return out

    def _end_escorts(self, t: float) -> list[Publish]:
        out = []
        for vehicle, escort in list(self.escort.escorts.items()):
            through = escort.tracker.started and escort.passed >= len(escort.corridor.signals)
            silent = t - self._last_fix.get(vehicle, t) > self.settings.escort_expire_s
            if not (through or silent):
                continue
            self.escort.finish(vehicle, t)
            self._last_fix.pop(vehicle, None)
            kind: EscortStatusKind = "ended" if through else "expired"
            reason = "" if through else f"no GPS fix for {self.settings.escort_expire_s:g} s"
            out.append(self._status(vehicle, t, kind, reason=reason))
        return out

    def _status(
        self,
        vehicle: str,
        ts: float,
        kind: EscortStatusKind,
        signals: tuple[str, ...] = (),
        reason: str = "",
    ) -> Publish:
        return Publish(
            escort_status_topic(vehicle, self.root),
            encode_status(EscortStatus(vehicle, ts, kind, signals, reason)),
        )

    @property
    def states(self) -> Mapping[str, str]:
        """What each intersection shows since the last tick."""
        return {} if self.last is None else self.last.states


def _request(message: EscortCall, now_s: float) -> EscortRequest:
    return EscortRequest(
        message.vehicle,
        message.route,
        message.priority,
        message.ts if message.ts is not None else now_s,
    )
