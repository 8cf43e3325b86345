"""``citybrain broker credentials``: every broker user, its password, the ACL and TLS."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from citybrain.errors import CitybrainError

if TYPE_CHECKING:
    from citybrain.access.tls import TlsRequest


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    broker = top.add_parser("broker", help="the MQTT broker's users, ACL and TLS files")
    cmds = broker.add_subparsers(dest="broker_command", required=True, metavar="SUBCOMMAND")
    c = cmds.add_parser(
        "credentials",
        help="create or extend the broker's users, password file, ACL and TLS files",
        description="Create or extend OUTDIR/credentials (user:password lines, mode 600), "
        "OUTDIR/passwd (hashed, for Mosquitto) and OUTDIR/acl (Mosquitto 2.x). Users already "
        "in credentials keep their passwords; delete a line (or --revoke) and rerun to revoke. "
        "See configs/mosquitto/README.md.",
    )
    c.add_argument("outdir", type=Path, metavar="OUTDIR")
    _many(c, "--lot", "LOT", "parking gateways gw-LOT")
    c.add_argument(
        "--parking",
        action="store_true",
        help="the parking service's user (implied by --lot)",
    )
    _many(c, "--cabinet", "X", "signal cabinets cab-X")
    c.add_argument(
        "--net",
        type=Path,
        action="append",
        default=[],
        help="a cabinet for every traffic light of this SUMO net (.net.xml or .sumocfg)",
    )
    _many(c, "--service", "NAME", "control services ctl-NAME")
    _many(c, "--sil-host", "NAME", "SUMO-in-the-loop hosts sil-NAME")
    _many(c, "--dispatcher", "NAME", "dispatchers disp-NAME")
    _many(c, "--vehicle", "ID", "escorted vehicles veh-ID")
    _many(c, "--revoke", "USER", "remove these users")
    c.add_argument("--topic-root", default="citybrain", help="the field's topic root")
    c.add_argument("--parking-root", default="citybrain/parking", help="parking's topic root")
    c.add_argument("--parking-service-user", default="citybrain-service")
    tls = c.add_argument_group("TLS (a private CA, the broker's certificate, its listener)")
    _many(
        tls,
        "--tls-host",
        "HOST",
        "make or keep OUTDIR/tls for these host names and IP addresses of the broker, "
        "and write OUTDIR/mosquitto-tls.conf",
    )
    tls.add_argument("--tls-port", type=int, default=8883)
    tls.add_argument("--tls-bind", metavar="ADDRESS", help="listen on this address only")
    tls.add_argument(
        "--tls-days", type=int, default=825, help="validity of a new server certificate"
    )
    c.set_defaults(handler=_credentials)


def _many(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, flag: str, metavar: str, help: str
) -> None:
    """An option taking one or more values, repeatable."""
    p.add_argument(flag, metavar=metavar, help=help, action="extend", nargs="+", default=[])


def _credentials(args: argparse.Namespace) -> int:
    from citybrain.access.acl import Role, Roots, user_name
    from citybrain.access.credentials import CredentialsError, update

    try:
        roots = Roots(args.topic_root, args.parking_root, args.parking_service_user)
    except ValueError as exc:
        raise CredentialsError(str(exc)) from None
    cabinets = list(args.cabinet)
    for net in args.net:
        cabinets += _signals_of(net)
    asked = [
        (Role.GATEWAY, args.lot),
        (Role.CABINET, cabinets),
        (Role.CONTROL, args.service),
        (Role.SIL_HOST, args.sil_host),
        (Role.DISPATCHER, args.dispatcher),
        (Role.VEHICLE, args.vehicle),
    ]
    wanted = [roots.parking_service] if (args.parking or args.lot) else []
    try:
        wanted += [user_name(role, s, roots) for role, subjects in asked for s in subjects]
    except ValueError as exc:
        raise CredentialsError(str(exc)) from None
    tls = None
    if args.tls_host:
        from citybrain.access.tls import TlsRequest

        tls = TlsRequest.of(args.tls_host, args.tls_days, args.tls_port, args.tls_bind)
    outdir: Path = args.outdir
    outcome = update(outdir, wanted, args.revoke, roots)
    for name in outcome.created:
        print(f"created user {name}", file=sys.stderr)
    for name in outcome.revoked:
        print(f"revoked user {name}", file=sys.stderr)
    for name in outcome.strays:
        print(
            f"warning: user {name} has no known role: the ACL lets it do nothing", file=sys.stderr
        )
    print(
        f"wrote {outdir}/credentials, {outdir}/passwd and {outdir}/acl "
        f"({len(outcome.users)} user(s))",
        file=sys.stderr,
    )
    if tls is not None:
        _tls(outdir, tls)
    return 0


def _tls(outdir: Path, request: TlsRequest) -> None:
    from citybrain.access.tls import ensure_tls

    done = ensure_tls(outdir, request)
    if done.made_ca:
        print(f"created the CA {done.ca_cert} (give clients a copy: --ca-file)", file=sys.stderr)
    if done.issued:
        print(
            f"issued {done.server_cert} for {', '.join(done.names)} (restart mosquitto)",
            file=sys.stderr,
        )
    else:
        print(f"kept {done.server_cert} ({', '.join(done.names)})", file=sys.stderr)
    print(f"wrote {done.conf}", file=sys.stderr)


def _signals_of(net: Path) -> list[str]:
    from citybrain.netmodel.net import intersections_from_net, net_file_of, read_net

    xs = intersections_from_net(read_net(net_file_of(net)))
    if not xs:
        raise CitybrainError(f"{net}: the network has no traffic lights")
    return [x.id for x in xs]
