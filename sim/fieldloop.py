"""SUMO as the field: one cabinet per signal, speaking MQTT to a control service elsewhere.

``FieldLoop`` hosts a ``CabinetCore`` for every controlled signal of a run (each with its own
detectors, monitor, watchdog and local plan, exactly as ``citybrain cabinet run`` does) and
exchanges the field's messages with whatever ``citybrain control serve`` runs on the broker.
Every second of the simulation:

1. each cabinet publishes what its detectors read (SUMO's detectors through the run's sensor
   model) and what it shows; escorted vehicles publish their GPS fixes and escort requests;
2. ``lockstep`` (the default): the host publishes the clock tick and waits, wall clock,
   until every online service has finished that second (its liveness message names the tick;
   what it sent before, commands and claims, has then arrived; a held cabinet without a
   command then counts a missed deadline); a service that does not answer within the
   cabinets' watchdog time counts as silent from then on (the run goes on, the cabinets'
   watchdogs, in simulated time, take them to their local plans), one that goes offline (its
   will) at once; ``realtime``: the simulation runs at one simulated second per wall second,
   commands are taken as they arrive, and a held cabinet that got no command in a second
   counts a missed deadline;
3. each cabinet takes its commands through its monitor and gives the state SUMO shows.

Before the first second, the host waits (up to the watchdog time, wall clock) for a service
to claim the cabinets; without one they run their local plans until one comes.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from citybrain.control.corridor import EscortRequest
from citybrain.control.port import Decision, FloatArray, GpsFix, IntArray, Layout, Readings
from citybrain.errors import CitybrainError, ConfigError
from citybrain.field.cabinet import CabinetCore, CabinetHost, CabinetReadings, cabinet_layouts
from citybrain.field.core import Publish
from citybrain.field.protocol import (
    COMMAND_QOS,
    REQUEST_QOS,
    TOPIC_ROOT,
    CameraReading,
    ClockTick,
    DetectorReport,
    EscortCall,
    EscortCancel,
    FieldPayloadError,
    LoopReading,
    check_root,
    clock_topic,
    decode_command,
    decode_liveness,
    encode_call,
    encode_cancel,
    encode_gps,
    encode_tick,
    gps_topic,
    requests_topic,
)
from citybrain.mqtt.address import BrokerSettings
from citybrain.mqtt.backoff import Backoff
from citybrain.mqtt.paho import make_client
from citybrain.settings import Settings

log = logging.getLogger("citybrain.sim.field")

ClockMode = Literal["lockstep", "realtime"]
CLOCK_MODES: tuple[str, ...] = ("lockstep", "realtime")


@dataclass(frozen=True)
class FieldFaults:
    """Faults injected at the cabinets' network interface, for drills (seeded).

    ``drop``: the fraction of messages lost, both ways (commands in; detector and shown reports
    out); ``duplicate``: the fraction delivered twice; ``reorder``: the fraction of commands
    held back and delivered after the next one; ``clock_offset_s``: every cabinet's clock is
    off by this much (its reports carry its own time)."""

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    clock_offset_s: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"faults.{name} must be from 0 to below 1, not {value}")
        if not math.isfinite(self.clock_offset_s):
            raise ConfigError("faults.clock_offset_s must be a finite number")

    @property
    def any(self) -> bool:
        return bool(self.drop or self.duplicate or self.reorder or self.clock_offset_s)


@dataclass(frozen=True)
class FieldOptions:
    """Run the controller in the field: over the broker, in a separate service."""

    broker: BrokerSettings
    clock: str = "lockstep"
    root: str = TOPIC_ROOT
    client_id: str = "citybrain-fieldsim"
    faults: FieldFaults = field(default_factory=FieldFaults)

    def __post_init__(self) -> None:
        if self.clock not in CLOCK_MODES:
            raise ConfigError(
                f"--clock must be one of {', '.join(CLOCK_MODES)}, not {self.clock!r}"
            )
        try:
            check_root(self.root)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


@dataclass
class FieldStats:
    seconds: int = 0
    commands_waited: int = 0
    missed_deadlines: int = 0
    """Seconds a held cabinet had no command from its holder in time."""
    silent_services: list[str] = field(default_factory=list)
    """Holders that stopped answering in time (lockstep), in the order it happened."""
    latency_ms: list[float] = field(default_factory=list)
    """Lockstep: tick published to command taken; realtime: detectors published to the next
    command taken; per command, wall clock."""
    preroll_s: float = 0.0
    """Wall time spent waiting for a service to claim the cabinets before the first second."""


class RemoteController:
    """Stands for the controller of a field run: it runs in the service, not here."""

    name = "field"
    uses_detectors = True
    signal_program: str | None = None

    def decide(self, readings: Readings) -> Decision:
        raise CitybrainError("a field run's controller decides in the control service")


class FieldEscorter:
    """The run's emergency watch, speaking to the service: requests and ends go on the wire."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.pending: list[Publish] = []

    def request(self, req: EscortRequest) -> None:
        call = EscortCall(req.vehicle, tuple(req.route), req.priority, req.requested_s)
        self.pending.append(Publish(requests_topic(self.root), encode_call(call), REQUEST_QOS))

    def finish(self, vehicle: str, now_s: float) -> None:
        cancel = EscortCancel(vehicle, now_s)
        self.pending.append(Publish(requests_topic(self.root), encode_cancel(cancel), REQUEST_QOS))


class FieldLoop:
    """The run's cabinets, on the broker. Open with ``start``, close with ``close``."""

    def __init__(
        self, layout: Layout, settings: Settings, options: FieldOptions, start_s: float
    ) -> None:
        self.options = options
        self.root = options.root
        self.settings = settings
        self.layout = layout
        loop_index = {d.id: i for i, d in enumerate(layout.loops)}
        cam_index = {d.id: i for i, d in enumerate(layout.cameras)}
        cabinets = []
        self._loops: dict[str, tuple[list[int], list[str]]] = {}
        self._cams: dict[str, tuple[list[int], list[str]]] = {}
        faults = options.faults
        self._offset = faults.clock_offset_s
        if options.clock == "realtime":  # the cabinets' clocks run on the wall clock's time
            self._offset += time.time() - start_s
        """The cabinets' clocks run this far from the simulation's."""
        self._rng = np.random.default_rng(faults.seed)
        for key, part in cabinet_layouts(layout).items():
            cabinets.append(
                CabinetCore(
                    part,
                    settings.envelope,
                    settings,
                    start_s + self._offset,
                    settings.cabinet,
                    root=self.root,
                    plan_running=True,  # SUMO's signals run their programs until the start
                )
            )
            self._loops[key] = ([loop_index[d.id] for d in part.loops], [d.id for d in part.loops])
            self._cams[key] = (
                [cam_index[d.id] for d in part.cameras],
                [d.id for d in part.cameras],
            )
        self.host = CabinetHost(cabinets, self.root)
        self.escorter = FieldEscorter(self.root)
        self.stats = FieldStats()
        self.run_id = uuid.uuid4().hex[:12]
        self._inbox: queue.SimpleQueue[tuple[str, bytes, float]] = queue.SimpleQueue()
        self._client: Client | None = None
        self._silent: set[str] = set()
        self._wall0 = 0.0
        self._t0 = start_s
        self._detectors_wall: dict[str, float] = {}
        self._gone: dict[str, float] = {}
        """By cabinet: ``ts`` of the newest command lost or held back by an injected fault."""
        self._held: list[tuple[str, bytes, float]] = []
        """Commands held back by an injected fault, delivered after the next one."""
        self.injected = {"dropped": 0, "duplicated": 0, "reordered": 0}
        self._online: set[str] = set()
        """Services whose liveness says online."""
        self._done: dict[str, float] = {}
        """By service: the last lockstep tick of this run it finished."""
        self._services_prefix = f"{self.root}/control/services/"

    # ------------------------------------------------------------------ connection

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect and subscribe to the cabinets' command topics."""
        broker = self.options.broker
        client = make_client(
            broker,
            f"{self.options.client_id}-{self.run_id}",
            clean_session=True,
            reconnect=Backoff(1.0, 2.0),
        )
        subscribed = threading.Event()
        refused: list[str] = []

        def on_connect(
            c: Client, _u: Any, _f: ConnectFlags, rc: ReasonCode, _p: Properties | None
        ) -> None:
            if rc.is_failure:
                refused.append(str(rc))
                subscribed.set()
                return
            c.subscribe(
                [
                    (f"{self.root}/signals/+/command", COMMAND_QOS),
                    (f"{self.root}/control/services/+", 1),
                ]
            )

        def on_subscribe(
            _c: Client, _u: Any, _mid: int, codes: list[ReasonCode], _p: Properties | None
        ) -> None:
            if any(code.is_failure for code in codes):
                refused.append("subscription to the cabinets' command topics refused (ACL)")
            subscribed.set()

        def on_message(_c: Client, _u: Any, message: MQTTMessage) -> None:
            self._inbox.put((message.topic, bytes(message.payload), time.monotonic()))

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        address = broker.address
        try:
            client.connect(address.host, address.port, keepalive=30)
        except OSError as exc:
            raise CitybrainError(f"cannot reach the broker at {address.url}: {exc}") from None
        client.loop_start()
        self._client = client
        if not subscribed.wait(timeout_s):
            self.close()
            raise CitybrainError(f"the broker at {address.url} did not answer in {timeout_s:g} s")
        if refused:
            self.close()
            raise CitybrainError(f"the broker at {address.url} refused the run: {refused[0]}")

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _publish(self, messages: Sequence[Publish]) -> None:
        client = self._client
        assert client is not None
        for m in messages:
            client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)

    # ------------------------------------------------------------------ the run

    def preroll(self, t0: float) -> None:
        """Before the first second: say what every cabinet shows and wait (wall clock, up to
        the watchdog time) until a service has claimed every cabinet."""
        wall = time.monotonic()
        out: list[Publish] = []
        for cab in self.host.cabinets.values():
            out.extend(cab.report(t0 + self._offset))
        self._publish(out)
        deadline = wall + self.settings.cabinet.watchdog_s
        while time.monotonic() < deadline:
            self._drain(t0, block_s=0.05)
            if all(c.claimed for c in self.host.cabinets.values()):
                break
        self.stats.preroll_s = time.monotonic() - wall
        self._wall0 = time.monotonic()
        self._t0 = t0

    def step(
        self,
        t: float,
        loop_count: IntArray,
        loop_occupancy: FloatArray,
        camera_count: IntArray,
        camera_queue: IntArray,
        gps: tuple[GpsFix, ...],
    ) -> tuple[dict[str, str], dict[str, bool]]:
        """One simulated second: the state each signal shows from ``t`` on, and the holds."""
        readings: dict[str, CabinetReadings] = {}
        out: list[Publish] = list(self.escorter.pending)
        self.escorter.pending.clear()
        out.extend(Publish(gps_topic(f.vehicle, self.root), encode_gps(f), 0) for f in gps)
        for key, cab in self.host.cabinets.items():
            li, lids = self._loops[key]
            ci, cids = self._cams[key]
            values = CabinetReadings(
                loop_count[li], loop_occupancy[li], camera_count[ci], camera_queue[ci]
            )
            readings[key] = values
            report = DetectorReport(
                key,
                t + self._offset,
                {
                    d: LoopReading(int(c), float(o))
                    for d, c, o in zip(lids, values.loop_count, values.loop_occupancy, strict=True)
                },
                {
                    d: CameraReading(int(c), int(q))
                    for d, c, q in zip(cids, values.camera_count, values.camera_queue, strict=True)
                },
            )
            out.extend(self._lossy(cab.report(t + self._offset, report)))
        if self.options.clock == "lockstep":
            self._publish(out)
            self._lockstep(t)
        else:
            self._realtime(t, out)
        states: dict[str, str] = {}
        holds: dict[str, bool] = {}
        events: list[Publish] = []
        for key, cab in self.host.cabinets.items():
            state, ev = cab.tick(t + self._offset, readings[key])
            states[key] = state
            holds[key] = cab.hold
            events.extend(ev)
        self._publish(self._lossy(events))
        self.stats.seconds += 1
        return states, holds

    def _lossy(self, messages: list[Publish]) -> list[Publish]:
        """``messages`` through the injected faults: some lost, some twice."""
        faults = self.options.faults
        if not (faults.drop or faults.duplicate):
            return messages
        out = []
        for m in messages:
            r = float(self._rng.random())
            if r < faults.drop:
                self.injected["dropped"] += 1
                continue
            out.append(m)
            if r < faults.drop + faults.duplicate:
                self.injected["duplicated"] += 1
                out.append(m)
        return out

    def _lockstep(self, t: float) -> None:
        sent = time.monotonic()
        self._publish([Publish(clock_topic(self.root), encode_tick(ClockTick(t, self.run_id)), 1)])
        deadline = sent + self.settings.cabinet.watchdog_s
        while True:
            waiting = self._waiting_for(t)
            if not waiting:
                break
            if time.monotonic() >= deadline:
                for service in sorted(waiting):
                    log.warning("service %s did not answer second %g in time: silent", service, t)
                    self._silent.add(service)
                    self.stats.silent_services.append(service)
                break
            self._drain(t, block_s=0.05, sent=sent)
        self._drain(t, block_s=0.0)  # what came with the last answers (claims, releases)
        self.stats.missed_deadlines += sum(  # held, and no command for this second
            1
            for c in self.host.cabinets.values()
            if c.holder is not None
            and max(c.last_command_ts, self._gone.get(c.id, -math.inf)) < t
            and c.stats.commands > 0
        )

    def _waiting_for(self, t: float) -> set[str]:
        """The online services that have not finished second ``t`` yet (once one has, all it
        sent for ``t``, commands and claims, has arrived: one connection keeps the order)."""
        return {
            service
            for service in self._online
            if service not in self._silent and self._done.get(service, -math.inf) < t
        }

    def _realtime(self, t: float, out: list[Publish]) -> None:
        due = self._wall0 + (t - self._t0)
        while True:
            now = time.monotonic()
            if now >= due:
                break
            self._drain(t - (due - now), block_s=min(0.05, due - now))
        before = {k: c.stats.commands for k, c in self.host.cabinets.items()}
        self._publish(out)
        wall = time.monotonic()
        for key in self.host.cabinets:
            self._detectors_wall[key] = wall
        end = due + 1.0
        while time.monotonic() < min(end, due + 0.9):
            self._drain(t, block_s=0.02)
        for key, cab in self.host.cabinets.items():
            if cab.holder is not None and cab.stats.commands == before[key]:
                self.stats.missed_deadlines += 1

    def _drain(self, now_s: float, block_s: float, sent: float | None = None) -> None:
        """Hand every queued command to its cabinet at simulated time ``now_s`` (the cabinets'
        clocks: plus their offset), through the injected faults."""
        try:
            first = self._inbox.get(timeout=max(block_s, 0.0))
        except queue.Empty:
            return
        batch = [first]
        while True:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        faults = self.options.faults
        out: list[Publish] = []
        for message in batch:
            if message[0].startswith(self._services_prefix):
                self._liveness(message[0][len(self._services_prefix) :], message[1])
                continue
            key = self.host.intersection_of(message[0])
            if key is None:
                continue
            ts, service = _sender(message[1], key)
            if service in self._silent:
                self._silent.discard(service)  # it answers again
            deliver = [message]
            if faults.any:
                r = float(self._rng.random())
                if r < faults.drop:
                    self.injected["dropped"] += 1
                    self._gone[key] = max(self._gone.get(key, -math.inf), ts)
                    deliver = []
                elif r < faults.drop + faults.duplicate:
                    self.injected["duplicated"] += 1
                    deliver = [message, message]
                elif r < faults.drop + faults.duplicate + faults.reorder:
                    self.injected["reordered"] += 1
                    self._gone[key] = max(self._gone.get(key, -math.inf), ts)
                    self._held.append(message)
                    continue
                deliver += self._held
                self._held = []
            for topic, payload, arrived in deliver:
                out.extend(self._deliver(topic, payload, arrived, now_s, sent))
        for cab in self.host.cabinets.values():  # commands held back a moment (realtime)
            if cab.deferred_due is not None:
                out.extend(cab.poll(now_s + self._offset))
        self._publish(self._lossy(out))

    def _liveness(self, service: str, payload: bytes) -> None:
        try:
            live = decode_liveness(payload, service)
        except FieldPayloadError as exc:
            log.warning("liveness of service %s ignored: %s", service, exc)
            return
        if not live.online:
            self._online.discard(service)
            return
        self._online.add(service)
        self._silent.discard(service)
        if live.run == self.run_id and live.tick is not None:
            self._done[service] = max(self._done.get(service, -math.inf), live.tick)

    def _deliver(
        self, topic: str, payload: bytes, arrived: float, now_s: float, sent: float | None
    ) -> list[Publish]:
        key = self.host.intersection_of(topic)
        if key is None:
            return []
        cab = self.host.cabinets[key]
        taken = cab.stats.commands
        events = cab.handle(payload, now_s + self._offset)
        if cab.stats.commands != taken:
            start = sent if sent is not None else self._detectors_wall.get(key, arrived)
            self.stats.latency_ms.append((arrived - start) * 1000.0)
        if events:
            return [*events, *cab.report(now_s + self._offset)]
        return []

    # ------------------------------------------------------------------ the report

    def report(self, unsafe_shown: int) -> dict[str, Any]:
        """``metrics.json``'s ``field`` object; ``unsafe_shown``: violations of the run's own
        monitor on what SUMO showed (conflicts, missing clearances, short greens)."""
        totals = self.host.totals()
        lat = np.array(self.stats.latency_ms, dtype=np.float64)
        return {
            "clock": self.options.clock,
            "broker": self.options.broker.address.url,
            "cabinets": len(self.host.cabinets),
            "monitor_refusals": totals.refusals,
            "fallbacks": totals.fallbacks,
            "fallback_after_s": totals.longest_silence_s,
            "unsafe_states": totals.unsafe + unsafe_shown,
            "latency_ms": {
                "p50": float(np.percentile(lat, 50)) if lat.size else None,
                "p99": float(np.percentile(lat, 99)) if lat.size else None,
                "commands": int(lat.size),
            },
            "missed_deadlines": self.stats.missed_deadlines,
            "silent_services": sorted(set(self.stats.silent_services)),
            "commands_shown": totals.commands,
            "foreign_commands": totals.foreign,
            "dropped_commands": totals.dropped,
            "malformed_commands": totals.malformed,
            "grants": totals.grants,
            "denials": totals.denials,
            "self_cleared": totals.self_cleared,
            "preroll_s": self.stats.preroll_s,
            "injected_faults": dict(self.injected),
            "holders_at_end": sorted(
                {c.holder for c in self.host.cabinets.values() if c.holder is not None}
            ),
        }


def _sender(payload: bytes, key: str) -> tuple[float, str]:
    """The ``ts`` and service of a command message (-inf and '' for one that is malformed)."""
    try:
        message = decode_command(payload, key)
    except FieldPayloadError:
        return -math.inf, ""
    return message.ts, message.service
