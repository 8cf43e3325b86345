"""A lot's gateway: camera reads in (JSON lines), MQTT out, retired only when acknowledged.

Each valid read is committed to an on-disk outbox (SQLite, WAL, ``synchronous=FULL``)
before it is published, so a killed gateway resends on restart whatever had no ack
(retirements are written in bulk and not synced on their own: losing one only resends a
duplicate, which the service acks again). A read is retired when the service's ack for
its ``read_id`` arrives on the lot's acks topic (a persistent session, so acks sent while
the gateway was away still arrive). Unacknowledged
reads are resent after ``resend_after`` seconds and on every reconnection; at most
``window`` reads are in flight. Re-reading the same feed is harmless: read ids already in
the outbox (pending or retired) are ignored.

Threads: a feed-reader thread only puts lines on a queue (and wakes the loop); one
thread (the caller's) owns the connection (``citybrain.mqtt.link.Link``) and the outbox, and decides
what to send.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

from citybrain.mqtt.address import BrokerSettings
from citybrain.mqtt.backoff import Backoff
from citybrain.mqtt.link import ConnectionLost, Link, Refused, open_subscribed
from citybrain.parking.mqtt import (
    QOS,
    TOPIC_ROOT,
    SendWindow,
    acks_topic,
    check_lot_id,
    encode_object,
    mask_plate,
    parse_ack,
    reads_topic,
)
from citybrain.parking.readcontract import (
    DeadReason,
    PayloadError,
    Rejection,
    check_object,
    check_read,
    decode,
)

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    read_id   TEXT NOT NULL UNIQUE,
    payload   BLOB NOT NULL,
    queued_at TEXT NOT NULL,
    acked_at  TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq) WHERE acked_at IS NULL;
"""


ACK_LINGER = 0.003  # seconds the loop waits for the rest of a burst of acks
CONNECT_S = 3.0  # the loop waits this long at most for each step of a connection
IDLE_POLL_S = 0.25  # with nothing to do, the loop looks at ``stop`` this often
RETIRE_SYNC_S = 0.2  # retirements held in memory are written to the outbox file this often
_IN_CHUNK = 500  # read ids per lookup (SQLite's limit on parameters is 999 in old builds)


def gateway_client_id(lot_id: str) -> str:
    return f"citybrain-gw-{check_lot_id(lot_id)}"


class Outbox:
    """The gateway's durable queue: one row per read id, ``acked_at`` set on retirement.

    The oldest pending reads (up to ``cache`` of them) are also kept in memory, in outbox
    order, so the gateway's loop asks the disk only to write: ``head`` and
    ``pending_count`` read the file only when more reads are pending than the cache holds.
    One thread owns an outbox (the file is the truth; the cache mirrors it)."""

    def __init__(self, path: str | Path, cache: int = 5_000) -> None:
        if cache < 1:
            raise ValueError("cache must be at least 1")
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        # Retirements commit through a second connection that does not sync (see retire).
        self._retiring = sqlite3.connect(self.path, isolation_level=None)
        self._retiring.execute("PRAGMA synchronous=NORMAL")
        self._cache_size = cache
        self._cached: dict[str, bytes] = {}  # oldest pending reads, in outbox order
        self._pending = 0
        self._acked: dict[str, str] = {}  # retired, not yet written: read id -> acked_at
        self._synced_at = time.monotonic()
        self._refill()

    def close(self) -> None:
        self.sync_retired()
        self._retiring.close()
        self._db.close()

    def _refill(self, size: int | None = None) -> None:
        self.sync_retired()
        row = self._db.execute("SELECT count(*) FROM outbox WHERE acked_at IS NULL").fetchone()
        self._pending = int(row[0])
        rows = self._db.execute(
            "SELECT read_id, payload FROM outbox WHERE acked_at IS NULL ORDER BY seq LIMIT ?",
            (size or self._cache_size,),
        ).fetchall()
        self._cached = {str(r[0]): bytes(r[1]) for r in rows}

    def add(self, read_id: str, payload: bytes, now: datetime) -> bool:
        """Queue a read; False when its id is already known (pending or retired)."""
        return self.add_many([(read_id, payload)], now)[0]

    def add_many(self, reads: Iterable[tuple[str, bytes]], now: datetime) -> list[bool]:
        """Queue reads in one transaction (one sync to disk); per read, whether it is new."""
        stamp = now.isoformat()
        given = list(reads)
        added: list[bool] = []
        new: list[tuple[str, bytes]] = []
        with _Tx(self._db):
            seen = self._known({read_id for read_id, _ in given})
            for read_id, payload in given:
                added.append(read_id not in seen)
                if read_id not in seen:
                    seen.add(read_id)  # the same id twice in one call: the first is queued
                    new.append((read_id, payload))
            self._db.executemany(
                "INSERT INTO outbox (read_id, payload, queued_at) VALUES (?, ?, ?)",
                [(read_id, payload, stamp) for read_id, payload in new],
            )
        for read_id, payload in new:  # after the commit: the cache never runs ahead
            if self._pending == len(self._cached) and len(self._cached) < self._cache_size:
                self._cached[read_id] = payload
            self._pending += 1
        return added

    def head(self, limit: int) -> list[tuple[str, bytes]]:
        """The oldest ``limit`` pending reads, in the order they were queued."""
        if len(self._cached) < min(limit, self._pending):
            self._refill(max(limit, self._cache_size))  # more is pending on disk
        out: list[tuple[str, bytes]] = []
        for item in self._cached.items():
            if len(out) >= limit:
                break
            out.append(item)
        return out

    def retire(self, read_ids: Iterable[str], now: datetime) -> int:
        """Mark reads acknowledged; returns how many were pending.

        The reads the gateway sent (those it holds in memory) are retired at once in
        memory and written to the file in bulk (``sync_if_due``, which the gateway's loop
        calls every turn; before the file is read; on ``close``); others are written at
        once. The
        writes are not synced to disk by themselves (a connection with
        ``synchronous=NORMAL``; the next queued read's commit syncs them). A retirement
        lost with the process or the machine only makes the gateway resend a read the
        service already has, which it answers as a duplicate (and acks again). Queuing a
        read (``add_many``) is always synced before it is sent."""
        stamp = now.isoformat()
        count = 0
        others: list[str] = []
        for read_id in read_ids:
            if self._cached.pop(read_id, None) is not None:
                self._acked[read_id] = stamp
                count += 1
            elif read_id not in self._acked:
                others.append(read_id)
        if others:
            count += self._write_retired([(stamp, read_id) for read_id in others])
        self._pending -= count
        return count

    def sync_if_due(self) -> None:
        """``sync_retired`` when the last one is ``RETIRE_SYNC_S`` old (the gateway's loop
        calls it every turn, so an idle gateway writes its last retirements too)."""
        if time.monotonic() - self._synced_at >= RETIRE_SYNC_S:
            self.sync_retired()

    def sync_retired(self) -> None:
        """Write the retirements held in memory to the file."""
        self._synced_at = time.monotonic()
        if self._acked:
            self._write_retired([(stamp, read_id) for read_id, stamp in self._acked.items()])
            self._acked.clear()

    def _write_retired(self, rows: list[tuple[str, str]]) -> int:
        """``(acked_at, read_id)`` rows; returns how many of them were pending in the file."""
        db = self._retiring
        with _Tx(db):
            before = db.total_changes
            db.executemany(
                "UPDATE outbox SET acked_at = ? WHERE read_id = ? AND acked_at IS NULL", rows
            )
            return db.total_changes - before

    def pending_count(self) -> int:
        return self._pending

    def retired_count(self) -> int:
        self.sync_retired()
        row = self._db.execute("SELECT count(*) FROM outbox WHERE acked_at IS NOT NULL").fetchone()
        return int(row[0])

    def prune(self, before: datetime) -> int:
        """Forget reads retired before ``before`` (re-feeding one would resend it once)."""
        self.sync_retired()
        cur = self._db.execute(
            "DELETE FROM outbox WHERE acked_at IS NOT NULL AND acked_at < ?",
            (before.isoformat(),),
        )
        return cur.rowcount

    def _known(self, read_ids: set[str]) -> set[str]:
        """Those of ``read_ids`` in the outbox (pending or retired)."""
        ids = sorted(read_ids)
        known: set[str] = set()
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i : i + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT read_id FROM outbox WHERE read_id IN ({marks})", chunk)
            known.update(str(r[0]) for r in rows)
        return known


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


@dataclass
class GatewayStats:
    ingested: int = 0
    known: int = 0  # feed lines whose read id was already in the outbox
    rejected: int = 0
    sent: int = 0
    resent: int = 0
    acked: int = 0
    connections: int = 0


class GatewayRefused(RuntimeError):
    """The broker refused the gateway's credentials or its acks subscription."""


_JSON_SPACE = " \t\r\n"


def prepare_line(line: str, lot_id: str) -> tuple[str, bytes, str]:
    """``(read_id, payload, raw plate)`` for one feed line, or ``PayloadError``.

    The payload is the line itself without its surrounding whitespace, as the camera wrote
    it (the evidence the service keeps), except that a missing ``lot_id`` is filled in
    with the gateway's lot (the object is then re-encoded, extra fields kept). The payload
    is accepted only if the read contract accepts it on this lot's topic
    (``readcontract``): the service decides the same on what the gateway sends."""
    try:  # surrogateescape: a line read that way gets its undecodable bytes back
        payload = line.strip(_JSON_SPACE).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        why = Rejection(DeadReason.NOT_UTF8, "not UTF-8: the line has a lone surrogate")
        raise PayloadError.of(why) from None
    obj = decode(payload)
    if isinstance(obj, Rejection):
        raise PayloadError.of(obj)
    if "lot_id" in obj:
        read = check_object(obj, lot_id)
    else:
        obj["lot_id"] = lot_id
        payload = encode_object(obj)
        read = check_read(payload, lot_id)  # what the service will decide on these bytes
    if isinstance(read, Rejection):
        raise PayloadError.of(read)
    return read.read_id, payload, read.raw_plate


def _feed_lines(feed: str | Path | IO[str]) -> tuple[IO[str], bool]:
    if isinstance(feed, str | Path):
        if str(feed) == "-":
            return sys.stdin, False
        return open(feed, encoding="utf-8"), True  # closed by the feed reader
    return feed, False


# Events from the feed-reader thread to the gateway's own thread.
_LINE = "line"
_FEED_END = "feed_end"


def run_gateway(
    lot: str,
    broker_url: str,
    feed: str | Path | IO[str],
    outbox_path: str | Path,
    *,
    username: str | None = None,
    password: str | None = None,
    ca_file: str | None = None,
    client_id: str | None = None,
    topic_root: str = TOPIC_ROOT,
    window: int = 100,
    resend_after: float = 10.0,
    keepalive: int = 30,
    keep_retired: timedelta = timedelta(days=7),
    exit_when_drained: bool = False,
    stop: threading.Event | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    on_connect: Callable[[], None] | None = None,
) -> GatewayStats:
    """Feed ``lot``'s camera reads to the broker until ``stop`` is set (or, with
    ``exit_when_drained``, until the feed has ended and every read is acknowledged).

    ``feed`` is a path, ``"-"`` for stdin, or an open text stream of JSON lines. Reconnects
    by itself (back-off 1 to 10 s); raises ``GatewayRefused`` on bad credentials or a
    refused subscription. ``on_connect`` is called after each subscription to the acks.
    """
    lot = check_lot_id(lot)
    settings = BrokerSettings.from_url(
        broker_url, username=username, password=password, ca_file=ca_file
    )
    address = settings.address
    stop = stop if stop is not None else threading.Event()
    out_topic = reads_topic(lot, topic_root).encode()
    in_topic = acks_topic(lot, topic_root)
    stats = GatewayStats()
    events: queue.Queue[tuple[str, str | None]] = queue.Queue(maxsize=10_000)
    wake_r, wake_w = os.pipe()  # the feed reader wakes the loop
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    stream, owned = _feed_lines(feed)
    finished = threading.Event()  # tells the feed reader to stop

    wake_lock = threading.Lock()  # the reader may outlive the loop: never write a closed fd
    wake_open = [True]
    # Set by the reader after it wrote to the pipe, cleared by the loop (after draining
    # the pipe, before taking events): while set, a byte the loop has not read yet is in
    # the pipe, so a line needs no write (and no system call) of its own; while clear,
    # the loop need not read the pipe (at worst a byte written just before the flag is
    # set wakes the loop once more).
    woken = [False]

    def put(event: tuple[str, str | None]) -> None:
        events.put(event)
        if woken[0]:
            return
        with wake_lock, contextlib.suppress(BlockingIOError):  # a full pipe wakes it anyway
            if wake_open[0]:
                os.write(wake_w, b"x")
                woken[0] = True

    def read_feed() -> None:
        try:
            for line in stream:
                if finished.is_set():
                    return
                if line.strip():
                    put((_LINE, line))
        except Exception:
            log.exception("reading the feed failed")
        finally:
            if owned:
                stream.close()
            put((_FEED_END, None))

    outbox = Outbox(outbox_path)
    pruned = outbox.prune(clock() - keep_retired)
    if pruned:
        log.info("pruned %d retired reads from the outbox", pruned)
    send_window = SendWindow(size=window, resend_after=resend_after)
    link: Link | None = None
    backoff = Backoff(1.0, 10.0)  # reset by each connection
    feed_done = False
    backlog = False  # feed lines left on the queue after a turn
    reader = threading.Thread(target=read_feed, name=f"feed-{lot}", daemon=True)
    reader.start()
    log.info("gateway %s: %d reads pending in %s", lot, outbox.pending_count(), outbox.path)
    try:
        while not stop.is_set():
            if link is None and backoff.due():
                link = _connect(
                    settings, client_id or gateway_client_id(lot), in_topic, keepalive, backoff
                )
                if link is not None:
                    backoff.reset()
                    stats.connections += 1
                    send_window.reset()
                    log.info("gateway %s connected to %s", lot, address.url)
                    if on_connect is not None:
                        on_connect()
            acks: list[str] = []
            try:
                if link is not None:
                    wait = min(IDLE_POLL_S, send_window.next_due(time.monotonic()))
                    if backlog:
                        wait = 0.0  # feed lines are waiting: no byte in the pipe says so
                    arrived = link.poll(wait, wake_r)
                    if (
                        arrived
                        and arrived[0].topic == in_topic
                        and send_window.in_flight > len(arrived)
                    ):
                        # The service acks many reads at once: let the rest of the burst
                        # arrive, so that one turn of this loop serves it.
                        time.sleep(ACK_LINGER)
                        arrived += link.poll(0.0)
                    for message in arrived:
                        link.ack(message.packet_id, message.qos)
                        if message.topic != in_topic:
                            continue
                        try:
                            acks.append(parse_ack(message.payload))
                        except PayloadError as exc:
                            log.warning("ignoring a malformed ack: %s", exc)
                else:
                    select.select(
                        [wake_r],
                        [],
                        [],
                        0.0
                        if backlog
                        else min(IDLE_POLL_S, max(0.0, backoff.retry_at - time.monotonic())),
                    )
            except ConnectionLost as exc:
                log.info("gateway %s disconnected: %s", lot, exc)
                link = None
                backoff.lost()
            if woken[0]:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                woken[0] = False
            lines: list[str] = []
            while len(lines) < 1000:
                try:
                    kind, value = events.get_nowait()
                except queue.Empty:
                    break
                if kind == _LINE and value is not None:
                    lines.append(value)
                elif kind == _FEED_END:
                    feed_done = True
            backlog = not events.empty()  # more than a turn takes: no wait next turn
            if lines:
                _ingest(outbox, lines, lot, clock(), stats)
            if acks:
                stats.acked += outbox.retire(acks, clock())
                send_window.acked(acks)
            outbox.sync_if_due()
            if link is not None:
                head = outbox.head(send_window.size)
                payloads = dict(head)
                first, again = send_window.due([rid for rid, _ in head], time.monotonic())
                try:
                    for read_id in first + again:
                        link.publish(out_topic, payloads[read_id], QOS)
                    stats.sent += len(first)
                    stats.resent += len(again)
                    if again:
                        log.info("gateway %s: resent %d unacknowledged reads", lot, len(again))
                    link.flush()
                except ConnectionLost as exc:
                    log.info("gateway %s disconnected: %s", lot, exc)
                    link = None
                    backoff.lost()
            if exit_when_drained and feed_done and events.empty() and not outbox.pending_count():
                break
    except BaseException:
        if link is not None:
            link.abort()  # acks retired or not: PUBACK nothing more (the broker resends)
            link = None
        raise
    finally:
        finished.set()
        if link is not None:
            link.close()
        outbox.close()
        with wake_lock:
            wake_open[0] = False
            os.close(wake_r)
            os.close(wake_w)
    return stats


def _connect(
    settings: BrokerSettings, client_id: str, acks: str, keepalive: int, backoff: Backoff
) -> Link | None:
    """A link subscribed to the lot's acks (persistent session), or None to retry when
    ``backoff`` says; ``GatewayRefused`` when retrying cannot help."""

    def connect() -> Link:
        return open_subscribed(settings, client_id, acks, QOS, keepalive, timeout=CONNECT_S)

    try:
        return backoff.attempt(
            connect, url=settings.address.url, who=f"gateway {client_id}", log=log
        )
    except Refused as exc:  # fatal: bad credentials, or the ACL
        raise GatewayRefused(str(exc)) from None


def _ingest(outbox: Outbox, lines: list[str], lot: str, now: datetime, stats: GatewayStats) -> None:
    """Validate feed lines and commit the valid ones to the outbox in one transaction."""
    prepared: list[tuple[str, bytes, str]] = []
    for line in lines:
        try:
            prepared.append(prepare_line(line, lot))
        except PayloadError as exc:
            stats.rejected += 1
            log.warning("gateway %s: rejected a feed line: %s", lot, exc)
    added = outbox.add_many([(read_id, data) for read_id, data, _ in prepared], now)
    debug = log.isEnabledFor(logging.DEBUG)  # masking every plate costs more than the rest
    for (read_id, _, plate), new in zip(prepared, added, strict=True):
        if new:
            stats.ingested += 1
            if debug:
                log.debug("gateway %s: queued read %s plate %s", lot, read_id, mask_plate(plate))
        else:
            stats.known += 1
            log.debug("gateway %s: read %s is already in the outbox", lot, read_id)
