"""Open SUMO's XML files as SUMO does: plain or gzip-compressed, whatever their name says."""

from __future__ import annotations

import gzip
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

from citybrain.errors import ScenarioError

_GZIP_MAGIC = b"\x1f\x8b"


def open_xml(path: Path) -> IO[bytes]:
    """A binary stream of the file's XML, decompressed when the file is gzip data."""
    try:
        with path.open("rb") as probe:
            head = probe.read(2)
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head == _GZIP_MAGIC:
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def parse_xml(path: Path) -> ET.ElementTree[ET.Element]:
    """The whole document; a file that is not XML fails with one line naming it."""
    with open_xml(path) as stream:
        try:
            return ET.parse(stream)
        except (ET.ParseError, OSError, EOFError, zlib.error) as exc:
            raise ScenarioError(f"{path}: not readable XML ({exc})") from None


def iter_elements(path: Path, tags: frozenset[str] | None = None) -> Iterator[ET.Element]:
    """Completed elements in document order (all, or those whose tag is in ``tags``).

    A yielded element is whole (its children included) until the next one is asked for;
    each child of the document's root is dropped once it ends, so large files stream in
    little memory.
    """
    with open_xml(path) as stream:
        depth = 0
        try:
            for event, elem in ET.iterparse(stream, events=("start", "end")):
                if event == "start":
                    depth += 1
                    continue
                depth -= 1
                if tags is None or elem.tag in tags:
                    yield elem
                if depth == 1:
                    elem.clear()
        except (ET.ParseError, OSError, EOFError, zlib.error) as exc:
            raise ScenarioError(f"{path}: not readable XML ({exc})") from None
