"""Which signals one process serves: a list of intersection ids, or shard i of N.

Shards are contiguous blocks of the net's signal ids in sorted order (their sizes differ by
at most one), so every process given the same net and N agrees on the split, and ids that
sort together (a grid's rows, a corridor's numbering) stay in one shard.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from citybrain.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/N"`` with 0 <= i < N; ``ConfigError`` naming the problem otherwise."""
        try:
            i_text, n_text = text.split("/")
            index, count = int(i_text), int(n_text)
        except ValueError:
            raise ConfigError(f"shard must be i/N (e.g. 0/2), not {text!r}") from None
        if count < 1 or not 0 <= index < count:
            raise ConfigError(f"shard {text!r}: need 0 <= i < N and N >= 1")
        return cls(index, count)

    def of(self, ids: Iterable[str]) -> tuple[str, ...]:
        ordered = sorted(ids)
        size, extra = divmod(len(ordered), self.count)
        start = self.index * size + min(self.index, extra)
        end = start + size + (1 if self.index < extra else 0)
        return tuple(ordered[start:end])


def select_signals(
    known: Sequence[str], signals: Sequence[str] | None = None, shard: Shard | None = None
) -> tuple[str, ...]:
    """The signals to serve: ``signals`` (each must be in ``known``), or ``shard`` of
    ``known``, or all of ``known``."""
    if signals is not None and shard is not None:
        raise ConfigError("give a list of signals or a shard, not both")
    if signals is not None:
        missing = [s for s in signals if s not in set(known)]
        if missing:
            raise ConfigError(f"no signal {missing[0]!r} in the net")
        return tuple(dict.fromkeys(signals))
    if shard is not None:
        chosen = shard.of(known)
        if not chosen:
            raise ConfigError(
                f"shard {shard.index}/{shard.count} of {len(known)} signal(s) is empty"
            )
        return chosen
    return tuple(known)


def is_primary(known: Iterable[str], mine: Iterable[str]) -> bool:
    """Whether ``mine`` holds the first of ``known`` in sorted order: that shard's service
    answers the escort requests no shard owns (an unknown edge, a route without signals)."""
    first = min(known, default=None)
    return first is not None and first in set(mine)
