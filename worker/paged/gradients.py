"""Gradient pages: each page's gradient assembled from its tensors' gradients and pushed once it is complete.

Backward produces a tensor's gradient when autograd has accumulated it (``post_accumulate_grad`` hook); the pieces
are copied into float32 page buffers, and a page whose every tensor has reported is pushed at once (early
pushes: the PS updates that page while the worker runs backward through earlier layers). The buffers are reused
from step to step (the push encodes its bytes before it returns), and only the parts of a page that no trainable
tensor covers are zeroed: fresh page-sized allocations and full zero fills cost as much as the copies themselves.
A page holding a tensor that got no gradient this step is pushed at the step's end with zeros there, and a page
none of whose tensors got one (a frozen tensor's page) abstains (keys only), so every page reaches the next
version. The push names the step as its version: the PS applies step t's gradients to rows at version t.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from seraphim.worker.client import DenseTable
from seraphim.worker.paged.layout import PageLayout, page_keys
from seraphim.worker.paged.transfer import PageTransfer


class PageGradients:
    """One step's gradient pages of a paged model."""

    def __init__(self, layout: PageLayout, table: DenseTable, rows_per_page: int, transfer: PageTransfer,
                 device: torch.device, trainable: set[str]) -> None:
        self.layout = layout
        self.table = table
        self.rows_per_page = rows_per_page
        self.transfer = transfer
        self.device = device
        self._placements = {t.name: t for t in layout.tensors if t.name in trainable}
        self._page_segments: list[list[tuple[str, int, int]]] = [[] for _ in range(layout.n_pages)]
        for t in self._placements.values():
            for s in t.segments:
                self._page_segments[s.page].append((t.name, s.page_offset, s.page_offset + s.numel))
        self._expected = np.array([len(spans) for spans in self._page_segments], dtype=np.int64)
        self._remaining = self._expected.copy()
        self._gaps = [_uncovered([(start, end) for _, start, end in spans], layout.page_numel)
                      for spans in self._page_segments]
        self._reported: set[str] = set()
        self._buffers: dict[int, torch.Tensor] = {}
        self._free: list[torch.Tensor] = []
        self._version = 0
        self._lr_scale = 1.0
        self._early = True
        self.pushed: set[int] = set()
        self.pushed_bytes = 0
        self.step_grad_sq = 0.0  # |pushed gradient|^2 of the current step (the gradient noise scale's small batch)
        self.on_push: Callable[[int], None] = lambda page: None

    def begin(self, version: int, lr_scale: float, early: bool) -> None:
        """Start a step: its gradients are pushed as `version` with the learning rate scaled by lr_scale; early
        False holds every page until finish() (no overlap of pushes with backward)."""
        if self._buffers or (self._remaining != self._expected).any():
            raise RuntimeError("the previous step's gradient pages were not finished")
        self._version, self._lr_scale, self._early = version, lr_scale, early
        self.pushed = set()
        self._reported = set()
        self.step_grad_sq = 0.0

    def add(self, name: str, grad: torch.Tensor) -> None:
        """A tensor's gradient for this step (its full shape)."""
        placement = self._placements[name]
        flat = grad.detach().reshape(-1)
        self._reported.add(name)
        for s in placement.segments:
            buf = self._buffers.get(s.page)
            if buf is None:
                buf = self._buffers[s.page] = self._fresh_buffer(s.page)
            buf[s.page_offset:s.page_offset + s.numel].copy_(flat[s.tensor_offset:s.tensor_offset + s.numel])
            self._remaining[s.page] -= 1
            if self._remaining[s.page] == 0 and self._early:
                self._push(s.page)

    def finish(self) -> None:
        """Push every page not pushed yet (zeros where a tensor got no gradient); the step's pushes are then all
        in flight (the client's clock() waits for them)."""
        for page in range(self.layout.n_pages):
            if page not in self.pushed:
                buf = self._buffers.get(page)
                if buf is not None:  # a reused buffer: clear what the tensors without a gradient left there
                    for name, start, end in self._page_segments[page]:
                        if name not in self._reported:
                            buf[start:end].zero_()
                self._push(page)
        self._remaining = self._expected.copy()

    @property
    def missing_pages(self) -> int:
        """Pages still waiting for some tensor's gradient."""
        return int((self._remaining > 0).sum())

    def _fresh_buffer(self, page: int) -> torch.Tensor:
        """A page buffer whose uncovered parts are zero (the tensors' copies fill the rest)."""
        buf = self._free.pop() if self._free else torch.empty(self.layout.page_numel, dtype=torch.float32,
                                                              device=self.device)
        for start, end in self._gaps[page]:
            buf[start:end].zero_()
        return buf

    def _push(self, page: int) -> None:
        buf = self._buffers.pop(page, None)
        keys = page_keys(page, self.rows_per_page)
        if buf is None:  # no tensor of the page got a gradient: keys only, a zero contribution without bytes
            self.table.abstain_async(keys, self._version)
        else:
            self.step_grad_sq += float(torch.dot(buf, buf))
            values = self.transfer.to_host(buf)
            self.table.push_async(keys, values.reshape(self.rows_per_page, -1), version=self._version,
                                  lr_scale=self._lr_scale)
            self._free.append(buf)  # the push has encoded its bytes: the buffer is free for the next page
            self.pushed_bytes += values.nbytes
        self.pushed.add(page)
        self.on_push(page)


def _uncovered(spans: list[tuple[int, int]], page_numel: int) -> list[tuple[int, int]]:
    """The [start, end) ranges of a page of page_numel values that none of the [start, end) spans covers."""
    gaps, cursor = [], 0
    for start, end in sorted(spans):
        if start > cursor:
            gaps.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < page_numel:
        gaps.append((cursor, page_numel))
    return gaps
