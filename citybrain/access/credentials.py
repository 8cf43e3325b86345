"""The broker's user files in one folder: the user list with passwords, Mosquitto's password
file and its ACL.

- ``credentials``: ``user:password`` lines in plain text (mode 600), the one source of truth.
  A user asked for and not yet there gets a new random password; users already there keep
  theirs. Deleting a line (or ``revoke``) and writing again revokes the user.
- ``passwd``: Mosquitto's password file, rebuilt from ``credentials`` each time with
  ``mosquitto_passwd -U`` (the ``MOSQUITTO_PASSWD`` environment variable names another
  binary), so only hashes are in it (mode 640).
- ``acl``: ``citybrain.access.acl.render_acl`` of the users (mode 640).

Each file is written whole to a temporary file and renamed into place, so a broker reloading
(SIGHUP) never reads half a file.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import string
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from citybrain.access.acl import Roots, check_user_name, parse_user, render_acl
from citybrain.errors import CitybrainError

CREDENTIALS = "credentials"
PASSWD = "passwd"
ACL = "acl"
PASSWORD_LENGTH = 32
_PASSWORD = re.compile(r"[^\s:]+")


class CredentialsError(CitybrainError):
    """A bad user list, a bad id, or a missing ``mosquitto_passwd``."""


@dataclass(frozen=True, slots=True)
class Outcome:
    users: tuple[str, ...]
    """Every user now, in the file's order."""
    created: tuple[str, ...]
    revoked: tuple[str, ...]
    strays: tuple[str, ...]
    """Users of no known role: the ACL lets them do nothing."""


def new_password() -> str:
    """32 random letters and digits (about 190 bits)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(PASSWORD_LENGTH))


def parse_credentials(text: str, where: str = CREDENTIALS) -> dict[str, str]:
    """The users and passwords of a credentials file, in its order (blank lines and ``#``
    comments skipped); ``CredentialsError`` names the first bad line."""
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.partition(":")
        problem = ""
        if not sep:
            problem = "expected user:password"
        elif user in users:
            problem = f"user {user!r} is listed twice"
        elif not _PASSWORD.fullmatch(password):
            problem = "the password is empty or has a space or a colon"
        else:
            try:
                check_user_name(user)
            except ValueError as exc:
                problem = str(exc)
        if problem:
            raise CredentialsError(f"{where}:{number}: {problem}")
        users[user] = password
    return users


def update(
    outdir: Path,
    wanted: Sequence[str] = (),
    revoke: Sequence[str] = (),
    roots: Roots | None = None,
    *,
    passwd_tool: str | None = None,
) -> Outcome:
    """Add the users ``wanted`` (those not there yet), remove ``revoke``, and rewrite
    ``credentials``, ``passwd`` and ``acl`` in ``outdir`` (made if missing)."""
    roots = roots or Roots()
    for name in (*wanted, *revoke):
        try:
            check_user_name(name)
        except ValueError as exc:
            raise CredentialsError(str(exc)) from None
    both = sorted(set(wanted) & set(revoke))
    if both:
        raise CredentialsError(f"user {both[0]!r} is both asked for and revoked")
    tool = _passwd_tool(passwd_tool)
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / CREDENTIALS
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    users = parse_credentials(text, str(path))
    missing = [n for n in revoke if n not in users]
    if missing:
        raise CredentialsError(f"no user {missing[0]!r} in {path} to revoke")
    gone = set(revoke)
    lines = [ln for ln in text.splitlines() if ln.partition(":")[0] not in gone]
    created = []
    for name in dict.fromkeys(wanted):
        if name not in users:
            password = new_password()
            users[name] = password
            lines.append(f"{name}:{password}")
            created.append(name)
    for name in revoke:
        del users[name]
    _write(path, "".join(ln + "\n" for ln in lines), 0o600)
    write_passwd(outdir / PASSWD, users, tool)
    names = tuple(users)
    _write(outdir / ACL, render_acl(names, roots), 0o640)
    strays = tuple(n for n in names if parse_user(n, roots) is None)
    return Outcome(names, tuple(created), tuple(revoke), strays)


def write_passwd(path: Path, users: dict[str, str], tool: str) -> None:
    """Mosquitto's password file for ``users``: their passwords hashed by ``tool -U``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    _create(tmp, "".join(f"{u}:{p}\n" for u, p in users.items()), 0o600)
    if users:  # mosquitto_passwd -U calls an empty file corrupt
        done = subprocess.run([tool, "-U", str(tmp)], capture_output=True, text=True)
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            said = (done.stderr or done.stdout).strip().splitlines()
            raise CredentialsError(
                f"{tool} -U failed ({done.returncode}): {said[-1] if said else 'no message'}"
            )
    os.chmod(tmp, 0o640)
    os.replace(tmp, path)


def _passwd_tool(given: str | None) -> str:
    name = given or os.environ.get("MOSQUITTO_PASSWD") or "mosquitto_passwd"
    found = shutil.which(name)
    if found is None:
        raise CredentialsError(
            f"{name} not found: install mosquitto (it ships mosquitto_passwd) "
            "or set MOSQUITTO_PASSWD"
        )
    return found


def _create(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _write(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to a temporary file of mode ``mode`` and rename it to ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    _create(tmp, text, mode)
    os.chmod(tmp, mode)  # whatever the umask
    os.replace(tmp, path)
