"""Broker users and what each may do: roles, user names and the Mosquitto ACL, without I/O.

A user's role is in its name, so the list of users (the ``credentials`` file) is all the state
there is::

    citybrain-service  the parking service (the name is a setting: ``Roots.parking_service``)
    gw-LOT             the gateway of parking lot LOT
    cab-X              the cabinet of signal X: its own readings, shown state and events out,
                       its own commands in
    ctl-NAME           a control service (``citybrain control serve``)
    sil-NAME           a SUMO-in-the-loop host: many cabinets on one connection, and the clock
    disp-NAME          a dispatcher (``citybrain escort request|cancel``)
    veh-ID             the GPS unit of escorted vehicle ID

Topics are those of ``citybrain.field.protocol`` (under ``Roots.field``, ``citybrain``) and
``citybrain.parking.mqtt`` (under ``Roots.parking``, ``citybrain/parking``). The ACL is
Mosquitto 2.x's ``acl_file``: a ``user NAME`` line, then that user's ``topic read|write|
readwrite FILTER`` lines; anything not listed is denied. Mosquitto's ``pattern`` lines can
only substitute a whole topic level with the whole user name, so the per-signal and per-lot
rules are written out user by user.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from citybrain.field.protocol import check_root
from citybrain.parking.mqtt import check_lot_id, check_topic_root

Access = Literal["read", "write", "readwrite"]


class Role(Enum):
    PARKING_SERVICE = "parking service"
    GATEWAY = "parking gateway"
    CABINET = "cabinet"
    CONTROL = "control service"
    SIL_HOST = "SUMO-in-the-loop host"
    DISPATCHER = "dispatcher"
    VEHICLE = "vehicle"


PREFIXES: dict[Role, str] = {
    Role.GATEWAY: "gw-",
    Role.CABINET: "cab-",
    Role.CONTROL: "ctl-",
    Role.SIL_HOST: "sil-",
    Role.DISPATCHER: "disp-",
    Role.VEHICLE: "veh-",
}
"""The user name of a role's member is its prefix and its id (the parking service aside)."""

SUBJECTS: dict[Role, str] = {
    Role.GATEWAY: "lot id",
    Role.CABINET: "intersection id",
    Role.CONTROL: "service name",
    Role.SIL_HOST: "host name",
    Role.DISPATCHER: "dispatcher name",
    Role.VEHICLE: "vehicle id",
}

ORDER: tuple[Role, ...] = tuple(Role)
"""The order of the ACL's blocks."""

MAX_ID = 200
# An id is one topic level and part of a user name: plain characters only. (SUMO names a
# joined cluster of junctions after all of them: ids of 160 characters occur.)
_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_ID - 1}}}")
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True, slots=True)
class Roots:
    """The topic roots the ACL covers, and the parking service's user name."""

    field: str = "citybrain"
    parking: str = "citybrain/parking"
    parking_service: str = "citybrain-service"

    def __post_init__(self) -> None:
        check_root(self.field)
        check_topic_root(self.parking)
        check_user_name(self.parking_service)
        if any(self.parking_service.startswith(p) for p in PREFIXES.values()):
            raise ValueError(
                f"the parking service's user name {self.parking_service!r} must not start "
                f"with a role's prefix ({', '.join(PREFIXES.values())})"
            )


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    subject: str
    """The lot, intersection, vehicle or name the user stands for ('' for the parking
    service)."""


@dataclass(frozen=True, slots=True)
class Grant:
    access: Access
    topic: str
    """A topic or a filter (``+`` for one level)."""


def check_user_name(name: str) -> str:
    """``name`` itself, or ``ValueError``: it goes into the password file and the ACL."""
    if not isinstance(name, str) or not _USER.fullmatch(name):
        raise ValueError(
            f"invalid user name {name!r}: use A-Z a-z 0-9 . _ - (starting with a letter or digit)"
        )
    return name


def check_subject(role: Role, subject: str) -> str:
    """``subject`` itself, or ``ValueError`` with one line saying what an id may be."""
    if role is Role.PARKING_SERVICE:
        raise ValueError("the parking service has no id")
    if role is Role.GATEWAY:
        return check_lot_id(subject)
    if not isinstance(subject, str) or not _ID.fullmatch(subject):
        raise ValueError(
            f"invalid {SUBJECTS[role]} {subject!r}: use 1-{MAX_ID} of A-Z a-z 0-9 . _ - "
            "(starting with a letter or digit)"
        )
    return subject


def user_name(role: Role, subject: str, roots: Roots | None = None) -> str:
    """The user name of ``subject`` in ``role`` (``ValueError`` for an invalid id)."""
    if role is Role.PARKING_SERVICE:
        return (roots or Roots()).parking_service
    return PREFIXES[role] + check_subject(role, subject)


def parse_user(name: str, roots: Roots | None = None) -> User | None:
    """The role and id of a user name; ``None`` for a name of no role."""
    roots = roots or Roots()
    if name == roots.parking_service:
        return User(name, Role.PARKING_SERVICE, "")
    for role, prefix in PREFIXES.items():
        if name.startswith(prefix):
            subject = name[len(prefix) :]
            try:
                check_subject(role, subject)
            except ValueError:
                return None
            return User(name, role, subject)
    return None


def grants(user: User, roots: Roots | None = None) -> tuple[Grant, ...]:
    """What ``user`` may read and write; nothing else is allowed."""
    roots = roots or Roots()
    f, p, s = roots.field, roots.parking, user.subject
    signal = f"{f}/signals/{s}"
    every = f"{f}/signals/+"
    match user.role:
        case Role.PARKING_SERVICE:
            return (Grant("read", f"{p}/+/reads"), Grant("write", f"{p}/+/acks"))
        case Role.GATEWAY:
            return (Grant("write", f"{p}/{s}/reads"), Grant("read", f"{p}/{s}/acks"))
        case Role.CABINET:
            return (
                Grant("write", f"{signal}/detectors"),
                Grant("write", f"{signal}/shown"),
                Grant("write", f"{signal}/events"),
                Grant("read", f"{signal}/command"),
            )
        case Role.CONTROL:
            return (
                Grant("read", f"{every}/detectors"),
                Grant("read", f"{every}/shown"),
                Grant("read", f"{every}/events"),
                Grant("read", f"{f}/escort/requests"),
                Grant("read", f"{f}/escort/+/gps"),
                Grant("read", f"{f}/clock"),
                Grant("readwrite", f"{f}/control/services/+"),
                Grant("write", f"{every}/command"),
                Grant("write", f"{f}/escort/+/status"),
            )
        case Role.SIL_HOST:
            return (
                Grant("write", f"{every}/detectors"),
                Grant("write", f"{every}/shown"),
                Grant("write", f"{every}/events"),
                Grant("write", f"{f}/clock"),
                Grant("read", f"{every}/command"),
                Grant("read", f"{f}/control/services/+"),
                Grant("write", f"{f}/escort/requests"),
                Grant("write", f"{f}/escort/+/gps"),
            )
        case Role.DISPATCHER:
            return (Grant("write", f"{f}/escort/requests"), Grant("read", f"{f}/escort/+/status"))
        case Role.VEHICLE:
            return (Grant("write", f"{f}/escort/{s}/gps"),)


_WHY: dict[Role, str] = {
    Role.PARKING_SERVICE: "The parking service: every lot's reads in, every lot's acks out.",
    Role.GATEWAY: "Gateway of lot {s}: its own reads out, its own acks in.",
    Role.CABINET: "Cabinet of signal {s}: its readings, shown state, events out; its commands in.",
    Role.CONTROL: "Control service {s}: readings, shown states, events, escort requests, GPS,\n"
    "# the clock in; commands and escort answers out; services' liveness both ways.",
    Role.SIL_HOST: "SUMO-in-the-loop host {s}: every signal's cabinet on one connection,\n"
    "# the simulated clock, the services' liveness (the lockstep barrier), the simulated\n"
    "# ambulances' escort requests and GPS.",
    Role.DISPATCHER: "Dispatcher {s}: escort requests out, escort answers in.",
    Role.VEHICLE: "Escorted vehicle {s}: its own GPS out.",
}


def render_acl(names: Sequence[str], roots: Roots | None = None) -> str:
    """The ACL file for the users ``names`` (role blocks in ``ORDER``, each in the order of
    ``names``); names of no role are listed in a comment and get nothing."""
    roots = roots or Roots()
    users = [parse_user(n, roots) for n in names]
    lines = [
        "# citybrain broker ACL (Mosquitto 2.x), written by `citybrain broker credentials` from",
        "# the users of its credentials file: rerun it rather than edit this file.",
        "# Nothing is allowed unless listed below.",
    ]
    for role in ORDER:
        for user in users:
            if user is None or user.role is not role:
                continue
            lines += ["", "# " + _WHY[role].format(s=user.subject), f"user {user.name}"]
            lines += [f"topic {g.access} {g.topic}" for g in grants(user, roots)]
    strays = [n for n, u in zip(names, users, strict=True) if u is None]
    if strays:
        lines += ["", "# Users of no known role (they may do nothing): " + ", ".join(strays)]
    return "\n".join(lines) + "\n"
