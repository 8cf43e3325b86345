"""A signal cabinet's logic, without any I/O: its own monitor, its lease, its watchdog and its
local plan.

One ``CabinetCore`` per signal. Like the conflict monitor in a real cabinet it trusts nobody:
every commanded state is judged by the cabinet's own copy of the lamp rules
(``control/monitor.py``: no conflicting greens, full yellow and all-red, minimum greens)
before it is shown; a state that breaks one is refused (event ``refused`` with the rule) and
the cabinet keeps what it shows. The lease, the watchdog and the handshake follow the wire
contract (``citybrain/field/protocol.py``):

- in ``local`` mode the cabinet runs its local plan (the city's stored program replayed
  through its own safety envelope, or our actuated control from its own loops);
- a claim is granted while the cabinet shows a phase's green, when it has no live holder; the
  green is then kept as it is until the holder's first command, which switches the cabinet to
  ``remote``; a claim from the holder itself (restarted, or repeating) is answered with the
  same lease;
- in ``remote`` mode it shows the holder's commands; a command no newer than the last one
  taken is dropped (duplicates, reordering); a change interval the holder leaves unfinished for
  ``handover_after_s`` is finished by the cabinet itself;
- no valid command for ``watchdog_s`` (the cabinet's own clock) and the cabinet falls back to
  its local plan, through a change interval when it was not showing a phase's green.

The caller owns the clock, the broker and the lamps: ``handle`` takes each message of the
cabinet's command topic as it arrives, ``tick`` once per second gives the state to show,
``report`` gives the messages that say what the cabinet reads and shows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from citybrain.control.catalog import ControllerOptions, make_controller
from citybrain.control.drive import SignalDriver
from citybrain.control.envelope import EnvelopeTiming, SafetyEnvelope, plan_position
from citybrain.control.model import GREEN, YELLOW, Intersection
from citybrain.control.monitor import LampRules, LampWatch
from citybrain.control.port import FloatArray, IntArray, Layout
from citybrain.errors import ConfigError
from citybrain.field.core import Publish
from citybrain.field.protocol import (
    EVENT_QOS,
    SHOWN_QOS,
    TOPIC_ROOT,
    CabinetEvent,
    CabinetEventKind,
    CabinetMode,
    Claim,
    Command,
    DetectorReport,
    FieldPayloadError,
    Release,
    Shown,
    check_level,
    check_root,
    decode_command,
    detectors_topic,
    encode_detectors,
    encode_event,
    encode_shown,
    events_topic,
    shown_topic,
)

LOCAL_PLANS: tuple[str, ...] = ("own", "actuated")
TIMING_RULES = frozenset({"short_yellow", "short_all_red", "short_green"})
DEFER_MAX_S = 0.25
"""A command that breaks only timing rules, and would not a moment later (up to this long),
is held back and shown when due: commands cross a network, so one can arrive a few
milliseconds before its change is due."""
_LOCAL_CONTROLLER = {"own": "plan", "actuated": "actuated"}


@dataclass(frozen=True, slots=True)
class CabinetSettings:
    watchdog_s: float = 5.0
    """No valid command from the holder for this long and the cabinet goes to its local plan."""
    handover_after_s: float = 2.0
    """A holder silent this long may lose the lease to another service's claim; a change
    interval it left unfinished this long is finished by the cabinet."""
    local_plan: str = "own"
    """``own``: the signal's stored program; ``actuated``: our actuated control, own loops."""

    def __post_init__(self) -> None:
        for name in ("watchdog_s", "handover_after_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"cabinet.{name} must be a positive number, not {value}")
        if self.handover_after_s > self.watchdog_s:
            raise ConfigError(
                f"cabinet.handover_after_s ({self.handover_after_s:g}) must not exceed "
                f"cabinet.watchdog_s ({self.watchdog_s:g})"
            )
        if self.local_plan not in LOCAL_PLANS:
            raise ConfigError(
                f"cabinet.local_plan must be one of {', '.join(LOCAL_PLANS)}, "
                f"not {self.local_plan!r}"
            )


@dataclass
class CabinetStats:
    """What one cabinet did since it started."""

    commands: int = 0
    """Commands shown."""
    refusals: int = 0
    """Commands the monitor refused."""
    foreign: int = 0
    """Commands of a service or epoch that does not hold the lease."""
    dropped: int = 0
    """Commands no newer than the last one taken (duplicates, reordering)."""
    malformed: int = 0
    fallbacks: int = 0
    grants: int = 0
    denials: int = 0
    deferred: int = 0
    """Commands held back a moment for a timing rule (early by under ``DEFER_MAX_S``)."""
    self_cleared: int = 0
    """Change intervals the cabinet finished by itself."""
    unsafe: int = 0
    """States shown that broke a lamp rule (must stay 0: everything shown was judged first)."""
    longest_silence_s: float = 0.0
    """The longest a holder was silent before a fallback (the watchdog time, on time)."""


@dataclass(frozen=True, slots=True)
class CabinetReadings:
    """One second of the cabinet's own detectors, indexed as in its layout."""

    loop_count: IntArray
    loop_occupancy: FloatArray
    camera_count: IntArray
    camera_queue: IntArray


class CabinetCore:
    """The cabinet of one signal."""

    def __init__(
        self,
        layout: Layout,
        timing: EnvelopeTiming,
        options: ControllerOptions,
        start_s: float,
        settings: CabinetSettings | None = None,
        *,
        root: str = TOPIC_ROOT,
        plan_running: bool = False,
        showing: str | None = None,
    ) -> None:
        """``plan_running``: the lamps have been running the stored program until
        ``start_s`` (a simulation at its start; a cabinet taking over the signal's own
        controller), and the cabinet continues it. ``showing``: the lamps read back this state,
        since when unknown (every green and yellow in it counts from ``start_s``). Neither:
        what the lamps show is unknown, and the cabinet starts with a start-up all-red as long
        as the longest yellow and all-red, then its local plan."""
        if len(layout.intersections) != 1:
            raise ConfigError("a cabinet's layout holds exactly one intersection")
        self.x: Intersection = layout.intersections[0]
        self.id = check_level(self.x.id, "intersection id")
        self.root = check_root(root)
        self.layout = layout
        self.timing = timing
        self.settings = settings or CabinetSettings()
        self.stats = CabinetStats()
        self._options = options
        self._rules = LampRules.of(self.x, timing)
        self.watch = LampWatch(self.x, self._rules)
        self._yellow_s = [max(self.x.yellow_s, y) for y in self._rules.min_yellow_s]
        self._all_red = self._rules.min_all_red_s
        self.mode: CabinetMode = "local"
        self.holder: str | None = None
        self.epoch = 0
        self._valid_s = start_s
        """When the holder's last valid command (or its grant) arrived, cabinet clock."""
        self._last_ts = -math.inf
        """``ts`` of the last command taken under the current lease."""
        self._used = False
        """Whether the current lease has had a command shown."""
        self._claim: str | None = None
        """A claim waiting for the cabinet to show a phase's green."""
        self._deferred: Command | None = None
        """A command held back until a timing rule allows it (at ``_deferred_due``)."""
        self._deferred_due = 0.0
        self.hold = False
        self.phase: int = 0
        """The green phase shown, or the one a change interval leads to."""
        self._local: SignalDriver | None = None
        self._startup_until = start_s
        x = self.x
        first = self._new_local(start_s)
        envelope = first.envelopes[x.id]
        self.phase = envelope.phase
        if plan_running:
            self._local = first
            _, elapsed = plan_position(x, start_s)
            since = start_s - elapsed if envelope.in_clearance else envelope.green_since
            self.watch.assume(envelope.shown, since)
        elif showing is not None:
            self.watch.assume(showing, start_s)  # checked below: a conflict is its own
            self.phase = self.watch.phase if self.watch.phase is not None else self.phase
        else:
            self._startup_until = (
                start_s
                + max(self._yellow_s, default=0.0)
                + max([x.all_red_s, *self._all_red.values()])
            )
            self.watch.assume("r" * len(x.links), start_s)

    # ------------------------------------------------------------------ what it shows

    @property
    def state(self) -> str:
        return self.watch.state

    @property
    def last_command_ts(self) -> float:
        """``ts`` of the last command taken under the current lease (-inf if none)."""
        return self._last_ts

    @property
    def green_since(self) -> float | None:
        """When the green phase shown began (None in a change interval)."""
        if self.watch.phase is None:
            return None
        if self._local is not None and self.mode == "local":
            envelope = self._local.envelopes[self.x.id]
            if not envelope.in_clearance:
                return envelope.green_since
        return self.watch.since_s

    def shown(self, now_s: float) -> Shown:
        return Shown(
            self.id,
            now_s,
            self.state,
            self.phase,
            self.watch.phase is None,
            self.green_since,
            self.mode,
            self.holder,
            self.epoch,
            self.stats.refusals,
            self.stats.fallbacks,
        )

    def report(self, now_s: float, detectors: DetectorReport | None = None) -> list[Publish]:
        """The messages saying what the cabinet reads (if given) and shows at ``now_s``."""
        out = []
        if detectors is not None:
            out.append(detectors_message(detectors, self.root))
        out.append(
            Publish(
                shown_topic(self.id, self.root),
                encode_shown(self.shown(now_s)),
                SHOWN_QOS,
                retain=True,
            )
        )
        return out

    # ------------------------------------------------------------------ incoming commands

    def handle(self, payload: bytes, now_s: float) -> list[Publish]:
        """Take one message of the command topic at ``now_s`` (cabinet clock): a command is
        shown at once if the monitor allows it; the events to publish."""
        try:
            message = decode_command(payload, self.id)
        except FieldPayloadError as exc:
            self.stats.malformed += 1
            return [self._event(now_s, "refused", reason=f"malformed command: {exc}")]
        if isinstance(message, Claim):
            return self._on_claim(message.service, now_s)
        if isinstance(message, Release):
            if message.service != self.holder or message.epoch != self.epoch:
                return []
            out = [self._event(now_s, "released", message.service, message.epoch)]
            self._to_local(now_s)
            return out
        return self._on_command(message, now_s)

    def _on_command(self, cmd: Command, now_s: float) -> list[Publish]:
        if cmd.service != self.holder or cmd.epoch != self.epoch:
            self.stats.foreign += 1
            holder = f"{self.holder} epoch {self.epoch}" if self.holder else "nobody"
            return [
                self._event(
                    now_s, "refused", cmd.service, cmd.epoch, f"not the holder (held by {holder})"
                )
            ]
        if cmd.ts <= self._last_ts:
            self.stats.dropped += 1
            return []
        self._last_ts = cmd.ts
        if self._deferred is not None:  # superseded by a newer command
            self._deferred = None
            self.stats.dropped += 1
        return self._take(cmd, now_s, defer=True)

    def _take(self, cmd: Command, now_s: float, *, defer: bool) -> list[Publish]:
        """Show ``cmd`` if the monitor allows it now; a command early by less than
        ``DEFER_MAX_S`` for a timing rule (it left the service that long before the change
        was due, or its predecessor came late) is held until it is due, never shown early."""
        if not 0 <= cmd.phase < len(self.x.phases):
            return self._refuse(cmd, now_s, f"no phase {cmd.phase}")
        try:
            findings = self.watch.check(now_s, cmd.state)
        except ValueError as exc:
            return self._refuse(cmd, now_s, str(exc))
        if findings:
            if defer and all(f.rule in TIMING_RULES for f in findings):
                wait = self._due_in(now_s, cmd.state)
                if wait is not None:
                    self._deferred = cmd
                    self._deferred_due = now_s + wait
                    self.stats.deferred += 1
                    return []
            first = findings[0]
            return self._refuse(cmd, now_s, f"{first.rule}: {first.detail} in {cmd.state!r}")
        out = []
        if not self._used:
            self._used = True
            self.mode = "remote"
            self._local = None
            out.append(self._event(now_s, "remote", cmd.service, cmd.epoch))
        self._valid_s = now_s
        self.hold = cmd.hold
        self.stats.commands += 1
        self._show(now_s, cmd.state)
        self.phase = cmd.phase if self.watch.phase is None else self.watch.phase
        return out

    def _due_in(self, now_s: float, state: str) -> float | None:
        """How long until ``state`` breaks no rule, if that is at most ``DEFER_MAX_S``."""
        step = DEFER_MAX_S / 25
        for k in range(1, 26):
            if not self.watch.check(now_s + k * step, state):
                return k * step
        return None

    @property
    def deferred_due(self) -> float | None:
        """When a command held back for a timing rule is due (None if none is)."""
        return None if self._deferred is None else self._deferred_due

    def poll(self, now_s: float) -> list[Publish]:
        """Show a held-back command once it is due; call often (the agent: every loop)."""
        cmd = self._deferred
        if cmd is None or now_s < self._deferred_due - 1e-9:
            return []
        self._deferred = None
        return self._take(cmd, max(now_s, self._deferred_due), defer=False)

    def _refuse(self, cmd: Command, now_s: float, reason: str) -> list[Publish]:
        self.stats.refusals += 1
        return [self._event(now_s, "refused", cmd.service, cmd.epoch, reason)]

    def _on_claim(self, service: str, now_s: float) -> list[Publish]:
        live = (
            self.holder is not None
            and self.holder != service
            and now_s - self._valid_s < self.settings.handover_after_s
        )
        if live:
            self.stats.denials += 1
            return [
                self._event(
                    now_s, "denied", service, reason=f"held by {self.holder} epoch {self.epoch}"
                )
            ]
        self._claim = service
        return self._grant_if_green(now_s)

    def _grant_if_green(self, now_s: float) -> list[Publish]:
        if self._claim is None or self.watch.phase is None:
            return []
        if self.mode == "local" and self._local is None:
            return []  # still settling into the local plan
        service, self._claim = self._claim, None
        if service == self.holder:  # its own holder again (a restart, a repeat): same lease
            return [self._event(now_s, "granted", service, self.epoch)]
        self.holder = service
        self.epoch += 1
        self._valid_s = now_s
        self._last_ts = -math.inf
        self._deferred = None
        self._used = False
        self.phase = self.watch.phase
        self.hold = False
        self.stats.grants += 1
        return [self._event(now_s, "granted", service, self.epoch)]

    @property
    def claimed(self) -> bool:
        """Whether a service holds the lease or waits for its grant."""
        return self.holder is not None or self._claim is not None

    # ------------------------------------------------------------------ every second

    def tick(
        self, now_s: float, readings: CabinetReadings | None = None
    ) -> tuple[str, list[Publish]]:
        """The state to show from ``now_s`` on, and the events of this second.

        Call once per second, after the commands of that second (``handle``)."""
        out: list[Publish] = self.poll(now_s)
        silent_s = now_s - self._valid_s
        if self.mode == "remote" and silent_s >= self.settings.handover_after_s - 1e-9:
            if self.watch.phase is None:  # a change interval the holder left unfinished
                self._settle(now_s, self.phase)
            out.extend(self._grant_if_green(now_s))  # a standby's claim, before the watchdog
            silent_s = now_s - self._valid_s
        if self.holder is not None and silent_s >= self.settings.watchdog_s - 1e-9:
            out.append(
                self._event(
                    now_s,
                    "fallback",
                    self.holder,
                    self.epoch,
                    f"no valid command for {silent_s:g} s",
                )
            )
            self.stats.fallbacks += 1
            self.stats.longest_silence_s = max(self.stats.longest_silence_s, silent_s)
            self._to_local(now_s)
        if self.mode != "remote" and (self.holder is None or self._used):
            self._run_local(now_s, readings)
        out.extend(self._grant_if_green(now_s))
        return self.state, out

    def _to_local(self, now_s: float) -> None:
        """End the lease and go to the local plan (through a change interval if needed); a
        claim of another service waits on, for the local plan's next green."""
        if self._claim == self.holder:
            self._claim = None
        self.holder = None
        self._deferred = None
        self._used = False
        self.mode = "local"
        self.hold = False
        self._local = None

    def _run_local(self, now_s: float, readings: CabinetReadings | None) -> None:
        if self._local is None:
            if now_s < self._startup_until - 1e-9:
                return  # the start-up all-red
            if self.watch.phase is None:
                self._settle(now_s, self.phase)
                if self.watch.phase is None:
                    return
            phase = self.watch.phase
            self._local = self._new_local(now_s)
            self._local.envelopes[self.x.id] = SafetyEnvelope.resume(
                self.x, self.timing, phase, self.watch.since_s
            )
        driver = self._local
        n_loops, n_cams = len(self.layout.loops), len(self.layout.cameras)
        if readings is None:
            readings = CabinetReadings(
                _zeros_i(n_loops), _zeros_f(n_loops), _zeros_i(n_cams), _zeros_i(n_cams)
            )
        step = driver.step(
            driver.readings(
                now_s,
                readings.loop_count,
                readings.loop_occupancy,
                readings.camera_count,
                readings.camera_queue,
            )
        )
        out = step.outputs[0]
        self.phase = out.phase
        self.hold = out.hold
        self._show(now_s, out.state)

    def _new_local(self, now_s: float) -> SignalDriver:
        controller = make_controller(
            _LOCAL_CONTROLLER[self.settings.local_plan], self.layout, self._options
        )
        return SignalDriver(controller, self.layout.intersections, self.timing, now_s)

    def _settle(self, now_s: float, target: int) -> None:
        """One step of the cabinet's own change interval toward ``target``'s green."""
        state = self._toward(now_s, target)
        self.phase = target
        if state != self.state:
            self._show(now_s, state)
            self.stats.self_cleared += int(self.watch.phase is not None)

    def _toward(self, now_s: float, target: int) -> str:
        """The next state of a safe change from what is shown to ``target``'s green.

        Greens that ``target`` does not show turn yellow once their minimum green is over;
        yellows turn red once they ran their full time; ``target``'s greens come once no
        yellow is left and every conflicting link has been red for the all-red time."""
        w = self.watch
        cur = list(w.state)
        goal = self.x.phases[target].state
        changed = False
        losing = [i for i, c in enumerate(cur) if c in GREEN and goal[i] not in GREEN]
        if losing:
            ready = all(
                w.green_from[i] is None
                or now_s - (w.green_from[i] or 0.0) >= self._rules.min_green_s[i] - 1e-9
                for i in losing
            )
            if not ready:
                return w.state
            for i in losing:
                cur[i] = "y"
            return "".join(cur)
        yellows = [i for i, c in enumerate(cur) if c in YELLOW]
        for i in yellows:
            start = w.yellow_from[i]
            if start is None or now_s - start >= self._yellow_s[i] - 1e-9:
                cur[i] = "r"
                changed = True
        if yellows:
            return "".join(cur) if changed else w.state
        for j, c in enumerate(goal):
            if c not in GREEN or cur[j] in GREEN:
                continue
            for i in self.x.conflicts[j]:
                red = w.red_from[i]
                need = max(self.x.all_red_s, self._all_red.get((i, j), 0.0))
                if red is not None and now_s - red < need - 1e-9:
                    return w.state
        return goal

    def _show(self, now_s: float, state: str) -> None:
        findings = [
            f for f in self.watch.observe(now_s, state, self.hold) if f.rule != "long_green"
        ]
        self.stats.unsafe += len(findings)

    def _event(
        self,
        now_s: float,
        kind: CabinetEventKind,
        service: str = "",
        epoch: int = 0,
        reason: str = "",
    ) -> Publish:
        if kind == "denied":
            epoch = self.epoch
        return Publish(
            events_topic(self.id, self.root),
            encode_event(CabinetEvent(self.id, now_s, kind, service, epoch, reason)),
            EVENT_QOS,
        )


def detectors_message(report: DetectorReport, root: str = TOPIC_ROOT) -> Publish:
    """The message carrying a cabinet's readings (QoS 0: a late second is worth nothing)."""
    return Publish(detectors_topic(report.intersection, root), encode_detectors(report), 0)


def _zeros_i(n: int) -> IntArray:
    return np.zeros(n, dtype=np.int64)


def _zeros_f(n: int) -> FloatArray:
    return np.zeros(n, dtype=np.float64)


def cabinet_layouts(layout: Layout) -> dict[str, Layout]:
    """The layout of each intersection's cabinet: its signal and its own detectors, in the
    order of the whole layout (a cabinet reads only the detectors wired to it)."""
    out = {}
    for x in layout.intersections:
        loops = tuple(d for d in layout.loops if d.intersection == x.id)
        cameras = tuple(d for d in layout.cameras if d.intersection == x.id)
        lanes = {d.lane for d in (*loops, *cameras)} | set(x.in_lanes)
        lengths = {k: v for k, v in layout.lane_length_m.items() if k in lanes}
        out[x.id] = Layout((x,), loops, cameras, lengths)
    return out


class CabinetHost:
    """Many cabinets in one process: routes each command message to its cabinet and runs
    their seconds. Pure like ``CabinetCore``; the caller owns the broker, clock and lamps."""

    def __init__(self, cabinets: Iterable[CabinetCore], root: str = TOPIC_ROOT) -> None:
        self.root = check_root(root)
        self.cabinets = {c.id: c for c in cabinets}
        self._prefix = f"{self.root}/signals/"

    def intersection_of(self, topic: str) -> str | None:
        """The cabinet a command topic is for, or None for a topic of no hosted cabinet."""
        if not (topic.startswith(self._prefix) and topic.endswith("/command")):
            return None
        key = topic[len(self._prefix) : -len("/command")]
        return key if key in self.cabinets else None

    def handle(self, topic: str, payload: bytes, now_s: float) -> tuple[str | None, list[Publish]]:
        """One incoming message: the cabinet it went to (None if none) and what to publish."""
        key = self.intersection_of(topic)
        if key is None:
            return None, []
        return key, self.cabinets[key].handle(payload, now_s)

    def second(
        self,
        now_s: float,
        readings: Mapping[str, tuple[DetectorReport | None, CabinetReadings | None]],
    ) -> tuple[dict[str, str], list[Publish]]:
        """Every cabinet's second: the state each shows from ``now_s`` on, and the messages
        (events, detector reports, what each shows). ``readings`` by intersection (a cabinet
        missing from it reads nothing)."""
        states = {}
        out: list[Publish] = []
        for key, cab in self.cabinets.items():
            report, values = readings.get(key, (None, None))
            state, events = cab.tick(now_s, values)
            states[key] = state
            out.extend(events)
            out.extend(cab.report(now_s, report))
        return states, out

    def totals(self) -> CabinetStats:
        """The stats of every hosted cabinet, summed (the longest silence: the longest)."""
        total = CabinetStats()
        for cab in self.cabinets.values():
            for f in dataclasses.fields(CabinetStats):
                mine, theirs = getattr(total, f.name), getattr(cab.stats, f.name)
                both = max(mine, theirs) if f.name == "longest_silence_s" else mine + theirs
                setattr(total, f.name, both)
        return total
