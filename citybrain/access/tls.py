"""A private CA, the broker's certificate and the Mosquitto TLS listener that serves it, made
with the ``openssl`` binary (the ``cryptography`` package is not among the project's
dependencies; ``OPENSSL`` names another binary).

In ``OUTDIR/tls``: ``ca.key`` and ``ca.crt`` (EC P-256, 10 years; made once and kept: every
client trusts ``ca.crt``), ``server.key`` and ``server.crt`` (EC P-256, signed by the CA, its
subjectAltName the broker's host names and IP addresses). A server certificate is issued
anew only when the hosts asked for differ from those it names, or when it ends within 30
days; the CA's key is needed for that alone, so it can be kept off the broker between
issues. ``OUTDIR/mosquitto-tls.conf`` is the listener block for ``mosquitto.conf`` (absolute
paths).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from citybrain.access.credentials import ACL, PASSWD, CredentialsError

TLS_DIR = "tls"
CONF = "mosquitto-tls.conf"
CA_DAYS = 3650
RENEW_BEFORE_S = 30 * 86400
_HOST = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


@dataclass(frozen=True, slots=True)
class TlsRequest:
    """What to make: a server certificate naming ``names``, valid ``days``, served on ``port``
    (of ``bind``, or every interface)."""

    names: tuple[str, ...]
    days: int = 825
    port: int = 8883
    bind: str | None = None

    @classmethod
    def of(
        cls, hosts: Sequence[str], days: int = 825, port: int = 8883, bind: str | None = None
    ) -> TlsRequest:
        """The request, or ``CredentialsError`` for a bad host, validity or port."""
        if days < 1:
            raise CredentialsError(f"a server certificate must be valid 1 day at least, not {days}")
        if not 0 < port < 65536:
            raise CredentialsError(f"invalid TLS port {port}")
        return cls(san_entries(hosts), days, port, bind)


@dataclass(frozen=True, slots=True)
class TlsOutcome:
    ca_cert: Path
    server_cert: Path
    conf: Path
    made_ca: bool
    issued: bool
    """A new server certificate was issued (restart the broker to serve it)."""
    names: tuple[str, ...]
    """The subjectAltName entries of the server certificate (``DNS:...``, ``IP:...``)."""


def san_entries(hosts: Sequence[str]) -> tuple[str, ...]:
    """``DNS:name`` or ``IP:address`` for each host, in order, without repeats;
    ``CredentialsError`` for something that is neither a host name nor an IP address."""
    out: list[str] = []
    for host in hosts:
        try:
            entry = f"IP:{ipaddress.ip_address(host.strip('[]'))}"
        except ValueError:
            if not _HOST.fullmatch(host):
                raise CredentialsError(
                    f"invalid TLS host {host!r}: give a host name or an IP address"
                ) from None
            entry = f"DNS:{host.rstrip('.').lower()}"
        if entry not in out:
            out.append(entry)
    if not out:
        raise CredentialsError("TLS needs at least one host name or IP address of the broker")
    return tuple(out)


def ensure_tls(outdir: Path, request: TlsRequest, *, openssl: str | None = None) -> TlsOutcome:
    """Make the CA if there is none, issue the server certificate if needed (see the module
    docstring), and write the listener block."""
    names = request.names
    tool = _openssl(openssl)
    tls = (outdir / TLS_DIR).resolve()
    tls.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = tls / "ca.key", tls / "ca.crt"
    key, crt = tls / "server.key", tls / "server.crt"
    made_ca = False
    if not ca_crt.exists():
        if ca_key.exists():
            raise CredentialsError(f"{ca_key} exists without its ca.crt: restore it or remove both")
        _make_ca(tool, ca_key, ca_crt)
        made_ca = True
    issued = False
    if made_ca or not _serves(tool, crt, ca_crt, names):
        if not ca_key.exists():
            raise CredentialsError(
                f"{ca_key} is missing: put the CA's key back to issue a server certificate"
            )
        _issue(tool, ca_key, ca_crt, key, crt, names, request.days)
        issued = True
    conf = outdir.resolve() / CONF
    _atomic(conf, listener_conf(outdir.resolve(), request.port, request.bind), 0o644)
    return TlsOutcome(ca_crt, crt, conf, made_ca, issued, names)


def listener_conf(outdir: Path, port: int = 8883, bind: str | None = None) -> str:
    """The TLS listener for ``mosquitto.conf``: the password file, ACL and certificates of
    ``outdir`` (needs ``per_listener_settings true``, as the shipped configuration has)."""
    tls = outdir / TLS_DIR
    listen = f"listener {port} {bind}" if bind else f"listener {port}"
    return "\n".join(
        [
            "# The citybrain broker's TLS listener, written by `citybrain broker credentials`.",
            "# Append it to mosquitto.conf (it needs per_listener_settings true), then restart",
            "# mosquitto. Clients: --broker mqtts://HOST:PORT --ca-file ca.crt, HOST one of the",
            "# server certificate's names.",
            listen,
            "allow_anonymous false",
            f"password_file {outdir / PASSWD}",
            f"acl_file {outdir / ACL}",
            f"cafile {tls / 'ca.crt'}",
            f"certfile {tls / 'server.crt'}",
            f"keyfile {tls / 'server.key'}",
            "tls_version tlsv1.2",
            "",
        ]
    )


# ---------------------------------------------------------------------------- openssl


def _openssl(given: str | None) -> str:
    name = given or os.environ.get("OPENSSL") or "openssl"
    found = shutil.which(name)
    if found is None:
        raise CredentialsError(f"{name} not found: TLS files are made with the openssl binary")
    return found


def _run(tool: str, *args: str) -> str:
    done = subprocess.run([tool, *args], capture_output=True, text=True)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise CredentialsError(
            f"openssl {args[0]} failed ({done.returncode}): {said[-1] if said else 'no message'}"
        )
    return done.stdout


_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = citybrain
[ca]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = {san}
"""


def _new_key(tool: str, path: Path, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    _run(
        tool, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(tmp)
    )
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _make_ca(tool: str, key: Path, crt: Path) -> None:
    _new_key(tool, key, 0o600)  # the CA's key: root alone
    with tempfile.TemporaryDirectory() as tmp:
        cnf = Path(tmp) / "openssl.cnf"
        cnf.write_text(_CONFIG.format(san="DNS:unused"))
        out = Path(tmp) / "ca.crt"
        _run(
            tool, "req", "-new", "-x509", "-config", str(cnf), "-extensions", "ca",
            "-key", str(key), "-out", str(out), "-days", str(CA_DAYS),
            "-subj", "/CN=citybrain broker CA", "-set_serial", _serial(),
        )  # fmt: skip
        os.chmod(out, 0o644)
        shutil.move(out, crt)


def _issue(
    tool: str, ca_key: Path, ca_crt: Path, key: Path, crt: Path, names: Sequence[str], days: int
) -> None:
    _new_key(tool, key, 0o640)  # for group mosquitto (chgrp)
    cn = names[0].split(":", 1)[1]
    with tempfile.TemporaryDirectory() as tmp:
        cnf = Path(tmp) / "openssl.cnf"
        cnf.write_text(_CONFIG.format(san=", ".join(names)))
        csr, out = Path(tmp) / "server.csr", Path(tmp) / "server.crt"
        _run(
            tool, "req", "-new", "-config", str(cnf), "-key", str(key), "-out", str(csr),
            "-subj", f"/CN={cn}",
        )  # fmt: skip
        _run(
            tool, "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
            "-set_serial", _serial(), "-days", str(days), "-extfile", str(cnf),
            "-extensions", "server", "-out", str(out),
        )  # fmt: skip
        os.chmod(out, 0o644)
        shutil.move(out, crt)


def _serial() -> str:
    return "0x" + secrets.token_hex(16)


def _serves(tool: str, crt: Path, ca_crt: Path, names: Sequence[str]) -> bool:
    """True when ``crt`` is the CA's, names exactly ``names`` and does not end soon."""
    if not crt.exists() or not crt.with_name("server.key").exists():
        return False
    try:
        _run(tool, "verify", "-CAfile", str(ca_crt), str(crt))
        _run(tool, "x509", "-in", str(crt), "-noout", "-checkend", str(RENEW_BEFORE_S))
        text = _run(tool, "x509", "-in", str(crt), "-noout", "-ext", "subjectAltName")
    except CredentialsError:
        return False
    have = set()
    for item in " ".join(text.splitlines()[1:]).split(","):
        kind, _, value = item.strip().partition(":")
        if kind == "DNS":
            have.add(f"DNS:{value.lower()}")
        elif kind == "IP Address":
            try:
                have.add(f"IP:{ipaddress.ip_address(value)}")
            except ValueError:
                return False
    return have == set(names)


def _atomic(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, mode)
    os.replace(tmp, path)
