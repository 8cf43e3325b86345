"""Security for the traffic topics: the credentials tool (users, ACL, TLS), each role confined
to its topics on a real Mosquitto started with the generated files, the broker's answers over
MQTT v5, and ``citybrain escort request|cancel`` waiting for the broker's and the service's
answers (over TLS, against a real ``citybrain control serve``).

Mosquitto, ``mosquitto_passwd`` and ``openssl`` are needed: without them the broker tests
skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import Client, MQTTMessage

from citybrain.access.acl import Role, Roots, grants, parse_user, render_acl, user_name
from citybrain.access.credentials import parse_credentials, update
from citybrain.cli import main
from citybrain.control.corridor import EscortRequest
from citybrain.errors import CitybrainError, ScenarioError
from citybrain.field.dispatch import answers, ask
from citybrain.field.protocol import (
    EscortCall,
    EscortCancel,
    EscortStatus,
    check_root,
    clock_topic,
    command_topic,
    decode_status,
    detectors_topic,
    encode_call,
    escort_status_topic,
    events_topic,
    gps_topic,
    requests_topic,
    service_topic,
    shown_topic,
)
from citybrain.field.service import load_core
from citybrain.mqtt.address import BrokerSettings, unique_client_id
from citybrain.mqtt.answers import (
    RefusedByBroker,
    connect_confirmed,
    publish_confirmed,
    subscribe_confirmed,
)
from citybrain.mqtt.brokers import MosquittoProcess, free_port
from citybrain.mqtt.paho import make_client
from citybrain.netmodel.corridors import NetCorridors
from citybrain.netmodel.net import intersections_from_net, net_file_of, read_net

from .brokers import require_mosquitto
from .conftest import ROOT, in_ci
from .test_field import SOUTH
from .test_parking_gateway import render_shipped_config

CONFIG_DIR = ROOT / "configs" / "mosquitto"
# The example the shipped configs/mosquitto/acl is written from (README.md says so).
EXAMPLE = [
    "--lot", "lot-a", "lot-b",
    "--cabinet", "A0", "B0",
    "--service", "main",
    "--sil-host", "sim",
    "--dispatcher", "desk",
    "--vehicle", "amb1",
]  # fmt: skip
ADMIN = "test-admin"  # a test-only user that may read and write everything (a probe)


def require_tools(*names: str) -> None:
    for name in names:
        if shutil.which(name) is None:
            if in_ci():
                pytest.fail(f"CI=true but no {name}")
            pytest.skip(f"no {name}")


def credentials(outdir: Path, *args: str) -> dict[str, str]:
    """Run ``citybrain broker credentials OUTDIR ARGS``; the users and passwords."""
    assert main(["broker", "credentials", str(outdir), *args]) == 0
    return parse_credentials((outdir / "credentials").read_text())


def acl_blocks(text: str) -> dict[str, list[str]]:
    """The ACL's topic lines by user."""
    blocks: dict[str, list[str]] = {}
    user = ""
    for line in text.splitlines():
        if line.startswith("user "):
            user = line[5:]
            blocks[user] = []
        elif line.startswith("topic "):
            blocks[user].append(line)
    return blocks


def passwd_users(outdir: Path) -> list[str]:
    return [ln.split(":", 1)[0] for ln in (outdir / "passwd").read_text().splitlines() if ln]


# ------------------------------------------------------------------------ the credentials tool


def test_roles_and_their_grants() -> None:
    roots = Roots()
    for role in Role:
        subject = "" if role is Role.PARKING_SERVICE else "x-1"
        name = user_name(role, subject, roots)
        user = parse_user(name, roots)
        assert user is not None and (user.role, user.subject) == (role, subject)
    cab = parse_user("cab-A0")
    assert cab is not None
    own = {
        ("write", detectors_topic("A0")),
        ("write", shown_topic("A0")),
        ("write", events_topic("A0")),
        ("read", command_topic("A0")),
    }
    assert {(g.access, g.topic) for g in grants(cab)} == own
    veh = parse_user("veh-amb1")
    assert veh is not None
    assert [(g.access, g.topic) for g in grants(veh)] == [("write", gps_topic("amb1"))]
    assert parse_user("nobody") is None and parse_user("cab-") is None
    with pytest.raises(ValueError, match="invalid intersection id 'a/b'"):
        user_name(Role.CABINET, "a/b")
    with pytest.raises(ValueError, match="must not start with a role's prefix"):
        Roots(parking_service="cab-x")
    other = Roots(field="city/x", parking="city/x/parking")
    ctl = parse_user("ctl-main", other)
    assert ctl is not None and all(g.topic.startswith("city/x/") for g in grants(ctl, other))
    assert "# Users of no known role (they may do nothing): nobody" in render_acl(
        ["cab-A0", "nobody"]
    )


def test_rerun_keeps_passwords_and_revokes(tmp_path: Path, single_cfg: Path) -> None:
    require_tools("mosquitto_passwd")
    out = tmp_path / "creds"
    first = credentials(out, "--cabinet", "A0", "B0", "--dispatcher", "desk", "--service", "main")
    assert set(first) == {"cab-A0", "cab-B0", "disp-desk", "ctl-main"}
    assert len(set(first.values())) == len(first)  # each its own password
    assert (out / "credentials").stat().st_mode & 0o777 == 0o600
    # a rerun with more users: the earlier ones keep their passwords, the net's signals come in
    again = credentials(out, "--cabinet", "A0", "--vehicle", "amb1", "--net", str(single_cfg))
    signals = [x.id for x in intersections_from_net(read_net(net_file_of(single_cfg)))]
    assert {u: again[u] for u in first} == first
    assert set(again) == set(first) | {"veh-amb1"} | {f"cab-{x}" for x in signals}
    assert sorted(passwd_users(out)) == sorted(again)
    assert "$" in (out / "passwd").read_text()  # hashed, not the plain passwords
    # revoke by deleting a line and rerunning ...
    text = (out / "credentials").read_text()
    (out / "credentials").write_text(
        "".join(ln + "\n" for ln in text.splitlines() if not ln.startswith("cab-B0:"))
    )
    credentials(out)
    # ... or with --revoke
    credentials(out, "--revoke", "disp-desk")
    left = parse_credentials((out / "credentials").read_text())
    assert "cab-B0" not in left and "disp-desk" not in left
    assert {u: left[u] for u in left} == {u: again[u] for u in left}
    assert sorted(passwd_users(out)) == sorted(left)
    blocks = acl_blocks((out / "acl").read_text())
    assert set(blocks) == set(left)
    assert f"topic read {command_topic('A0')}" in blocks["cab-A0"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cabinet", "a b"], "invalid intersection id 'a b'"),
        (["--cabinet", "x" * 201], "invalid intersection id"),
        (["--vehicle", "amb/1"], "invalid vehicle id 'amb/1'"),
        (["--lot=-lot"], "invalid lot id '-lot'"),
        (["--service", "+"], "invalid service name '+'"),
        (["--revoke", "nobody"], "no user 'nobody'"),
        (["--tls-host", "bad host"], "invalid TLS host 'bad host'"),
        (["--topic-root", "a/+/b"], "invalid topic root level '+'"),
    ],
)
def test_invalid_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    require_tools("mosquitto_passwd")
    out = tmp_path / "creds"
    assert main(["broker", "credentials", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (out / "acl").exists()  # nothing written


def test_a_bad_credentials_line_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tools("mosquitto_passwd")
    out = tmp_path / "creds"
    out.mkdir()
    (out / "credentials").write_text("cab-A0:secret\ncab-B0\n")
    assert main(["broker", "credentials", str(out)]) == 2
    assert "credentials:2: expected user:password" in capsys.readouterr().err


def test_the_shipped_acl_is_the_tools_output(tmp_path: Path) -> None:
    require_tools("mosquitto_passwd")
    out = tmp_path / "creds"
    credentials(out, *EXAMPLE)
    assert (out / "acl").read_text() == (CONFIG_DIR / "acl").read_text()


def test_make_credentials_script_delegates(tmp_path: Path) -> None:
    """The parking script keeps its usage and environment, and field users survive its runs."""
    require_tools("mosquitto_passwd")
    out = tmp_path / "creds"
    first = credentials(out, "--cabinet", "A0")
    env = {**os.environ, "TOPIC_ROOT": "city/parking", "SERVICE_USER": "parker"}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not (Path(p) / "citybrain").exists()
    )  # not on PATH, as under sudo: the script finds the checkout's .venv/bin/citybrain
    if not (ROOT / ".venv" / "bin" / "citybrain").exists():  # a venv elsewhere
        env["CITYBRAIN"] = str(Path(sys.executable).parent / "citybrain")
    done = subprocess.run(
        ["bash", str(CONFIG_DIR / "make-credentials.sh"), str(out), "lot-a"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    users = parse_credentials((out / "credentials").read_text())
    assert users["cab-A0"] == first["cab-A0"] and {"parker", "gw-lot-a"} <= set(users)
    blocks = acl_blocks((out / "acl").read_text())
    assert blocks["gw-lot-a"] == [
        "topic write city/parking/lot-a/reads",
        "topic read city/parking/lot-a/acks",
    ]
    assert "topic read city/parking/+/reads" in blocks["parker"]
    bad = subprocess.run(
        ["bash", str(CONFIG_DIR / "make-credentials.sh"), str(out), "bad lot"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "invalid lot id 'bad lot'" in bad.stderr


def test_tls_files_are_kept_and_reissued(tmp_path: Path) -> None:
    require_tools("mosquitto_passwd", "openssl")
    out = tmp_path / "creds"
    credentials(out, "--tls-host", "127.0.0.1", "mqtt.example.org")
    tls = out / "tls"
    ca, crt = (tls / "ca.crt").read_bytes(), (tls / "server.crt").read_bytes()
    assert (tls / "ca.key").stat().st_mode & 0o777 == 0o600
    conf = (out / "mosquitto-tls.conf").read_text()
    assert f"certfile {(tls / 'server.crt').resolve()}" in conf
    assert f"acl_file {(out / 'acl').resolve()}" in conf
    san = subprocess.run(
        ["openssl", "x509", "-in", str(tls / "server.crt"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP Address:127.0.0.1" in san and "DNS:mqtt.example.org" in san
    credentials(out, "--tls-host", "mqtt.example.org", "127.0.0.1")  # the same names
    assert (tls / "server.crt").read_bytes() == crt
    credentials(out, "--tls-host", "127.0.0.1")  # other names: a new certificate, same CA
    assert (tls / "ca.crt").read_bytes() == ca and (tls / "server.crt").read_bytes() != crt
    subprocess.run(
        ["openssl", "verify", "-CAfile", str(tls / "ca.crt"), str(tls / "server.crt")],
        capture_output=True,
        check=True,
    )


# ------------------------------------------------------------------------ the route check


def test_a_route_with_a_gap_is_rejected(single_cfg: Path) -> None:
    net = read_net(net_file_of(single_cfg))
    corridors = NetCorridors(net, intersections_from_net(net))
    assert corridors(EscortRequest("amb", SOUTH)).signals  # connected: fine
    gap = (SOUTH[0], SOUTH[2])
    with pytest.raises(ScenarioError, match="the route has a gap") as err:
        corridors(EscortRequest("amb", gap))
    assert repr(SOUTH[0]) in str(err.value) and repr(SOUTH[2]) in str(err.value)
    core = load_core(single_cfg, "actuated", root="r")
    (status,) = core.handle(requests_topic("r"), encode_call(EscortCall("amb", gap)), 100.0)
    got = decode_status(status.payload)
    assert got.status == "rejected" and "gap" in got.reason


def test_what_answers_a_request() -> None:
    call, cancel = EscortCall("amb", ("e",)), EscortCancel("amb")
    active = EscortStatus("amb", 1.0, "active", ("A0",))
    assert answers(call, active) and not answers(cancel, active)
    assert answers(cancel, EscortStatus("amb", 1.0, "cancelled"))
    assert not answers(call, EscortStatus("amb", 1.0, "ended"))  # an earlier escort's
    assert not answers(call, EscortStatus("other", 1.0, "active"))


def test_v5_clients_only_where_they_are_told() -> None:
    settings = BrokerSettings.from_url("mqtt://127.0.0.1:1")
    with pytest.raises(ValueError, match="clean sessions only"):
        make_client(settings, "x", clean_session=False, protocol="5")
    old = make_client(settings, "x", clean_session=True)
    with pytest.raises(ValueError, match="only an MQTT v5 client"):
        publish_confirmed(old, settings, "t", b"")


# ------------------------------------------------------------------------ a secured broker


@dataclass
class Secured:
    broker: MosquittoProcess
    passwords: dict[str, str]
    tls_port: int
    ca: Path
    single: Path

    @property
    def url(self) -> str:
        return self.broker.url

    @property
    def tls_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.tls_port}"

    def settings(self, user: str, tls: bool = False, password: str | None = None) -> BrokerSettings:
        return BrokerSettings.from_url(
            self.tls_url if tls else self.url,
            username=user,
            password=self.passwords[user] if password is None else password,
            ca_file=self.ca if tls else None,
        )

    def login(self, user: str, *, v5: bool = True) -> Client:
        """A connected client of ``user`` (MQTT v5 unless told)."""
        settings = self.settings(user)
        client = make_client(
            settings,
            unique_client_id("cbtest"),
            clean_session=True,
            protocol="5" if v5 else "3.1.1",
        )
        connect_confirmed(client, settings)
        return client


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, single_cfg: Path) -> Iterator[Secured]:
    require_mosquitto()
    require_tools("mosquitto_passwd", "openssl")
    work = tmp_path_factory.mktemp("secured")
    creds, persist = work / "creds", work / "broker"
    persist.mkdir()
    tls_port, port = free_port(), free_port()
    args = [*EXAMPLE, "--cabinet", "A0", "--net", str(single_cfg)]
    args += ["--tls-host", "127.0.0.1", "--tls-port", str(tls_port), "--tls-bind", "127.0.0.1"]
    credentials(creds, *args)
    credentials(creds, "--revoke", "gw-lot-b")
    # the probe: a user of no role, given every topic by hand in the test's copy of the ACL
    update(creds, [ADMIN])
    passwords = parse_credentials((creds / "credentials").read_text())
    with (creds / "acl").open("a") as acl:
        acl.write(f"\nuser {ADMIN}\ntopic readwrite #\n")
    config = render_shipped_config(port, creds, persist)
    config += "\n" + (creds / "mosquitto-tls.conf").read_text()
    broker = MosquittoProcess(persist, port=port, config=config)
    broker.start()
    try:
        yield Secured(broker, passwords, tls_port, creds / "tls" / "ca.crt", single_cfg)
    finally:
        broker.stop()


class Listener:
    """A client of one user subscribed to filters; keeps what arrives."""

    def __init__(self, secured: Secured, user: str, filters: Sequence[str], v5: bool = True):
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client = secured.login(user, v5=v5)
        self.client.on_message = self._on_message
        settings = secured.settings(user)
        subscribe_confirmed(self.client, settings, [(f, 1) for f in filters])

    def _on_message(self, _c: Any, _u: Any, m: MQTTMessage) -> None:
        with self.lock:
            self.got.append((m.topic, bytes(m.payload)))

    def payloads(self) -> set[bytes]:
        with self.lock:
            return {p for _, p in self.got}

    def wait_for(self, payload: bytes, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while payload not in self.payloads():
            assert time.monotonic() < deadline, f"{payload!r} never arrived"
            time.sleep(0.01)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def may_write(secured: Secured, user: str, topic: str) -> bool:
    """Whether the broker takes ``user``'s publish to ``topic`` (its v5 PUBACK)."""
    client = secured.login(user)
    try:
        publish_confirmed(client, secured.settings(user), topic, b"{}")
        return True
    except RefusedByBroker as exc:
        assert exc.user == user and exc.reason == "Not authorized"
        assert topic in str(exc) and repr(user) in str(exc)
        return False
    finally:
        client.disconnect()
        client.loop_stop()


def may_read(
    secured: Secured,
    user: str,
    topics: Sequence[str],
    sentinel: str,
    filters: Sequence[str] = (),
) -> set[str]:
    """Which of ``topics`` the broker delivers to ``user`` (who may read ``sentinel``),
    subscribed to them (or to ``filters``): the probe publishes to each, then to the sentinel;
    one publisher's messages reach a subscriber in order, so once the sentinel's message is
    in, every deliverable one is too."""
    listener = Listener(secured, user, [*(filters or topics), sentinel])
    probe = secured.login(ADMIN)
    try:
        tag = uuid.uuid4().hex.encode()
        for topic in topics:
            publish_confirmed(probe, secured.settings(ADMIN), topic, tag + topic.encode())
        publish_confirmed(probe, secured.settings(ADMIN), sentinel, tag)
        listener.wait_for(tag)
        return {t for t, p in listener.got if p.startswith(tag) and p != tag}
    finally:
        listener.close()
        probe.disconnect()
        probe.loop_stop()


def test_a_cabinet_writes_and_reads_only_its_own_topics(secured: Secured) -> None:
    own = [detectors_topic("A0"), shown_topic("A0"), events_topic("A0")]
    theirs = [detectors_topic("B0"), shown_topic("B0"), events_topic("B0")]
    for topic in own:
        assert may_write(secured, "cab-A0", topic)
    for topic in [*theirs, command_topic("A0"), command_topic("B0"), clock_topic()]:
        assert not may_write(secured, "cab-A0", topic), topic
    # commands: each cabinet gets its own, even subscribed to everyone's
    everyone = "citybrain/signals/+/command"
    for cab, mine, other in (("cab-A0", "A0", "B0"), ("cab-B0", "B0", "A0")):
        probes = [command_topic(other), shown_topic(other), detectors_topic(mine)]
        got = may_read(secured, cab, probes, command_topic(mine), filters=[everyone, "#"])
        assert got == set()
    got = may_read(secured, "cab-A0", [command_topic("B0"), shown_topic("B0")], command_topic("A0"))
    assert got == set()


def test_a_denied_publish_over_mqtt_311_is_dropped(secured: Secured) -> None:
    """No PUBACK reason code for 3.1.1: the broker acknowledges and drops the message."""
    service = Listener(secured, "ctl-main", ["citybrain/signals/+/detectors"])
    rogue = secured.login("cab-A0", v5=False)
    try:
        tag = uuid.uuid4().hex.encode()
        info = rogue.publish(detectors_topic("B0"), tag + b"-forged", qos=1)
        info.wait_for_publish(10)
        assert info.is_published()  # acknowledged all the same
        info = rogue.publish(detectors_topic("A0"), tag + b"-own", qos=1)
        info.wait_for_publish(10)
        service.wait_for(tag + b"-own")
        assert tag + b"-forged" not in service.payloads()
    finally:
        service.close()
        rogue.disconnect()
        rogue.loop_stop()


def test_the_service_dispatcher_vehicle_and_host_roles(secured: Secured) -> None:
    sentinel = clock_topic()
    # the control service reads every signal's reports, requests, GPS and the clock ...
    reads = [detectors_topic("B0"), shown_topic("A0"), events_topic("B0"), requests_topic()]
    reads += [gps_topic("amb1"), service_topic("standby")]
    assert may_read(secured, "ctl-main", reads, sentinel) == set(reads)
    # ... and writes commands, escort answers and its liveness, nothing a cabinet writes
    for topic in [command_topic("A0"), escort_status_topic("amb1"), service_topic("main")]:
        assert may_write(secured, "ctl-main", topic), topic
    for topic in [shown_topic("A0"), requests_topic(), clock_topic()]:
        assert not may_write(secured, "ctl-main", topic), topic
    # a dispatcher asks and hears answers, and sees nothing of the signals
    assert may_write(secured, "disp-desk", requests_topic())
    assert not may_write(secured, "disp-desk", command_topic("A0"))
    status = escort_status_topic("amb9")
    got = may_read(secured, "disp-desk", [detectors_topic("A0"), command_topic("A0")], status)
    assert got == set()
    # a vehicle sends its own GPS only
    assert may_write(secured, "veh-amb1", gps_topic("amb1"))
    assert not may_write(secured, "veh-amb1", gps_topic("amb2"))
    assert not may_write(secured, "veh-amb1", requests_topic())
    # the SUMO-in-the-loop host: every cabinet's reports and the clock out, commands in
    for topic in [detectors_topic("A0"), shown_topic("B0"), events_topic("Z9"), clock_topic()]:
        assert may_write(secured, "sil-sim", topic), topic
    assert not may_write(secured, "sil-sim", command_topic("A0"))
    got = may_read(secured, "sil-sim", [command_topic("B0"), requests_topic()], command_topic("A0"))
    assert got == {command_topic("B0")}
    # the parking users keep their lots; the revoked gateway cannot log in
    assert may_write(secured, "gw-lot-a", "citybrain/parking/lot-a/reads")
    assert not may_write(secured, "gw-lot-a", detectors_topic("A0"))
    settings = secured.settings("disp-desk", password="wrong")
    client = make_client(settings, unique_client_id("cbtest"), clean_session=True, protocol="5")
    with pytest.raises(RefusedByBroker, match=r"refused the connection \(user 'disp-desk'\)"):
        connect_confirmed(client, settings)


# ------------------------------------------------------------------------ escort over TLS


@contextlib.contextmanager
def control_service(secured: Secured) -> Iterator[subprocess.Popen[bytes]]:
    """``citybrain control serve`` on the single scenario's net, over TLS as ctl-main."""
    log = secured.broker.workdir / f"serve-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-c", "import sys; from citybrain.cli import main; "
                "sys.exit(main(sys.argv[1:]))",
                "control", "serve", "--net", str(secured.single), "--controller", "actuated",
                "--broker", secured.tls_url, "--ca-file", str(secured.ca),
                "--username", "ctl-main", "--password", secured.passwords["ctl-main"],
                "--client-id", unique_client_id("cbtest-control"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until_answering(secured: Secured, proc: subprocess.Popen[bytes]) -> None:
    """Ask the service (a route it rejects, no escort started) until it answers."""
    settings = secured.settings("disp-desk", tls=True)
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, "control serve exited"
        try:
            ask(settings, EscortCall("probe", ("no-such-edge",)), timeout_s=2)
            return
        except CitybrainError:
            assert time.monotonic() < deadline, "control serve never answered"


def escort(secured: Secured, user: str, *args: str, password: str | None = None) -> list[str]:
    pw = secured.passwords[user] if password is None else password
    tls = ["--broker", secured.tls_url, "--ca-file", str(secured.ca)]
    return ["escort", *args, *tls, "--username", user, "--password", pw]


def test_escort_request_waits_for_the_answers(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    net = read_net(net_file_of(secured.single))
    corridor = NetCorridors(net, intersections_from_net(net))(EscortRequest("amb1", SOUTH))
    signals = [s.intersection for s in corridor.signals]
    assert signals
    with control_service(secured) as proc:
        wait_until_answering(secured, proc)
        capsys.readouterr()
        route = ",".join(SOUTH)
        # active: exit 0, the corridor's signals printed
        assert (
            main(escort(secured, "disp-desk", "request", "--vehicle", "amb1", "--route", route))
            == 0
        )
        out = capsys.readouterr().out
        assert out.startswith("escorting amb1: ") and out.strip().endswith(", ".join(signals))
        assert main(escort(secured, "disp-desk", "cancel", "--vehicle", "amb1")) == 0
        assert "cancelled the escort of amb1" in capsys.readouterr().out
        # rejected: a route with a gap, the reason printed
        gap = f"{SOUTH[0]},{SOUTH[2]}"
        code = main(escort(secured, "disp-desk", "request", "--vehicle", "amb2", "--route", gap))
        err = capsys.readouterr().err
        assert code != 0 and err.count("\n") == 1
        assert "rejected the escort of amb2" in err and "the route has a gap" in err
        # refused by the broker: a cabinet's credentials, or a wrong password
        code = main(escort(secured, "cab-A0", "request", "--vehicle", "amb3", "--route", route))
        err = capsys.readouterr().err
        assert code != 0 and err.count("\n") == 1
        assert f"refused a publish to {requests_topic()} (user 'cab-A0'): Not authorized" in err
        args = ("request", "--vehicle", "amb3", "--route", route)
        code = main(escort(secured, "disp-desk", *args, password="wrong"))
        err = capsys.readouterr().err
        assert code != 0 and "refused the connection (user 'disp-desk')" in err
        # no CA: the broker's certificate is not trusted
        code = main(["escort", *args, "--broker", secured.tls_url, "--username", "disp-desk",
                     "--password", secured.passwords["disp-desk"]])  # fmt: skip
        err = capsys.readouterr().err
        assert code != 0 and "cannot reach the broker" in err and "CERTIFICATE" in err.upper()
    # no service: no answer within --timeout
    args = ("request", "--vehicle", "amb4", "--route", route, "--timeout", "1")
    code = main(escort(secured, "disp-desk", *args))
    err = capsys.readouterr().err
    assert (
        code != 0 and err.count("\n") == 1 and "no answer from a control service within 1 s" in err
    )


def test_the_topic_root_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["escort", "cancel", "--vehicle", "a", "--topic-root", "a/#", "--broker", "mqtt://x:1"]
    assert main(args) == 2
    assert "invalid topic root level '#'" in capsys.readouterr().err
    with pytest.raises(ValueError):
        check_root("a/#")
