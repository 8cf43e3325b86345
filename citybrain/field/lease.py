"""What one service knows of each cabinet's lease, and when it may command, claim or must stop.

Pure: the cabinets' ``Shown`` reports and ``CabinetEvent`` events go in with the service's
time of arrival (``now_s``); ``LeaseBook.update`` judges one intersection at a tick; the core
(``citybrain.field.core``) builds the messages. Every method is O(1) per message; a tick
visits each intersection once.

The states of one intersection (``LeaseStatus``):

- ``unknown``: no report yet; ``silent``: no report for ``silent_after_s`` (service clock);
- ``local``: the cabinet runs its own plan (no holder, or a lease in this service's name that
  this process was not granted: a previous run of it); ``claiming``: the same, with a claim
  of ours sent and not yet granted;
- ``held_by_other``: another service holds the lease;
- ``held``: the cabinet granted us the lease ``epoch`` (still ``mode: local`` until our first
  command takes effect, then ``remote``).

A grant is a report naming us holder under an epoch we did not disown, after a claim of ours.
We stop commanding (the lease is *lost*, the epoch disowned, and we claim again) when the
cabinet reports another holder, no holder (fallback, release), another epoch of ours, a
refusal of a command under our epoch, silence, or ``mismatch_reports`` reports in a row that
show neither of our last two commanded states (or still ``mode: local`` after our first
command): a cabinet that shows something else than what we commanded is not commanded
blindly. A claim from the current holder is granted at once with a new epoch (when the
cabinet shows a green), so a resynchronised lease resumes from what the cabinet shows.
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

    def __post_init__(self) -> None:
        for name in ("silent_after_s", "claim_every_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"field.{name} must be a positive number, not {value}")
        if self.mismatch_reports < 1:
            raise ConfigError(f"field.mismatch_reports must be >= 1, not {self.mismatch_reports}")


class ShownView:
    """A cabinet's last report as a ``SignalView`` (the controller port), in service time.

    ``green_since`` is moved later by how far the report's ``ts`` lags the service's clock at
    arrival (a cabinet whose clock runs behind must not make its green look older than it
    is); during a change interval the last known green start and phase stay.
    """

    __slots__ = ("green_since", "in_clearance", "phase")

    def __init__(self, phase: int = 0, green_since: float = 0.0) -> None:
        self.phase = phase
        self.in_clearance = False
        self.green_since = green_since

    def update(self, shown: Shown, now_s: float) -> None:
        if shown.phase is not None:
            self.phase = shown.phase
        self.in_clearance = shown.clearance
        if shown.green_since is not None:
            self.green_since = shown.green_since + max(0.0, now_s - shown.ts)


class SignalLease:
    """One intersection as this service knows it (mutable; owned by a ``LeaseBook``)."""

    __slots__ = (
        "claimed",
        "claimed_s",
        "commanded",
        "disowned",
        "epoch",
        "fresh",
        "heard_s",
        "intersection",
        "last_ts",
        "mismatches",
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
        self.epoch: int | None = None
        """Our lease, once granted."""
        self.disowned: int | None = None
        """An epoch in our name that this process does not hold (a previous run's, a lost one)."""
        self.claimed = False
        """A claim sent since the lease was last lost (a report naming us is then a grant)."""
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
        self.counts: Counter[str] = Counter()
        """granted, lost (by reason), refused, denied, fallbacks, released, claims."""

    # ------------------------------------------------------------------ reports

    def shown(self, shown: Shown, now_s: float) -> None:
        """A cabinet's report (validated by the caller against its intersection)."""
        lease = self.leases[shown.intersection]
        lease.shown = shown
        lease.heard_s = now_s
        lease.fresh = True
        lease.view.update(shown, now_s)
        holder = shown.holder
        if lease.epoch is not None:
            if holder == self.service and shown.epoch == lease.epoch:
                return
            if holder is None:
                why = "the cabinet went to its local plan"
            elif holder == self.service:
                why = f"the cabinet names another lease of ours (epoch {shown.epoch})"
            else:
                why = f"the cabinet names {holder} as holder"
            self.lose(lease, why)
        if holder != self.service:
            lease.disowned = None
            return
        if lease.claimed and shown.epoch != lease.disowned:
            lease.epoch = shown.epoch
            lease.claimed = False
            lease.last_ts = NEVER
            lease.commanded.clear()
            lease.mismatches = 0
            self.counts["granted"] += 1
            log.info("%s: lease granted (epoch %d)", lease.intersection, shown.epoch)
        else:
            lease.disowned = shown.epoch

    def event(self, event: CabinetEvent) -> None:
        """A cabinet's event: a refusal of our command, or our fallback, ends our lease."""
        lease = self.leases[event.intersection]
        ours = event.service == self.service
        kind = event.kind
        if kind == "denied":
            if ours:
                self.counts["denied"] += 1
            return
        if not ours or lease.epoch is None or event.epoch != lease.epoch:
            return
        if kind == "refused":
            self.counts["refused"] += 1
            log.warning(
                "%s: the cabinet refused our command (%s); resynchronising",
                lease.intersection,
                event.reason or "no reason given",
            )
            self.lose(lease, f"refused: {event.reason}")
        elif kind in ("fallback", "released"):
            self.counts["fallbacks" if kind == "fallback" else "released"] += 1
            self.lose(lease, f"{kind} ({event.reason})" if event.reason else kind)

    def service_status(self, service: str, online: bool) -> None:
        self.services[service] = online

    # ------------------------------------------------------------------ at a tick

    def lose(self, lease: SignalLease, why: str) -> None:
        """Stop commanding ``lease`` (and claim it again, from what the cabinet shows)."""
        if lease.epoch is None:
            return
        log.info("%s: lease %d lost: %s", lease.intersection, lease.epoch, why)
        self.counts["lost"] += 1
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
        elif lease.epoch is not None:
            if lease.fresh and lease.last_ts != NEVER:
                self._compare(lease, lease.shown)
            status = LeaseStatus.HELD if lease.epoch is not None else LeaseStatus.LOCAL
        elif lease.holder is not None and lease.holder != self.service:
            status = LeaseStatus.HELD_BY_OTHER
        else:
            status = LeaseStatus.CLAIMING if lease.claimed else LeaseStatus.LOCAL
        lease.fresh = False
        lease.status = status
        return status

    def _compare(self, lease: SignalLease, shown: Shown) -> None:
        if shown.mode == "remote" and shown.state in lease.commanded:
            lease.mismatches = 0
            return
        lease.mismatches += 1
        if lease.mismatches >= self.settings.mismatch_reports:
            what = (
                "still in its local plan"
                if shown.mode == "local"
                else f"shows {shown.state}, we commanded {' then '.join(lease.commanded)}"
            )
            self.counts["mismatch"] += 1
            log.warning("%s: the cabinet %s; resynchronising", lease.intersection, what)
            self.lose(lease, "mismatch")

    def wants_claim(self, lease: SignalLease, now_s: float) -> bool:
        """Whether to claim ``lease`` now (its status judged at this tick)."""
        status = lease.status
        if status in (LeaseStatus.LOCAL, LeaseStatus.CLAIMING):
            pass
        elif status is LeaseStatus.HELD_BY_OTHER:
            holder = lease.holder or ""
            if not (self.standby or self.services.get(holder) is False):
                return False
        else:
            return False
        return now_s - lease.claimed_s >= self.settings.claim_every_s

    def claimed_now(self, lease: SignalLease, now_s: float) -> None:
        lease.claimed = True
        lease.claimed_s = now_s
        self.counts["claims"] += 1

    def commanded_now(self, lease: SignalLease, ts: float, state: str) -> None:
        lease.last_ts = ts
        lease.commanded.append(state)

    def restart_clock(self, now_s: float) -> None:
        """The service's clock jumped (the lockstep clock of a run began): every lease is
        lost (commands must carry a growing ``ts``) and what was heard counts as heard now."""
        for lease in self.leases.values():
            self.lose(lease, "the service's clock changed")
            if lease.shown is not None:
                lease.heard_s = now_s
            lease.claimed_s = NEVER
