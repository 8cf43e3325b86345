"""``citybrain control serve`` (the field service) and ``citybrain escort request|cancel``."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from citybrain.errors import CitybrainError

if TYPE_CHECKING:
    from citybrain.field.protocol import EscortCall, EscortCancel, EscortStatus
    from citybrain.mqtt.address import BrokerSettings

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def add_control_serve(
    control_cmds: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    serve = control_cmds.add_parser(
        "serve", help="run a controller in the field: detectors and escorts over MQTT"
    )
    serve.add_argument("--broker", default=DEFAULT_BROKER, help="mqtt://HOST:PORT or mqtts://")
    serve.add_argument(
        "--net", type=Path, required=True, help="the road net (.net.xml, or a .sumocfg)"
    )
    serve.add_argument(
        "--controller", default="adaptive", help="controller name (citybrain control list)"
    )
    serve.add_argument(
        "--escort",
        default="corridor",
        choices=("corridor", "local", "none"),
        help="escort mode for requests: corridor (green wave, default), local or none",
    )
    serve.add_argument("--config", type=Path, help="settings TOML (see configs/citybrain.toml)")
    serve.add_argument("--topic-root", default="citybrain", help="first topic levels")
    serve.add_argument(
        "--client-id",
        help="MQTT client id (default: the service id and a random suffix; two connections "
        "with one client id knock each other off the broker)",
    )
    serve.add_argument(
        "--service-id",
        default="citybrain-control",
        help="the name cabinets grant their lease to (default citybrain-control; one per "
        "service: a second process under a live one's id stops with an error); a restarted "
        "service takes its signals back under the same name",
    )
    serve.add_argument(
        "--standby",
        action="store_true",
        help="hot standby: keep claiming the signals another service holds, and take them "
        "over when it stops (without it, a shard held entirely by a live service is an error)",
    )
    shard = serve.add_mutually_exclusive_group()
    shard.add_argument(
        "--signals",
        type=_ids,
        help="control only these signals (ids, comma-separated; default: all of the net)",
    )
    shard.add_argument(
        "--shard",
        metavar="I/N",
        help="control shard I of N (I from 0 to N-1): the net's signal ids sorted, cut into "
        "N consecutive blocks (the same split as citybrain cabinet run --shard)",
    )
    serve.add_argument(
        "--tick-on-readings",
        nargs="?",
        const=0.5,
        type=float,
        metavar="WAIT_S",
        help="tick each second once the detector readings of that second from every signal "
        "held are in, waiting at most WAIT_S (default 0.5) after the second begins; without "
        "it, each second is ticked at its start, when readings of the second may still be "
        "on their way (they are then used a second later)",
    )
    serve.add_argument(
        "--stats-json",
        type=Path,
        help="write the service's statistics (ticks, messages, leases) to this file on exit",
    )
    _credentials(serve)
    serve.set_defaults(handler=_serve)


def add_escort(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    escort = top.add_parser("escort", help="ask the field service for an ambulance escort")
    cmds = escort.add_subparsers(dest="escort_command", required=True, metavar="SUBCOMMAND")
    req = cmds.add_parser("request", help="request an escort along a route")
    req.add_argument("--vehicle", required=True)
    req.add_argument(
        "--route", required=True, type=_edges, help="edge ids in route order, comma-separated"
    )
    req.add_argument(
        "--priority", type=int, default=1, help="higher wins a contested signal (default 1)"
    )
    cancel = cmds.add_parser("cancel", help="cancel a vehicle's escort")
    for p in (req, cancel):
        p.description = (
            "Publish, then wait for the control service's answer on the vehicle's status "
            "topic: exit 0 when the escort is active (printing the corridor's signals) or "
            "cancelled; exit 2 with one line when the broker refuses the message, the service "
            "rejects it (with its reason) or no answer comes within --timeout."
        )
    cancel.add_argument("--vehicle", required=True)
    for p in (req, cancel):
        p.add_argument("--broker", default=DEFAULT_BROKER)
        p.add_argument("--topic-root", default="citybrain")
        p.add_argument(
            "--timeout",
            type=_seconds,
            default=10.0,
            help="seconds to wait for the broker and for the service's answer (default 10)",
        )
        _credentials(p)
    req.set_defaults(handler=_request)
    cancel.set_defaults(handler=_cancel)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, not {text!r}")
    return value


def _edges(text: str) -> list[str]:
    edges = [e.strip() for e in text.split(",") if e.strip()]
    if not edges:
        raise argparse.ArgumentTypeError("expected edge ids separated by commas")
    return edges


def _ids(text: str) -> list[str]:
    ids = [e.strip() for e in text.split(",") if e.strip()]
    if not ids:
        raise argparse.ArgumentTypeError("expected signal ids separated by commas")
    return ids


def _credentials(p: argparse.ArgumentParser) -> None:
    p.add_argument("--username")
    p.add_argument(
        "--password",
        default=os.environ.get("CITYBRAIN_MQTT_PASSWORD"),
        help="or CITYBRAIN_MQTT_PASSWORD (not visible in ps)",
    )
    p.add_argument("--ca-file", help="CA certificate for mqtts:// brokers")


def _broker(args: argparse.Namespace) -> BrokerSettings:
    from citybrain.mqtt.address import BrokerSettings

    try:
        return BrokerSettings.from_url(
            args.broker, username=args.username, password=args.password, ca_file=args.ca_file
        )
    except ValueError as exc:
        raise CitybrainError(str(exc)) from None


def _serve(args: argparse.Namespace) -> int:
    from citybrain.field.service import (
        ServiceStats,
        check_readings_wait,
        load_core,
        run_service,
        stats_json,
    )
    from citybrain.field.shards import Shard
    from citybrain.settings import load_settings

    broker = _broker(args)
    check_readings_wait(args.tick_on_readings)
    instance = uuid.uuid4().hex[:12]
    core = load_core(
        args.net,
        args.controller,
        escort=args.escort,
        settings=load_settings(args.config),
        root=args.topic_root,
        service_id=args.service_id,
        standby=args.standby,
        instance=instance,
        started_s=time.time(),
        signals=args.signals,
        shard=None if args.shard is None else Shard.parse(args.shard),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # the net, the layout and the controller's tables live as long as the process: keep the
    # garbage collector from walking them again and again (at a thousand signals it spent
    # half the time the service took on the cabinets' messages)
    gc.collect()
    gc.freeze()
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    print(
        f"service {core.service_id}{' (standby)' if args.standby else ''}: serving "
        f"{len(core.layout.intersections)} signal(s) of {args.net} with "
        f"{args.controller} (escort {args.escort}) on {broker.address.url}",
        file=sys.stderr,
    )
    client_id = args.client_id or f"{args.service_id}-{instance[:6]}"
    stats = ServiceStats()
    try:
        run_service(
            core,
            broker,
            client_id=client_id,
            stop=stop,
            readings_wait_s=args.tick_on_readings,
            stats=stats,
        )
    finally:
        if args.stats_json is not None:
            write_json(args.stats_json, stats_json(core, stats))
    print(f"stopped: {stats}", file=sys.stderr)
    return 0


def write_json(path: Path, obj: object) -> None:
    """Write ``obj`` as JSON to ``path`` (atomically); a one-line error if it cannot."""
    import json
    import os

    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(obj), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise CitybrainError(f"cannot write {path}: {exc.strerror}") from None


def _request(args: argparse.Namespace) -> int:
    from citybrain.field.protocol import EscortCall

    call = EscortCall(_vehicle(args.vehicle), tuple(args.route), args.priority, time.time())
    status = _ask(args, call)
    if status.status == "rejected":
        raise CitybrainError(
            f"the service rejected the escort of {call.vehicle}: {status.reason or 'no reason'}"
        )
    signals = ", ".join(status.signals) if status.signals else "no signal on the route"
    print(f"escorting {call.vehicle}: {signals}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from citybrain.field.protocol import EscortCancel

    cancel = EscortCancel(_vehicle(args.vehicle), time.time())
    status = _ask(args, cancel)
    if status.status == "rejected":
        raise CitybrainError(
            f"the service refused to cancel the escort of {cancel.vehicle}: "
            f"{status.reason or 'no reason'}"
        )
    if status.reason:
        print(f"{cancel.vehicle}: {status.reason}")
    else:
        print(f"cancelled the escort of {cancel.vehicle}")
    return 0


def _ask(args: argparse.Namespace, message: EscortCall | EscortCancel) -> EscortStatus:
    """Send ``message`` and wait for the service's answer (citybrain.field.dispatch)."""
    from citybrain.field.dispatch import ask
    from citybrain.field.protocol import check_root

    try:
        root = check_root(args.topic_root)
    except ValueError as exc:
        raise CitybrainError(str(exc)) from None
    return ask(_broker(args), message, root=root, timeout_s=args.timeout)


def _vehicle(name: str) -> str:
    from citybrain.field.protocol import check_level

    try:
        return check_level(name, "vehicle id")
    except ValueError as exc:
        raise CitybrainError(str(exc)) from None
