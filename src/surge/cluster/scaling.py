"""When a model's cluster instances grow or shrink: a pure policy over load samples.

The pool samples, on every heartbeat tick, whether all its live instances are full (both
batch places taken: the driver then holds work in its queue) and how long each has been idle.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

FULL_SHARE = 0.8  # samples that must show every instance full before one is added


@dataclass
class ScalePolicy:
    """Add an instance after `up_after_s` of (nearly) steady saturation, up to `ceiling`;
    remove one idle for `down_idle_s`, down to `floor`."""

    floor: int
    ceiling: int
    up_after_s: float
    down_idle_s: float
    _samples: deque[tuple[float, bool]] = field(default_factory=deque)

    def sample(self, now: float, full: bool) -> None:
        self._samples.append((now, full))
        while self._samples and self._samples[0][0] < now - self.up_after_s:
            self._samples.popleft()

    def _saturated(self, now: float) -> bool:
        if not self._samples or self._samples[0][0] > now - self.up_after_s * 0.9:
            return False  # not watched long enough yet
        full = sum(1 for _, f in self._samples if f)
        return full >= FULL_SHARE * len(self._samples)

    def decide(self, now: float, count: int, starting: int, longest_idle_s: float) -> int:
        """+1 to add an instance, -1 to remove the longest idle one, 0 to keep them."""
        if starting == 0 and count < self.ceiling and self._saturated(now):
            self._samples.clear()  # the next step is judged on the new capacity
            return 1
        if count > self.floor and longest_idle_s >= self.down_idle_s:
            return -1
        return 0
