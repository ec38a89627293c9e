"""The step trace: the order in which a step touches its pages, recorded on the first step and followed after.

A step is a sequence of page accesses (forward: a layer's pages as it starts; backward: a page as autograd reads
a weight it saved), each with the bytes of saved activations alive at that moment (PatrickStar's memory tracer:
the non-model memory at each moment). Later steps walk the same sequence with a cursor; the runtime prefetches
by it and evicts the page whose next use is farthest (``FarthestNextUse``). The sequence repeats every step, so
the next use of a page with no use left in this step is its first use in the next step.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

FORWARD, BACKWARD = "forward", "backward"


@dataclass
class StepTrace:
    """Page accesses of one step in order, their phases and the saved-activation bytes alive at each."""

    pages: list[int] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    activation_bytes: list[int] = field(default_factory=list)
    _positions: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def record(self, page: int, phase: str, activation_bytes: int) -> None:
        if self.pages and self.pages[-1] == page and self.phases[-1] == phase:
            return  # one access per run of the same page: several weights of one page read back to back
        self._positions.setdefault(page, []).append(len(self.pages))
        self.pages.append(page)
        self.phases.append(phase)
        self.activation_bytes.append(activation_bytes)

    def __len__(self) -> int:
        return len(self.pages)

    def next_use(self, page: int, after: int) -> int:
        """Position of the page's first access at or after `after`, counting on into the next steps (position
        len + i is access i of the next step); a page never used gets a position past any other."""
        positions = self._positions.get(page)
        if not positions:
            return 1 << 62
        steps, within = divmod(after, len(self.pages))
        i = bisect.bisect_left(positions, within)
        if i < len(positions):
            return steps * len(self.pages) + positions[i]
        return (steps + 1) * len(self.pages) + positions[0]

    @property
    def peak_activation_bytes(self) -> int:
        return max(self.activation_bytes, default=0)


class TraceCursor:
    """Where a step following a trace stands: matches each access to the trace, tolerating a few off-trace ones."""

    LOOKAHEAD = 16  # how far ahead an access may be found after the step left the trace for a while

    def __init__(self, trace: StepTrace) -> None:
        self.trace = trace
        self.position = 0
        self.misses = 0

    def advance(self, page: int, phase: str) -> None:
        """Move past the trace's next access of `page` (in this phase), if it is near; count a miss otherwise."""
        trace = self.trace
        if self.position and trace.pages[self.position - 1] == page and trace.phases[self.position - 1] == phase:
            return  # the same access again (its run was recorded once)
        end = min(len(trace), self.position + self.LOOKAHEAD)
        for i in range(self.position, end):
            if trace.pages[i] == page and trace.phases[i] == phase:
                self.position = i + 1
                return
        self.misses += 1
