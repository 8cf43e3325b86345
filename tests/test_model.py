"""Intersection models extracted from SUMO nets, checked against facts read off the net files."""

from __future__ import annotations

import pytest

from citybrain.control.model import PlanStep, phases_from_plan, transitions_from_plan
from citybrain.netmodel.net import intersections_from_net, read_net
from citybrain.sim.scenario import load_scenario

from .conftest import RESCO_MAPS, resco_config

# Signals, green phases per signal (net order) and links, read by hand from the net files.
EXPECTED = {
    "cologne1": (1, [4], 20),
    "ingolstadt1": (1, [3], 8),
    "grid4x4": (16, [8] * 16, 576),
    "arterial4x4": (16, [5] * 16, 192),
}


def _models(name: str):  # type: ignore[no-untyped-def]
    scenario = load_scenario(resco_config(name))
    return intersections_from_net(read_net(scenario.net_file))


@pytest.mark.parametrize("name", RESCO_MAPS)
def test_every_resco_map_loads(name: str) -> None:
    models = _models(name)
    assert models
    for x in models:
        assert x.phases and x.cycle_s > 0
        assert all(len(s.state) == len(x.links) for s in x.plan)
        for i, row in enumerate(x.conflicts):  # symmetric, never with itself
            assert i not in row
            assert all(i in x.conflicts[j] for j in row)


@pytest.mark.parametrize("name", RESCO_MAPS)
def test_every_controlled_movement_is_kept(name: str) -> None:
    # several movements can share one signal index (ingolstadt21 has six such): all of them,
    # and so all their approach lanes, must be in the model, or their queues go unseen
    net = read_net(load_scenario(resco_config(name)).net_file)
    models = {x.id: x for x in intersections_from_net(net)}
    for tls in net.getTrafficLights():
        x = models[tls.getID()]
        for in_lane, out_lane, index in tls.getConnections():
            assert (in_lane.getID(), out_lane.getID()) in x.links[index].movements
            assert in_lane.getID() in x.in_lanes


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts_match_the_net_files(name: str) -> None:
    signals, phases, links = EXPECTED[name]
    models = _models(name)
    assert len(models) == signals
    assert [len(x.phases) for x in models] == phases
    assert sum(len(x.links) for x in models) == links


def test_cologne1_conflicts_by_hand() -> None:
    # Approaches 23429231#1 (links 5-9) and 27115123#3 (15-19) face each other and share
    # phase 0; -32038056#3 (0-4) crosses them.
    (x,) = _models("cologne1")
    assert x.links[8].in_lane == "23429231#1_1" and x.links[8].out_lane == "-28198821#4_1"
    assert x.is_conflicting(8, 16)  # left turn across the opposite through movement
    assert 16 in x.yields_to[8] and 8 not in x.yields_to[16]
    assert x.is_conflicting(6, 1)  # through movements of crossing approaches
    assert not x.is_conflicting(6, 16)  # opposite throughs
    assert not x.is_conflicting(5, 15)  # opposite right turns
    assert [x.unsafe_pairs(p.state) for p in x.phases] == [[], [], [], []]
    crossing = ["r"] * 20
    crossing[1] = crossing[6] = "G"
    assert x.unsafe_pairs("".join(crossing)) == [(1, 6)]
    assert x.phases[0].state == "rrrrrGGGggrrrrrGGGgg"
    assert x.transitions[(0, 1)] == (PlanStep("rrrrryyyggrrrrryyygg", 5.0),)
    assert x.cycle_s == 90


def test_generated_change_interval_yellows_only_the_links_that_lose_green() -> None:
    (x,) = _models("cologne1")
    steps = x.change_interval(0, 2)  # not adjacent in the plan: built from the rules
    assert steps[0].state[5:10] == "yyyyy" and steps[0].duration_s == x.yellow_s
    assert set(steps[-1].state) == {"r"} and steps[-1].duration_s == x.all_red_s


def test_plan_parsing_on_a_made_up_plan() -> None:
    plan = (
        PlanStep("GGrr", 30),
        PlanStep("yyrr", 3),
        PlanStep("rrrr", 2),
        PlanStep("rrGG", 20),
        PlanStep("rryy", 3),
    )
    phases = phases_from_plan(plan)
    assert [p.state for p in phases] == ["GGrr", "rrGG"]
    assert transitions_from_plan(plan, phases) == {
        (0, 1): (PlanStep("yyrr", 3), PlanStep("rrrr", 2)),
        (1, 0): (PlanStep("rryy", 3),),
    }


def test_net_without_traffic_lights_has_no_models(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    import sumolib

    net = tmp_path / "plain.net.xml"
    subprocess.run(
        [sumolib.checkBinary("netgenerate"), "--grid", "--grid.number", "2", "-o", str(net)],
        check=True,
        capture_output=True,
    )
    assert intersections_from_net(read_net(net)) == ()
