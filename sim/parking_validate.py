"""``citybrain parking validate``: settlement checked end to end against SUMO.

1. Build the parking scenario (``parking_scenario``) and run it in SUMO (``parking_gates``):
   gate events for the cameras, and SUMO's own stop output as the ground truth.
2. Turn gate events into camera reads (``parking_cameras``: look-alike misreads, repeated
   frames, a camera missing a car, passages nobody read; seeded), one JSON-lines feed per
   lot.
3. Feed them through the real path: one ``run_gateway`` per lot (on-disk outbox, QoS 1,
   retires a read only on its ack) -> MQTT broker -> ``run_service`` (persistent session,
   manual acks) -> the ledger (SQLite by default, PostgreSQL by URL). Without a broker URL
   a private broker is started on a free loopback port: Mosquitto where its binary is
   installed, else the embedded amqtt broker from PyPI (``citybrain.mqtt.brokers.private_broker``).
4. Plates bound "at the start" are bound before the first read; once every read is
   acknowledged, the grace period is taken as over (``Ledger.expire`` at now + grace: exits
   without entries go to review) and the "later" plates are bound (their debts charged).
5. Compare the ledger's sessions and charges with the true stays
   (``citybrain.parking.validation``) and write ``report.json``, ``report.txt`` and
   ``report.png`` into the output folder.

On an external broker the run uses its own topic root (``citybrain-validate/RUN/parking``)
and client ids, and forgets its persistent sessions afterwards, so it neither disturbs nor
is disturbed by a service already running there. The ledger must be empty: the SQLite
default (``OUT/ledger.db``) is recreated; a given database with sessions in it is refused.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from citybrain.errors import CitybrainError
from citybrain.mqtt.address import BrokerSettings, parse_broker_url
from citybrain.mqtt.brokers import private_broker, reachable
from citybrain.mqtt.paho import forget_session
from citybrain.parking.gateway import GatewayStats, gateway_client_id, run_gateway
from citybrain.parking.ledger import Ledger, RecordOutcome, open_ledger
from citybrain.parking.mqtt import TOPIC_ROOT
from citybrain.parking.service import SERVICE_CLIENT_ID, ServiceStats, run_service
from citybrain.parking.tariff import Tariff, load_tariffs
from citybrain.parking.validation import (
    LedgerCharge,
    TrueStay,
    ValidationReport,
    table,
    validate,
)
from citybrain.sim.parking_cameras import CameraFeed, CameraOptions, simulate_cameras, write_feeds
from citybrain.sim.parking_gates import StopRecord, read_stop_output, run_gates
from citybrain.sim.parking_scenario import ParkingScenario, build_parking_scenario

# What `citybrain parking validate` and the demo use unless told otherwise.
DEFAULT_CAMERAS = CameraOptions(ocr_error_rate=0.03, double_rate=0.3, drop_rate=0.1)


@dataclass(frozen=True)
class ValidationRun:
    report: ValidationReport
    folder: Path
    report_json: Path
    report_txt: Path
    plot: Path


class _CountingSink:
    """The ledger as the service's sink, counting what it recorded (for the progress bar)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.kinds: Counter[str] = Counter()
        self._lock = threading.Lock()

    def record(self, topic_lot: str, payload: bytes, received_at: datetime) -> RecordOutcome:
        outcome = self.ledger.record(topic_lot, payload, received_at)
        with self._lock:
            self.kinds[str(outcome.kind)] += 1
        return outcome

    @property
    def handled(self) -> int:
        with self._lock:
            return sum(self.kinds.values())


def run_parking_validation(
    out: Path,
    *,
    broker: str | None = None,
    db: str | None = None,
    seed: int = 1,
    vehicles: int = 40,
    cameras: CameraOptions = DEFAULT_CAMERAS,
    progress: bool = True,
    timeout_s: float = 600.0,
) -> ValidationRun:
    """Run the whole validation into ``out`` (see the module docstring)."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = time.monotonic()
    timings: dict[str, float] = {}

    scenario = build_parking_scenario(out / "scenario", vehicles=vehicles, seed=seed)
    tariffs = load_tariffs(scenario.tariffs)
    db_url = db or f"sqlite:///{_fresh_sqlite(out / 'ledger.db')}"
    ledger = _open_empty_ledger(db_url, tariffs)  # before SUMO: a bad database fails fast
    try:
        departures = {c.vehicle_id: float(c.depart_s) for c in scenario.cars}
        horizon_h = max(1, int(_span_s(scenario) / 3600) + 1)
        with tqdm(
            total=horizon_h, desc="SUMO", unit="sim h", disable=not progress, leave=False
        ) as bar:

            def tick(t: float) -> None:
                hours = min(horizon_h, int(t // 3600))
                if hours > bar.n:
                    bar.update(hours - bar.n)

            events = run_gates(scenario.sumocfg, departures, seed=seed, progress=tick)
        timings["sumo_s"] = time.monotonic() - clock

        stops = read_stop_output(scenario.stop_output)
        stays = true_stays(stops, scenario, {lot: t.timezone for lot, t in tariffs.items()})
        feed = simulate_cameras(
            events,
            scenario.plate_of(),
            scenario.start,
            {lot: t.timezone for lot, t in tariffs.items()},
            cameras,
        )
        feeds = write_feeds(feed, out / "feeds")
    except BaseException:
        ledger.close()
        raise

    try:
        for car in scenario.cars:
            if car.binding == "start" and car.account is not None:
                ledger.bind(car.plate, car.account)
        clock = time.monotonic()
        with _broker(broker, out / "broker") as (url, embedded):
            transport = _feed_through_mqtt(
                url, embedded, ledger, feeds, feed, out / "outbox", progress, timeout_s
            )
        timings["mqtt_s"] = time.monotonic() - clock
        ledger.expire(datetime.now(UTC) + ledger.grace + timedelta(seconds=1))
        for car in scenario.cars:
            if car.binding == "later" and car.account is not None:
                ledger.bind(car.plate, car.account)
        sessions = ledger.sessions()
        charges = [LedgerCharge(c.session_id, c.account, c.cents) for c in ledger.charges()]
        dead = len(ledger.dead_letters())
    finally:
        ledger.close()

    report = validate(
        stays,
        feed.passages,
        {c.plate: (c.binding, c.account) for c in scenario.cars},
        tariffs,
        sessions,
        charges,
        dead_letters=dead,
    )
    report.extra.update(
        {
            "scenario": {
                "folder": str(scenario.folder),
                "vehicles": len(scenario.cars),
                "seed": seed,
                "start": scenario.start.isoformat(),
                "simulated_hours": round(max(s.ended_s for s in stops) / 3600, 2) if stops else 0,
                "gate_events": len(events),
                "sumo_stops": len(stops),
            },
            "cameras": {**asdict(cameras), **feed.stats()},
            "transport": transport,
            "database": "sqlite" if db_url.startswith("sqlite") else "postgresql",
            "timings_s": {k: round(v, 2) for k, v in timings.items()},
        }
    )
    report_json = out / "report.json"
    report_json.write_text(
        json.dumps(report.to_json(), ensure_ascii=False, indent=1), encoding="utf-8"
    )
    report_txt = out / "report.txt"
    report_txt.write_text(table(report) + "\n", encoding="utf-8")
    from citybrain.sim.parking_plots import validation_chart

    plot = validation_chart(report, out / "report.png", scenario.start)
    return ValidationRun(report, out, report_json, report_txt, plot)


def _open_empty_ledger(url: str, tariffs: dict[str, Tariff]) -> Ledger:
    try:
        ledger = open_ledger(url, tariffs=tariffs)
    except CitybrainError:
        raise
    except Exception as exc:  # a bad URL or an unreachable database
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise CitybrainError(f"cannot open the ledger at {url}: {first}") from None
    if ledger.sessions() or ledger.dead_letters():
        ledger.close()
        raise CitybrainError(f"the ledger at {url} is not empty; validation needs an empty one")
    return ledger


def true_stays(
    stops: list[StopRecord], scenario: ParkingScenario, zones: dict[str, Any]
) -> list[TrueStay]:
    """SUMO's stop records as stays with dates and true plates (``vehicle/k``: k-th stop)."""
    plates = scenario.plate_of()
    seen: Counter[str] = Counter()
    stays: list[TrueStay] = []
    for r in sorted(stops, key=lambda r: (r.vehicle_id, r.started_s)):
        seen[r.vehicle_id] += 1
        zone = zones[r.lot_id]
        stays.append(
            TrueStay(
                stay_id=f"{r.vehicle_id}/{seen[r.vehicle_id]}",
                vehicle_id=r.vehicle_id,
                plate=plates[r.vehicle_id],
                lot_id=r.lot_id,
                entry_at=(scenario.start + timedelta(seconds=r.started_s)).astimezone(zone),
                exit_at=(scenario.start + timedelta(seconds=r.ended_s)).astimezone(zone),
            )
        )
    return sorted(stays, key=lambda s: (s.entry_at, s.stay_id))


def _span_s(scenario: ParkingScenario) -> float:
    return max(c.depart_s + sum(s.duration_s for s in c.stays) for c in scenario.cars)


def _fresh_sqlite(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path.resolve()


@contextlib.contextmanager
def _broker(url: str | None, workdir: Path) -> Iterator[tuple[str, str | None]]:
    """The given broker, or a private one (Mosquitto, else the embedded amqtt broker);
    yields (url, the private broker's kind or None)."""
    if url is not None:
        address = parse_broker_url(url)
        if not reachable(address.host, address.port, timeout=2.0):
            raise CitybrainError(f"no MQTT broker answers at {url}")
        yield url, None
        return
    shutil.rmtree(workdir, ignore_errors=True)
    with private_broker(workdir) as process:
        yield process.url, process.kind


def _feed_through_mqtt(
    url: str,
    embedded: str | None,
    ledger: Ledger,
    feeds: dict[str, Path],
    feed: CameraFeed,
    outbox_dir: Path,
    progress: bool,
    timeout_s: float,
) -> dict[str, object]:
    """Gateways -> broker -> service -> ledger, until every read is acknowledged.
    ``embedded``: the kind of the private broker started for the run, None for a given one."""
    from tqdm import tqdm

    run = uuid.uuid4().hex[:10]
    root = TOPIC_ROOT if embedded else f"citybrain-validate/{run}/parking"
    service_id = SERVICE_CLIENT_ID if embedded else f"{SERVICE_CLIENT_ID}-validate-{run}"
    gw_ids = {
        lot: gateway_client_id(lot) if embedded else f"{gateway_client_id(lot)}-validate-{run}"
        for lot in feeds
    }
    shutil.rmtree(outbox_dir, ignore_errors=True)
    outbox_dir.mkdir(parents=True)
    sink = _CountingSink(ledger)
    stop_service = threading.Event()
    stop_gateways = threading.Event()
    ready = threading.Event()
    results: dict[str, Any] = {}

    def serve() -> None:
        try:
            results["service"] = run_service(
                url,
                sink,
                client_id=service_id,
                topic_root=root,
                stop=stop_service,
                on_ready=ready.set,
            )
        except BaseException as exc:
            results["service_error"] = exc
            ready.set()

    def gateway(lot: str) -> None:
        try:
            results[f"gw:{lot}"] = run_gateway(
                lot,
                url,
                feeds[lot],
                outbox_dir / f"{lot}.outbox",
                client_id=gw_ids[lot],
                topic_root=root,
                resend_after=5.0,
                exit_when_drained=True,
                stop=stop_gateways,
            )
        except BaseException as exc:
            results[f"gw_error:{lot}"] = exc

    service = threading.Thread(target=serve, name="validate-service", daemon=True)
    service.start()
    gateways: list[threading.Thread] = []
    try:
        if not ready.wait(30.0) or "service_error" in results:
            raise CitybrainError(
                f"the parking service did not subscribe at {url}: "
                f"{results.get('service_error', 'timed out')}"
            )
        for lot in sorted(feeds):
            t = threading.Thread(target=gateway, args=(lot,), name=f"validate-gw-{lot}")
            t.daemon = True
            t.start()
            gateways.append(t)
        deadline = time.monotonic() + timeout_s
        with tqdm(
            total=len(feed.reads), desc="reads -> ledger", unit="read", disable=not progress,
            leave=False,
        ) as bar:  # fmt: skip
            while any(t.is_alive() for t in gateways):
                bar.update(min(sink.handled, bar.total) - bar.n)
                if time.monotonic() > deadline:
                    raise CitybrainError(
                        f"the reads were not all acknowledged within {timeout_s:g} s "
                        f"({sink.handled} of {len(feed.reads)} recorded)"
                    )
                time.sleep(0.1)
            bar.update(min(sink.handled, bar.total) - bar.n)
        errors = {k: v for k, v in results.items() if "error" in k}
        if errors:
            raise CitybrainError(f"a gateway failed: {errors}")
    finally:
        stop_gateways.set()
        for t in gateways:
            t.join(10.0)
        stop_service.set()
        service.join(10.0)
        if not embedded:
            settings = BrokerSettings.from_url(url)
            for client_id in (service_id, *gw_ids.values()):
                with contextlib.suppress(OSError):
                    forget_session(settings, client_id)
    service_stats: ServiceStats | None = results.get("service")
    gw_stats: dict[str, GatewayStats] = {
        lot: results[f"gw:{lot}"] for lot in feeds if f"gw:{lot}" in results
    }
    return {
        "broker": f"embedded {embedded}" if embedded else url,
        "topic_root": root,
        "ledger_outcomes": dict(sink.kinds),
        "service": asdict(service_stats) if service_stats is not None else None,
        "gateways": {lot: asdict(s) for lot, s in gw_stats.items()},
    }
