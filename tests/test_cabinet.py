"""The cabinet's own logic: its monitor refuses what breaks the lamp rules, its lease, its
watchdog and its local plan (pure: no broker, no SUMO)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citybrain.control.drive import SignalDriver
from citybrain.control.envelope import SafetyEnvelope
from citybrain.control.fixed import FixedTimeController
from citybrain.control.model import Intersection
from citybrain.control.port import Layout
from citybrain.errors import ConfigError
from citybrain.field.cabinet import CabinetCore, CabinetSettings, cabinet_layouts
from citybrain.field.core import Publish
from citybrain.field.protocol import (
    CabinetEvent,
    Claim,
    Command,
    Release,
    decode_event,
    decode_shown,
    encode_command,
)
from citybrain.settings import Settings
from citybrain.sim.monitor import SignalMonitor

T0 = 1000.0


def _layout(cfg: Path) -> Layout:
    from citybrain.netmodel.layout import build_layout
    from citybrain.netmodel.net import NetGeometry, intersections_from_net, net_file_of, read_net

    net = read_net(net_file_of(cfg))
    xs = intersections_from_net(net)
    return build_layout(xs, NetGeometry(net), Settings().detectors)


@pytest.fixture(scope="module")
def single(single_cfg: Path) -> Layout:
    (layout,) = cabinet_layouts(_layout(single_cfg)).values()
    return layout


def _cabinet(layout: Layout, **kw: float | str) -> CabinetCore:
    s = Settings()
    return CabinetCore(
        layout,
        s.envelope,
        s,
        T0,
        CabinetSettings(**kw),  # type: ignore[arg-type]
        plan_running=True,
    )


def _events(out: list[Publish]) -> list[CabinetEvent]:
    found = []
    for p in out:
        topic = p.topic
        if topic.endswith("/events"):
            found.append(decode_event(p.payload, topic.split("/")[-2]))
    return found


class Service:
    """A well-behaved holder: a safety envelope resumed from the granted green."""

    def __init__(self, cab: CabinetCore, name: str = "svc") -> None:
        self.cab, self.name = cab, name
        self.env: SafetyEnvelope | None = None
        self.epoch = 0
        self.ts = 0.0

    def claim(self, now: float) -> list[CabinetEvent]:
        events = _events(self.cab.handle(encode_command(Claim(self.cab.id, self.name, now)), now))
        for e in events:
            if e.kind == "granted" and e.service == self.name:
                self.grant(e.epoch)
        return events

    def grant(self, epoch: int) -> None:
        shown = decode_shown(self.cab.report(0.0)[-1].payload, self.cab.id)
        assert shown.holder == self.name and shown.phase is not None
        assert shown.green_since is not None
        self.epoch = epoch
        self.env = SafetyEnvelope.resume(
            self.cab.x, self.cab.timing, shown.phase, shown.green_since
        )

    def command(self, now: float, request: int | None) -> list[CabinetEvent]:
        assert self.env is not None
        state = self.env.step(now, request)
        cmd = Command(self.cab.id, self.name, self.epoch, now, state, self.env.phase)
        return _events(self.cab.handle(encode_command(cmd), now))


def _green_now(cab: CabinetCore, t: float) -> float:
    """Tick the cabinet until it shows a phase's green; the time."""
    while cab.watch.phase is None:
        cab.tick(t)
        t += 1
    return t


def test_the_local_plan_is_the_stored_plan(single: Layout) -> None:
    cab = _cabinet(single)
    x = single.intersections[0]
    s = Settings()
    driver = SignalDriver(FixedTimeController(single), (x,), s.envelope, T0)
    for k in range(int(x.cycle_s * 2)):
        t = T0 + k
        state, _ = cab.tick(t)
        step = driver.step(driver.readings(t, *_no_readings(single)))
        assert state == step.states[x.id]
    assert cab.stats.unsafe == 0 and cab.mode == "local" and cab.holder is None


def _no_readings(layout: Layout) -> tuple[object, ...]:
    import numpy as np

    n, m = len(layout.loops), len(layout.cameras)
    return (np.zeros(n, np.int64), np.zeros(n), np.zeros(m, np.int64), np.zeros(m, np.int64))


def test_a_claim_is_granted_at_a_green_and_the_first_command_hands_over(single: Layout) -> None:
    cab = _cabinet(single)
    t = _green_now(cab, T0)
    svc = Service(cab)
    (granted,) = svc.claim(t)
    assert (granted.kind, granted.epoch) == ("granted", 1)
    shown = decode_shown(cab.report(t)[-1].payload, cab.id)
    assert (shown.mode, shown.holder, shown.epoch) == ("local", "svc", 1)
    before = cab.state
    cab.tick(t)  # granted, not yet used: the green is kept as it is
    assert cab.state == before
    (remote,) = svc.command(t + 1, None)
    assert remote.kind == "remote" and cab.mode == "remote"
    other = (svc.env.phase + 1) % len(cab.x.phases) if svc.env is not None else 0
    for k in range(2, 60):
        assert svc.command(t + k, other if k % 20 == 0 else None) == []
        cab.tick(t + k)
    assert cab.stats.commands == 59 and cab.stats.refusals == 0 and cab.stats.unsafe == 0


def _held(single: Layout) -> tuple[CabinetCore, Service, float]:
    cab = _cabinet(single)
    t = _green_now(cab, T0)
    svc = Service(cab)
    svc.claim(t)
    for k in range(1, 30):  # past every minimum green
        svc.command(t + k, None)
        cab.tick(t + k)
    return cab, svc, t + 30


def _send(
    cab: CabinetCore, state: str, now: float, epoch: int = 1, service: str = "svc"
) -> list[CabinetEvent]:
    cmd = Command(cab.id, service, epoch, now, state, 0)
    return _events(cab.handle(encode_command(cmd), now))


def test_the_monitor_refuses_conflicting_greens(single: Layout) -> None:
    cab, _, t = _held(single)
    x = cab.x
    bad = "".join("G" for _ in x.links)
    before = cab.state
    (event,) = _send(cab, bad, t)
    assert event.kind == "refused" and event.reason.startswith("conflict:")
    assert cab.state == before and cab.stats.refusals == 1 and cab.stats.unsafe == 0


def test_the_monitor_refuses_green_to_red_and_short_yellow_and_short_all_red(
    single: Layout,
) -> None:
    cab, svc, t = _held(single)
    x = cab.x
    current = cab.state
    assert svc.env is not None
    other = x.phases[(svc.env.phase + 1) % len(x.phases)].state
    all_red = "r" * len(x.links)
    # straight from green to the other phase's green: green_to_red (or a conflict)
    (event,) = _send(cab, other, t)
    assert event.kind == "refused" and event.reason.split(":")[0] in ("green_to_red", "conflict")
    # yellow for one second only, then all red
    yellow = "".join("y" if c in "Gg" else c for c in current)
    assert _send(cab, yellow, t + 1) == []
    (event,) = _send(cab, all_red, t + 2)
    assert event.kind == "refused" and event.reason.startswith("short_yellow:")
    # the full yellow, then the other green with no all-red between
    assert _send(cab, all_red, t + 1 + x.yellow_s) == []
    # the net's change interval from this phase to the next but one has an all-red
    assert svc.env is not None
    after = x.phases[(svc.env.phase + 2) % len(x.phases)].state
    need = max(
        cab.watch.rules.min_all_red_s.get((i, j), 0.0)
        for i, c in enumerate(current)
        for j, d in enumerate(after)
        if c in "Gg" and d in "Gg" and current[j] not in "Gg"
    )
    assert need > 0.5
    (event,) = _send(cab, after, t + 1.5 + x.yellow_s)
    assert event.kind == "refused" and event.reason.startswith("short_all_red:")
    assert _send(cab, after, t + 1 + x.yellow_s + need) == []
    assert cab.stats.unsafe == 0


def test_commands_from_others_and_old_commands_are_not_shown(single: Layout) -> None:
    cab, _, t = _held(single)
    before = cab.state
    (event,) = _send(cab, before, t, service="intruder")
    assert event.reason.startswith("not the holder (held by svc epoch 1)")
    (event,) = _send(cab, before, t, epoch=7)
    assert event.kind == "refused"
    assert _send(cab, before, t - 10) == []  # older than the last one taken: dropped
    assert cab.stats.dropped == 1 and cab.stats.foreign == 2


def test_a_malformed_command_is_refused_and_reported(single: Layout) -> None:
    cab, _, t = _held(single)
    (event,) = _events(cab.handle(b'{"service": "svc", "ts": "soon"}', t))
    assert event.kind == "refused" and "malformed command: ts: must be a number" in event.reason
    assert cab.stats.malformed == 1


def test_the_watchdog_falls_back_to_the_local_plan(single: Layout) -> None:
    cab, _, t = _held(single)
    monitor = SignalMonitor((cab.x,), cab.timing)
    kinds = []
    for k in range(0, 120):
        state, out = cab.tick(t + k)
        kinds += [e.kind for e in _events(out)]
        monitor.observe(t + k, cab.id, state)
    assert kinds == ["fallback"]
    assert cab.mode == "local" and cab.holder is None and cab.stats.fallbacks == 1
    assert len({s for s, _ in [(cab.state, 0)]}) == 1
    assert [v.rule for v in monitor.violations if v.rule != "long_green"] == []


def test_a_change_left_unfinished_is_finished_through_yellow_and_all_red(single: Layout) -> None:
    cab, svc, t = _held(single)
    assert svc.env is not None
    other = (svc.env.phase + 1) % len(cab.x.phases)
    monitor = SignalMonitor((cab.x,), cab.timing)
    monitor.observe(t - 1, cab.id, cab.state)
    svc.command(t, other)  # the yellow starts, then the service dies
    monitor.observe(t, cab.id, cab.state)
    assert cab.watch.phase is None
    states = []
    for k in range(1, 20):
        state, _ = cab.tick(t + k)
        monitor.observe(t + k, cab.id, state)
        states.append(state)
    assert cab.x.phases[other].state in states  # it reached the phase the change led to
    assert monitor.violations == [] and cab.stats.unsafe == 0 and cab.stats.self_cleared == 1


def test_a_second_service_is_denied_then_takes_over_when_the_first_falls_silent(
    single: Layout,
) -> None:
    cab, _, t = _held(single)
    standby = Service(cab, "standby")
    (denied,) = standby.claim(t)
    assert denied.kind == "denied" and denied.reason == "held by svc epoch 1"
    events = []
    for k in range(1, 6):  # the holder is silent now
        cab.tick(t + k)
        events = standby.claim(t + k)
        if events and events[0].kind == "granted":
            break
    assert events[0].kind == "granted" and events[0].epoch == 2
    assert k <= CabinetSettings().handover_after_s + 1 < CabinetSettings().watchdog_s
    (remote,) = standby.command(t + k + 1, None)
    assert remote.kind == "remote" and cab.holder == "standby" and cab.stats.fallbacks == 0
    (refused,) = _send(cab, cab.state, t + k + 2)  # the old holder's epoch is over
    assert refused.reason.startswith("not the holder")


def test_a_claim_from_the_holder_keeps_its_lease(single: Layout) -> None:
    cab, svc, t = _held(single)
    (again,) = svc.claim(t)  # a restarted service with the same id
    assert (again.kind, again.epoch) == ("granted", 1) and cab.holder == "svc"
    assert svc.command(t + 1, None) == [] and cab.stats.grants == 1


def test_a_release_hands_the_signal_back_at_once(single: Layout) -> None:
    cab, _, t = _held(single)
    (event,) = _events(cab.handle(encode_command(Release(cab.id, "svc", 1, t)), t))
    assert event.kind == "released" and cab.mode == "local" and cab.holder is None
    cab.tick(t)
    assert cab.stats.fallbacks == 0


def test_bad_settings_fail_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"cabinet\.watchdog_s"):
        CabinetSettings(watchdog_s=0)
    with pytest.raises(ConfigError, match=r"cabinet\.handover_after_s"):
        CabinetSettings(watchdog_s=2, handover_after_s=3)
    with pytest.raises(ConfigError, match=r"cabinet\.local_plan"):
        CabinetSettings(local_plan="random")  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_no_command_stream_makes_a_cabinet_show_anything_unsafe(
    data: st.DataObject, single_layout: Layout
) -> None:
    """Whatever a (buggy or hostile) holder sends, and whenever it goes quiet, the lamps keep
    every rule: an independent monitor watching them finds nothing."""
    cab = _cabinet(single_layout)
    x: Intersection = cab.x
    t = _green_now(cab, T0)
    _events(cab.handle(encode_command(Claim(cab.id, "svc", t)), t))
    monitor = SignalMonitor((x,), cab.timing)
    monitor.observe(t, cab.id, cab.state)
    letters = st.sampled_from("GgyrG")
    for k in range(1, data.draw(st.integers(20, 80))):
        now = t + k
        if data.draw(st.booleans()):
            n = len(x.links)
            if data.draw(st.booleans()):
                state = data.draw(st.sampled_from([p.state for p in x.phases] + ["r" * n]))
                state = "".join(
                    "y" if data.draw(st.integers(0, 3)) == 0 and c in "Gg" else c for c in state
                )
            else:
                state = "".join(data.draw(letters) for _ in range(n))
            cmd = Command(cab.id, "svc", 1, now, state, data.draw(st.integers(0, len(x.phases))))
            cab.handle(encode_command(cmd), now)
        state, _ = cab.tick(now)
        monitor.observe(now, cab.id, state)
    assert [v for v in monitor.violations if v.rule != "long_green"] == []
    assert cab.stats.unsafe == 0


@pytest.fixture(scope="module")
def single_layout(single: Layout) -> Layout:
    return single


def test_cabinet_layouts_give_each_cabinet_its_own_detectors(arterial_cfg: Path) -> None:
    layout = _layout(arterial_cfg)
    parts = cabinet_layouts(layout)
    assert set(parts) == {x.id for x in layout.intersections}
    assert sum(len(p.loops) for p in parts.values()) == len(layout.loops)
    for xid, part in parts.items():
        assert all(d.intersection == xid for d in (*part.loops, *part.cameras))


def test_a_command_a_moment_early_is_held_until_due_and_never_shown_early(
    single: Layout,
) -> None:
    cab, _, t = _held(single)
    x = cab.x
    current = cab.state
    yellow = "".join("y" if c in "Gg" else c for c in current)
    all_red = "r" * len(x.links)
    assert _send(cab, yellow, t) == []
    # 3 ms before the yellow has run its time (it crossed a network faster than the last one)
    early = t + x.yellow_s - 0.003
    assert _send(cab, all_red, early) == []
    assert cab.state == yellow and cab.deferred_due is not None
    assert cab.poll(early + 0.001) == [] and cab.state == yellow
    assert cab.poll(t + x.yellow_s + 0.01) == []
    assert cab.state == all_red and cab.watch.since_s >= t + x.yellow_s - 1e-9
    assert cab.stats.deferred == 1 and cab.stats.refusals == 0 and cab.stats.unsafe == 0
    # a whole second early is refused
    cab2, _, t2 = _held(single)
    assert _send(cab2, yellow, t2) == []
    (event,) = _send(cab2, all_red, t2 + x.yellow_s - 1.0)
    assert event.kind == "refused" and event.reason.startswith("short_yellow:")


def _plain(layout: Layout, **kw: object) -> CabinetCore:
    s = Settings()
    return CabinetCore(layout, s.envelope, s, T0, **kw)  # type: ignore[arg-type]


def test_a_cabinet_that_does_not_know_its_lamps_starts_with_an_all_red(single: Layout) -> None:
    """A restarted agent may find the lamps on any green: it never jumps from it to another."""
    cab = _plain(single)
    x = cab.x
    assert cab.state == "r" * len(x.links)
    needed = x.yellow_s + x.all_red_s
    states = [cab.tick(T0 + k)[0] for k in range(int(needed) + 3)]
    assert states[: int(needed)] == ["r" * len(x.links)] * int(needed)
    assert cab.watch.phase is not None and cab.stats.unsafe == 0
    # no claim is granted before the signal shows a green of its own
    cab2 = _plain(single)
    assert _events(cab2.handle(encode_command(Claim(cab2.id, "svc", T0)), T0)) == []
    assert cab2.holder is None


def test_the_first_green_keeps_its_minimum_from_when_it_was_seen(single: Layout) -> None:
    x = single.intersections[0]
    green = x.phases[0].state
    cab = _plain(single, showing=green)
    cab.tick(T0)  # its local plan takes the green over as it is
    svc = Service(cab)
    svc.claim(T0)
    assert cab.holder == "svc"
    yellow = "".join("y" if c in "Gg" else c for c in green)
    (event,) = _send(cab, yellow, T0 + 0.1)
    assert event.kind == "refused" and event.reason.startswith("short_green:")


def test_a_cabinet_started_in_a_yellow_shows_it_for_its_full_time(single: Layout) -> None:
    x = single.intersections[0]
    yellow = "".join("y" if c in "Gg" else c for c in x.phases[0].state)
    cab = _plain(single, showing=yellow)
    shown = [cab.tick(T0 + k * 0.5)[0] for k in range(int(2 * x.yellow_s))]
    assert all(s == yellow for s in shown)
    assert cab.stats.unsafe == 0


def test_a_standby_takes_over_a_change_interval_left_unfinished_without_a_fallback(
    single: Layout,
) -> None:
    """The holder dies right after starting a yellow; the cabinet finishes the change and
    grants the standby's claim at the green, before its watchdog would fire."""
    cab = _cabinet(single, watchdog_s=4.0, handover_after_s=1.5)
    t = _green_now(cab, T0)
    svc = Service(cab)
    svc.claim(t)
    for k in range(1, 30):
        svc.command(t + k, None)
        cab.tick(t + k)
    assert svc.env is not None
    svc.command(t + 30, (svc.env.phase + 1) % len(cab.x.phases))  # the yellow starts
    cab.tick(t + 30)
    standby = Service(cab, "standby")
    for k in range(31, 40):
        standby.claim(t + k)
        cab.tick(t + k)
        if cab.holder == "standby":
            break
    assert cab.holder == "standby" and cab.stats.fallbacks == 0 and cab.stats.unsafe == 0
