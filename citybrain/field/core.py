"""The field service's logic, without any I/O: messages in, one closed-loop step per second,
the messages to publish out.

``FieldCore.handle`` takes each incoming message (topic and payload) as it arrives, with the
service's time; ``FieldCore.tick(t)`` judges every cabinet's lease (``citybrain.field.lease``),
assembles the readings of the second that ends at ``t``, runs the controller (wrapped in the
``EscortController``) and the envelopes through the same ``SignalDriver`` step as ``sim/``,
and returns the commands, claims, escort statuses and the service's liveness to publish. The
caller (``citybrain.field.service``) owns the broker connection and the clock: the wall clock,
or the lockstep clock of a SUMO-in-the-loop run (``ClockFollower``).

Closed loop. The controller decides for every intersection of the shard at every tick, held
or not; its ``Readings.signals`` are the envelope of each intersection we hold and the
cabinet's own report (``ShownView``) of the others (the envelope the driver started with
while a cabinet has not reported). Commands go only to intersections we hold; when a cabinet
grants us its lease the envelope is resumed from the green it reports
(``SafetyEnvelope.resume``), so no command skips a change interval, after a restart too.

Readings of one tick: each loop's counts are summed over the detector messages received
since the previous tick, its occupancy and each camera's counts are the latest message's; a
detector without a message in that second reads zero (the detector layer then sees it as
quiet, and as dead if it stays so). A detector message whose ``ts`` is more than
``stale_after_s`` before the tick is dropped (a backlog after a reconnection says nothing
about this second); its ``ts`` is first moved by how far its cabinet's clock lags the
service's (measured on the cabinet's reports), so a cabinet whose clock is off is heard.
A detector message is *of second* ``s`` when its ``ts`` so moved is within half a second
of ``s``; one used by a tick later than its own second is counted ``late`` (``counts``).

Waiting for the readings (``awaited``, for a caller that ticks when the readings of a
second are in rather than at the second's boundary): after each tick ``t`` the core names
the intersections whose detector message of second ``t + 1`` the next tick should have,
those we held at ``t`` that sent detectors in the second before; each message of that
second takes its intersection off the list. The caller decides how long to wait.

Shards. The core's layout holds its shard's intersections only; escort corridors are cut to
them (each service acts on its own shard's signals, and its ``active`` answer lists them). A
request whose route has signals, none of them ours, is left to their shard's service; a
request no shard owns (rejected, or a route without signals) and the cancellation of an
escort we do not have are answered by the primary shard's service only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from citybrain.control.corridor import Corridor, EscortRequest
from citybrain.control.drive import DriveStep, SignalDriver
from citybrain.control.envelope import EnvelopeTiming, SafetyEnvelope
from citybrain.control.escort import CorridorSource, EscortController, EscortMode, EscortSettings
from citybrain.control.port import Controller, GpsFix, Layout, Readings, SignalView
from citybrain.errors import CitybrainError, ConfigError
from citybrain.field.lease import NEVER, LeaseBook, LeaseSettings, LeaseStatus
from citybrain.field.protocol import (
    COMMAND_QOS,
    TOPIC_ROOT,
    CabinetEvent,
    Claim,
    ClockTick,
    Command,
    DetectorReport,
    EscortCall,
    EscortCancel,
    EscortStatus,
    EscortStatusKind,
    FieldPayloadError,
    Release,
    Shown,
    check_level,
    check_root,
    command_topic,
    decode_detectors,
    decode_escort,
    decode_event,
    decode_gps,
    decode_liveness,
    decode_service_status,
    decode_shown,
    encode_command,
    encode_service_status,
    encode_status,
    escort_status_topic,
    parse_topic,
    service_topic,
    subscriptions,
)

log = logging.getLogger("citybrain.field")

DEFAULT_SERVICE = "citybrain-control"


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
    """Detector messages older than this at the tick are dropped."""
    request_max_age_s: float = 300.0
    """Escort requests (and cancellations) older than this on arrival are refused."""
    escort_expire_s: float = 600.0
    """An escort without a GPS fix for this long (or since its request) is ended."""
    silent_after_s: float = 3.0
    """A cabinet without a ``shown`` report for this long is silent (not commanded)."""
    claim_every_s: float = 1.0
    """At most one claim per intersection in this time."""
    mismatch_reports: int = 2
    """Reports in a row showing something else than we commanded before we resynchronise."""
    standby_wait_s: float = 3.0
    """A standby claims a signal nobody holds once it has been so for this long."""

    def __post_init__(self) -> None:
        for name in ("stale_after_s", "request_max_age_s", "escort_expire_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"field.{name} must be a positive number, not {value}")
        self.lease()

    def lease(self) -> LeaseSettings:
        return LeaseSettings(
            self.silent_after_s, self.claim_every_s, self.mismatch_reports, self.standby_wait_s
        )


class ClockFollower:
    """The lockstep clock: follows the first run whose tick it sees, one second after another.

    ``accept`` says whether a tick is to be run: ticks of another run, and ticks not later
    than the last one run (a duplicate), are not.
    """

    def __init__(self) -> None:
        self.run: str | None = None
        self.last_t: float | None = None
        self.ignored = 0

    def accept(self, tick: ClockTick) -> bool:
        if self.run is None:
            self.run = tick.run
        if tick.run != self.run or (self.last_t is not None and tick.t <= self.last_t):
            self.ignored += 1
            return False
        self.last_t = tick.t
        return True


class ShardCorridors:
    """A corridor source cut to one shard's signals."""

    def __init__(self, full: CorridorSource, mine: frozenset[str]) -> None:
        self.full = full
        self.mine = mine

    def __call__(self, request: EscortRequest) -> Corridor:
        corridor = self.full(request)
        signals = tuple(s for s in corridor.signals if s.intersection in self.mine)
        if len(signals) == len(corridor.signals):
            return corridor
        return dataclasses.replace(corridor, signals=signals)


class FieldCore:
    """One controller, its envelopes and its leases, driven by field messages."""

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
        service_id: str = DEFAULT_SERVICE,
        standby: bool = False,
        instance: str = "",
        started_s: float = 0.0,
        primary: bool = True,
        sharded: bool = False,
        remake: Callable[[], Controller] | None = None,
    ) -> None:
        if controller.signal_program is not None:
            raise ConfigError(
                f"controller {controller.name!r} runs inside the signal; the field service "
                "needs one whose requests go through the envelope"
            )
        self.root = check_root(root)
        try:
            self.service_id = check_level(service_id, "service id")
            self.instance = instance
            """This process's nonce: two processes under one service id refuse to run."""
            self.started_s = started_s
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.layout = layout
        self.xs = {x.id: x for x in layout.intersections}
        for x_id in self.xs:
            try:
                check_level(x_id, "intersection id")
            except ValueError as exc:
                raise ConfigError(f"{exc} (it names an MQTT topic level)") from None
        self.timing = envelope or EnvelopeTiming()
        self.settings = settings or FieldSettings()
        self.standby = standby
        self.primary = primary
        self.sharded = sharded
        """Only some of the net's signals are ours: subscribe to them by name."""
        self.full_corridors = corridor_of
        self._remake = remake
        """A fresh controller, for a lockstep run that begins after wall-clock ticks."""
        self._escort_args = (
            escort,
            layout,
            ShardCorridors(corridor_of, frozenset(self.xs)),
            self.timing,
            escort_settings,
        )
        self.escort = EscortController(controller, *self._escort_args)
        self.book = LeaseBook(self.service_id, self.xs, self.settings.lease(), standby=standby)
        self.driver: SignalDriver | None = None
        """Created at the first tick (the envelopes start from its time)."""
        self.views: dict[str, SignalView] = {}
        """What the controller sees of each signal (see the module docstring)."""
        self.start_s = NEVER
        self._links = {x.id: len(x.links) for x in layout.intersections}
        self._loop_index = {d.id: (i, d.intersection) for i, d in enumerate(layout.loops)}
        self._camera_index = {d.id: (i, d.intersection) for i, d in enumerate(layout.cameras)}
        self._reports: list[DetectorReport] = []
        self.awaited: set[str] = set()
        """Held intersections whose detector message of second ``awaited_t`` is not in yet."""
        self.awaited_t = NEVER
        self._sent_detectors: set[str] = set()
        """Intersections that sent detectors since the last tick."""
        self._gps: list[GpsFix] = []
        self._last_fix: dict[str, float] = {}
        """Per escorted vehicle: when its last fix (or its request) arrived, service time."""
        self.counts: Counter[str] = Counter()
        """Messages handled by kind: detectors, shown, events, gps, requests, cancels, stale,
        rejected, elsewhere (requests left to another shard), foreign (reports of signals
        not ours); late: detector messages used by a tick after their own second."""
        self.last: DriveStep | None = None
        self.statuses: dict[str, LeaseStatus] = {}
        """Each intersection's lease status at the last tick."""
        self.clock: Literal["none", "wall", "lockstep"] = "none"
        """The service's clock: none before its first tick, then the wall clock or a SUMO
        run's lockstep one. A report's green start is corrected by how far its ``ts`` lags
        the service's time when it arrives (in lockstep the caller's time between ticks is
        the next tick's second, the one the reports are of)."""
        self.report_ts: float | None = None
        """``ts`` of the last cabinet report or detector message taken (its clock)."""
        self.ever_held = False
        self.taken: str | None = None
        self.duplicate: str | None = None
        """Set when another process runs under this service id."""
        """Set (without ``standby``) when another live service holds our whole shard."""
        self._reported: tuple[LeaseStatus, ...] = ()

    def subscriptions(self) -> tuple[tuple[str, int], ...]:
        """The topics (and QoS) this core reads."""
        return subscriptions(self.root, tuple(self.xs) if self.sharded else None)

    @property
    def heard_field(self) -> bool:
        """Whether a cabinet (a report or detectors) has been heard."""
        return self.report_ts is not None

    # ------------------------------------------------------------------ incoming messages

    def handle(self, topic: str, payload: bytes, now_s: float) -> list[Publish]:
        """Take one incoming message. A payload that breaks the contract raises
        ``FieldPayloadError`` (nothing of it is used); a topic the core does not read (and
        the clock, which is the caller's) is ignored, and so is an empty retained message."""
        parsed = parse_topic(topic, self.root)
        if parsed is None:
            return []
        kind, key = parsed
        try:
            if kind == "detectors":
                self._detectors(decode_detectors(payload, key))
            elif kind == "shown":
                if payload:
                    return self._shown(decode_shown(payload, key), now_s)
            elif kind == "events":
                self._event(decode_event(payload, key))
                return self._releases(now_s)
            elif kind == "service":
                if payload and key != self.service_id:
                    self.book.service_status(key, decode_service_status(payload))
                elif payload and self.instance:
                    live = decode_liveness(payload, key)
                    if live.online and live.instance and live.instance != self.instance:
                        other = (live.started or 0.0, live.instance)
                        if other < (self.started_s, self.instance):  # it was there first
                            self.duplicate = self.taken = (
                                f"another instance ({live.instance}) of service {key} is "
                                "online; give each service its own --service-id"
                            )
                        else:  # a younger one announced itself over ours: it will stop
                            self._reported = ()
            elif kind == "gps":
                fix = decode_gps(payload, key)
                self._gps.append(fix)
                if fix.vehicle in self._last_fix:
                    self._last_fix[fix.vehicle] = now_s
                self.counts["gps"] += 1
            elif kind == "requests":
                return self._escort_message(decode_escort(payload), now_s)
            return []
        except FieldPayloadError:
            self.counts["rejected"] += 1
            raise

    def _detectors(self, report: DetectorReport) -> None:
        x_id = report.intersection
        if x_id not in self.xs:
            raise FieldPayloadError("", f"no intersection {x_id!r} among this service's signals")
        for key in report.loops:
            found = self._loop_index.get(key)
            if found is None or found[1] != x_id:
                raise FieldPayloadError(f"loops.{key}", f"not a loop of intersection {x_id}")
        for key in report.cameras:
            found = self._camera_index.get(key)
            if found is None or found[1] != x_id:
                raise FieldPayloadError(f"cameras.{key}", f"not a camera of intersection {x_id}")
        self._reports.append(report)
        self.report_ts = report.ts
        self.counts["detectors"] += 1
        self._sent_detectors.add(x_id)
        awaited = self.awaited
        if x_id in awaited and report.ts + self.book.leases[x_id].offset_s >= self.awaited_t - 0.5:
            awaited.discard(x_id)

    def _shown(self, shown: Shown, now_s: float) -> list[Publish]:
        x = self.xs.get(shown.intersection)
        if x is None:
            self.counts["foreign"] += 1
            return []
        if len(shown.state) != len(x.links):
            raise FieldPayloadError(
                "state", f"has {len(shown.state)} link states, {x.id} has {len(x.links)} links"
            )
        if shown.phase is not None and shown.phase >= len(x.phases):
            raise FieldPayloadError("phase", f"{x.id} has no phase {shown.phase}")
        self.counts["shown"] += 1
        self.report_ts = shown.ts
        offset = 0.0 if self.clock == "none" else now_s - shown.ts
        if not self.book.shown(shown, now_s, offset):
            return []
        self.book.claimed_now(self.book.leases[x.id], now_s)
        claim = Claim(x.id, self.service_id, now_s)
        return [Publish(command_topic(x.id, self.root), encode_command(claim), COMMAND_QOS)]

    def _event(self, event: CabinetEvent) -> None:
        if event.intersection not in self.xs:
            self.counts["foreign"] += 1
            return
        self.book.event(event)
        self.counts["events"] += 1

    def _escort_message(self, message: EscortCall | EscortCancel, now_s: float) -> list[Publish]:
        vehicle = message.vehicle
        if message.ts is not None and now_s - message.ts > self.settings.request_max_age_s:
            self.counts["stale"] += 1
            return self._answer(vehicle, now_s, "rejected", reason="request too old")
        if isinstance(message, EscortCancel):
            self.counts["cancels"] += 1
            if vehicle not in self.escort.escorts:
                return self._answer(vehicle, now_s, "cancelled", reason="no active escort")
            self.escort.finish(vehicle, now_s)
            self._last_fix.pop(vehicle, None)
            return [self._status(vehicle, now_s, "cancelled")]
        self.counts["requests"] += 1
        request = _request(message, now_s)
        try:
            corridor = self.full_corridors(request)
        except CitybrainError as exc:  # a route the net does not have
            log.warning("escort request for %s refused: %s", vehicle, exc)
            return self._answer(vehicle, now_s, "rejected", reason=str(exc))
        signals = tuple(s.intersection for s in corridor.signals if s.intersection in self.xs)
        if corridor.signals and not signals:
            self.counts["elsewhere"] += 1
            log.info("escort of %s: none of its signals is ours", vehicle)
            return []
        if not signals and not self.primary:
            return []
        self.escort.request(request)
        self._last_fix[vehicle] = now_s
        log.info("escorting %s through %s", vehicle, ", ".join(signals) or "no signal")
        return [self._status(vehicle, now_s, "active", signals)]

    # ------------------------------------------------------------------ one second

    def tick(self, t: float) -> list[Publish]:
        """Run the second that ends at ``t``: leases, readings, decision, envelopes; the
        commands (``ts`` = ``t``) and claims to send, escort statuses, and the service's
        liveness when what it reports changed."""
        if self.driver is None:
            self.driver = SignalDriver(self.escort, self.layout.intersections, self.timing, t)
            self.views = dict(self.driver.envelopes)
            self.start_s = t
        driver, book = self.driver, self.book
        leases = book.leases
        ready: list[int] = []
        for i, x in enumerate(self.layout.intersections):
            lease = leases[x.id]
            status = book.update(lease, t)
            view: SignalView = lease.view
            if status is LeaseStatus.UNKNOWN:
                view = driver.envelopes[x.id]
            elif status is LeaseStatus.HELD:
                if lease.resumable:  # granted: resume from the green it shows
                    shown = lease.shown
                    assert shown is not None and shown.phase is not None
                    envelope = SafetyEnvelope.resume(
                        x, self.timing, shown.phase, lease.view.green_since
                    )
                    driver.envelopes[x.id] = view = envelope
                    ready.append(i)
                elif lease.last_ts == NEVER:
                    pass  # granted, its report not in yet: wait for it
                elif t <= lease.last_ts:  # the clock went back: a new lease, from the report
                    book.lose(lease, f"the service's clock went back to {t:g}", release=True)
                    lease.status = LeaseStatus.LOCAL
                else:
                    view = driver.envelopes[x.id]
                    ready.append(i)
            self.views[x.id] = view
        readings = self._readings(t)
        step = driver.step(readings)
        self.last = step
        out: list[Publish] = []
        for i in ready:
            o = step.outputs[i]
            lease = leases[o.intersection]
            assert lease.epoch is not None
            command = Command(
                o.intersection,
                self.service_id,
                lease.epoch,
                t,
                o.state,
                o.phase,
                o.hold,
                o.in_clearance,
            )
            out.append(Publish(command_topic(o.intersection, self.root), encode_command(command)))
            book.commanded_now(lease, t, o.state)
        self.ever_held = self.ever_held or bool(ready)
        out.extend(self._releases(t))
        out.extend(self._end_escorts(t))
        self.statuses = {x_id: lease.status for x_id, lease in leases.items()}
        self.awaited_t = t + 1.0
        sent = self._sent_detectors
        self.awaited = {x for x in sent if self.statuses[x] is LeaseStatus.HELD}
        self._sent_detectors = set()
        self.taken = self.duplicate or self._taken(t)
        now = tuple(self.statuses.values())
        if now != self._reported:
            self._reported = now
            out.append(self.liveness(t))
        return out

    def _readings(self, t: float) -> Readings:
        stale_before = t - self.settings.stale_after_s
        late_before = t - 0.5
        leases = self.book.leases
        late = 0
        # gathered in dicts, written to the arrays once (numpy item by item is slow)
        counts: dict[int, int] = {}
        occupancy: dict[int, float] = {}
        seen: dict[int, int] = {}
        queued: dict[int, int] = {}
        loop_index, camera_index = self._loop_index, self._camera_index
        for report in self._reports:
            second = report.ts + leases[report.intersection].offset_s
            if second < stale_before:
                self.counts["stale"] += 1
                continue
            if second < late_before:
                late += 1
            for key, loop in report.loops.items():
                i = loop_index[key][0]
                counts[i] = counts.get(i, 0) + loop.count
                occupancy[i] = loop.occupancy
            for key, cam in report.cameras.items():
                i = camera_index[key][0]
                seen[i] = cam.count
                queued[i] = cam.queue
        self._reports.clear()
        if late:
            self.counts["late"] += late
        gps = tuple(sorted(self._gps, key=lambda f: f.time_s))
        self._gps.clear()
        n_loops, n_cams = len(self._loop_index), len(self._camera_index)
        return Readings(
            t,
            _array(counts, n_loops, np.int64),
            _array(occupancy, n_loops, np.float64),
            _array(seen, n_cams, np.int64),
            _array(queued, n_cams, np.int64),
            self.views,
            gps,
        )

    def _taken(self, t: float) -> str | None:
        """Without ``standby``: a message when another live service holds our whole shard
        (judged once every retained report could have aged into silence)."""
        if self.standby or self.ever_held or t - self.start_s <= self.settings.silent_after_s:
            return None
        holders: set[str] = set()
        for lease in self.book.leases.values():
            holder = lease.holder
            if lease.status is not LeaseStatus.HELD_BY_OTHER or holder is None:
                return None
            if self.book.services.get(holder) is False:
                return None
            holders.add(holder)
        if not holders:
            return None
        n = len(self.book.leases)
        return (
            f"all {n} signal(s) of this service's shard are held by "
            f"{'service' if len(holders) == 1 else 'services'} {', '.join(sorted(holders))}, "
            f"which {'is' if len(holders) == 1 else 'are'} alive; stop it first, or run this "
            "one with --standby to wait and take over when it stops"
        )

    def liveness(self, ts: float | None, online: bool = True, **extra: object) -> Publish:
        """The service's retained liveness: what it holds, and what it does not."""
        if not online:
            payload = encode_service_status(False, ts, service=self.service_id)
        else:
            by: dict[str, list[str]] = {s.value: [] for s in LeaseStatus}
            for x_id, status in self.statuses.items():
                by[status.value].append(x_id)
            payload = encode_service_status(
                True,
                ts,
                service=self.service_id,
                instance=self.instance,
                started=self.started_s,
                standby=self.standby,
                signals=len(self.xs),
                counts={k: len(v) for k, v in by.items()},
                held=by["held"],
                local=by["local"] + by["claiming"],
                silent=by["silent"] + by["unknown"],
                held_by_other=by["held_by_other"],
                **extra,
            )
        return Publish(service_topic(self.service_id, self.root), payload, 1, retain=True)

    def release_all(self, ts: float) -> list[Publish]:
        """Give every lease we hold back (a service that stops): the cabinets go local."""
        for lease in self.book.leases.values():
            self.book.lose(lease, "the service stops", release=True)
        return self._releases(ts)

    def start_clock(self, t: float, lockstep: bool) -> list[Publish]:
        """The service's ticks begin at ``t``, on the wall clock or a run's lockstep clock.
        A lockstep run that begins after wall-clock ticks starts the driver again at its
        first tick and gives every lease back (to claim it again under the run's clock)."""
        mode: Literal["wall", "lockstep"] = "lockstep" if lockstep else "wall"
        if self.clock == mode:
            return []
        out: list[Publish] = []
        if self.clock == "none":
            self.book.start_clock(t, lockstep=lockstep)
        else:
            log.warning("the service's clock changed to %s at %g s: leases given back", mode, t)
            out = self._restart(t)
        self.clock = mode
        return out

    def new_run(self, t: float) -> list[Publish]:
        """Another lockstep run begins at ``t`` (the one followed has ended): start again as
        at a clock change."""
        log.info("a new lockstep run begins at %g s: leases given back", t)
        return self._restart(t)

    def _restart(self, t: float) -> list[Publish]:
        if self._remake is not None:  # a controller keeps time: start a fresh one
            self.escort = EscortController(self._remake(), *self._escort_args)
        self.driver = None
        self.book.restart_clock(t)
        out = self._releases(t)
        self._reports.clear()
        self._gps.clear()
        self.awaited.clear()
        return out

    def _releases(self, ts: float) -> list[Publish]:
        """The releases the lease book asked for."""
        book = self.book
        if not book.releases:
            return []
        out = [
            Publish(
                command_topic(x_id, self.root),
                encode_command(Release(x_id, self.service_id, epoch, ts)),
                COMMAND_QOS,
            )
            for x_id, epoch in book.releases
        ]
        book.releases.clear()
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

    def _answer(
        self, vehicle: str, ts: float, kind: EscortStatusKind, reason: str = ""
    ) -> list[Publish]:
        """A status no shard owns: the primary shard's service gives it."""
        return [self._status(vehicle, ts, kind, reason=reason)] if self.primary else []

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
        """What each intersection's envelope shows since the last tick (commanded where held)."""
        return {} if self.last is None else self.last.states


def _array(values: dict[int, Any], n: int, dtype: type[np.generic]) -> Any:
    """An array of ``n`` zeros with ``values`` (by index) written in."""
    out = np.zeros(n, dtype=dtype)
    if values:
        out[np.fromiter(values, dtype=np.int64, count=len(values))] = list(values.values())
    return out


def _in_green(shown: Shown) -> bool:
    """Whether a report shows a green phase (not a change interval)."""
    return shown.phase is not None and shown.green_since is not None and not shown.clearance


def _request(message: EscortCall, now_s: float) -> EscortRequest:
    return EscortRequest(
        message.vehicle,
        message.route,
        message.priority,
        message.ts if message.ts is not None else now_s,
    )
