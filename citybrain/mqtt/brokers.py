"""Brokers of one's own, and probes: a private broker process for tests, the demo and
local trials: Mosquitto (``MosquittoProcess``) where its binary is installed, else the
embedded amqtt broker from PyPI (``EmbeddedBroker``, see ``citybrain.mqtt.embedded``).
``private_broker`` picks one; both are a ``BrokerProcess``. Mosquitto stays what
production and CI use. ``reachable`` probes a TCP port; ``free_port`` finds one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Protocol


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Set to 1 to act as if no Mosquitto were installed (the embedded broker then stands in).
NO_MOSQUITTO_ENV = "CITYBRAIN_NO_MOSQUITTO"


def find_mosquitto() -> str | None:
    """The Mosquitto broker binary (``PATH``, then ``/usr/sbin``), or ``None`` (also when
    ``CITYBRAIN_NO_MOSQUITTO=1``)."""
    if os.environ.get(NO_MOSQUITTO_ENV, "") not in ("", "0"):
        return None
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
        "set_tcp_nodelay true\n"
    )


class BrokerProcess(Protocol):
    """A broker run as a child process on a loopback port, started and stopped by the code
    that needs it. ``stop`` ends it gently (SIGTERM), ``kill`` at once (SIGKILL)."""

    kind: str  # "mosquitto" or "amqtt"
    port: int
    workdir: Path
    log_path: Path

    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    def start(self, timeout: float | None = None) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...

    def kill(self) -> None: ...

    def restart(self) -> None: ...

    def __enter__(self) -> BrokerProcess: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class _ChildBroker:
    """What both brokers share: a child process in ``workdir`` (its output in
    ``log_path``), up once it accepts TCP connections on ``127.0.0.1:port``."""

    kind = "broker"
    start_timeout_s = 10.0

    def __init__(self, workdir: Path, port: int | None) -> None:
        self.workdir = Path(workdir).resolve()  # the broker runs in it: no relative paths
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.log_path = self.workdir / f"{self.kind}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self, timeout: float | None = None) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        deadline = time.monotonic() + (timeout if timeout is not None else self.start_timeout_s)
        while not reachable("127.0.0.1", self.port, timeout=0.2):
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited with {self._proc.returncode}: "
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"{self.kind} did not listen on port {self.port}")
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

    def __enter__(self) -> BrokerProcess:
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


class MosquittoProcess(_ChildBroker):
    """A Mosquitto broker run as a child process on a free loopback port.

    ``config`` is the whole configuration text (it must listen on ``port``); by default an
    anonymous broker with persistence in ``workdir``. ``stop`` ends it with SIGTERM (it saves
    its sessions), ``kill`` with SIGKILL (it loses what it had not yet saved)."""

    kind = "mosquitto"

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
        super().__init__(workdir, port)
        self.config_path = self.workdir / "mosquitto.conf"
        self.config_path.write_text(config or default_config(self.port, self.workdir))

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]

    def __enter__(self) -> MosquittoProcess:
        self.start()
        return self


class EmbeddedBroker(_ChildBroker):
    """The amqtt broker from PyPI (``citybrain.mqtt.embedded``) run as a child process on a
    free loopback port, for a machine without Mosquitto: QoS 0 and 1, persistent sessions
    with queued QoS 1 messages, retained messages; no credentials, ACL or TLS, and sessions
    in memory only (a restart or ``kill`` forgets them). It ends with this process."""

    kind = "amqtt"
    start_timeout_s = 30.0  # a cold Python start with amqtt's imports

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        super().__init__(workdir, port)

    def command(self) -> list[str]:
        module = "citybrain.mqtt.embedded"
        port, parent = str(self.port), str(os.getpid())
        return [sys.executable, "-m", module, "--port", port, "--parent", parent]

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self


def private_broker(workdir: Path, *, port: int | None = None) -> BrokerProcess:
    """A broker of one's own, not yet started: Mosquitto where its binary is found, else the
    embedded amqtt broker."""
    if find_mosquitto() is not None:
        return MosquittoProcess(workdir, port=port)
    return EmbeddedBroker(workdir, port=port)
