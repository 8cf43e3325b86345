"""Reconnecting with back-off, written once: when to try again, and one attempt.

A ``Backoff`` is the schedule of one connection's owner: after a failed attempt the next
one waits ``first`` seconds, then twice as long after each further failure, at most
``most`` seconds; ``reset`` starts over (the owner decides what counts as success: a
connection, or progress on one). ``attempt`` makes one connection attempt and sorts its
failures: retrying later can mend them (logged, the next attempt scheduled), or cannot
(``Refused`` with ``fatal``: bad credentials or a refused subscription; raised).

Owners that block between attempts (the parking service) call ``wait``; owners that have
other work meanwhile (a gateway reads its feed while disconnected) look at ``due`` and
``retry_at``. paho clients reconnect by themselves: ``citybrain.mqtt.paho.make_client``
gives them the same schedule (``reconnect=Backoff(...)``). ``hold_subscription`` is the
whole loop of an owner whose only work is one subscription (the parking payment
dispatcher, the reference payment adapter).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from citybrain.mqtt.address import BrokerSettings
from citybrain.mqtt.link import ConnectionLost, Link, Refused, open_subscribed

T = TypeVar("T")


class Backoff:
    """The wait before the next connection attempt; see the module text."""

    def __init__(
        self,
        first: float,
        most: float,
        *,
        factor: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if first < 0 or most < 0:
            raise ValueError("back-off waits must not be negative")
        if factor < 1:
            raise ValueError("the back-off factor must be at least 1")
        self.first = first
        self.most = most
        self.factor = factor
        self._clock = clock
        self._delay = first
        self.retry_at = -math.inf  # clock time of the next attempt: at once

    @property
    def delay(self) -> float:
        """The wait the next failure gets."""
        return self._delay

    def due(self) -> bool:
        """The next attempt may be made now."""
        return self._clock() >= self.retry_at

    def failed(self) -> float:
        """An attempt failed (or a connection ended badly): the next attempt waits the
        current delay, and the delay after it grows. Returns the wait."""
        wait = self._delay
        self.retry_at = self._clock() + wait
        self._delay = min(self.most, self._delay * self.factor)
        return wait

    def lost(self) -> float:
        """A connection that worked was lost: the next attempt waits the current delay,
        which does not grow. Returns the wait."""
        self.retry_at = self._clock() + self._delay
        return self._delay

    def reset(self) -> None:
        """Success: the next failure waits ``first`` again."""
        self._delay = self.first

    def wait(self, stop: threading.Event) -> bool:
        """Block until the next attempt is due or ``stop`` is set (True then)."""
        return stop.wait(max(0.0, self.retry_at - self._clock()))

    def attempt(
        self, connect: Callable[[], T], *, url: str, who: str, log: logging.Logger
    ) -> T | None:
        """What ``connect`` returns, or ``None`` after a failure that retrying may mend
        (logged; the next attempt is scheduled with ``failed``). A ``Refused`` that is
        ``fatal`` is logged and raised: retrying cannot help."""
        try:
            return connect()
        except Refused as exc:
            log.error("broker %s refused %s: %s", url, who, exc)
            if exc.fatal:
                raise
        except OSError as exc:  # refused, unreachable, TLS handshake failed, lost
            log.warning("cannot reach broker %s: %s", url, exc)
        self.failed()
        return None


def hold_subscription(
    settings: BrokerSettings,
    client_id: str,
    topic_filter: str,
    work: Callable[[Link, Callable[[], None]], None],
    *,
    stop: threading.Event,
    who: str,
    log: logging.Logger,
    qos: int = 1,
    keepalive: int = 30,
    on_ready: Callable[[], None] | None = None,
    max_backoff: float = 10.0,
) -> int:
    """Keep the persistent session of ``client_id`` subscribed to ``topic_filter`` until
    ``stop`` is set; returns how many connections were made.

    On each connection ``work(link, progress)`` runs until ``stop`` is set (it returns:
    the connection is closed) or the connection is lost (``ConnectionLost``: the next
    attempt after the back-off). ``progress()`` says the work got somewhere (the back-off
    starts over). Any other exception is logged and the connection dropped without a word
    (what it had not acknowledged is delivered again), the next attempt waiting as after a
    failed one. A refusal that retrying cannot mend raises ``Refused``."""
    backoff = Backoff(0.2, max_backoff)
    connections = 0

    def connect() -> Link:
        return open_subscribed(settings, client_id, topic_filter, qos, keepalive)

    while not stop.is_set():
        link = backoff.attempt(connect, url=settings.address.url, who=who, log=log)
        if link is None:
            backoff.wait(stop)
            continue
        connections += 1
        if on_ready is not None:
            on_ready()
        try:
            work(link, backoff.reset)
            link.close()
        except ConnectionLost as exc:
            log.warning("%s: connection to %s lost: %s", who, settings.address.url, exc)
            link.abort()
            backoff.lost()
        except Exception:
            log.exception("%s failed; reconnecting", who)
            link.abort()
            backoff.failed()
        backoff.wait(stop)
    return connections
