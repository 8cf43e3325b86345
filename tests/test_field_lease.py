"""The field service's closed loop, pure: leases (claims, grants, resume, refusals, mismatches,
silence), one controller per signal (standby, shards), the lockstep clock; and the service
against real cabinet cores, message by message in one process (no broker)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from citybrain.control.drive import SignalDriver
from citybrain.control.envelope import signal_rules
from citybrain.control.port import Decision, PhaseRequest, Readings
from citybrain.errors import ConfigError
from citybrain.field.cabinet import CabinetHost
from citybrain.field.cabinet_agent import load_cabinets
from citybrain.field.core import ClockFollower, FieldCore, FieldSettings, Publish
from citybrain.field.lease import LeaseStatus
from citybrain.field.protocol import (
    CabinetEvent,
    CabinetMode,
    Claim,
    ClockTick,
    Command,
    DetectorReport,
    EscortCall,
    EscortCancel,
    FieldPayloadError,
    LoopReading,
    Release,
    Shown,
    decode_command,
    decode_status,
    detectors_topic,
    encode_call,
    encode_cancel,
    encode_detectors,
    encode_event,
    encode_service_status,
    encode_shown,
    events_topic,
    requests_topic,
    service_topic,
    shown_topic,
)
from citybrain.field.service import load_core
from citybrain.field.shards import Shard, is_primary, select_signals
from citybrain.settings import Settings

ROOT = "r"
ME = "svc-a"
T0 = 1000.0
ARTERIAL_ROUTE = (
    "left0A0",
    "left0A0.200.00",
    "A0B0",
    "A0B0.200.00",
    "B0C0",
    "B0C0.200.00",
    "C0D0",
    "C0D0.200.00",
    "D0E0",
    "D0E0.200.00",
    "E0right0",
)
THROUGH_A0 = ("left0A0", "left0A0.200.00", "A0top0")


def _core(
    cfg: Path,
    controller: str = "actuated",
    *,
    service_id: str = ME,
    standby: bool = False,
    shard: Shard | None = None,
    signals: list[str] | None = None,
) -> FieldCore:
    return load_core(
        cfg,
        controller,
        root=ROOT,
        service_id=service_id,
        standby=standby,
        shard=shard,
        signals=signals,
    )


def _shown(
    core: FieldCore,
    ts: float,
    phase: int | None = 0,
    since: float | None = None,
    *,
    x: str = "A0",
    mode: CabinetMode = "local",
    holder: str | None = None,
    epoch: int = 0,
    state: str | None = None,
) -> list[Publish]:
    """Hand the core a cabinet's report (a green of ``phase`` unless ``state`` says else)."""
    inter = core.xs[x]
    shown_state = state if state is not None else inter.phases[phase or 0].state
    clearance = phase is None or (state is not None and any(c in "yY" for c in state))
    report = Shown(
        x,
        ts,
        shown_state,
        phase,
        clearance,
        None if clearance else (since if since is not None else ts - 10.0),
        mode,
        holder,
        epoch,
    )
    return core.handle(shown_topic(x, ROOT), encode_shown(report), ts)


def _event(
    core: FieldCore, ts: float, kind: str, service: str = ME, epoch: int = 0, x: str = "A0"
) -> list[Publish]:
    event = CabinetEvent(x, ts, kind, service, epoch, "why")  # type: ignore[arg-type]
    return core.handle(events_topic(x, ROOT), encode_event(event), ts)


def _messages(out: Iterable[Publish]) -> list[Command | Claim | Release]:
    found = []
    for p in out:
        if p.topic.endswith("/command"):
            found.append(decode_command(p.payload, p.topic.split("/")[-2]))
    return found


def _commands(out: Iterable[Publish]) -> list[Command]:
    return [m for m in _messages(out) if isinstance(m, Command)]


def _granted(core: FieldCore, t: float, phase: int = 0, since: float | None = None) -> Command:
    """Claim A0, get it granted at ``t`` (epoch 1), and take the first tick's command."""
    (claim,) = _messages(_shown(core, t, phase, since))
    assert isinstance(claim, Claim) and claim.service == ME
    assert _event(core, t, "granted", epoch=1) == []
    _shown(core, t, phase, since, holder=ME, epoch=1)
    (command,) = _commands(core.tick(t + 1))
    return command


# ------------------------------------------------------------------------ claims and grants


def test_claims_follow_the_reports_at_most_once_a_second(single_cfg: Path) -> None:
    core = _core(single_cfg)
    out = core.tick(T0)  # nothing heard yet: nothing commanded, nothing claimed
    assert _messages(out) == [] and core.statuses == {"A0": LeaseStatus.UNKNOWN}
    (claim,) = _messages(_shown(core, T0 + 0.2))
    assert claim == Claim("A0", ME, T0 + 0.2)
    assert _messages(_shown(core, T0 + 0.7)) == []  # not a flood
    assert _messages(core.tick(T0 + 1)) == [] and core.statuses["A0"] is LeaseStatus.CLAIMING
    assert len(_messages(_shown(core, T0 + 1.2))) == 1
    # the liveness message says what the service holds, and what not
    (live,) = [p for p in core.tick(T0 + 2) if p.topic == service_topic(ME, ROOT)] or [
        core.liveness(T0 + 2)
    ]
    assert live.retain


def test_a_grant_resumes_the_envelope_from_the_reported_green(single_cfg: Path) -> None:
    core = _core(single_cfg)
    x = core.xs["A0"]
    command = _granted(core, T0, phase=2, since=T0 - 1.0)
    # the green began 2 s before the first command: no change before its minimum
    assert (command.epoch, command.ts, command.phase) == (1, T0 + 1, 2)
    assert command.state == x.phases[2].state and not command.clearance
    envelope = core.driver.envelopes["A0"] if core.driver else None
    assert envelope is not None and envelope.green_since == T0 - 1.0
    assert core.views["A0"] is envelope and core.statuses["A0"] is LeaseStatus.HELD
    # later commands carry a growing ts under the same lease, and every state the envelope
    # takes from phase 2 starts with the change interval the rules give, never a green jump
    rules = signal_rules(x, core.timing)
    seen = [command.state]
    for k in range(2, 40):
        _shown(core, T0 + k - 0.5, 2, T0 - 1.0, mode="remote", holder=ME, epoch=1, state=seen[-1])
        (c,) = _commands(core.tick(T0 + k))
        assert c.ts == T0 + k and c.epoch == 1
        seen.append(c.state)
    changes = [b for a, b in itertools.pairwise(seen) if a != b]
    if changes:
        starts = {steps[0].state for (a, _), steps in rules.intervals.items() if a == 2 and steps}
        assert changes[0] in starts


def test_a_restarted_service_waits_for_its_old_lease_then_resumes(single_cfg: Path) -> None:
    core = _core(single_cfg)
    # the cabinet still names this service (its previous run) under epoch 4, remote
    out = _shown(core, T0, 1, T0 - 3, mode="remote", holder=ME, epoch=4)
    (claim,) = _messages(out)  # a claim, never a command under a lease it was not granted
    assert isinstance(claim, Claim)
    assert _commands(core.tick(T0 + 0.5)) == []
    assert core.statuses["A0"] is LeaseStatus.CLAIMING
    # the cabinet answers with the same lease; the report after it resumes
    _event(core, T0 + 0.6, "granted", epoch=4)
    _shown(core, T0 + 0.6, 1, T0 - 3, mode="remote", holder=ME, epoch=4)
    (command,) = _commands(core.tick(T0 + 1))
    assert (command.epoch, command.phase) == (4, 1)


def test_a_report_older_than_the_grant_does_not_resume(single_cfg: Path) -> None:
    core = _core(single_cfg)
    _shown(core, T0, 0)
    _event(core, T0 + 0.5, "granted", epoch=1)
    _shown(core, T0 + 0.2, 0)  # published before the grant, arrives after it
    assert _commands(core.tick(T0 + 1)) == [] and core.statuses["A0"] is LeaseStatus.HELD
    _shown(core, T0 + 0.5, 0, holder=ME, epoch=1)
    assert len(_commands(core.tick(T0 + 2))) == 1


def test_no_resume_from_a_change_interval(single_cfg: Path) -> None:
    core = _core(single_cfg)
    x = core.xs["A0"]
    _shown(core, T0, 0)
    _event(core, T0, "granted", epoch=1)
    yellow = "".join("y" if c in "Gg" else c for c in x.phases[0].state)
    _shown(core, T0 + 0.1, 1, holder=ME, epoch=1, state=yellow)
    assert _commands(core.tick(T0 + 1)) == []


# ------------------------------------------------------------------------ losing a lease


def test_a_refusal_releases_the_lease_and_claims_it_again(single_cfg: Path) -> None:
    core = _core(single_cfg)
    _granted(core, T0)
    (release,) = _messages(_event(core, T0 + 1.1, "refused", epoch=1))
    assert release == Release("A0", ME, 1, T0 + 1.1)
    assert _commands(core.tick(T0 + 2)) == []
    assert core.book.counts["refused"] == 1
    # the cabinet goes local: the next report brings a claim
    (claim,) = _messages(_shown(core, T0 + 2.5, 0))
    assert isinstance(claim, Claim)
    # a refusal of another service's command, or of an old epoch, changes nothing
    core2 = _core(single_cfg)
    _granted(core2, T0)
    assert _event(core2, T0 + 1.1, "refused", service="other", epoch=1) == []
    assert _event(core2, T0 + 1.1, "refused", epoch=0) == []
    assert len(_commands(core2.tick(T0 + 2))) == 1


def test_a_cabinet_showing_something_else_is_not_commanded(single_cfg: Path) -> None:
    core = _core(single_cfg)
    first = _granted(core, T0, since=T0)
    x = core.xs["A0"]
    other = x.phases[2].state
    assert other != first.state
    # one report still showing the grant (local): a tick's latency, tolerated
    _shown(core, T0 + 1.5, 0, T0, holder=ME, epoch=1)
    assert len(_commands(core.tick(T0 + 2))) == 1
    # what we commanded: fine
    _shown(core, T0 + 2.5, 0, T0, mode="remote", holder=ME, epoch=1, state=first.state)
    assert len(_commands(core.tick(T0 + 3))) == 1
    # two reports in a row of a state we never commanded: stop, release, claim again
    _shown(core, T0 + 3.5, 2, T0, mode="remote", holder=ME, epoch=1, state=other)
    assert len(_commands(core.tick(T0 + 4))) == 1
    _shown(core, T0 + 4.2, 2, T0, mode="remote", holder=ME, epoch=1, state=other)
    out = core.tick(T0 + 4.5)
    assert _messages(out) == [Release("A0", ME, 1, T0 + 4.5)]
    assert core.book.counts["mismatch"] == 1 and core.statuses["A0"] is LeaseStatus.LOCAL


def test_a_cabinet_still_local_after_our_commands_is_resynchronised(single_cfg: Path) -> None:
    core = _core(single_cfg)
    _granted(core, T0)
    for k in (1.5, 2.5):
        _shown(core, T0 + k, 0, holder=ME, epoch=1)  # granted, but never remote
        out = core.tick(T0 + k + 0.5)
    assert any(isinstance(m, Release) for m in _messages(out))


def test_another_holder_or_a_fallback_ends_our_commands(single_cfg: Path) -> None:
    core = _core(single_cfg)
    _granted(core, T0)
    _shown(core, T0 + 1.5, 0, mode="remote", holder="svc-b", epoch=2)
    out = core.tick(T0 + 2)
    assert _commands(out) == [] and not any(isinstance(m, Release) for m in _messages(out))
    assert core.statuses["A0"] is LeaseStatus.HELD_BY_OTHER
    core2 = _core(single_cfg)
    _granted(core2, T0)
    _event(core2, T0 + 1.2, "fallback", epoch=1)
    assert _commands(core2.tick(T0 + 2)) == []
    assert core2.book.counts["fallbacks"] == 1


def test_a_silent_cabinet_is_neither_commanded_nor_claimed(single_cfg: Path) -> None:
    core = _core(single_cfg)
    _granted(core, T0)
    silent_after = core.settings.silent_after_s
    assert len(_commands(core.tick(T0 + 2))) == 1
    out = core.tick(T0 + 1 + silent_after + 0.5)
    assert _messages(out) == [] and core.statuses["A0"] is LeaseStatus.SILENT
    live = core.liveness(T0 + 10)
    assert b'"silent":["A0"]' in live.payload
    # it speaks again (still naming us, remote): we claim and resume, never command blindly
    (claim,) = _messages(_shown(core, T0 + 9, 0, mode="remote", holder=ME, epoch=1))
    assert isinstance(claim, Claim)


# ------------------------------------------------------------------------ one controller per signal


def test_a_standby_claims_a_held_signal_and_a_plain_service_does_not(single_cfg: Path) -> None:
    plain = _core(single_cfg)
    standby = _core(single_cfg, standby=True)
    for core in (plain, standby):
        core.tick(T0)

    def held(core: FieldCore, t: float) -> list[Publish]:
        return _shown(core, t, 0, mode="remote", holder="svc-b", epoch=3)

    assert _messages(held(plain, T0 + 0.5)) == []
    (claim,) = _messages(held(standby, T0 + 0.5))
    assert isinstance(claim, Claim)
    _event(standby, T0 + 0.6, "denied")
    assert standby.book.counts["denied"] == 1
    assert standby.statuses["A0"] is LeaseStatus.UNKNOWN  # judged at the next tick
    standby.tick(T0 + 1)
    assert standby.statuses["A0"] is LeaseStatus.HELD_BY_OTHER
    # the holder says it went offline: the plain service claims too
    plain.handle(service_topic("svc-b", ROOT), encode_service_status(False), T0 + 1)
    assert len(_messages(held(plain, T0 + 1.5))) == 1


def test_a_standby_started_with_a_primary_leaves_it_the_signals(arterial_cfg: Path) -> None:
    standby = _core(arterial_cfg, standby=True)
    wait = standby.settings.standby_wait_s
    assert _messages(_shown(standby, T0, 0)) == []  # nobody holds it: the primary's first
    assert _messages(_shown(standby, T0 + wait - 0.5, 0)) == []
    assert len(_messages(_shown(standby, T0 + wait, 0))) == 1  # no primary came
    # both start at once on real cabinet cores: the primary holds everything
    bus = _bus(arterial_cfg)
    primary, standby = _core(arterial_cfg), _core(arterial_cfg, service_id="svc-b", standby=True)
    bus.join(standby)
    bus.join(primary)
    for k in range(15):
        bus.second(T0 + k)
    assert set(primary.statuses.values()) == {LeaseStatus.HELD} and primary.taken is None
    assert set(standby.statuses.values()) == {LeaseStatus.HELD_BY_OTHER}


def test_a_shard_held_by_a_live_service_stops_a_plain_service(arterial_cfg: Path) -> None:
    plain = _core(arterial_cfg)
    standby = _core(arterial_cfg, standby=True)
    for core in (plain, standby):
        core.tick(T0)
        for k in range(1, 6):
            for x in core.xs:
                _shown(core, T0 + k, 0, x=x, mode="remote", holder="svc-b", epoch=1)
            core.tick(T0 + k + 0.5)
    assert plain.taken is not None and standby.taken is None
    assert "svc-b" in plain.taken and "--standby" in plain.taken
    assert str(len(plain.xs)) in plain.taken


# ------------------------------------------------------------------------ shards


def test_shards_split_the_net_and_the_service_subscribes_to_its_own(arterial_cfg: Path) -> None:
    ids = ["E0", "B0", "A0", "D0", "C0"]
    parts = [Shard(i, 2).of(ids) for i in range(2)]
    assert parts == [("A0", "B0", "C0"), ("D0", "E0")]
    assert [Shard.parse("1/2").of(reversed(ids))] == [parts[1]]
    assert is_primary(ids, parts[0]) and not is_primary(ids, parts[1])
    with pytest.raises(ConfigError):
        Shard.parse("2/2")
    with pytest.raises(ConfigError, match="Z9"):
        select_signals(ids, ["A0", "Z9"])
    core = _core(arterial_cfg, shard=Shard(1, 2))
    assert tuple(core.xs) == parts[1] and not core.primary and core.sharded
    assert {d.intersection for d in core.layout.loops} == set(parts[1])
    topics = dict(core.subscriptions())
    assert shown_topic("D0", ROOT) in topics and shown_topic("A0", ROOT) not in topics
    whole = _core(arterial_cfg)
    assert whole.primary and not whole.sharded
    assert f"{ROOT}/signals/+/shown" in dict(whole.subscriptions())
    with pytest.raises(ConfigError):
        _core(arterial_cfg, signals=["A0"], shard=Shard(0, 2))


def test_an_escort_is_served_by_the_shards_its_route_crosses(arterial_cfg: Path) -> None:
    cores = [_core(arterial_cfg, shard=Shard(i, 2), service_id=f"s{i}") for i in range(2)]
    answers = []
    for core in cores:
        out = core.handle(requests_topic(ROOT), encode_call(EscortCall("amb", ARTERIAL_ROUTE)), T0)
        answers.append([decode_status(p.payload) for p in out])
    (a,), (b,) = answers
    assert a.status == b.status == "active"
    assert set(a.signals) == set(cores[0].xs) and set(b.signals) == set(cores[1].xs)
    assert [s.intersection for s in cores[1].escort.escorts["amb"].corridor.signals] == list(
        b.signals
    )
    # a route only through the first shard: the second stays out of it
    short = THROUGH_A0
    out0 = cores[0].handle(requests_topic(ROOT), encode_call(EscortCall("amb2", short)), T0)
    out1 = cores[1].handle(requests_topic(ROOT), encode_call(EscortCall("amb2", short)), T0)
    assert [decode_status(p.payload).signals for p in out0] == [("A0",)] and out1 == []
    # what no shard owns is answered once, by the primary shard's service
    bad = encode_call(EscortCall("amb3", ("nope",)))
    replies = [core.handle(requests_topic(ROOT), bad, T0) for core in cores]
    assert [len(r) for r in replies] == [1, 0]
    assert decode_status(replies[0][0].payload).status == "rejected"
    cancel = encode_cancel(EscortCancel("amb2"))
    replies = [core.handle(requests_topic(ROOT), cancel, T0) for core in cores]
    assert [len(r) for r in replies] == [1, 0]


# ------------------------------------------------------------------------ bad reports, the clock


@pytest.mark.parametrize(
    ("topic", "payload", "field"),
    [
        ("shown", b"{", ""),
        ("shown", b'{"ts": 1, "state": "GGrr", "mode": "local", "epoch": 0}', "state"),
        ("shown", b'{"ts": 1, "state": "r", "mode": "sideways", "epoch": 0}', "mode"),
        ("events", b'{"ts": 1, "kind": "exploded"}', "kind"),
        ("detectors", b'{"ts": "x"}', "ts"),
    ],
)
def test_malformed_reports_are_refused_and_counted(
    single_cfg: Path, topic: str, payload: bytes, field: str
) -> None:
    core = _core(single_cfg)
    with pytest.raises(FieldPayloadError) as err:
        core.handle(f"{ROOT}/signals/A0/{topic}", payload, T0)
    assert err.value.field == field
    assert core.counts["rejected"] == 1
    bad_phase = Shown("A0", T0, core.xs["A0"].phases[0].state, 9, False, T0, "local", None, 0)
    with pytest.raises(FieldPayloadError, match="no phase 9"):
        core.handle(shown_topic("A0", ROOT), encode_shown(bad_phase), T0)
    assert core.handle(shown_topic("A0", ROOT), b"", T0) == []  # a cleared retained report


@pytest.mark.parametrize("skew_s", [-7.0, 0.0, 7.0])
def test_detectors_of_a_cabinet_whose_clock_is_off_are_heard(
    single_cfg: Path, skew_s: float
) -> None:
    core = _core(single_cfg)
    seen: list[int] = []
    decide = core.escort.base.decide

    def spy(readings: Readings) -> Decision:
        seen.append(int(readings.loop_count.sum()))
        return decide(readings)

    core.escort.base.decide = spy  # type: ignore[method-assign]
    core.start_clock(T0, lockstep=False)
    loop = core.layout.loops[0]
    for k in range(1, 4):
        t = T0 + k
        green = core.xs["A0"].phases[0].state
        shown = Shown("A0", t - 0.5 + skew_s, green, 0, False, T0, "remote", "svc-b", 1)
        core.handle(shown_topic("A0", ROOT), encode_shown(shown), t - 0.5)
        core.handle(
            detectors_topic("A0", ROOT),
            encode_detectors(
                DetectorReport("A0", t - 0.5 + skew_s, {loop.id: LoopReading(2, 0.3)})
            ),
            t - 0.5,
        )
        core.tick(t)
    assert seen == [2, 2, 2] and core.counts["stale"] == 0
    # a backlog after a reconnection is still dropped
    old = DetectorReport("A0", T0 - 30 + skew_s, {loop.id: LoopReading(5, 0.3)})
    core.handle(detectors_topic("A0", ROOT), encode_detectors(old), T0 + 4.5)
    core.tick(T0 + 5)
    assert seen[-1] == 0 and core.counts["stale"] == 1


def test_the_clock_follows_one_run_second_by_second() -> None:
    clock = ClockFollower()
    assert clock.accept(ClockTick(0.0, "run1"))
    assert not clock.accept(ClockTick(0.0, "run1"))  # a duplicate
    assert not clock.accept(ClockTick(5.0, "run2"))  # another run
    assert clock.accept(ClockTick(1.0, "run1")) and clock.last_t == 1.0
    assert clock.ignored == 2


def test_a_lockstep_run_after_wall_ticks_gives_the_leases_back(single_cfg: Path) -> None:
    core = _core(single_cfg)
    assert core.start_clock(T0, lockstep=False) == []
    _granted(core, T0)
    out = core.start_clock(0.0, lockstep=True)
    assert _messages(out) == [Release("A0", ME, 1, 0.0)] and core.driver is None
    assert core.start_clock(1.0, lockstep=True) == []


def test_settings_are_checked(single_cfg: Path) -> None:
    with pytest.raises(ConfigError, match="silent_after_s"):
        FieldSettings(silent_after_s=0)
    with pytest.raises(ConfigError, match="service id"):
        load_core(single_cfg, "plan", service_id="a/b")


# ------------------------------------------------------------------------ with real cabinet cores


class Bus:
    """Services and cabinet cores in one process: messages go where a broker would send them,
    in order, at once; retained reports reach a service when it joins. ``svc_now`` and
    ``cab_now`` are the two sides' clocks."""

    def __init__(self, host: CabinetHost, skew_s: float = 0.0) -> None:
        self.host = host
        self.skew_s = skew_s
        """How far the cabinets' clock is ahead of the services' (``second``)."""
        self.services: list[FieldCore] = []
        self.retained: dict[str, bytes] = {}
        self.states: dict[str, list[str]] = {k: [] for k in host.cabinets}
        self.svc_now = self.cab_now = 0.0

    def join(self, core: FieldCore) -> None:
        self.services.append(core)
        for topic, payload in self.retained.items():
            self.to_cabinets(core.handle(topic, payload, self.svc_now))

    def to_services(self, messages: Iterable[Publish]) -> None:
        for m in messages:
            if m.retain:
                self.retained[m.topic] = m.payload
            if m.topic.endswith("/command"):
                self.to_cabinets([m])
                continue
            for core in list(self.services):
                self.to_cabinets(core.handle(m.topic, m.payload, self.svc_now))

    def to_cabinets(self, messages: Iterable[Publish]) -> None:
        for m in messages:
            if not m.topic.endswith("/command"):
                self.to_services([m])
                continue
            key, events = self.host.handle(m.topic, m.payload, self.cab_now)
            if key is not None and events:
                self.to_services([*events, *self.host.cabinets[key].report(self.cab_now)])

    def second(self, t: float, readings: dict[str, DetectorReport] | None = None) -> None:
        """One wall-clock second: every cabinet's second and report, then every service's
        (its commands reach the cabinets 10 ms later)."""
        self.svc_now, self.cab_now = t, t + self.skew_s
        for key, cab in self.host.cabinets.items():
            state, events = cab.tick(self.cab_now)
            self.states[key].append(state)
            report = (readings or {}).get(key)
            self.to_services([*events, *cab.report(self.cab_now, report)])
        self.cab_now += 0.01
        for core in list(self.services):
            self.to_cabinets(core.start_clock(t, lockstep=False))
            self.to_cabinets(core.tick(t))

    @property
    def refusals(self) -> int:
        return self.host.totals().refusals

    @property
    def unsafe(self) -> int:
        return self.host.totals().unsafe


def _bus(cfg: Path, start: float = T0, skew_s: float = 0.0) -> Bus:
    return Bus(load_cabinets(cfg, Settings(), start + skew_s, root=ROOT, plan_running=True), skew_s)


def _busy(core: FieldCore, t: float, rng: random.Random) -> dict[str, DetectorReport]:
    """Random loop counts for every cabinet: a controller that switches often."""
    out: dict[str, DetectorReport] = {}
    for x_id in core.xs:
        loops = {
            d.id: LoopReading(rng.randint(0, 2), rng.random() * 0.5)
            for d in core.layout.loops
            if d.intersection == x_id
        }
        out[x_id] = DetectorReport(x_id, t, loops, {})
    return out


def test_the_closed_loop_holds_every_signal_and_every_command_is_accepted(
    arterial_cfg: Path,
) -> None:
    bus = _bus(arterial_cfg)
    core = _core(arterial_cfg, "maxpressure")
    bus.join(core)
    rng = random.Random(4)
    for k in range(240):
        bus.second(T0 + k, _busy(core, T0 + k, rng))
    assert set(core.statuses.values()) == {LeaseStatus.HELD}
    cabs = bus.host.cabinets.values()
    assert all(c.mode == "remote" and c.holder == ME for c in cabs)
    assert bus.refusals == 0 and bus.unsafe == 0 and bus.host.totals().fallbacks == 0
    assert bus.host.totals().commands > 200 * len(core.xs)
    assert sum(len(set(s)) for s in bus.states.values()) > 10  # the signals did change


class Impatient:
    """A controller that asks every signal for its next phase all the time: each green ends
    exactly at its minimum, as the service counts it."""

    name = "impatient"
    uses_detectors = False
    signal_program: str | None = None

    def __init__(self, core: FieldCore) -> None:
        self.phases = {x.id: len(x.phases) for x in core.layout.intersections}

    def decide(self, readings: Readings) -> Decision:
        return Decision(
            tuple(
                PhaseRequest(x_id, (view.phase + 1) % self.phases[x_id])
                for x_id, view in readings.signals.items()
            )
        )


def _impatient(cfg: Path) -> FieldCore:
    core = _core(cfg)
    core.escort.base = Impatient(core)
    return core


@pytest.mark.parametrize("skew_s", [-7.0, -0.4, 7.0])
def test_cabinet_clocks_off_by_seconds_refuse_nothing(arterial_cfg: Path, skew_s: float) -> None:
    """A cabinet whose clock is behind reports greens that look older than they are: the
    service corrects them by the report's lag, so no green it resumes is cut below its
    minimum (restarts every few seconds, a controller that ends every green at once)."""
    bus = _bus(arterial_cfg, skew_s=skew_s)
    core = _impatient(arterial_cfg)
    bus.join(core)
    for k in range(240):
        t = T0 + k
        if k % 7 == 6 and k < 200:
            bus.services.remove(core)
            core = _impatient(arterial_cfg)
            bus.svc_now, bus.cab_now = t - 0.5, t - 0.5 + skew_s
            bus.join(core)
        bus.second(t)
    assert set(core.statuses.values()) == {LeaseStatus.HELD}
    assert bus.refusals == 0 and bus.unsafe == 0
    assert sum(len(set(s)) for s in bus.states.values()) > 10


@pytest.mark.parametrize("seed", range(4))
def test_a_restarted_service_resumes_through_change_intervals(
    arterial_cfg: Path, seed: int
) -> None:
    """Kill the service at random seconds (mid-change-interval too) and start a new one with
    the same id: every command any cabinet gets is accepted, nothing unsafe is shown."""
    rng = random.Random(seed)
    bus = _bus(arterial_cfg)
    core = _core(arterial_cfg, "maxpressure")
    bus.join(core)
    restarts = sorted(rng.sample(range(20, 360), 6))
    commands = mid_change = 0
    for k in range(420):
        t = T0 + k
        changing = sum(c.watch.phase is None for c in bus.host.cabinets.values())
        if restarts and k >= restarts[0] and changing:  # some signal in a change interval
            restarts.pop(0)
            mid_change += changing
            bus.services.remove(core)
            core = _core(arterial_cfg, "maxpressure")
            bus.svc_now = bus.cab_now = t - 0.5
            bus.join(core)
        bus.second(t, _busy(core, t, rng))
        commands = bus.host.totals().commands
    assert bus.refusals == 0 and bus.unsafe == 0 and bus.host.totals().foreign == 0
    assert set(core.statuses.values()) == {LeaseStatus.HELD}
    assert commands > 380 * len(core.xs) and not restarts and mid_change > 0


@pytest.mark.parametrize("skew_s", [0.0, -7.0])
def test_a_standby_takes_over_within_the_watchdog_time(arterial_cfg: Path, skew_s: float) -> None:
    bus = _bus(arterial_cfg, skew_s=skew_s)
    first = _impatient(arterial_cfg)
    standby = _core(arterial_cfg, service_id="svc-b", standby=True)
    standby.escort.base = Impatient(standby)
    bus.join(first)
    bus.join(standby)
    for k in range(30):
        bus.second(T0 + k)
    assert set(first.statuses.values()) == {LeaseStatus.HELD}
    assert set(standby.statuses.values()) == {LeaseStatus.HELD_BY_OTHER}
    assert standby.book.counts["denied"] > 0 and standby.taken is None
    bus.services.remove(first)  # it dies: no release, no more commands
    died = T0 + skew_s + 29.01  # its last commands, cabinet clock
    took: dict[str, float] = {}
    for k in range(30, 60):
        bus.second(T0 + k)
        for key, cab in bus.host.cabinets.items():
            if cab.holder == "svc-b" and cab.mode == "remote":
                took.setdefault(key, bus.cab_now)
    assert set(took) == set(standby.xs)
    # within the watchdog time: never back to the local plan in between
    assert max(took.values()) - died < Settings().cabinet.watchdog_s
    assert bus.host.totals().fallbacks == 0
    assert bus.refusals == 0 and bus.unsafe == 0


def test_lockstep_decides_as_the_in_process_run(arterial_cfg: Path) -> None:
    """The SUMO-in-the-loop order (reports of t, the tick, the commands of t, the cabinets'
    second t), after a pre-roll in which the service claims: every cabinet shows what the
    in-process driver shows, second by second, under the same readings."""
    t0 = 3600.0
    host = load_cabinets(arterial_cfg, Settings(), t0, root=ROOT, plan_running=True)
    bus = Bus(host)
    core = _core(arterial_cfg, "actuated")
    bus.svc_now, bus.cab_now = 1.7e9, t0  # the service hears the pre-roll on its wall clock
    bus.join(core)
    bus.to_services([p for cab in host.cabinets.values() for p in cab.report(t0)])
    assert all(c.claimed for c in host.cabinets.values())
    reference = _core(arterial_cfg, "actuated").escort  # the same controller, in process
    layout = core.layout
    driver = SignalDriver(reference, layout.intersections, core.timing, t0)
    rng = np.random.default_rng(5)
    empty = np.zeros(len(layout.cameras), dtype=np.int64)
    for k in range(300):
        t = t0 + k
        bus.cab_now = t
        if k:
            bus.svc_now = t  # the service's time between ticks: the next tick's second
        counts = rng.integers(0, 3, len(layout.loops)).astype(np.int64)
        occ = rng.random(len(layout.loops)) * 0.6
        for key, cab in host.cabinets.items():
            loops = {
                d.id: LoopReading(int(counts[i]), float(occ[i]))
                for i, d in enumerate(layout.loops)
                if d.intersection == key
            }
            bus.to_services(cab.report(t, DetectorReport(key, t, loops)))
        bus.to_cabinets(core.start_clock(t, lockstep=True))
        bus.to_cabinets(core.tick(t))
        want = driver.step(Readings(t, counts, occ, empty, empty.copy(), driver.envelopes))
        for key, cab in host.cabinets.items():
            state, events = cab.tick(t)
            bus.to_services(events)
            assert state == want.states[key], f"{key} at {t - t0:g} s"
    totals = host.totals()
    assert totals.refusals == 0 and totals.grants == len(host.cabinets)
    assert totals.commands >= 290 * len(host.cabinets)


# ------------------------------------------------------------------------ waiting for readings


def _detectors(core: FieldCore, ts: float, now: float, x: str = "A0") -> None:
    loop = next(d for d in core.layout.loops if d.intersection == x)
    report = DetectorReport(x, ts, {loop.id: LoopReading(1, 0.25)})
    core.handle(detectors_topic(x, ROOT), encode_detectors(report), now)


def test_the_core_awaits_the_next_seconds_readings_of_each_held_signal(single_cfg: Path) -> None:
    """``awaited``: the held signals whose detector message of the next second has not come
    (a service with ``--tick-on-readings`` ticks once it is empty); a reading of an earlier
    second does not count, and one used by a later tick than its own second is ``late``."""
    core = _core(single_cfg)
    assert core.awaited == set()  # nothing held, nothing to wait for
    _granted(core, T0)  # held from the tick of T0 + 1
    _detectors(core, T0 + 2, T0 + 2.01)
    _shown(core, T0 + 2, 0, T0 - 10, mode="remote", holder=ME, epoch=1)
    core.tick(T0 + 2)
    assert (core.awaited, core.awaited_t) == ({"A0"}, T0 + 3) and core.counts["late"] == 0
    _detectors(core, T0 + 2, T0 + 2.9)  # a reading of the second already ticked: late
    assert core.awaited == {"A0"}
    _detectors(core, T0 + 3, T0 + 3.02)
    assert core.awaited == set()
    core.tick(T0 + 3)
    assert core.counts["late"] == 1  # the reading of T0 + 2 went into the tick of T0 + 3
    # a held signal that sent no detectors in a second is not waited for in the next
    assert (core.awaited, core.awaited_t) == ({"A0"}, T0 + 4)
    _shown(core, T0 + 3.5, 0, T0 - 10, mode="remote", holder=ME, epoch=1)
    core.tick(T0 + 4)
    assert core.awaited == set() and core.awaited_t == T0 + 5


def test_a_service_waiting_for_readings_sleeps_until_they_come_or_the_wait_ends(
    single_cfg: Path,
) -> None:
    """With ``readings_wait_s`` the loop's next deadline is the end of the wait while
    readings are awaited (a reading wakes it sooner), the second itself otherwise."""
    import queue
    import threading

    from citybrain.field.service import ServiceStats, _Loop

    core = _core(single_cfg)
    inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
    loop = _Loop(core, None, inbox, threading.Event(), lambda: T0, ServiceStats(), 2.0, 0.4)  # type: ignore[arg-type]
    loop.next_tick = T0
    assert loop._tick_due() == T0
    core.awaited, core.awaited_t = {"A0"}, T0
    assert loop._tick_due() == T0 + 0.4
    core.awaited_t = T0 - 1.0  # readings of a second already ticked: nothing to wait for
    assert loop._tick_due() == T0
    clock_only = _Loop(core, None, inbox, threading.Event(), lambda: T0, ServiceStats(), 2.0)  # type: ignore[arg-type]
    clock_only.next_tick = T0
    core.awaited_t = T0
    assert clock_only._tick_due() == T0  # without the option the second is the deadline
