"""What one service knows of each cabinet's lease: when it may command, claim, or must stop.

Pure: the cabinets' ``Shown`` reports and ``CabinetEvent`` events go in with the service's
time of arrival; ``LeaseBook.update`` judges one intersection at a tick; the core
(``citybrain.field.core``) builds the messages. Every call is O(1); a tick visits each
intersection once.

The states of one intersection (``LeaseStatus``):

- ``unknown``: no report yet; ``silent``: no report for ``silent_after_s`` (service clock);
- ``local``: the cabinet runs its own plan, or keeps a lease in our name that this process
  does not hold (a previous run of this service); ``claiming``: the same, our claim sent;
- ``held_by_other``: another service holds the lease;
- ``held``: the cabinet granted us the lease ``epoch``.

Claims go out when a report arrives (at most one per ``claim_every_s`` per intersection), for
every intersection not held by us, nor by another service (unless this one is a standby, or
that service said it went offline). So a service claims as soon as it hears a cabinet, before
its first tick (a SUMO-in-the-loop run waits for the claims before its first second). A
standby leaves a signal nobody holds to others for ``standby_wait_s`` first: started together
with a primary, it is the primary that gets the signals.

A grant is the cabinet's event ``granted`` for our claim (the same epoch when the cabinet
still named us: a restarted service gets its lease back), or a report naming us holder under
a new epoch after a claim of ours. Reports older than the grant do not judge the lease.

We stop commanding (the lease is *lost*) when the cabinet reports another holder, no holder
(fallback, release), another epoch of ours, a refusal of a command under our epoch, silence,
or ``mismatch_reports`` reports in a row that show neither of our last two commanded states
(or still the local plan after our first command). After a refusal or a mismatch we also
release the lease (the cabinet goes to its local plan through its own change interval at
once rather than keep a state nobody commands) and claim again: a signal that shows
something else than what we commanded is not commanded blindly.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from citybrain.errors import ConfigError
from citybrain.field.protocol import CabinetEvent, Shown

log = logging.getLogger("citybrain.field")

NEVER = -math.inf


class LeaseStatus(StrEnum):
    UNKNOWN = "unknown"
    SILENT = "silent"
    LOCAL = "local"
    CLAIMING = "claiming"
    HELD_BY_OTHER = "held_by_other"
    HELD = "held"


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    silent_after_s: float = 3.0
    """A cabinet without a ``shown`` report for this long (service clock) is silent."""
    claim_every_s: float = 1.0
    """At most one claim per intersection in this time."""
    mismatch_reports: int = 2
    """Reports in a row that differ from what we commanded before we stop commanding."""
    standby_wait_s: float = 3.0
    """A standby claims a signal nobody holds only once it has been so for this long (a
    primary started at the same time takes it first)."""

    def __post_init__(self) -> None:
        for name in ("silent_after_s", "claim_every_s", "standby_wait_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"field.{name} must be a positive number, not {value}")
        if self.mismatch_reports < 1:
            raise ConfigError(f"field.mismatch_reports must be >= 1, not {self.mismatch_reports}")


class ShownView:
    """A cabinet's last report as a ``SignalView`` (the controller port), in service time.

    ``green_since`` is moved later by ``offset_s`` (how far the report's ``ts`` lagged the
    service's clock when it arrived: a cabinet whose clock runs behind must not make its green
    look older than it is); during a change interval the last known green start and phase
    stay.
    """

    __slots__ = ("green_since", "in_clearance", "phase")

    def __init__(self, phase: int = 0, green_since: float = 0.0) -> None:
        self.phase = phase
        self.in_clearance = False
        self.green_since = green_since

    def update(self, shown: Shown, offset_s: float) -> None:
        if shown.phase is not None:
            self.phase = shown.phase
        self.in_clearance = shown.clearance
        if shown.green_since is not None:
            self.green_since = shown.green_since + max(0.0, offset_s)


class SignalLease:
    """One intersection as this service knows it (mutable; owned by a ``LeaseBook``)."""

    __slots__ = (
        "claimed",
        "claimed_s",
        "commanded",
        "disowned",
        "epoch",
        "fresh",
        "granted_ts",
        "heard_s",
        "intersection",
        "last_ts",
        "local_since",
        "mismatches",
        "offset_s",
        "shown",
        "status",
        "view",
    )

    def __init__(self, intersection: str) -> None:
        self.intersection = intersection
        self.shown: Shown | None = None
        self.heard_s = NEVER
        """Service time of the last report."""
        self.fresh = False
        """A report arrived since the last tick."""
        self.view = ShownView()
        self.offset_s = 0.0
        """The service's clock minus the cabinet's, as its last report showed (0 unknown)."""
        self.epoch: int | None = None
        """Our lease, once granted."""
        self.granted_ts = NEVER
        """The grant's time on the cabinet's clock: older reports do not judge the lease."""
        self.disowned: int | None = None
        """An epoch in our name that this process does not hold (a previous run's, a lost one)."""
        self.local_since: float | None = None
        """Service time since which the cabinet has reported no holder (None: it has one)."""
        self.claimed = False
        """A claim sent since the lease was last granted or lost."""
        self.claimed_s = NEVER
        self.last_ts = NEVER
        """``ts`` of our last command under ``epoch`` (NEVER: none yet)."""
        self.commanded: deque[str] = deque(maxlen=2)
        """The states of our last two commands under ``epoch``."""
        self.mismatches = 0
        self.status = LeaseStatus.UNKNOWN

    @property
    def holder(self) -> str | None:
        return None if self.shown is None else self.shown.holder

    @property
    def resumable(self) -> bool:
        """Held, not yet commanded, and the last report is the grant's (or newer) and shows a
        phase's green: the envelope can resume from it."""
        s = self.shown
        return (
            s is not None
            and self.epoch is not None
            and self.last_ts == NEVER
            and s.epoch == self.epoch
            and s.ts >= self.granted_ts
            and s.phase is not None
            and s.green_since is not None
            and not s.clearance
        )


class LeaseBook:
    """The leases of one service's shard."""

    def __init__(
        self,
        service: str,
        intersections: Iterable[str],
        settings: LeaseSettings | None = None,
        *,
        standby: bool = False,
    ) -> None:
        self.service = service
        self.settings = settings or LeaseSettings()
        self.standby = standby
        self.leases: dict[str, SignalLease] = {x: SignalLease(x) for x in intersections}
        self.services: dict[str, bool] = {}
        """Other services' liveness (``control/services/{id}``), when heard."""
        self.releases: list[tuple[str, int]] = []
        """Leases to give back (intersection, epoch), for the caller to send and clear."""
        self.counts: Counter[str] = Counter()
        """granted, lost, refused, mismatch, denied, fallbacks, released, claims."""

    # ------------------------------------------------------------------ reports

    def shown(self, shown: Shown, now_s: float, offset_s: float = 0.0) -> bool:
        """A cabinet's report (checked by the caller against its intersection) at service time
        ``now_s``; ``offset_s``: the service's clock minus the report's ``ts`` at arrival
        (0 when both follow one clock). Whether to claim the intersection now."""
        lease = self.leases[shown.intersection]
        lease.shown = shown
        lease.heard_s = now_s
        lease.fresh = True
        lease.offset_s = offset_s
        lease.view.update(shown, offset_s)
        holder = shown.holder
        if holder is not None:
            lease.local_since = None
        elif lease.local_since is None:
            lease.local_since = now_s
        judged = lease.epoch is not None and shown.ts >= lease.granted_ts
        if judged and (holder != self.service or shown.epoch != lease.epoch):
            if holder is None:
                why = "the cabinet went to its local plan"
            elif holder == self.service:
                why = f"the cabinet names another lease of ours (epoch {shown.epoch})"
            else:
                why = f"the cabinet names {holder} as holder"
            self.lose(lease, why)
        if lease.epoch is None:
            if holder != self.service:
                lease.disowned = None
            elif lease.claimed and shown.epoch != lease.disowned:
                self._grant(lease, shown.epoch, shown.ts)
            else:
                lease.disowned = shown.epoch
        return self._claimable(lease, now_s)

    def event(self, event: CabinetEvent) -> None:
        """A cabinet's event about us: a grant of our claim, a denial, a refusal of our
        command (the lease is released and claimed again), our fallback or release."""
        if event.service != self.service:
            return
        lease = self.leases[event.intersection]
        kind = event.kind
        if kind == "granted":
            if lease.claimed:
                self._grant(lease, event.epoch, event.ts)
            return
        if kind == "denied":
            self.counts["denied"] += 1
            return
        if lease.epoch is None or event.epoch != lease.epoch:
            return
        if kind == "refused":
            self.counts["refused"] += 1
            log.warning(
                "%s: the cabinet refused our command (%s); resynchronising",
                lease.intersection,
                event.reason or "no reason given",
            )
            self.lose(lease, f"refused: {event.reason}", release=True)
        elif kind in ("fallback", "released"):
            self.counts["fallbacks" if kind == "fallback" else "released"] += 1
            self.lose(lease, f"{kind}: {event.reason}" if event.reason else kind)

    def service_status(self, service: str, online: bool) -> None:
        self.services[service] = online

    def _grant(self, lease: SignalLease, epoch: int, ts: float) -> None:
        lease.epoch = epoch
        lease.granted_ts = ts
        lease.disowned = None
        lease.claimed = False
        lease.last_ts = NEVER
        lease.commanded.clear()
        lease.mismatches = 0
        self.counts["granted"] += 1
        log.info("%s: lease granted (epoch %d)", lease.intersection, epoch)

    def _claimable(self, lease: SignalLease, now_s: float) -> bool:
        if lease.epoch is not None or now_s - lease.claimed_s < self.settings.claim_every_s:
            return False
        holder = lease.holder
        if holder is None:
            since = lease.local_since if lease.local_since is not None else now_s
            return not self.standby or now_s - since >= self.settings.standby_wait_s
        if holder == self.service:
            return True
        return self.standby or self.services.get(holder) is False

    # ------------------------------------------------------------------ the service's side

    def claimed_now(self, lease: SignalLease, now_s: float) -> None:
        lease.claimed = True
        lease.claimed_s = now_s
        self.counts["claims"] += 1

    def commanded_now(self, lease: SignalLease, ts: float, state: str) -> None:
        lease.last_ts = ts
        lease.commanded.append(state)

    def lose(self, lease: SignalLease, why: str, *, release: bool = False) -> None:
        """Stop commanding ``lease``; with ``release``, give it back too (the caller sends
        the ``releases``). Reports then decide when to claim it again."""
        if lease.epoch is None:
            return
        log.info("%s: lease %d lost: %s", lease.intersection, lease.epoch, why)
        self.counts["lost"] += 1
        if release:
            self.releases.append((lease.intersection, lease.epoch))
        lease.disowned = lease.epoch
        lease.epoch = None
        lease.claimed = False
        lease.claimed_s = NEVER
        lease.commanded.clear()
        lease.mismatches = 0

    def update(self, lease: SignalLease, now_s: float) -> LeaseStatus:
        """Judge one intersection at a tick: silence, and our lease against its last report."""
        if lease.shown is None:
            status = LeaseStatus.UNKNOWN
        elif now_s - lease.heard_s > self.settings.silent_after_s:
            self.lose(lease, f"no report for {self.settings.silent_after_s:g} s")
            status = LeaseStatus.SILENT
        else:
            if lease.epoch is not None and lease.fresh and lease.last_ts != NEVER:
                self._compare(lease, lease.shown)
            holder = lease.holder
            if lease.epoch is not None:
                status = LeaseStatus.HELD
            elif holder is not None and holder != self.service:
                status = LeaseStatus.HELD_BY_OTHER
            else:
                status = LeaseStatus.CLAIMING if lease.claimed else LeaseStatus.LOCAL
        lease.fresh = False
        lease.status = status
        return status

    def _compare(self, lease: SignalLease, shown: Shown) -> None:
        if shown.ts < lease.granted_ts:
            return
        if shown.mode == "remote" and shown.state in lease.commanded:
            lease.mismatches = 0
            return
        lease.mismatches += 1
        if lease.mismatches < self.settings.mismatch_reports:
            return
        if shown.mode == "local":
            what = "still runs its local plan"
        else:
            what = f"shows {shown.state}, we commanded {' then '.join(lease.commanded)}"
        self.counts["mismatch"] += 1
        log.warning("%s: the cabinet %s; resynchronising", lease.intersection, what)
        self.lose(lease, "it shows something else than we commanded", release=True)

    def restart_clock(self, now_s: float) -> None:
        """The service's clock jumped (a lockstep run began after wall-clock ticks): every
        lease is given back (commands must carry a growing ``ts``), and what was heard
        counts as heard now."""
        for lease in self.leases.values():
            self.lose(lease, "the service's clock changed", release=True)
        self.start_clock(now_s, lockstep=True)

    def start_clock(self, now_s: float, *, lockstep: bool) -> None:
        """The service's ticks begin at ``now_s``. Reports heard before had no clock to be
        compared with: on the wall clock they were heard at wall times already; in lockstep
        the last report of each cabinet is the one of ``now_s``. Their views are corrected
        by how far the cabinet's clock is behind."""
        for lease in self.leases.values():
            shown = lease.shown
            if shown is not None:
                if lockstep:
                    lease.heard_s = now_s
                lease.offset_s = lease.heard_s - shown.ts
                lease.view.update(shown, lease.offset_s)
            if lease.local_since is not None:
                lease.local_since = now_s
            lease.claimed_s = NEVER
