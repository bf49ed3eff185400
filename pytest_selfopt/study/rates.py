"""A measured rate and its Monte Carlo error: hits out of repetitions, with a 95 % interval.

Every rate the study and the check measurement print comes with its interval and its
repetition count, so a reader can tell 3 % from 6 % only when the data can (Wilson's score
interval: it stays inside [0, 1] and is honest near 0, where false-promotion rates live).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    hits: int
    n: int

    @property
    def value(self) -> float:
        return self.hits / self.n if self.n else 0.0

    def interval(self, z: float = Z95) -> tuple[float, float]:
        """Wilson score interval (95 % by default)."""
        if self.n == 0:
            return 0.0, 1.0
        p, n = self.value, self.n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.hits + other.hits, self.n + other.n)

    def text(self) -> str:
        """``3.1% [2.0, 4.6]``"""
        lo, hi = self.interval()
        return f"{100 * self.value:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
