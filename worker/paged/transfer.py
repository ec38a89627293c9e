"""Moving page bytes between the PS client's host arrays and the device the model computes on.

On CPU a pulled page is used where it landed (converted when the compute dtype is not float32). With CUDA, pulled
rows go through a pinned host buffer and a copy stream, and the compute stream waits on the copy's event only when
it first reads the page, so copies overlap compute; gradients come back the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch


class PageTransfer(ABC):
    """Host arrays <-> compute-side page tensors."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    @abstractmethod
    def to_device(self, values: np.ndarray) -> tuple[torch.Tensor, Any]:
        """A page tensor [page_numel] from float32 host values, and what to wait on before reading it (or None)."""

    @abstractmethod
    def ready(self, token: Any) -> None:
        """Make the compute stream wait for a page's copy (no-op on CPU)."""

    @abstractmethod
    def to_host(self, tensor: torch.Tensor) -> np.ndarray:
        """float32 host values of a gradient page, complete when this returns."""

    @staticmethod
    def for_device(device: torch.device, dtype: torch.dtype) -> "PageTransfer":
        if device.type == "cuda":
            return CudaTransfer(device, dtype)
        if device.type != "cpu":
            raise ValueError(f"paged model states compute on cpu or cuda, not {device}")
        return CpuTransfer(dtype)


class CpuTransfer(PageTransfer):
    def to_device(self, values: np.ndarray) -> tuple[torch.Tensor, Any]:
        page = torch.from_numpy(values.reshape(-1))  # the pull's own fresh array: used in place
        return (page if self.dtype == torch.float32 else page.to(self.dtype)), None

    def ready(self, token: Any) -> None:
        return None

    def to_host(self, tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().to(torch.float32).numpy()


class CudaTransfer(PageTransfer):
    """Pinned staging buffers and a copy stream of our own; events order copies against compute."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(dtype)
        self.device = device
        self.copy_stream = torch.cuda.Stream(device)

    def to_device(self, values: np.ndarray) -> tuple[torch.Tensor, Any]:
        host = torch.from_numpy(values.reshape(-1)).pin_memory()
        with torch.cuda.stream(self.copy_stream):
            page = host.to(self.device, non_blocking=True).to(self.dtype)
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        page.record_stream(torch.cuda.current_stream(self.device))
        return page, (event, host)  # the pinned buffer lives until the copy is waited for

    def ready(self, token: Any) -> None:
        if token is not None:
            torch.cuda.current_stream(self.device).wait_event(token[0])

    def to_host(self, tensor: torch.Tensor) -> np.ndarray:
        host = torch.empty(tensor.numel(), dtype=torch.float32, pin_memory=True)
        compute_done = torch.cuda.Event()
        compute_done.record(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(compute_done)
            host.copy_(tensor.detach().reshape(-1), non_blocking=True)
        self.copy_stream.synchronize()
        return host.numpy()
