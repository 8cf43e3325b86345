"""The parking path's own MQTT 3.1.1 packets (known answers from the standard's layouts)
and its connection, against a real Mosquitto."""

from __future__ import annotations

import time

import pytest

from citybrain.parking.broker import BrokerSettings
from citybrain.parking.mqttlink import ConnectionLost, Link
from citybrain.parking.mqttwire import (
    ConnAck,
    Decoder,
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

from .test_parking_mqtt import Sessions, mqtt_url, root, sessions  # noqa: F401 (fixtures)


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
