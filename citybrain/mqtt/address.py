"""Where a broker is and how to log in: broker URLs, credentials, TLS trust, client ids.

No I/O beyond reading a CA file when a TLS context is made. Every MQTT client of the
project (the parking link, paho clients of the field service, tests and benches) takes a
``BrokerSettings``.
"""

from __future__ import annotations

import os
import ssl
import uuid
from dataclasses import dataclass, replace
from urllib.parse import unquote, urlsplit

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker is. ``password`` is excluded from ``repr``."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        user = f", username={self.username!r}" if self.username else ""
        return f"BrokerAddress({self.host!r}, {self.port}, tls={self.tls}{user})"

    @property
    def url(self) -> str:
        """The URL without credentials (for logs)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://HOST[:PORT]`` (1883) or ``mqtts://HOST[:PORT]`` (TLS, 8883); user info in
    the URL (``mqtt://user:pass@host``) is accepted, though options are better for secrets."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"broker URL must start with mqtt:// or mqtts://, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("broker URL must have no path, query or fragment")
    host = parts.hostname
    if not host:
        raise ValueError("broker URL has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("broker URL has an invalid port") from None
    tls = scheme == "mqtts"
    return BrokerAddress(
        host=host,
        port=port if port is not None else (DEFAULT_TLS_PORT if tls else DEFAULT_PORT),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


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
            if not os.path.isfile(ca_file):
                raise ValueError(f"no CA certificate file {os.fspath(ca_file)!r}")
            address = replace(address, tls=True)
        return cls(address, None if ca_file is None else os.fspath(ca_file))

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context to connect with (the system's trust, or ``ca_file`` alone;
        the broker's name is checked), or ``None`` for plain TCP."""
        if not self.address.tls:
            return None
        return ssl.create_default_context(cafile=self.ca_file)


def unique_client_id(prefix: str) -> str:
    """``prefix`` and ten random hex digits: a client id for a short-lived clean session
    (a fixed id is what keeps a persistent session; two clients with one id take turns)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
