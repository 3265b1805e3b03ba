"""When a worker counts as hung: its batch ran far past the time batches of its size take.

A stopped (SIGSTOP), deadlocked or swapped-out worker never closes its pipe, so crash handling
never sees it; only the time its batch has taken tells. The pool arms a timer with `limit` for
the batch a worker is computing and kills the worker when it fires.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HangRule:
    """A batch computing longer than `multiple` x its estimate, and at least `min_s`, is hung."""

    multiple: float = 10.0
    min_s: float = 2.0

    def __post_init__(self) -> None:
        if self.multiple < 1.0:
            raise ValueError(f"hang multiple must be >= 1, got {self.multiple}")
        if self.min_s <= 0.0:
            raise ValueError(f"hang minimum must be > 0 s, got {self.min_s}")

    def limit(self, estimate_s: float | None) -> float | None:
        """Seconds a batch estimated at `estimate_s` may compute; None: no estimate, no limit.

        Before any batch was measured there is no basis to call one slow: a model's first
        batch may well take longer than its warm-up suggested.
        """
        if estimate_s is None:
            return None
        return max(self.min_s, self.multiple * estimate_s)
