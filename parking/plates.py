"""Licence plate text: normalization and OCR look-alike classes.

``normalize`` turns what a camera read into the text that matching compares: full-width
characters folded (NFKC), separators dropped, upper case. ``"浙A·12345"``, ``"浙a 12345"`` and
``"浙Ａ－１２３４５"`` all become ``"浙A12345"``. The raw text is kept elsewhere as evidence.

``lookalike_key`` maps every character of a look-alike class to one representative, so two
plates that differ only by characters OCR confuses (0/D/Q/O, 1/I, 2/Z, 5/S, 6/G, 8/B) get
the same key. Han characters (the province prefix) are never folded.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

# Separators a camera or an operator may put inside a plate, after NFKC folding (which
# already maps the full-width forms to these): middle dots, hyphens and dashes, dots.
SEPARATORS = frozenset("·・•‧∙-‐‑‒–—―−_.")

# Each class of characters OCR confuses, representative first.
LOOKALIKE_CLASSES: tuple[str, ...] = ("0DQO", "1I", "2Z", "5S", "6G", "8B")

_TO_REPRESENTATIVE = str.maketrans({ch: cls[0] for cls in LOOKALIKE_CLASSES for ch in cls[1:]})

_MAX_PASSES = 4


def _drop(ch: str) -> bool:
    return ch in SEPARATORS or ch.isspace() or unicodedata.category(ch) == "Cf"


def _pass(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text)
    kept = "".join(ch for ch in folded if not _drop(ch))
    return kept.upper()


@lru_cache(maxsize=1 << 16)
def normalize(raw: str) -> str:
    """The comparable form of a plate read: NFKC, no separators or spaces, upper case.

    Idempotent: ``normalize(normalize(x)) == normalize(x)``. May return ``""`` (a read of
    only separators); callers decide whether that is a usable plate. Cached: a plate is
    validated, grouped and looked up many times (and cars come back).
    """
    text = raw
    for _ in range(_MAX_PASSES):
        # Upper-casing can produce characters that NFKC folds again (rare letters such as
        # "ǆ"), so repeat until nothing changes.
        nxt = _pass(text)
        if nxt == text:
            return text
        text = nxt
    return text


def lookalike_key(plate: str) -> str:
    """The plate with every look-alike character replaced by its class representative.

    The input is normalized first, so raw reads can be passed too. Cached: passages,
    sessions and pending exits ask for the key of the same few plates over and over.
    """
    return _key(plate)


@lru_cache(maxsize=1 << 16)
def _key(plate: str) -> str:
    return normalize(plate).translate(_TO_REPRESENTATIVE)


def differs_only_by_lookalikes(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` are equal after normalization except for look-alikes.

    Equal plates count (they differ by nothing); matching checks exact equality first.
    """
    return lookalike_key(a) == lookalike_key(b)
