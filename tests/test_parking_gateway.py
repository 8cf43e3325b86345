"""Parking gateway: outbox, feeds, and the whole path gateway -> broker -> service -> sink ->
ack -> outbox, through restarts and kill -9; the shipped Mosquitto ACL and TLS settings.

Broker choice as in test_parking_mqtt (``tests/brokers.py``). The broker-restart test starts
its own broker (Mosquitto, else the embedded amqtt broker); the ACL and TLS tests start
their own Mosquitto (fail in CI without the binary, skip elsewhere).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from citybrain.mqtt.address import BrokerSettings
from citybrain.mqtt.brokers import MosquittoProcess, free_port
from citybrain.mqtt.paho import forget_session, make_client
from citybrain.parking.gateway import (
    GatewayRefused,
    GatewayStats,
    Outbox,
    gateway_client_id,
    prepare_line,
    run_gateway,
)
from citybrain.parking.mqtt import acks_topic, reads_topic
from citybrain.parking.readcontract import PayloadError

from .brokers import own_broker, require_mosquitto, shared_broker
from .conftest import in_ci
from .test_parking_mqtt import (
    ROOT,
    AckListener,
    Publisher,
    Sessions,
    SqliteSink,
    db_count,
    db_rows,
    read_obj,
    service_thread,
    wait_until,
)

CONFIG_DIR = ROOT / "configs" / "mosquitto"


@pytest.fixture(scope="session")
def mqtt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with shared_broker(tmp_path_factory.mktemp("mosquitto")) as url:
        yield url


@pytest.fixture
def sessions(mqtt_url: str) -> Iterator[Sessions]:
    s = Sessions(mqtt_url)
    yield s
    for client_id in s.ids:
        with contextlib.suppress(OSError):
            forget_session(BrokerSettings.from_url(mqtt_url), client_id)


@pytest.fixture
def root() -> str:
    return f"cbtest/{uuid.uuid4().hex[:10]}/parking"


def write_feed(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def feed_lines(n: int, lot: str = "lot-1", start: int = 0) -> list[str]:
    return [json.dumps(read_obj(i, lot), ensure_ascii=False) for i in range(start, start + n)]


class GatewayThread:
    """``run_gateway`` in a thread, stopped after ``timeout`` seconds at the latest."""

    def __init__(self, **kw: Any) -> None:
        self.stop = threading.Event()
        self.stats: GatewayStats | None = None
        self.error: list[BaseException] = []

        def target() -> None:
            try:
                self.stats = run_gateway(stop=self.stop, **kw)
            except BaseException as exc:
                self.error.append(exc)

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def join(self, timeout: float) -> GatewayStats:
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.stop.set()
            self.thread.join(10)
            pytest.fail(f"gateway did not drain within {timeout} s")
        if self.error:
            raise self.error[0]
        assert self.stats is not None
        return self.stats


def drain(timeout: float = 20.0, **kw: Any) -> GatewayStats:
    """Run a gateway until its feed is read and every read acknowledged."""
    return GatewayThread(exit_when_drained=True, **kw).join(timeout)


def outbox_counts(path: Path) -> tuple[int, int]:
    """(pending, retired), read from the gateway's outbox file."""
    pending = db_count(path, "SELECT count(*) FROM outbox WHERE acked_at IS NULL")
    retired = db_count(path, "SELECT count(*) FROM outbox WHERE acked_at IS NOT NULL")
    return pending, retired


# ------------------------------------------------------------------------ no broker


def test_prepare_line() -> None:
    obj = read_obj(1)
    del obj["lot_id"]
    obj["lane"] = 2
    read_id, data, plate = prepare_line(json.dumps(obj, ensure_ascii=False), "lot-1")
    assert read_id == "r00001" and plate == obj["plate"]
    assert json.loads(data) == {**obj, "lot_id": "lot-1"}  # lot filled in, extras kept
    line = json.dumps({**obj, "lot_id": "lot-1"}, ensure_ascii=False, separators=(", ", ": "))
    assert prepare_line(f"{line}  \n", "lot-1")[1] == line.encode()  # the camera's own bytes
    for bad in ("{", "[]", json.dumps(read_obj(1, "lot-2")), json.dumps({"read_id": "x"})):
        with pytest.raises(PayloadError):
            prepare_line(bad, "lot-1")


def test_outbox(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    now = datetime(2026, 11, 22, tzinfo=UTC)
    assert box.add("a", b"1", now) and box.add("b", b"2", now) and box.add("c", b"3", now)
    assert not box.add("a", b"other", now)
    assert box.head(2) == [("a", b"1"), ("b", b"2")]
    assert box.retire(["b", "zzz"], now) == 1
    assert box.retire(["b"], now) == 0
    assert box.head(10) == [("a", b"1"), ("c", b"3")]
    assert (box.pending_count(), box.retired_count()) == (2, 1)
    assert not box.add("b", b"2", now)  # retired ids stay known
    assert box.prune(now + timedelta(seconds=1)) == 1
    box.close()
    again = Outbox(tmp_path / "outbox.db")  # survives reopening
    assert again.head(10) == [("a", b"1"), ("c", b"3")]
    again.close()


def test_outbox_memory_follows_the_file_past_its_cache(tmp_path: Path) -> None:
    """More pending reads than the in-memory cache holds: ``head`` still serves them in
    queue order from the file, and the counts match a fresh look at the file."""
    box = Outbox(tmp_path / "outbox.db", cache=3)
    now = datetime(2026, 11, 22, tzinfo=UTC)
    ids = [f"r{i:02d}" for i in range(10)]
    assert box.add_many([(i, i.encode()) for i in ids[:6]], now) == [True] * 6
    assert box.add_many([(i, i.encode()) for i in ids[6:]] + [("r00", b"x")], now)[-1] is False
    assert box.pending_count() == 10
    assert [r for r, _ in box.head(2)] == ids[:2]
    assert box.retire(["r00", "r01", "r07"], now) == 3
    assert [r for r, _ in box.head(5)] == ["r02", "r03", "r04", "r05", "r06"]
    assert box.retire(ids[2:7], now) == 5
    assert box.head(5) == [("r08", b"r08"), ("r09", b"r09")]
    assert box.pending_count() == 2
    box.close()
    again = Outbox(tmp_path / "outbox.db", cache=3)
    assert again.head(5) == [("r08", b"r08"), ("r09", b"r09")] and again.pending_count() == 2
    again.close()


def test_outbox_writes_retirements_in_bulk_and_a_lost_one_only_resends(tmp_path: Path) -> None:
    """Retired reads leave the queue at once; the file learns of them in bulk (at the
    latest ``RETIRE_SYNC_S`` later, before the file is read, on close). Retirements lost
    with the process leave those reads pending in the file: they are sent again."""
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    now = datetime(2026, 11, 22, tzinfo=UTC)
    assert box.add_many([(f"r{i}", b"x") for i in range(5)], now) == [True] * 5
    assert box.retire(["r0", "r1"], now) == 2
    assert box.retire(["r1"], now) == 0  # a repeated ack
    assert box.pending_count() == 3 and [r for r, _ in box.head(10)] == ["r2", "r3", "r4"]
    assert outbox_counts(path) == (5, 0)  # not written yet
    assert box.retired_count() == 2 and outbox_counts(path) == (3, 2)  # read: written first
    assert box.retire(["r2"], now) == 1
    lost = Outbox(path)  # what a restart after kill -9 would find
    assert [r for r, _ in lost.head(10)] == ["r2", "r3", "r4"]  # r2 is sent again
    lost.close()
    box.close()  # writes r2
    assert outbox_counts(path) == (2, 3)


# ------------------------------------------------------------------------ shared broker


def test_gateway_end_to_end_and_refeed(
    mqtt_url: str, sessions: Sessions, root: str, tmp_path: Path
) -> None:
    db, outbox = tmp_path / "sink.db", tmp_path / "outbox.db"
    lines = feed_lines(40)
    feed = write_feed(
        tmp_path / "feed.jsonl",
        [*lines, lines[7], "not json", json.dumps(read_obj(50, "lot-2")), ""],
    )
    gw: dict[str, Any] = dict(
        lot="lot-1",
        broker_url=mqtt_url,
        feed=feed,
        outbox_path=outbox,
        topic_root=root,
        client_id=sessions.new("gw"),
    )
    with service_thread(mqtt_url, SqliteSink(db), sessions.new("svc"), root):
        t0 = time.monotonic()
        stats = drain(**gw)
        elapsed = time.monotonic() - t0
        assert (stats.ingested, stats.known, stats.rejected) == (40, 1, 2)
        assert stats.acked == 40 and stats.sent == 40 and stats.resent == 0
        assert outbox_counts(outbox) == (0, 40)
        again = drain(**gw)  # the same feed again: all known, nothing sent
        assert (again.ingested, again.known, again.sent) == (0, 41, 0)
    assert db_rows(db, "SELECT count(*), count(DISTINCT read_id) FROM charges") == [(40, 40)]
    assert db_count(db, "SELECT count(*) FROM deliveries") == 40
    assert elapsed < 10


def test_lost_acks_heal_through_duplicates(
    mqtt_url: str, sessions: Sessions, root: str, tmp_path: Path
) -> None:
    """Half the reads were recorded but their acks never reached the gateway: resending
    them yields 'duplicate' (no charge) and an ack that retires them."""
    db, outbox = tmp_path / "sink.db", tmp_path / "outbox.db"
    sink = SqliteSink(db)
    for i in range(0, 10, 2):
        sink.record("lot-1", json.dumps(read_obj(i)).encode(), datetime.now(UTC))
    feed = write_feed(tmp_path / "feed.jsonl", feed_lines(10))
    with service_thread(mqtt_url, sink, sessions.new("svc"), root):
        stats = drain(
            lot="lot-1",
            broker_url=mqtt_url,
            feed=feed,
            outbox_path=outbox,
            topic_root=root,
            client_id=sessions.new("gw"),
        )
    assert stats.acked == 10 and outbox_counts(outbox) == (0, 10)
    assert db_rows(db, "SELECT count(*), count(DISTINCT read_id) FROM charges") == [(10, 10)]
    kinds = db_rows(db, "SELECT kind, count(*) FROM deliveries GROUP BY kind ORDER BY kind")
    assert kinds == [("duplicate", 5), ("recorded", 10)]


def test_gateway_waits_out_a_stopped_service_backlog_from_the_broker(
    mqtt_url: str, sessions: Sessions, root: str, tmp_path: Path
) -> None:
    db, outbox = tmp_path / "sink.db", tmp_path / "outbox.db"
    service_id = sessions.new("svc")
    with service_thread(mqtt_url, SqliteSink(db), service_id, root):
        pass  # the service's session exists; now it is down
    feed = write_feed(tmp_path / "feed.jsonl", feed_lines(60))
    gateway = GatewayThread(
        lot="lot-1",
        broker_url=mqtt_url,
        feed=feed,
        outbox_path=outbox,
        topic_root=root,
        client_id=sessions.new("gw"),
        exit_when_drained=True,
        resend_after=60.0,
    )
    wait_until(lambda: outbox_counts(outbox) == (60, 0), 10, "60 reads in the outbox")
    time.sleep(0.3)  # published; the broker queues them for the absent service
    assert db_count(db, "SELECT count(*) FROM reads") == 0
    with service_thread(mqtt_url, SqliteSink(db), service_id, root):
        stats = gateway.join(15)
    assert stats.resent == 0  # delivered from the broker's queue, not by resending
    assert db_rows(db, "SELECT count(*), count(DISTINCT read_id) FROM charges") == [(60, 60)]
    assert outbox_counts(outbox) == (0, 60)


def test_gateway_resends_what_nobody_received(
    mqtt_url: str, sessions: Sessions, root: str, tmp_path: Path
) -> None:
    """No service session exists yet, so the broker drops the first sends; the gateway
    resends after ``resend_after`` until a service is there to ack them."""
    db, outbox = tmp_path / "sink.db", tmp_path / "outbox.db"
    feed = write_feed(tmp_path / "feed.jsonl", feed_lines(10))
    gateway = GatewayThread(
        lot="lot-1",
        broker_url=mqtt_url,
        feed=feed,
        outbox_path=outbox,
        topic_root=root,
        client_id=sessions.new("gw"),
        exit_when_drained=True,
        resend_after=0.3,
    )
    wait_until(lambda: outbox_counts(outbox) == (10, 0), 10, "10 reads in the outbox")
    time.sleep(0.5)
    with service_thread(mqtt_url, SqliteSink(db), sessions.new("svc"), root):
        stats = gateway.join(15)
    assert stats.resent >= 10 and stats.acked == 10
    assert db_rows(db, "SELECT count(*), count(DISTINCT read_id) FROM charges") == [(10, 10)]


def gateway_main() -> None:
    """Subprocess entry for the kill -9 and stdin tests."""
    run_gateway(
        os.environ["CB_LOT"],
        os.environ["CB_URL"],
        os.environ["CB_FEED"],
        os.environ["CB_OUTBOX"],
        topic_root=os.environ["CB_ROOT"],
        client_id=os.environ["CB_CLIENT"],
        exit_when_drained=True,
        resend_after=float(os.environ.get("CB_RESEND", "10")),
    )


def gateway_subprocess(
    url: str, root: str, client_id: str, feed: str, outbox: Path, **popen: Any
) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        CB_LOT="lot-1",
        CB_URL=url,
        CB_FEED=feed,
        CB_OUTBOX=str(outbox),
        CB_ROOT=root,
        CB_CLIENT=client_id,
    )
    code = "from tests.test_parking_gateway import gateway_main; gateway_main()"
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, **popen)


def test_kill9_gateway_midstream_then_restart_resends_what_was_not_acked(
    mqtt_url: str, sessions: Sessions, root: str, tmp_path: Path
) -> None:
    db, outbox = tmp_path / "sink.db", tmp_path / "outbox.db"
    n = 200
    feed = write_feed(tmp_path / "feed.jsonl", feed_lines(n))
    gw_id = sessions.new("gw")
    with service_thread(mqtt_url, SqliteSink(db, delay=0.005), sessions.new("svc"), root):
        proc = gateway_subprocess(mqtt_url, root, gw_id, str(feed), outbox)
        try:
            # Killed once the service has 40 of the reads (the gateway writes retirements
            # to its file in bulk, so the file lags behind the acks it received).
            recorded = "SELECT count(*) FROM reads"
            wait_until(lambda: db_rows(db, recorded)[0][0] >= 40, 15, "40 reads recorded")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            proc.kill()
            proc.wait()
        pending, retired = outbox_counts(outbox)
        assert pending > 0 and retired < n, "killed after the stream: no mid-stream kill"
        stats = drain(
            lot="lot-1",
            broker_url=mqtt_url,
            feed=feed,
            outbox_path=outbox,
            topic_root=root,
            client_id=gw_id,
        )
    assert outbox_counts(outbox) == (0, n)
    assert stats.known + stats.ingested == n
    assert db_rows(db, "SELECT count(*), count(DISTINCT read_id) FROM charges") == [(n, n)]


def test_gateway_reads_stdin(mqtt_url: str, sessions: Sessions, root: str, tmp_path: Path) -> None:
    db, outbox = tmp_path / "sink.db", tmp_path / "outbox.db"
    with service_thread(mqtt_url, SqliteSink(db), sessions.new("svc"), root):
        proc = gateway_subprocess(
            mqtt_url, root, sessions.new("gw"), "-", outbox, stdin=subprocess.PIPE
        )
        assert proc.stdin is not None
        proc.stdin.write("".join(line + "\n" for line in feed_lines(5)).encode())
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
    assert outbox_counts(outbox) == (0, 5)
    assert db_count(db, "SELECT count(*) FROM charges") == 5


def test_gateway_accepts_an_open_stream(
    mqtt_url: str, sessions: Sessions, root: str, tmp_path: Path
) -> None:
    db, outbox = tmp_path / "sink.db", tmp_path / "outbox.db"
    with service_thread(mqtt_url, SqliteSink(db), sessions.new("svc"), root):
        stats = drain(
            lot="lot-1",
            broker_url=mqtt_url,
            feed=io.StringIO("\n".join(feed_lines(3))),
            outbox_path=outbox,
            topic_root=root,
            client_id=sessions.new("gw"),
        )
    assert stats.acked == 3


# ------------------------------------------------------------------------ own broker


def test_broker_restarts_and_kill9_lose_nothing(tmp_path: Path) -> None:
    db, outbox = tmp_path / "sink.db", tmp_path / "outbox.db"
    n = 300
    feed = write_feed(tmp_path / "feed.jsonl", feed_lines(n))
    root = "citybrain/parking"
    with own_broker(tmp_path / "broker") as broker:
        url = broker.url
        with service_thread(url, SqliteSink(db, delay=0.004), "svc", root, max_backoff=0.3):
            gateway = GatewayThread(
                lot="lot-1",
                broker_url=url,
                feed=feed,
                outbox_path=outbox,
                exit_when_drained=True,
                resend_after=1.5,
            )
            reads = "SELECT count(*) FROM reads"
            wait_until(lambda: db_count(db, reads) >= 60, 10, "60 reads")
            broker.stop()  # SIGTERM: mosquitto saves its sessions (amqtt forgets them)
            broker.start()
            wait_until(lambda: db_count(db, reads) >= 160, 15, "160 reads")
            broker.kill()  # SIGKILL: whatever it had not saved is gone
            broker.start()
            stats = gateway.join(30)
    assert db_rows(db, "SELECT count(*), count(DISTINCT read_id) FROM charges") == [(n, n)]
    assert outbox_counts(outbox) == (0, n)
    assert stats.connections >= 3


def render_shipped_config(
    port: int, creds: Path, persist: Path, tls_port: int | None = None
) -> str:
    """configs/mosquitto/mosquitto.conf with test ports and paths (TLS block enabled when
    ``tls_port`` is given); every substitution must apply."""
    text = (CONFIG_DIR / "mosquitto.conf").read_text()
    subs = [
        ("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1"),
        ("persistence_location /var/lib/mosquitto/", f"persistence_location {persist}/"),
        ("/etc/mosquitto/citybrain/", f"{creds}/"),
    ]
    if tls_port is not None:
        subs += [("#tls# ", ""), ("listener 8883 0.0.0.0", f"listener {tls_port} 127.0.0.1")]
    for old, new in subs:
        assert old in text, f"mosquitto.conf no longer has {old!r}"
        text = text.replace(old, new)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        text += "user root\n"  # as root, mosquitto would switch to a user that cannot read tmp
    return text


def make_credentials(creds: Path, *lots: str) -> dict[str, str]:
    if shutil.which("mosquitto_passwd") is None:
        if in_ci():
            pytest.fail("CI=true but no mosquitto_passwd")
        pytest.skip("no mosquitto_passwd")
    subprocess.run(
        ["bash", str(CONFIG_DIR / "make-credentials.sh"), str(creds), *lots],
        check=True,
        capture_output=True,
    )
    pairs = (line.split(":", 1) for line in (creds / "credentials").read_text().splitlines())
    return dict(pairs)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[MosquittoProcess, dict[str, str], Path]]:
    require_mosquitto()
    creds = tmp_path / "creds"
    passwords = make_credentials(creds, "lot-a", "lot-b")
    persist = tmp_path / "broker"
    persist.mkdir()
    tls_dir = creds / "tls"
    tls_port = None
    if shutil.which("openssl"):
        tls_dir.mkdir()
        make_certificates(tls_dir)
        tls_port = free_port()
    port = free_port()
    config = render_shipped_config(port, creds, persist, tls_port)
    broker = MosquittoProcess(persist, port=port, config=config)
    broker.start()
    try:
        yield broker, passwords | {"tls_port": str(tls_port or "")}, tls_dir
    finally:
        broker.stop()


def make_certificates(tls: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tls, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=citybrain test CA",
    )
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (tls / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    )


def test_acl_confines_each_gateway_to_its_lot(
    secured: tuple[MosquittoProcess, dict[str, str], Path], tmp_path: Path
) -> None:
    broker, pw, _ = secured
    url = broker.url
    root = "citybrain/parking"
    db = tmp_path / "sink.db"
    svc_creds: dict[str, Any] = dict(username="citybrain-service", password=pw["citybrain-service"])
    gw_a: dict[str, Any] = dict(username="gw-lot-a", password=pw["gw-lot-a"])
    gw_b: dict[str, Any] = dict(username="gw-lot-b", password=pw["gw-lot-b"])
    with service_thread(url, SqliteSink(db), "svc", root, **svc_creds):
        # A gateway drains through the ACL with its own credential.
        feed = write_feed(tmp_path / "a.jsonl", feed_lines(5, "lot-a"))
        stats = drain(lot="lot-a", broker_url=url, feed=feed, outbox_path=tmp_path / "a.db", **gw_a)
        assert stats.acked == 5
        # gw-lot-a listens to lot-b's acks too, and publishes into lot-b: both denied.
        spy = AckListener(url, acks_topic("lot-b", root), **gw_a)
        own = AckListener(url, acks_topic("lot-a", root), **gw_a)
        rogue = Publisher(url, **gw_a)
        honest_b = Publisher(url, **gw_b)
        try:
            rogue.publish(reads_topic("lot-b", root), json.dumps(read_obj(100, "lot-b")).encode())
            rogue.publish(reads_topic("lot-a", root), json.dumps(read_obj(101, "lot-a")).encode())
            honest_b.publish(
                reads_topic("lot-b", root), json.dumps(read_obj(102, "lot-b")).encode()
            )
            reads = "SELECT read_id FROM reads"
            wait_until(
                lambda: {"r00101", "r00102"} <= {r for (r,) in db_rows(db, reads)}, 10, "r00102"
            )
            rogue.publish(reads_topic("lot-a", root), json.dumps(read_obj(103, "lot-a")).encode())
            wait_until(lambda: "r00103" in own.acks, 10, "the ack of r00103")
            time.sleep(0.2)  # the spy is another connection: give a leaked ack time to land
        finally:
            for c in (spy, own, rogue, honest_b):
                c.close()
    recorded = {r for (r,) in db_rows(db, "SELECT read_id FROM reads")}
    assert "r00100" not in recorded  # the publish into lot-b was dropped by the broker
    assert {"r00101", "r00102", "r00103"} <= recorded
    # The service acked r00102 (on lot-b's topic) before r00103 (on lot-a's), which gw-lot-a
    # received; on lot-b's topic it received nothing.
    assert spy.acks == []
    # Wrong password, and no anonymous access.
    with pytest.raises(GatewayRefused):
        drain(
            lot="lot-a",
            broker_url=url,
            feed=feed,
            outbox_path=tmp_path / "x.db",
            username="gw-lot-a",
            password="wrong",
        )
    with pytest.raises(GatewayRefused):
        drain(lot="lot-a", broker_url=url, feed=feed, outbox_path=tmp_path / "y.db")


def test_tls_listener_from_the_shipped_config(
    secured: tuple[MosquittoProcess, dict[str, str], Path], tmp_path: Path
) -> None:
    _, pw, tls_dir = secured
    if not pw["tls_port"]:
        if in_ci():
            pytest.fail("CI=true but no openssl")
        pytest.skip("no openssl to make certificates")
    url = f"mqtts://127.0.0.1:{pw['tls_port']}"
    ca = str(tls_dir / "ca.crt")
    db = tmp_path / "sink.db"
    svc = dict(username="citybrain-service", password=pw["citybrain-service"], ca_file=ca)
    with service_thread(url, SqliteSink(db), "svc-tls", "citybrain/parking", **svc):
        stats = drain(
            lot="lot-b",
            broker_url=url,
            outbox_path=tmp_path / "b.db",
            feed=write_feed(tmp_path / "b.jsonl", feed_lines(3, "lot-b")),
            username="gw-lot-b",
            password=pw["gw-lot-b"],
            ca_file=ca,
        )
    assert stats.acked == 3 and db_count(db, "SELECT count(*) FROM charges") == 3
    # Without the CA the server certificate is not trusted.
    client = make_client(
        BrokerSettings.from_url(url), gateway_client_id("lot-b"), clean_session=True
    )
    with pytest.raises(OSError):
        client.connect("127.0.0.1", int(pw["tls_port"]))
