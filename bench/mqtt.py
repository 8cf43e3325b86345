"""What a QoS 1 message costs in CPU on each side: paho-mqtt against the project's own link
(``citybrain/mqtt/link.py``), side by side, through the same broker.

    python bench/mqtt.py                                 # a private Mosquitto, 3 rounds
    python bench/mqtt.py --broker mqtt://HOST:1883 --messages 50000 --rounds 5

The broker: by default a Mosquitto of the bench's own (``MosquittoProcess``: this
machine's binary, persistence on, up to 100,000 messages queued per client, so that a
subscriber that falls behind loses nothing); ``--broker URL`` uses another (a broker
with Mosquitto's default queue of 1,000 messages drops what a slow subscriber cannot
take, and the run fails).

Per round and client, two processes of their own: a publisher sends ``--messages`` QoS 1
messages of ``--payload`` bytes as fast as it may with at most ``--inflight`` of them not
yet PUBACKed, and a subscriber (QoS 1 subscription, every delivery PUBACKed: paho on
receipt, the link as the parking service does, by its owner's call) takes them. Each
process reports its own CPU time (every thread) from its first message to its last;
throughput is the subscriber's messages per second over the same span. The clients run
alternately (paho, link, paho, link, ...), so a machine that changes speed affects both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ("paho", "link")


def child_subscribe(args: argparse.Namespace) -> dict[str, float]:
    from citybrain.mqtt.address import BrokerSettings

    settings = BrokerSettings.from_url(args.broker)
    count = 0
    first_wall = first_cpu = 0.0
    if args.client == "link":
        from citybrain.mqtt.link import Link

        link = Link.open(settings, f"bench-sub-{uuid.uuid4().hex[:8]}", clean_session=True)
        link.subscribe(args.topic, 1)
        print("READY", flush=True)
        while count < args.messages:
            got = link.poll(1.0)
            if got and not count:
                first_wall, first_cpu = time.monotonic(), time.process_time()
            for message in got:
                link.ack(message.packet_id, message.qos)
            count += len(got)
            link.flush()
        wall, cpu = time.monotonic() - first_wall, time.process_time() - first_cpu
        link.close()
    else:
        from citybrain.mqtt.paho import make_client

        done = threading.Event()
        subscribed = threading.Event()
        client = make_client(settings, f"bench-sub-{uuid.uuid4().hex[:8]}", clean_session=True)

        def on_message(*_: object) -> None:
            nonlocal count, first_wall, first_cpu
            if not count:
                first_wall, first_cpu = time.monotonic(), time.process_time()
            count += 1
            if count >= args.messages:
                done.set()

        client.on_connect = lambda c, *_: c.subscribe(args.topic, qos=1)
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = on_message
        client.connect(settings.address.host, settings.address.port)
        client.loop_start()
        subscribed.wait(10)
        print("READY", flush=True)
        while not done.wait(5.0):
            if count and time.monotonic() - first_wall > 600:
                break
        wall, cpu = time.monotonic() - first_wall, time.process_time() - first_cpu
        client.disconnect()
        client.loop_stop()
    return {"count": count, "wall_s": wall, "cpu_s": cpu}


def child_publish(args: argparse.Namespace) -> dict[str, float]:
    from citybrain.mqtt.address import BrokerSettings

    settings = BrokerSettings.from_url(args.broker)
    body = os.urandom(args.payload // 2).hex().encode()[: args.payload]
    if args.client == "link":
        from citybrain.mqtt.link import Link

        link = Link.open(settings, f"bench-pub-{uuid.uuid4().hex[:8]}", clean_session=True)
        topic = args.topic.encode()
        wall0, cpu0 = time.monotonic(), time.process_time()
        sent = 0
        while sent < args.messages or link.in_flight:
            room = min(args.inflight - link.in_flight, args.messages - sent)
            for _ in range(max(0, room)):
                link.publish(topic, body, 1)
            sent += max(0, room)
            link.flush()
            link.poll(1.0)  # the PUBACKs
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        link.close()
    else:
        from citybrain.mqtt.paho import make_client

        client = make_client(settings, f"bench-pub-{uuid.uuid4().hex[:8]}", clean_session=True)
        client.max_inflight_messages_set(args.inflight)
        client.max_queued_messages_set(0)
        client.connect(settings.address.host, settings.address.port)
        client.loop_start()
        wall0, cpu0 = time.monotonic(), time.process_time()
        infos = [client.publish(args.topic, body, qos=1) for _ in range(args.messages)]
        for info in infos:
            info.wait_for_publish(timeout=600)
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        client.disconnect()
        client.loop_stop()
    return {"count": args.messages, "wall_s": wall, "cpu_s": cpu}


def spawn(role: str, client: str, args: argparse.Namespace, topic: str) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        __file__,
        "--child",
        role,
        "--client",
        client,
        "--broker",
        args.broker,
        "--messages",
        str(args.messages),
        "--payload",
        str(args.payload),
        "--inflight",
        str(args.inflight),
        "--topic",
        topic,
    ]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)


def one_run(client: str, args: argparse.Namespace) -> dict[str, float]:
    topic = f"cbbench/{uuid.uuid4().hex[:8]}/mqtt"
    sub = spawn("subscribe", client, args, topic)
    assert sub.stdout is not None
    if sub.stdout.readline().strip() != "READY":
        raise RuntimeError(f"the {client} subscriber did not start")
    pub = spawn("publish", client, args, topic)
    pub_out, _ = pub.communicate(timeout=900)
    sub_out, _ = sub.communicate(timeout=900)
    p, s = json.loads(pub_out.splitlines()[-1]), json.loads(sub_out.splitlines()[-1])
    if s["count"] < args.messages:
        raise RuntimeError(f"the {client} subscriber got {s['count']} of {args.messages}")
    return {
        "rate": s["count"] / s["wall_s"],
        "pub_us": p["cpu_s"] / args.messages * 1e6,
        "sub_us": s["cpu_s"] / args.messages * 1e6,
    }


@contextlib.contextmanager
def broker_url(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    from citybrain.mqtt.brokers import MosquittoProcess

    with (
        tempfile.TemporaryDirectory(prefix="cbbench-mqtt-") as tmp,
        MosquittoProcess(Path(tmp)) as broker,
    ):
        yield broker.url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", help="use this broker (default: a private Mosquitto)")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--payload", type=int, default=200, help="bytes per message")
    parser.add_argument("--inflight", type=int, default=200, help="unacknowledged at most")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=("publish", "subscribe"), help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run = child_publish if args.child == "publish" else child_subscribe
        print(json.dumps(run(args)), flush=True)
        return 0
    with broker_url(args.broker) as url:
        args.broker = url
        print(
            f"{args.messages:,} QoS 1 messages of {args.payload} bytes through {url}, at most "
            f"{args.inflight} in flight; CPU per message in each process (every thread)"
        )
        print("| round | client | msg/s | publisher CPU µs/msg | subscriber CPU µs/msg |")
        print("|---|---|---|---|---|")
        results: dict[str, list[dict[str, float]]] = {c: [] for c in CLIENTS}
        for i in range(1, args.rounds + 1):
            for client in CLIENTS:
                r = one_run(client, args)
                results[client].append(r)
                print(
                    f"| {i} | {client} | {r['rate']:,.0f} | {r['pub_us']:.1f} "
                    f"| {r['sub_us']:.1f} |",
                    flush=True,
                )
    for client in CLIENTS:
        rs = results[client]
        print(
            f"| median | {client} | {statistics.median(r['rate'] for r in rs):,.0f} "
            f"| {statistics.median(r['pub_us'] for r in rs):.1f} "
            f"| {statistics.median(r['sub_us'] for r in rs):.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
