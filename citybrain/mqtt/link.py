"""One MQTT 3.1.1 connection for the parking hot path: a socket (TCP or TLS) and the codec
(``citybrain.mqtt.wire``).

``Link`` is driven by its owner's loop on one thread: ``poll`` waits for the socket (and
optionally another file descriptor that wakes the loop), reads what arrived and returns
the PUBLISH packets, answering PINGRESP and PUBACK itself; ``publish`` and ``ack`` only
queue bytes, and ``flush`` sends everything queued in one write. Nothing is acknowledged
unless the owner calls ``ack``: a delivery is PUBACKed exactly when the owner decides.

Keepalive: a PINGREQ goes out when nothing was sent for half the keepalive; when nothing
at all came back for one and a half keepalives the connection counts as lost.

What the link takes, and what closes it (``ConnectionLost``, the reason logged on
``citybrain.mqtt.link``; the owner reconnects and the broker redelivers whatever it had
not been PUBACKed):

* deliveries at QoS 0 and 1. A QoS 2 PUBLISH is never answered (no PUBACK, which would be
  the wrong acknowledgement, and no PUBREC): the connection is closed. The link asks for
  QoS 1 at most, so a broker that keeps to MQTT never sends one.
* packets of at most ``max_packet`` bytes (``DEFAULT_MAX_PACKET``: 256 KiB, four times the
  64 KiB a read may have, ``citybrain.parking.readcontract``). A packet whose header
  announces more closes the connection before its body is buffered.
* packet ids: one of our QoS 1 PUBLISHes keeps its id until its PUBACK comes (a
  SUBSCRIBE until its SUBACK); a new one takes the next id not in flight. With all
  65,535 in flight, the next QoS 1 ``publish`` closes the connection.

Delivery of our own QoS 1 messages is the application's guarantee, not the link's. A
``Link`` is one network connection: what it published and the broker had not PUBACKed
when the connection ended is not resent with DUP on the next connection (MQTT 3.1.1
section 4.4), even when the session is resumed, because the next connection is a new
``Link`` that does not know it. Nothing is lost that way on the parking path, because
nothing depends on a broker's PUBACK:

* a gateway's reads (``citybrain.parking.gateway``) stay in its on-disk outbox until the
  service's ack for each read arrives on the acks topic; on every new connection every
  unacknowledged read is sent again (``SendWindow.reset``), and within a connection after
  ``resend_after`` seconds. The service records a read again as a duplicate (never
  charged twice) and acks it again.
* the service's acks to the gateways are not kept: a lost one makes the gateway resend
  the read, which the service answers again.

``tests/test_mqtt_link.py`` checks it: a gateway whose connection swallows its reads and
then drops loses none of them, and so does a broker restarted mid-stream
(``tests/test_parking_gateway.py``).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import time
from collections.abc import Sequence
from typing import NoReturn, TypeVar

from citybrain.mqtt.address import BrokerSettings
from citybrain.mqtt.wire import (
    DISCONNECT_PACKET,
    FATAL_RETURN_CODES,
    PINGREQ_PACKET,
    SUBACK_FAILURE,
    ConnAck,
    Decoder,
    PacketTooLarge,
    PubAck,
    Publish,
    SubAck,
    UnsubAck,
    encode_connect,
    encode_puback,
    encode_publish,
    encode_subscribe,
    encode_unsubscribe,
)

log = logging.getLogger(__name__)
A = TypeVar("A", SubAck, UnsubAck)

READ_SIZE = 256 * 1024
CLOSE_GRACE_S = 0.1  # how long ``close`` reads what the broker still sends
# The largest packet taken by default: four times a read's 64 KiB (the read contract's
# limit, which the ledger applies), so that any read the ledger would look at arrives.
DEFAULT_MAX_PACKET = 256 * 1024
PACKET_IDS = 0xFFFF  # ids 1..65535


class ConnectionLost(ConnectionError):
    """The broker closed the connection, stopped answering, sent garbage, or sent what the
    link does not take (a QoS 2 PUBLISH, a packet over ``max_packet``); or no packet id
    was free. The connection is closed."""


class Refused(ConnectionError):
    """The broker refused the login (a CONNACK return code) or a subscription
    (``SUBACK_FAILURE``: the ACL)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def fatal(self) -> bool:
        """Retrying cannot help (bad credentials, not authorized, rejected id, the ACL)."""
        return self.code in FATAL_RETURN_CODES or self.code == SUBACK_FAILURE


def open_subscribed(
    settings: BrokerSettings,
    client_id: str,
    topic_filter: str,
    qos: int,
    keepalive: int = 30,
    timeout: float = 10.0,
    *,
    max_packet: int = DEFAULT_MAX_PACKET,
) -> Link:
    """A link on the persistent session of ``client_id``, subscribed to ``topic_filter``.

    ``Refused`` when the broker refuses the login or the subscription, ``OSError`` when it
    cannot be reached or the connection drops before the SUBACK."""
    link = Link.open(
        settings,
        client_id,
        clean_session=False,
        keepalive=keepalive,
        timeout=timeout,
        max_packet=max_packet,
    )
    try:
        codes = link.subscribe(topic_filter, qos, timeout)
    except BaseException:
        link.abort()
        raise
    if any(code == SUBACK_FAILURE for code in codes):
        link.close()
        raise Refused(SUBACK_FAILURE, f"subscription to {topic_filter} refused (check the ACL)")
    return link


class Link:
    """A connected MQTT session; see the module text. Use ``Link.open``."""

    def __init__(
        self,
        sock: socket.socket,
        keepalive: int,
        session_present: bool,
        write_timeout: float = 10.0,
        *,
        max_packet: int = DEFAULT_MAX_PACKET,
        decoder: Decoder | None = None,
        peer: str = "the broker",
    ) -> None:
        # Non-blocking: reads wait in select (``_receive``), a write waits for room at most
        # ``write_timeout`` (``_send``). (A socket with a timeout polls before every
        # read and write: a system call more each.)
        sock.setblocking(False)
        self._sock = sock
        self._write_timeout = write_timeout
        self.keepalive = keepalive
        self.session_present = session_present
        self.peer = peer  # for logs
        # ``decoder``: the one that read the CONNACK (``open``), with its ``max_packet``
        self._decoder = decoder if decoder is not None else Decoder(max_packet)
        # Received bytes land in this buffer: a fresh 256 KiB bytes object per read
        # (``recv``) is an mmap and an munmap each time, and the pages to zero.
        self._in = bytearray(READ_SIZE)
        self._out = bytearray()
        self._early: list[Publish] = []  # deliveries that came before the SUBACK
        self._next_id = 0
        self._unacked: set[int] = set()  # ids of our QoS 1 publishes not PUBACKed yet
        self._subscribing: set[int] = set()  # ids of our SUBSCRIBEs not SUBACKed yet
        now = time.monotonic()
        self._sent_at = now
        self._heard_at = now
        self._ping_out = False
        self.closed = False

    @classmethod
    def open(
        cls,
        settings: BrokerSettings,
        client_id: str,
        *,
        clean_session: bool,
        keepalive: int = 30,
        timeout: float = 10.0,
        max_packet: int = DEFAULT_MAX_PACKET,
    ) -> Link:
        """Connect and log in; ``Refused`` on a non-zero CONNACK, ``OSError`` when the
        broker cannot be reached (or the TLS handshake fails). ``max_packet``: the largest
        packet taken from the broker, in bytes (see the module text)."""
        address = settings.address
        raw = socket.create_connection((address.host, address.port), timeout=timeout)
        sock: socket.socket = raw
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            context = settings.tls_context()
            if context is not None:
                sock = context.wrap_socket(raw, server_hostname=address.host)
            sock.sendall(
                encode_connect(
                    client_id,
                    clean_session=clean_session,
                    keepalive=keepalive,
                    username=address.username,
                    password=address.password,
                )
            )
            decoder = Decoder(max_packet)
            deadline = time.monotonic() + timeout
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError("no CONNACK from the broker")
                data = sock.recv(READ_SIZE)
                if not data:
                    raise ConnectionLost("the broker closed the connection before CONNACK")
                try:
                    packets = decoder.feed(data)
                except PacketTooLarge as exc:
                    log.warning("closing the connection to %s: %s", address.url, exc)
                    raise ConnectionLost(str(exc)) from None
                except ValueError as exc:  # not an MQTT broker (say TLS or HTTP)
                    raise ConnectionLost(f"the broker sent garbage: {exc}") from None
                if packets:
                    break
            first = packets[0]
            if not isinstance(first, ConnAck):
                raise ConnectionLost(f"expected CONNACK, got {type(first).__name__}")
            if first.code:
                raise Refused(first.code, f"connection refused: {first.text}")
            link = cls(
                sock,
                keepalive,
                first.session_present,
                timeout,
                decoder=decoder,
                peer=address.url,
            )
            # A resumed session's redeliveries may come right behind the CONNACK.
            link._early = [p for p in link._take(packets[1:]) if isinstance(p, Publish)]
            return link
        except BaseException:
            sock.close()
            raw.close()
            raise

    # ---- requests ----------------------------------------------------------------------

    def subscribe(self, topic_filter: str, qos: int, timeout: float = 10.0) -> tuple[int, ...]:
        """Subscribe and wait for the SUBACK; its codes (``SUBACK_FAILURE`` = refused).
        Deliveries that arrive meanwhile are kept for the next ``poll``."""
        packet_id = self._packet_id()
        packet = encode_subscribe(packet_id, topic_filter, qos)
        return self._request(packet_id, packet, SubAck, timeout).codes

    def unsubscribe(self, topic_filter: str, timeout: float = 10.0) -> None:
        """Unsubscribe and wait for the UNSUBACK (a filter the session does not have is
        answered alike). Deliveries that arrive meanwhile are kept for the next ``poll``."""
        packet_id = self._packet_id()
        self._request(packet_id, encode_unsubscribe(packet_id, topic_filter), UnsubAck, timeout)

    def _request(self, packet_id: int, packet: bytes, answer: type[A], timeout: float) -> A:
        """Send ``packet`` and wait for its ``answer`` (its packet id stays in use until
        then); ``ConnectionLost`` when none comes within ``timeout``."""
        self._subscribing.add(packet_id)
        self._out += packet
        self.flush()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectionLost(f"no {answer.__name__.upper()} from the broker")
            for got in self._receive(left, None, want=answer):
                if isinstance(got, answer) and got.packet_id == packet_id:
                    self._subscribing.discard(packet_id)
                    return got

    @property
    def in_flight(self) -> int:
        """Our QoS 1 publishes the broker has not PUBACKed yet."""
        return len(self._unacked)

    def publish(self, topic: str | bytes, payload: bytes, qos: int) -> None:
        """Queue a PUBLISH (sent by the next ``flush``). At QoS 1 it takes a packet id
        that is not in flight; ``ConnectionLost`` (the connection is closed) when all
        65,535 are."""
        if qos:
            packet_id = self._packet_id()
            self._out += encode_publish(topic, payload, qos, packet_id)
            self._unacked.add(packet_id)
        else:
            self._out += encode_publish(topic, payload)

    def ack(self, packet_id: int, qos: int = 1) -> None:
        """Queue the PUBACK of a delivery (nothing to do at QoS 0; a QoS 2 delivery never
        reaches the owner, and ``ValueError`` here)."""
        if qos:
            if qos != 1:
                raise ValueError(f"no PUBACK for a QoS {qos} delivery")
            self._out += encode_puback(packet_id)

    def flush(self) -> None:
        if self.closed:
            raise ConnectionLost("the connection is closed")
        if self._out:
            try:
                self._send(self._out)
            except OSError as exc:
                self.abort()
                raise ConnectionLost(f"sending failed: {exc}") from None
            self._out.clear()
            self._sent_at = time.monotonic()

    def poll(self, timeout: float, wake: int | None = None) -> list[Publish]:
        """Deliveries that arrived within ``timeout`` seconds (at once when some are
        already here); returns early, maybe empty, when ``wake`` becomes readable."""
        if self._early:
            early, self._early = self._early, []
            return early
        return [p for p in self._receive(timeout, wake) if isinstance(p, Publish)]

    def close(self) -> None:
        """Send what is queued and DISCONNECT (the session stays, if it was kept)."""
        if self.closed:
            return
        try:
            self._out += DISCONNECT_PACKET
            self.flush()
            # Read what the broker already sent before closing: closing with unread input
            # resets the connection, and the broker may then drop our last packets.
            self._sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + CLOSE_GRACE_S
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([self._sock.fileno()], [], [], left)
                if not ready or not self._sock.recv(READ_SIZE):
                    break
        except (OSError, ValueError):
            pass
        self.abort()

    def abort(self) -> None:
        """Drop the connection without a word (as a crash would)."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self._sock.close()

    # ---- internals ---------------------------------------------------------------------

    def _send(self, data: bytes | bytearray) -> None:
        """All of ``data``, waiting for room in the socket at most the write timeout."""
        view = memoryview(data)
        deadline = time.monotonic() + self._write_timeout
        while view:
            readable = False  # what to wait for: room to write, or (TLS) input first
            try:
                view = view[self._sock.send(view) :]
            except ssl.SSLWantReadError:
                readable = True
            except (BlockingIOError, ssl.SSLWantWriteError):
                pass
            if view:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the broker did not take our data in time")
                fileno = self._sock.fileno()
                if readable:
                    select.select([fileno], [], [], left)
                else:
                    select.select([], [fileno], [], left)

    def _packet_id(self) -> int:
        """The next packet id after the last one that is not in flight."""
        unacked, subscribing = self._unacked, self._subscribing
        if len(unacked) + len(subscribing) >= PACKET_IDS:
            self._refuse(
                f"all {PACKET_IDS} packet ids are in flight: the broker has not acknowledged "
                f"{len(unacked)} QoS 1 messages"
            )
        packet_id = self._next_id
        while True:
            packet_id = packet_id % PACKET_IDS + 1
            if packet_id not in unacked and packet_id not in subscribing:
                self._next_id = packet_id
                return packet_id

    def _refuse(self, reason: str) -> NoReturn:
        """Close the connection for ``reason`` (logged): ``ConnectionLost``."""
        log.warning("closing the connection to %s: %s", self.peer, reason)
        self.abort()
        raise ConnectionLost(reason)

    def _take(self, packets: Sequence[object]) -> list[object]:
        """Handle the broker's housekeeping packets; the rest, in order."""
        rest: list[object] = []
        for packet in packets:
            if isinstance(packet, PubAck):
                self._unacked.discard(packet.packet_id)  # an unknown id: nothing to do
            elif isinstance(packet, Publish):
                if packet.qos == 2:
                    self._refuse(
                        f"the broker sent a QoS 2 PUBLISH (packet id {packet.packet_id}), "
                        "which this link does not take (it subscribes at QoS 1 at most)"
                    )
                rest.append(packet)
            elif isinstance(packet, SubAck | UnsubAck):
                rest.append(packet)
            # PINGRESP: hearing anything is enough
        return rest

    def _receive(self, timeout: float, wake: int | None, want: type | None = None) -> list[object]:
        if self.closed:
            raise ConnectionLost("the connection is closed")
        self._ping_if_due(time.monotonic())
        limit = self.keepalive * 0.5 if self.keepalive else timeout
        wait = max(0.0, min(timeout, limit))
        pending = isinstance(self._sock, ssl.SSLSocket) and self._sock.pending() > 0
        if not pending:
            watched: list[int] = (
                [self._sock.fileno()] if wake is None else [self._sock.fileno(), wake]
            )
            try:
                ready, _, _ = select.select(watched, [], [], wait)
            except (OSError, ValueError) as exc:
                self.abort()
                raise ConnectionLost(f"waiting on the socket failed: {exc}") from None
            if self._sock.fileno() not in ready:
                self._check_silence(time.monotonic())
                return []
        chunks: list[bytes] = []
        view = memoryview(self._in)
        try:
            while True:
                size = self._sock.recv_into(self._in)
                if not size:
                    self.abort()
                    raise ConnectionLost("the broker closed the connection")
                chunks.append(bytes(view[:size]))
                if not (isinstance(self._sock, ssl.SSLSocket) and self._sock.pending()):
                    break
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            pass  # nothing more yet (TLS: the next read or write carries on)
        except OSError as exc:
            self.abort()
            raise ConnectionLost(f"receiving failed: {exc}") from None
        self._heard_at = time.monotonic()
        self._ping_out = False
        try:
            packets = self._decoder.feed(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        except PacketTooLarge as exc:
            self._refuse(str(exc))
        except ValueError as exc:
            self.abort()
            raise ConnectionLost(f"the broker sent garbage: {exc}") from None
        rest = self._take(packets)
        if want is not None:  # waiting for a SUBACK: deliveries wait for the next poll
            self._early += [p for p in rest if isinstance(p, Publish)]
        return rest

    def _check_silence(self, now: float) -> None:
        """Nothing was waiting on the socket: a broker silent for 1.5 keepalives is gone."""
        if self.keepalive and now - self._heard_at > self.keepalive * 1.5:
            self.abort()
            raise ConnectionLost(f"the broker was silent for {now - self._heard_at:.0f} s")

    def _ping_if_due(self, now: float) -> None:
        if not self.keepalive:
            return
        half = self.keepalive * 0.5
        quiet = now - self._sent_at >= half or now - self._heard_at >= half
        if quiet and not self._ping_out:
            self._out += PINGREQ_PACKET
            self._ping_out = True
            self.flush()
