"""Which signals of a net one service controls: a named list, or shard i of N.

``--shard i/N`` (i from 0 to N-1): the net's signal ids sorted as plain strings, cut into N
consecutive blocks whose sizes differ by at most one; shard i is the i-th block. The split
depends on the set of ids only (not on the order of the net file), so services started on
the same net agree on it. The *primary* shard holds the first id of that order: its service
answers the escort requests no shard owns (an unknown edge, a route without signals).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from citybrain.errors import ConfigError


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` as (i, N); ``ConfigError`` unless 0 <= i < N."""
    index_text, sep, count_text = text.partition("/")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        index, count = -1, 0
    if not sep or count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard must be i/N with 0 <= i < N (e.g. 0/2, 1/2), not {text!r}")
    return index, count


def shard_of(signals: Collection[str], index: int, count: int) -> tuple[str, ...]:
    """Shard ``index`` of ``count`` of ``signals`` (see the module docstring)."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"no shard {index} of {count}")
    ordered = sorted(signals)
    n = len(ordered)
    return tuple(ordered[index * n // count : (index + 1) * n // count])


def pick_signals(signals: Sequence[str], wanted: Sequence[str]) -> tuple[str, ...]:
    """The ``wanted`` signals, in the net's order; ``ConfigError`` naming unknown ones."""
    known = set(signals)
    unknown = [s for s in wanted if s not in known]
    if unknown:
        sample = ", ".join(sorted(known)[:8]) + (", ..." if len(known) > 8 else "")
        raise ConfigError(
            f"--signals: no signal {', '.join(unknown)} in the net (its signals: {sample})"
        )
    if not wanted:
        raise ConfigError("--signals needs at least one signal id")
    chosen = set(wanted)
    return tuple(s for s in signals if s in chosen)


def is_primary(signals: Collection[str], mine: Collection[str]) -> bool:
    """Whether ``mine`` holds the first signal of the net in sorted order."""
    return bool(signals) and min(signals) in set(mine)
