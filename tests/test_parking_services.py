"""More than one settlement service: each with a client id of its own, sharing the reads
through an MQTT shared subscription of their group, on one PostgreSQL ledger; kill -9 of
one of them mid-stream keeps every read recorded once and every stay charged once.
Brokers and PostgreSQL as in ``test_parking_mqtt`` and ``test_parking_ledger``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citybrain.cli import main
from citybrain.mqtt.address import BrokerSettings
from citybrain.mqtt.link import Link
from citybrain.mqtt.wire import Decoder, UnsubAck, encode_unsubscribe
from citybrain.parking.ledger import default_tariffs, open_ledger
from citybrain.parking.mqtt import all_reads_filter, reads_topic, shared
from citybrain.parking.scratch import fresh_database
from citybrain.parking.service import run_service
from citybrain.parking.tariff import fee_cents

from . import test_parking_ledger as _led
from . import test_parking_mqtt as _mq
from .test_parking_batch import _bind_all, _ledger_counts, _payloads
from .test_parking_mqtt import ROOT, Publisher, wait_until

mqtt_url = _mq.mqtt_url
sessions = _mq.sessions
root = _mq.root


def test_a_shared_subscription_and_unsubscribe_on_the_wire() -> None:
    assert shared("citybrain/parking/+/reads", "g1") == "$share/g1/citybrain/parking/+/reads"
    assert shared("a/b", None) == "a/b"
    for bad in ("", "a/b", "a+", "#"):
        with pytest.raises(ValueError, match="invalid group"):
            shared("a/b", bad)
    assert encode_unsubscribe(7, "a/+") == b"\xa2\x07\x00\x07\x00\x03a/+"
    assert Decoder().feed(b"\xb0\x02\x00\x07") == [UnsubAck(7)]


def test_services_of_a_group_share_the_reads_and_drop_a_plain_subscription(
    mqtt_url: str, sessions: _mq.Sessions, root: str
) -> None:
    """Two services in a group each get part of the reads, none twice; a session that
    had the plain subscription (a service before it joined the group) drops it."""
    settings = BrokerSettings.from_url(mqtt_url)
    plain = sessions.new("svc-a")
    old = Link.open(settings, plain, clean_session=False)
    old.subscribe(all_reads_filter(root), 1)
    old.close()
    got: dict[str, list[str]] = {"a": [], "b": []}

    class Sink:
        def __init__(self, name: str) -> None:
            self.name = name

        def record(self, lot: str, payload: bytes, received_at: Any) -> Any:
            read_id = json.loads(payload)["read_id"]
            got[self.name].append(read_id)
            return _mq.Outcome(read_id, "recorded")

    services = []
    for name, client in (("a", plain), ("b", sessions.new("svc-b"))):
        stop, ready = threading.Event(), threading.Event()
        kw = {"client_id": client, "topic_root": root, "group": "g", "stop": stop}
        thread = threading.Thread(
            target=run_service, args=(mqtt_url, Sink(name)), kwargs={**kw, "on_ready": ready.set}
        )
        thread.start()
        assert ready.wait(10)
        services.append((thread, stop))
    pub = Publisher(mqtt_url)
    try:
        for i in range(40):
            pub.publish(reads_topic("lot-1", root), _mq.payload(i))
        wait_until(lambda: len(got["a"]) + len(got["b"]) >= 40, 20, "every read")
        time.sleep(0.3)  # a second copy would have arrived by now
    finally:
        pub.close()
        for thread, stop in services:
            stop.set()
            thread.join(10)
    assert got["a"] and got["b"]
    assert sorted(got["a"] + got["b"]) == sorted(f"r{i:05d}" for i in range(40))


def service_main() -> None:
    """Subprocess entry: a service of group CB_GROUP on the ledger at CB_DB; prints its
    stats as JSON when SIGTERM stops it."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stats = run_service(
        os.environ["CB_URL"],
        open_ledger(os.environ["CB_DB"]),
        client_id=os.environ["CB_CLIENT"],
        topic_root=os.environ["CB_ROOT"],
        group=os.environ["CB_GROUP"],
        on_ready=lambda: print("READY", flush=True),
        stop=stop,
        batch_size=50,
        max_backoff=0.5,
    )
    print(json.dumps({"recorded": stats.recorded, "duplicate": stats.duplicate}), flush=True)


def _service(url: str, db: str, client: str, root: str, group: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CB_URL=url, CB_DB=db, CB_CLIENT=client, CB_ROOT=root, CB_GROUP=group)
    code = "from tests.test_parking_services import service_main; service_main()"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE)
    _mq.wait_ready(proc, timeout=60)
    return proc


def _stats(proc: subprocess.Popen[bytes]) -> dict[str, int]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[str]:
    _led.require_pg()
    with fresh_database("postgresql", tmp_path, _led.PG_URL, "cbtest") as url:
        yield url


def test_two_services_on_one_postgresql_ledger_survive_kill9_of_one(
    pg: str, mqtt_url: str, sessions: _mq.Sessions, root: str
) -> None:
    payloads = _payloads(600, seed=11)
    stays = _bind_all(pg, payloads)
    group = f"g-{uuid.uuid4().hex[:6]}"
    a_id, b_id = sessions.new("svc-a"), sessions.new("svc-b")
    a = _service(mqtt_url, pg, a_id, root, group)
    b = _service(mqtt_url, pg, b_id, root, group)
    procs = [a, b]
    published = threading.Event()

    def publish_all() -> None:
        pub = Publisher(mqtt_url)
        try:
            for lot, p in payloads:
                pub.publish(reads_topic(lot, root), p)  # each exactly once
                time.sleep(0.002)
        finally:
            pub.close()
            published.set()

    publisher = threading.Thread(target=publish_all)
    publisher.start()
    try:
        wait_until(lambda: _ledger_counts(pg)[0] >= len(payloads) // 3, 60, "a third")
        a.send_signal(signal.SIGKILL)  # mid-stream, its share in hand
        a.wait()
        assert _ledger_counts(pg)[0] < len(payloads)
        a = _service(mqtt_url, pg, a_id, root, group)  # its supervisor starts it again
        procs.append(a)
        assert published.wait(120)
        wait_until(lambda: _ledger_counts(pg)[0] == len(payloads), 60, "every read")
        b_stats, a_stats = _stats(b), _stats(a)
    finally:
        publisher.join(120)
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert _ledger_counts(pg) == (len(payloads), len(payloads), stays, stays)
    assert b_stats["recorded"] > 0 and a_stats["recorded"] + a_stats["duplicate"] > 0
    # every stay at the tariff's fee, once
    ledger = open_ledger(pg)
    try:
        tariffs = default_tariffs()
        charged = {c.session_id: c.cents for c in ledger.charges()}
        sessions_ = {s.session_id: s for s in ledger.sessions()}
        for sid, cents in charged.items():
            s = sessions_[sid]
            assert s.entry_at is not None and s.exit_at is not None
            assert cents == fee_cents(tariffs[s.lot_id], s.entry_at, s.exit_at)
    finally:
        ledger.close()


def test_a_bad_group_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'x.db'}"
    assert main(["parking", "serve", "--db", db, "--group", "a/b"]) == 2
    err = capsys.readouterr().err
    assert err == "citybrain: error: invalid group 'a/b': one topic level, without / + #\n"
    assert not (tmp_path / "x.db").exists()  # nothing written
