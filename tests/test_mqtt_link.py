"""The parking path's own MQTT 3.1.1 packets (known answers from the standard's layouts)
and its connection (``citybrain/mqtt/wire.py``, ``link.py``): against a real Mosquitto,
and against a fake broker for what a real one never does (a QoS 2 delivery, a packet
larger than the limit, 65,535 messages left unacknowledged). Last, the guarantee the link
leaves to the application: a gateway whose reads are lost on a connection resends them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from citybrain.mqtt.address import BrokerSettings
from citybrain.mqtt.link import DEFAULT_MAX_PACKET, PACKET_IDS, ConnectionLost, Link
from citybrain.mqtt.wire import (
    ConnAck,
    Decoder,
    PacketTooLarge,
    PingResp,
    ProtocolError,
    PubAck,
    Publish,
    SubAck,
    encode_connect,
    encode_puback,
    encode_publish,
    encode_subscribe,
)
from citybrain.parking.readcontract import MAX_PAYLOAD_BYTES

from .test_parking_gateway import GatewayThread, feed_lines, outbox_counts, write_feed
from .test_parking_mqtt import (  # noqa: F401 (fixtures)
    Sessions,
    SqliteSink,
    db_count,
    db_rows,
    mqtt_url,
    root,
    service_thread,
    sessions,
    wait_until,
)

LINK_LOG = "citybrain.mqtt.link"


def test_connect_packet_layout() -> None:
    packet = encode_connect("cb", clean_session=False, keepalive=30, username="u", password="p")
    assert packet == (
        b"\x10\x14"  # CONNECT, remaining length 20
        b"\x00\x04MQTT\x04"  # protocol name, level 4 (3.1.1)
        b"\xc0"  # user name + password, no clean session
        b"\x00\x1e"  # keepalive 30 s
        b"\x00\x02cb\x00\x01u\x00\x01p"
    )
    clean = encode_connect("x", clean_session=True, keepalive=0)
    assert clean == b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x00\x00\x01x"
    with pytest.raises(ValueError, match="password needs a user name"):
        encode_connect("x", clean_session=True, keepalive=1, password="p")


def test_publish_subscribe_and_puback_layouts() -> None:
    assert encode_publish("a/b", b"hi", 1, 10) == b"\x32\x09\x00\x03a/b\x00\x0ahi"
    assert encode_publish("a/b", b"hi", 1, 10, dup=True)[0] == 0x3A
    assert encode_publish("a/b", b"hi") == b"\x30\x07\x00\x03a/bhi"  # QoS 0: no packet id
    assert encode_subscribe(1, "x/#", 1) == b"\x82\x08\x00\x01\x00\x03x/#\x01"
    assert encode_puback(258) == b"\x40\x02\x01\x02"
    for bad in (0, 65536):
        with pytest.raises(ValueError):
            encode_puback(bad)
    with pytest.raises(ValueError):
        encode_publish("t", b"", 2, 1)


@pytest.mark.parametrize(
    ("size", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
    ],
)
def test_remaining_length_boundaries(size: int, encoded: bytes) -> None:
    packet = encode_publish(b"", b"z" * (size - 2)) if size >= 2 else None
    if packet is not None:
        assert packet[1 : 1 + len(encoded)] == encoded
        (decoded,) = Decoder().feed(packet)
        assert isinstance(decoded, Publish) and len(decoded.payload) == size - 2


def test_decoder_takes_a_stream_in_pieces_of_any_size() -> None:
    stream = (
        b"\x20\x02\x01\x00"  # CONNACK, session present
        + encode_publish("lot/1/reads", "浙A·12345".encode(), 1, 7, dup=True)
        + b"\x40\x02\x00\x07"  # PUBACK 7
        + b"\x90\x03\x00\x01\x80"  # SUBACK 1: refused
        + b"\xd0\x00"  # PINGRESP
        + encode_publish("t", b"x" * 300)  # two-byte remaining length
    )
    expected = [
        ConnAck(True, 0),
        Publish("lot/1/reads", "浙A·12345".encode(), 1, 7, dup=True),
        PubAck(7),
        SubAck(1, (0x80,)),
        PingResp(),
        Publish("t", b"x" * 300, 0, 0),
    ]
    for step in (1, 2, 3, 7, len(stream)):
        decoder = Decoder()
        got = []
        for i in range(0, len(stream), step):
            got += decoder.feed(stream[i : i + step])
        assert got == expected and decoder.buffered == 0


@pytest.mark.parametrize(
    "bad",
    [
        b"\x30\xff\xff\xff\xff\x01",  # remaining length of five bytes
        b"\x40\x03\x00\x01\x00",  # PUBACK of three bytes
        b"\x10\x00",  # CONNECT: never sent by a broker
        b"\x36\x05\x00\x01t\x00\x01",  # PUBLISH with QoS 3
        b"\x32\x03\x00\x01t",  # QoS 1 PUBLISH without its packet id
        b"\x30\x03\x00\x05t",  # topic longer than the packet
        b"\x30\x04\x00\x02\xff\xfe",  # topic not UTF-8
    ],
)
def test_decoder_rejects_what_is_not_a_packet(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        Decoder().feed(bad)


# ------------------------------------------------------------------------ real broker


def _receive(link: Link, count: int, timeout: float = 10.0) -> list[Publish]:
    """What arrives until ``count`` deliveries came or ``timeout`` passed (``count`` 0:
    listen for the whole ``timeout``)."""
    got: list[Publish] = []
    deadline = time.monotonic() + timeout
    while (count == 0 or len(got) < count) and time.monotonic() < deadline:
        got += link.poll(0.1)
    return got


def test_a_delivery_comes_back_until_it_is_acked(
    mqtt_url: str,  # noqa: F811
    sessions: Sessions,  # noqa: F811
    root: str,  # noqa: F811
) -> None:
    """Nothing is PUBACKed unless the owner says so: an unacked delivery is redelivered
    (DUP) to the resumed session; an acked one is not."""
    settings = BrokerSettings.from_url(mqtt_url)
    receiver_id = sessions.new("link")
    topic = f"{root}/L1/reads"
    first = Link.open(settings, receiver_id, clean_session=False, keepalive=5)
    assert first.subscribe(f"{root}/+/reads", 1) == (1,)
    sender = Link.open(settings, sessions.new("sender"), clean_session=True)
    for i in range(3):
        sender.publish(topic, f"m{i}".encode(), 1)
    sender.flush()
    got = _receive(first, 3)
    assert [p.payload for p in got] == [b"m0", b"m1", b"m2"]
    first.ack(got[0].packet_id)
    first.flush()
    time.sleep(0.2)  # the PUBACK reaches the broker before the crash
    first.abort()  # dies without a word: m1 and m2 were never acked

    second = Link.open(settings, receiver_id, clean_session=False, keepalive=5)
    assert second.session_present
    again = _receive(second, 2)
    assert [(p.payload, p.dup) for p in again] == [(b"m1", True), (b"m2", True)]
    for p in again:
        second.ack(p.packet_id)
    second.flush()
    assert _receive(sender, 0, 0.3) == [] and sender.in_flight == 0  # all PUBACKed
    second.close()
    third = Link.open(settings, receiver_id, clean_session=False, keepalive=5)
    assert _receive(third, 1, 1.0) == []  # nothing left to redeliver
    third.close()
    sender.close()


def test_keepalive_pings_and_a_closed_link_refuses_work(
    mqtt_url: str,  # noqa: F811
    sessions: Sessions,  # noqa: F811
) -> None:
    link = Link.open(
        BrokerSettings.from_url(mqtt_url), sessions.new("ping"), clean_session=True, keepalive=1
    )
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:  # idle for 2.5 keepalives: pings keep it alive
        assert link.poll(0.2) == []
    link.publish("cbtest/ping", b"x", 1)
    link.flush()
    assert _receive(link, 0, 0.5) == []
    assert link.in_flight == 0  # the broker's PUBACK arrived
    link.close()
    with pytest.raises(ConnectionLost):
        link.poll(0.1)


def test_a_server_that_is_not_an_mqtt_broker_is_a_lost_connection_not_a_crash() -> None:
    """Garbage instead of a CONNACK (a TLS or HTTP port, say) is an ``OSError`` the
    service and the gateways retry after, not an exception that ends them."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)  # the CONNECT
            conn.sendall(b"\x10\x00")  # a CONNECT back: no broker sends one

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with pytest.raises(ConnectionLost, match="garbage"):
            Link.open(BrokerSettings.from_url(f"mqtt://127.0.0.1:{port}"), "x", clean_session=True)
        assert issubclass(ConnectionLost, OSError)
    finally:
        thread.join(5)
        server.close()


# ------------------------------------------------------------------------ what closes a link


def test_the_decoder_refuses_a_packet_over_its_limit_from_its_header() -> None:
    """The limit counts the whole packet; a larger one is refused as soon as its header
    is complete, before its body arrives (nothing of it is buffered)."""
    fits = encode_publish("t", b"x" * 95)  # fixed header 2, topic 3, payload 95
    assert len(fits) == 100
    (packet,) = Decoder(max_packet=100).feed(fits)
    assert isinstance(packet, Publish) and packet.payload == b"x" * 95
    too_large = encode_publish("t", b"x" * 96)
    decoder = Decoder(max_packet=100)
    assert decoder.feed(too_large[:1]) == []  # the length is not known yet
    with pytest.raises(PacketTooLarge, match="101 bytes is larger than the limit of 100"):
        decoder.feed(too_large[1:2])  # the header alone: 101 bytes announced
    huge_header = b"\x30\xff\xff\xff\x7f"  # 256 MB announced, none of it sent
    with pytest.raises(PacketTooLarge):
        Decoder(max_packet=DEFAULT_MAX_PACKET).feed(huge_header)


def test_the_default_limit_takes_any_read_the_ledger_would_look_at() -> None:
    """A read of the read contract's largest size, on a long topic, is under the link's
    default limit (the ledger, not the link, dead-letters what is larger)."""
    topic = "citybrain/parking/" + "L" * 64 + "/reads"
    packet = encode_publish(topic, b"x" * (MAX_PAYLOAD_BYTES + 1), 1, 7)
    assert 2 * len(packet) <= DEFAULT_MAX_PACKET
    (decoded,) = Decoder(DEFAULT_MAX_PACKET).feed(packet)
    assert isinstance(decoded, Publish) and len(decoded.payload) == MAX_PAYLOAD_BYTES + 1


def test_a_packet_over_the_limit_closes_the_link_and_the_broker_redelivers_it(
    mqtt_url: str,  # noqa: F811
    sessions: Sessions,  # noqa: F811
    root: str,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = BrokerSettings.from_url(mqtt_url)
    receiver_id = sessions.new("limit")
    small = Link.open(settings, receiver_id, clean_session=False, max_packet=1024)
    assert small.subscribe(f"{root}/+/reads", 1) == (1,)
    sender = Link.open(settings, sessions.new("sender"), clean_session=True)
    sender.publish(f"{root}/L1/reads", b"a", 1)
    sender.flush()
    got = _receive(small, 1)  # smaller packets pass
    small.ack(got[0].packet_id)
    small.flush()
    sender.publish(f"{root}/L1/reads", b"b" * 2000, 1)
    sender.flush()
    with caplog.at_level(logging.WARNING, LINK_LOG), pytest.raises(ConnectionLost) as lost:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for p in small.poll(0.1):
                got.append(p)
                small.ack(p.packet_id)
            small.flush()
    assert "larger than the limit of 1024 bytes" in str(lost.value)
    assert small.closed
    assert [p.payload for p in got] == [b"a"]
    assert any(
        r.name == LINK_LOG
        and "closing the connection" in r.getMessage()
        and "larger than the limit" in r.getMessage()
        for r in caplog.records
    )
    # Nothing was acknowledged for it: a link that takes it gets it again.
    large = Link.open(settings, receiver_id, clean_session=False)
    again = _receive(large, 1)
    assert [(len(p.payload), p.dup) for p in again] == [(2000, True)]
    large.ack(again[0].packet_id)
    large.close()
    sender.close()


class FakeBroker:
    """One connection on a loopback port, answered by hand: CONNACK, then ``after``
    (bytes); records everything the client sends after its CONNECT."""

    def __init__(self, after: bytes, *, with_connack: bool = False) -> None:
        self.after = after
        self.with_connack = with_connack  # ``after`` in the CONNACK's segment
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received = bytearray()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def settings(self) -> BrokerSettings:
        return BrokerSettings.from_url(f"mqtt://127.0.0.1:{self.port}")

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.settimeout(10)
            first = conn.recv(2)  # the CONNECT's fixed header (short body: one byte length)
            body = b""
            while len(body) < first[1]:
                body += conn.recv(first[1] - len(body))
            connack = b"\x20\x02\x00\x00"
            if self.with_connack:
                conn.sendall(connack + self.after)
            else:
                conn.sendall(connack)
                time.sleep(0.2)
                conn.sendall(self.after)
            with contextlib.suppress(OSError):
                while data := conn.recv(4096):
                    self.received += data

    def close(self) -> bytes:
        self.thread.join(10)
        self.server.close()
        return bytes(self.received)


QOS2_PUBLISH = b"\x34\x09\x00\x03a/b\x00\x05hi"  # QoS 2, packet id 5, payload "hi"


@pytest.mark.parametrize("with_connack", [False, True], ids=["later", "behind the CONNACK"])
def test_a_qos2_delivery_closes_the_link_and_is_never_acknowledged(
    with_connack: bool, caplog: pytest.LogCaptureFixture
) -> None:
    (packet,) = Decoder().feed(QOS2_PUBLISH)
    assert packet == Publish("a/b", b"hi", 2, 5)
    broker = FakeBroker(QOS2_PUBLISH, with_connack=with_connack)
    with caplog.at_level(logging.WARNING, LINK_LOG):
        try:
            with pytest.raises(ConnectionLost, match="QoS 2") as lost:
                link = Link.open(broker.settings, "q2", clean_session=True, keepalive=0)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    assert link.poll(0.1) == []  # never handed to the owner
        finally:
            sent = broker.close()
    assert "packet id 5" in str(lost.value)
    assert sent == b""  # no PUBACK, no PUBREC, no DISCONNECT: the connection just closed
    assert any(r.name == LINK_LOG and "QoS 2 PUBLISH" in r.getMessage() for r in caplog.records)


def test_no_puback_for_a_qos2_delivery() -> None:
    a, b = socket.socketpair()
    link = Link(a, keepalive=0, session_present=False)
    with pytest.raises(ValueError, match="QoS 2"):
        link.ack(5, 2)
    link.ack(5, 0)  # nothing to send at QoS 0
    link.flush()
    link.abort()
    assert b.recv(100) == b""
    b.close()


def test_packet_ids_in_flight_are_never_reused(caplog: pytest.LogCaptureFixture) -> None:
    """65,535 QoS 1 publishes unacknowledged take every id once; after PUBACKs for all but
    three, the next ones take the free ids only, skipping the three; with all in flight
    again the next publish closes the link (logged)."""
    client, peer = socket.socketpair()
    link = Link(client, keepalive=0, session_present=False)
    sent: list[int] = []
    done = threading.Event()

    def read_peer() -> None:  # what the link sent: the PUBLISH packet ids, in order
        decoder = Decoder()
        with contextlib.suppress(OSError):
            while data := peer.recv(1 << 16):
                sent.extend(p.packet_id for p in decoder.feed(data) if isinstance(p, Publish))
        done.set()

    reader = threading.Thread(target=read_peer, daemon=True)
    reader.start()

    def publish(count: int) -> None:
        for i in range(count):
            link.publish("t", b"", 1)
            if i % 1000 == 999:
                link.flush()
        link.flush()

    publish(PACKET_IDS)
    assert link.in_flight == PACKET_IDS
    wait_until(lambda: len(sent) == PACKET_IDS, 20, "every publish at the peer")
    assert sent == list(range(1, PACKET_IDS + 1))
    held = {1, 2, 100}
    pubacks = b"".join(encode_puback(i) for i in range(1, PACKET_IDS + 1) if i not in held)
    acker = threading.Thread(target=peer.sendall, args=(pubacks,), daemon=True)
    acker.start()  # more than a socket buffer: the link reads while they are sent
    deadline = time.monotonic() + 20
    while link.in_flight > len(held) and time.monotonic() < deadline:
        link.poll(0.1)
    acker.join(10)
    assert link.in_flight == len(held)
    publish(PACKET_IDS - len(held))
    wait_until(lambda: len(sent) == 2 * PACKET_IDS - len(held), 20, "the second round")
    second = sent[PACKET_IDS:]
    assert second == [i for i in range(3, PACKET_IDS + 1) if i not in held]
    assert link.in_flight == PACKET_IDS
    with caplog.at_level(logging.WARNING, LINK_LOG), pytest.raises(ConnectionLost) as lost:
        link.publish("t", b"", 1)
    assert "packet ids are in flight" in str(lost.value) and link.closed
    assert any("packet ids are in flight" in r.getMessage() for r in caplog.records)
    link.publish("t", b"", 0)  # QoS 0 takes no id (and a closed link sends nothing)
    assert done.wait(10)
    peer.close()


# ------------------------------------------------------------------------ the application's
# guarantee: the link does not resend our QoS 1 messages on a new connection (see its
# docstring); the gateway's outbox does.


class SwallowingProxy:
    """A TCP proxy to the broker. ``swallow`` drops what the clients send from then on
    (the broker never sees it, so it never PUBACKs it); ``cut`` closes every connection
    and forwards faithfully again for the next ones."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.swallowing = False
        self.swallowed = 0  # bytes
        self.connections = 0
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.server.accept()
                upstream = socket.create_connection(self.target)
                with self._lock:
                    self.connections += 1
                    self._open += [client, upstream]
                threading.Thread(
                    target=self._pump, args=(client, upstream, True), daemon=True
                ).start()
                threading.Thread(
                    target=self._pump, args=(upstream, client, False), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                if from_client and self.swallowing:
                    self.swallowed += len(data)
                else:
                    sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def swallow(self) -> None:
        self.swallowing = True

    def cut(self) -> None:
        with self._lock:
            socks, self._open = self._open, []
            self.swallowing = False
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.server.close()
        self.cut()


@contextlib.contextmanager
def swallowing_proxy(url: str) -> Iterator[SwallowingProxy]:
    address = BrokerSettings.from_url(url).address
    proxy = SwallowingProxy(address.host, address.port)
    try:
        yield proxy
    finally:
        proxy.close()


def test_reads_lost_on_a_connection_are_resent_by_the_gateway_not_the_link(
    mqtt_url: str,  # noqa: F811
    sessions: Sessions,  # noqa: F811
    root: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A gateway's connection swallows its reads for a while (the broker never gets them,
    never PUBACKs them), then drops. The next connection is a new link that knows nothing
    of them; the outbox sends every unacknowledged read again, so none is lost and none
    is charged twice. (No resend within the connection: ``resend_after`` is a minute.)"""
    db, outbox = tmp_path / "sink.db", tmp_path / "outbox.db"
    n = 400
    feed = write_feed(tmp_path / "feed.jsonl", feed_lines(n))
    reads = "SELECT count(*) FROM reads"
    with (
        swallowing_proxy(mqtt_url) as proxy,
        service_thread(mqtt_url, SqliteSink(db, delay=0.002), sessions.new("svc"), root),
    ):
        gateway = GatewayThread(
            lot="lot-1",
            broker_url=proxy.url,
            feed=feed,
            outbox_path=outbox,
            topic_root=root,
            client_id=sessions.new("gw"),
            exit_when_drained=True,
            resend_after=60.0,
        )
        wait_until(lambda: db_count(db, reads) >= 50, 15, "50 reads")
        proxy.swallow()
        wait_until(lambda: proxy.swallowed > 0, 10, "reads swallowed")
        time.sleep(0.5)  # the reads in flight are recorded; the swallowed ones never come
        recorded = db_count(db, reads)
        pending = outbox_counts(outbox)[0]
        assert recorded < n and pending > 0
        time.sleep(0.5)
        assert db_count(db, reads) == recorded  # nothing more gets through this connection
        proxy.cut()
        stats = gateway.join(30)
    assert proxy.connections >= 2 and stats.connections >= 2
    assert stats.resent == 0  # not resent within the connection ...
    assert stats.sent > n  # ... but sent again on the next one, by the outbox
    assert db_rows(db, "SELECT count(*), count(DISTINCT read_id) FROM charges") == [(n, n)]
    assert outbox_counts(outbox) == (0, n)
