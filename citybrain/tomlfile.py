"""Reading TOML files with errors that name the file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from citybrain.errors import ConfigError


def parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from None


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The parsed file; ``what`` names it in the error when it is missing ("tariff file")."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    return parse_toml(path.read_text(encoding="utf-8"), str(path))
