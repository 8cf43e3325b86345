"""Talking to an MQTT broker: configured paho clients, a reachability probe, session
cleanup, and a private Mosquitto process (for tests and local trials).

Every client speaks MQTT 3.1.1 with ``clean_session`` chosen by the caller: with
``clean_session=False`` and a fixed client id the broker keeps the session (subscriptions,
queued QoS 1 messages and unacknowledged deliveries) across disconnects and process deaths.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from paho.mqtt.client import Client, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion

from citybrain.parking.mqtt import BrokerAddress, parse_broker_url

# CONNACK reason codes that retrying cannot fix (bad credentials, not authorized, bad id).
FATAL_CONNACK = frozenset({0x85, 0x86, 0x87})


@dataclass(frozen=True)
class BrokerSettings:
    """A broker address plus the credentials and TLS trust to use with it."""

    address: BrokerAddress
    ca_file: str | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> BrokerSettings:
        """Explicit ``username``/``password`` win over user info in the URL. A ``ca_file``
        turns TLS on even for ``mqtt://`` (then the port must be given)."""
        address = parse_broker_url(url)
        if username is not None:
            address = replace(address, username=username, password=password)
        elif password is not None:
            address = replace(address, password=password)
        if ca_file is not None:
            address = replace(address, tls=True)
        return cls(address, None if ca_file is None else os.fspath(ca_file))


def make_client(
    settings: BrokerSettings,
    client_id: str,
    *,
    clean_session: bool,
    manual_ack: bool = False,
) -> Client:
    """A paho client (callback API 2, MQTT 3.1.1) with credentials and TLS set, not yet
    connected."""
    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=MQTTv311,
        manual_ack=manual_ack,
    )
    address = settings.address
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        context = ssl.create_default_context(cafile=settings.ca_file)
        client.tls_set_context(context)
    return client


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def forget_session(settings: BrokerSettings, client_id: str, timeout: float = 5.0) -> None:
    """Discard the broker's persistent session of ``client_id`` (subscriptions and queued
    messages): connect once with a clean session, then disconnect."""
    client = make_client(settings, client_id, clean_session=True)
    client.connect(settings.address.host, settings.address.port, keepalive=10)
    deadline = time.monotonic() + timeout
    while not client.is_connected() and time.monotonic() < deadline:
        client.loop(timeout=0.05)
    client.disconnect()
    client.loop(timeout=0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_mosquitto() -> str | None:
    """The Mosquitto broker binary (``PATH``, then ``/usr/sbin``), or ``None``."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def default_config(port: int, workdir: Path) -> str:
    """An anonymous, loopback-only broker that keeps sessions on disk in ``workdir``."""
    return (
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence true\n"
        f"persistence_location {workdir}/\n"
        "autosave_interval 1\n"
        "max_queued_messages 100000\n"
    )


class MosquittoProcess:
    """A Mosquitto broker run as a child process on a free loopback port.

    ``config`` is the whole configuration text (it must listen on ``port``); by default an
    anonymous broker with persistence in ``workdir``. ``stop`` ends it with SIGTERM (it saves
    its sessions), ``kill`` with SIGKILL (it loses what it had not yet saved)."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        config: str | None = None,
        binary: str | None = None,
    ) -> None:
        found = binary or find_mosquitto()
        if found is None:
            raise FileNotFoundError("no mosquitto binary (apt-get install mosquitto)")
        self.binary = found
        self.workdir = Path(workdir).resolve()  # mosquitto runs in it: no relative paths
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.config_path = self.workdir / "mosquitto.conf"
        self.config_path.write_text(config or default_config(self.port, self.workdir))
        self.log_path = self.workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self, timeout: float = 10.0) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        while not reachable("127.0.0.1", self.port, timeout=0.2):
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._proc.returncode}: "
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"mosquitto did not listen on port {self.port}")
            time.sleep(0.02)

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._end(signal.SIGKILL, 10.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> MosquittoProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self.stop()
