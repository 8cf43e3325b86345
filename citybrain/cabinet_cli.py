"""``citybrain cabinet run``: one process hosting the cabinets of one or many signals."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from citybrain.errors import CitybrainError

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def add_cabinet(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cabinet = top.add_parser(
        "cabinet", help="run signal cabinets: own monitor, watchdog and local plan, over MQTT"
    )
    cmds = cabinet.add_subparsers(dest="cabinet_command", required=True, metavar="SUBCOMMAND")
    run = cmds.add_parser(
        "run", help="host the cabinets of a net's signals (all, a list or a shard)"
    )
    run.add_argument("--broker", default=DEFAULT_BROKER, help="mqtt://HOST:PORT or mqtts://")
    run.add_argument("--net", type=Path, required=True, help="the road net (.net.xml or .sumocfg)")
    which = run.add_mutually_exclusive_group()
    which.add_argument("--signals", type=_names, help="intersection ids, comma-separated")
    which.add_argument("--shard", help="i/N: shard i (from 0) of the net's signals split in N")
    run.add_argument("--config", type=Path, help="settings TOML ([cabinet], [envelope], ...)")
    run.add_argument("--topic-root", default="citybrain", help="first topic levels")
    run.add_argument("--client-id", default="citybrain-cabinet")
    run.add_argument(
        "--credentials",
        type=Path,
        help="user:password file from the credentials tool: each cabinet connects as "
        "cab-{intersection} (one connection per cabinet)",
    )
    run.add_argument("--username", help="one user for a shared connection (a host role)")
    run.add_argument(
        "--password",
        default=os.environ.get("CITYBRAIN_MQTT_PASSWORD"),
        help="or CITYBRAIN_MQTT_PASSWORD (not visible in ps)",
    )
    run.add_argument("--ca-file", help="CA certificate for mqtts:// brokers")
    run.add_argument(
        "--detectors",
        choices=("synthetic", "none"),
        required=True,
        help="this command has no detector I/O of its own: synthetic Poisson counts (a trial "
        "deployment: never at a live signal) or none (every detector reads zero); a real "
        "cabinet implements Detectors and Lamps of citybrain/field/cabinet_agent.py",
    )
    run.add_argument(
        "--flow-vph", type=float, default=300.0, help="synthetic flow per lane (veh/h)"
    )
    run.add_argument("--lamps-log", action="store_true", help="print every lamp change")
    run.add_argument(
        "--stats-json",
        type=Path,
        help="write the agent's statistics (seconds run, messages, latencies, the cabinets' "
        "totals) to this file on exit",
    )
    run.set_defaults(handler=_run)


def _names(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected intersection ids separated by commas")
    return names


def _run(args: argparse.Namespace) -> int:
    from citybrain.field.cabinet_agent import (
        AgentStats,
        load_cabinets,
        read_logins,
        run_cabinets,
    )
    from citybrain.field.protocol import check_root
    from citybrain.field.shards import Shard
    from citybrain.field.simfield import LampLog, SyntheticDetectors
    from citybrain.mqtt.address import BrokerSettings
    from citybrain.settings import load_settings

    try:
        check_root(args.topic_root)
        broker = BrokerSettings.from_url(
            args.broker, username=args.username, password=args.password, ca_file=args.ca_file
        )
    except ValueError as exc:
        raise CitybrainError(str(exc)) from None
    settings = load_settings(args.config)
    shard = Shard.parse(args.shard) if args.shard else None
    host = load_cabinets(
        args.net, settings, time.time(), signals=args.signals, shard=shard, root=args.topic_root
    )
    logins = None
    if args.credentials is not None:
        logins = read_logins(args.credentials)
        missing = [k for k in host.cabinets if k not in logins]
        if missing:
            raise CitybrainError(
                f"{args.credentials}: no cab-{missing[0]} line "
                f"({len(missing)} cabinet(s) without credentials)"
            )
    if not (math.isfinite(args.flow_vph) and args.flow_vph >= 0):
        raise CitybrainError(f"--flow-vph must be a number >= 0, not {args.flow_vph:g}")
    layouts = {k: c.layout for k, c in host.cabinets.items()}
    flow = args.flow_vph if args.detectors == "synthetic" else 0.0
    detectors = SyntheticDetectors(layouts, flow)
    lamps = LampLog(sys.stdout if args.lamps_log else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    gc.collect()  # the cabinets' tables live as long as the process: keep the collector
    gc.freeze()  # from walking them again and again
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    c = settings.cabinet
    print(
        f"{len(host.cabinets)} cabinet(s) of {args.net} on {broker.address.url}: watchdog "
        f"{c.watchdog_s:g} s, local plan {c.local_plan}",
        file=sys.stderr,
    )
    stats = AgentStats()
    try:
        run_cabinets(
            host,
            detectors,
            lamps,
            broker,
            logins=logins,
            client_id=args.client_id,
            stop=stop,
            stats=stats,
        )
    finally:
        if args.stats_json is not None:
            from citybrain.field_cli import write_json

            obj = stats.to_json()
            obj["cabinets"] = dataclasses.asdict(host.totals())
            obj["signals"] = len(host.cabinets)
            write_json(args.stats_json, obj)
    totals = host.totals()
    print(
        f"stopped after {stats.seconds} s: {totals.commands} commands shown, "
        f"{totals.refusals} refused, {totals.fallbacks} fallbacks, {totals.unsafe} unsafe",
        file=sys.stderr,
    )
    return 0
