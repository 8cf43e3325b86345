"""MQTT 3.1.1 packets for the parking hot path, without I/O: bytes out, packets in.

Only what the settlement service and the gateways exchange with the broker: CONNECT /
CONNACK, SUBSCRIBE / SUBACK, UNSUBSCRIBE / UNSUBACK, PUBLISH at QoS 0 and 1, PUBACK,
PINGREQ / PINGRESP and DISCONNECT (OASIS MQTT 3.1.1, sections 2 and 3). ``Decoder`` turns a
byte stream, fed in pieces of any size, into packets (a QoS 2 PUBLISH is decoded as what it
is: refusing it is the connection's business, ``citybrain.mqtt.link``); everything else
encodes one packet.

Why not paho on this path: paho spends about 90 µs of CPU per QoS 1 message on each side
(objects, locks and callbacks per packet), which alone exceeds the parking path's CPU
budget per read on a 2-core machine; a packet here costs a few µs (``bench/parking.py``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
MAX_REMAINING = 268_435_455  # four bytes of remaining length
SUBACK_FAILURE = 0x80

# CONNACK return codes (3.2.2.3)
CONNACK_TEXT = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
FATAL_RETURN_CODES = frozenset({1, 2, 4, 5})  # retrying cannot help


class ProtocolError(ValueError):
    """Bytes that are not a packet of this protocol (the connection must be dropped)."""


class PacketTooLarge(ProtocolError):
    """A packet larger than the decoder takes (the connection must be dropped)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a packet of {size} bytes is larger than the limit of {limit} bytes")
        self.size = size
        self.limit = limit


@dataclass(frozen=True)
class ConnAck:
    session_present: bool
    code: int

    @property
    def text(self) -> str:
        return CONNACK_TEXT.get(self.code, f"return code {self.code}")


@dataclass(frozen=True)
class SubAck:
    packet_id: int
    codes: tuple[int, ...]  # granted QoS per filter, or SUBACK_FAILURE


@dataclass(frozen=True)
class UnsubAck:
    packet_id: int


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    packet_id: int  # 0 at QoS 0
    dup: bool = False
    retain: bool = False


@dataclass(frozen=True)
class PubAck:
    packet_id: int


@dataclass(frozen=True)
class PingResp:
    pass


Packet = ConnAck | SubAck | UnsubAck | Publish | PubAck | PingResp


# ---------------------------------------------------------------------------- encoding


def _length(n: int) -> bytes:
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        digit, n = n % 128, n // 128
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else text
    if len(data) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return struct.pack("!H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _length(len(body)) + body


def encode_connect(
    client_id: str,
    *,
    clean_session: bool,
    keepalive: int,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    if not 0 <= keepalive <= 0xFFFF:
        raise ValueError("keepalive must be 0..65535 seconds")
    if password is not None and username is None:
        raise ValueError("a password needs a user name in MQTT 3.1.1")
    flags = 0x02 if clean_session else 0
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    header = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    return _packet(CONNECT << 4, header + payload)


def encode_subscribe(packet_id: int, topic_filter: str, qos: int) -> bytes:
    _check_packet_id(packet_id)
    if qos not in (0, 1, 2):
        raise ValueError("qos must be 0, 1 or 2")
    body = struct.pack("!H", packet_id) + _string(topic_filter) + bytes([qos])
    return _packet(SUBSCRIBE << 4 | 0x02, body)


def encode_unsubscribe(packet_id: int, topic_filter: str) -> bytes:
    _check_packet_id(packet_id)
    return _packet(UNSUBSCRIBE << 4 | 0x02, struct.pack("!H", packet_id) + _string(topic_filter))


def encode_publish(
    topic: str | bytes, payload: bytes, qos: int = 0, packet_id: int = 0, *, dup: bool = False
) -> bytes:
    """A PUBLISH (never retained). ``topic`` may be given already encoded."""
    if qos not in (0, 1):
        raise ValueError("qos must be 0 or 1")
    first = PUBLISH << 4 | qos << 1 | (0x08 if dup and qos else 0)
    if qos:
        _check_packet_id(packet_id)
        return _packet(first, _string(topic) + struct.pack("!H", packet_id) + payload)
    return _packet(first, _string(topic) + payload)


def encode_puback(packet_id: int) -> bytes:
    _check_packet_id(packet_id)
    return b"\x40\x02" + struct.pack("!H", packet_id)


def _check_packet_id(packet_id: int) -> None:
    if not 1 <= packet_id <= 0xFFFF:
        raise ValueError(f"packet id {packet_id} out of 1..65535")


# ---------------------------------------------------------------------------- decoding


class Decoder:
    """Packets from a byte stream: ``feed`` what arrived, get the packets it completed.

    ``max_packet`` bounds a whole packet (fixed header included), in bytes: ``feed``
    raises ``PacketTooLarge`` as soon as a packet's header announces more, before its
    body is buffered. By default any size MQTT can express."""

    def __init__(self, max_packet: int = 1 + 4 + MAX_REMAINING) -> None:
        if max_packet < 2:
            raise ValueError("max_packet must be at least 2 bytes")
        self._buf = bytearray()
        self.max_packet = max_packet

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Packet]:
        buf = self._buf
        buf += data
        out: list[Packet] = []
        limit = self.max_packet
        i, n = 0, len(buf)
        while n - i >= 2:
            length, multiplier, j = 0, 1, i + 1
            while True:
                if j >= n:
                    length = -1  # the length itself is incomplete
                    break
                byte = buf[j]
                length += (byte & 0x7F) * multiplier
                j += 1
                if not byte & 0x80:
                    break
                multiplier *= 128
                if multiplier > 128**3:
                    raise ProtocolError("remaining length longer than four bytes")
            if length < 0:
                break
            if j - i + length > limit:
                raise PacketTooLarge(j - i + length, limit)
            if j + length > n:
                break
            out.append(_decode(buf[i], bytes(buf[j : j + length])))
            i = j + length
        del buf[:i]
        return out


def _decode(first: int, body: bytes) -> Packet:
    kind, flags = first >> 4, first & 0x0F
    if kind == PUBLISH:
        qos = (flags >> 1) & 0x03
        if qos > 2:
            raise ProtocolError("PUBLISH with QoS 3")
        if len(body) < 2:
            raise ProtocolError("PUBLISH too short")
        size = body[0] << 8 | body[1]
        start = 2 + size
        if start > len(body):
            raise ProtocolError("PUBLISH topic runs past the packet")
        try:
            topic = body[2:start].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("PUBLISH topic is not UTF-8") from None
        packet_id = 0
        if qos:
            if start + 2 > len(body):
                raise ProtocolError("PUBLISH without its packet id")
            packet_id = body[start] << 8 | body[start + 1]
            start += 2
        return Publish(topic, body[start:], qos, packet_id, bool(flags & 0x08), bool(flags & 1))
    if kind == PUBACK:
        if len(body) != 2:
            raise ProtocolError("PUBACK must be 2 bytes")
        return PubAck(body[0] << 8 | body[1])
    if kind == CONNACK:
        if len(body) != 2:
            raise ProtocolError("CONNACK must be 2 bytes")
        return ConnAck(bool(body[0] & 1), body[1])
    if kind == SUBACK:
        if len(body) < 3:
            raise ProtocolError("SUBACK too short")
        return SubAck(body[0] << 8 | body[1], tuple(body[2:]))
    if kind == UNSUBACK:
        if len(body) != 2:
            raise ProtocolError("UNSUBACK must be 2 bytes")
        return UnsubAck(body[0] << 8 | body[1])
    if kind == PINGRESP:
        return PingResp()
    raise ProtocolError(f"unexpected packet type {kind} from the broker")
