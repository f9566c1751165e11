"""Which samples of an epoch were handed out: per shard URL, ranges of sample ordinals.

A checkpoint holds this beside the stream positions. Positions resume a rank on the same layout
(its stream replays); these ranges resume any layout: a new rank skips, in its new shards, the
samples any old rank handed out, without reading anything to find them. The shuffle buffer hands
a shard's samples out nearly in order, so a shard read to its end is one range, and the ranges
of an epoch stay about as many as the shards read, plus the buffer's scatter.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping

RangeList = list[list[int]]  # [[start, end), …], sorted, disjoint, not touching


class Consumed:
    """Sample ordinals by shard URL, kept as ranges."""

    def __init__(self, state: Mapping[str, RangeList] | None = None) -> None:
        self._ranges: dict[str, RangeList] = {}
        for url, ranges in (state or {}).items():
            for start, end in ranges:
                for ordinal in range(int(start), int(end)):
                    self.add(url, ordinal)

    def add(self, url: str, ordinal: int) -> None:
        ranges = self._ranges.setdefault(url, [])
        i = bisect.bisect_right(ranges, ordinal, key=lambda r: r[0])  # first starting after it
        if i and ranges[i - 1][1] > ordinal:
            return  # already in
        joins_left = bool(i) and ranges[i - 1][1] == ordinal
        joins_right = i < len(ranges) and ranges[i][0] == ordinal + 1
        if joins_left and joins_right:
            ranges[i - 1][1] = ranges[i][1]
            del ranges[i]
        elif joins_left:
            ranges[i - 1][1] = ordinal + 1
        elif joins_right:
            ranges[i][0] = ordinal
        else:
            ranges.insert(i, [ordinal, ordinal + 1])

    def update(self, other: Consumed) -> None:
        for url, ordinal in other.pairs():
            self.add(url, ordinal)

    def pairs(self, urls: Iterable[str] | None = None) -> Iterator[tuple[str, int]]:
        """Every (url, ordinal), of ``urls`` only if given."""
        for url in self._ranges if urls is None else urls:
            for start, end in self._ranges.get(url, ()):
                for ordinal in range(start, end):
                    yield url, ordinal

    def state(self) -> dict[str, RangeList]:
        return {url: [list(r) for r in ranges] for url, ranges in sorted(self._ranges.items())}

    def __len__(self) -> int:
        return sum(end - start for ranges in self._ranges.values() for start, end in ranges)
