"""Hot counters: what the model counts on every fault, kept where counting is cheap.

A ``collections.Counter`` defines ``__delitem__`` in Python, which makes every item
store (``c[k] += 1``) go through a slot wrapper: about twice the cost of the same
update on a plain dict, and the fault cycle counts some twenty times. A function or
unit therefore counts its per-fault events in a plain dict of pre-seeded keys
(``HotCounts``), folded into its ``Counter`` whenever ``counters`` is read, so every
reader still sees one up-to-date ``Counter``.
"""

from __future__ import annotations

from collections import Counter


class HotCounts:
    """A ``Counter`` plus a plain dict of hot keys that are folded into it on read."""

    __slots__ = ("cold", "hot")

    def __init__(self, hot_keys: dict[str, int]) -> None:
        self.cold: Counter[str] = Counter()
        #: A copy of ``hot_keys`` (every hot key, at 0): ``hot[k] += 1`` never misses.
        self.hot: dict[str, int] = hot_keys.copy()

    def folded(self) -> Counter[str]:
        """The ``Counter`` with every hot count moved into it."""
        hot = self.hot
        if any(hot.values()):
            cold = self.cold
            for k, v in hot.items():
                if v:
                    cold[k] += v
                    hot[k] = 0
        return self.cold


__all__ = ["HotCounts"]
