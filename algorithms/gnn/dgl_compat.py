"""DGL 2.1.0 (the newest for Python 3.11) on torch 2.13: import it while skipping only its GraphBolt library.

DGL ships libgraphbolt only for torch 2.0-2.2 and loads it unconditionally at import. Graphs, ``update_all``,
sampling and METIS partitioning do not need it; only GraphBolt's own APIs do, and those stay unavailable.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator

_GRAPHBOLT = "libgraphbolt_pytorch_"


@contextmanager
def _graphbolt_skipped() -> Iterator[None]:
    import torch

    exists, load = os.path.exists, torch.classes.load_library
    os.path.exists = lambda p: exists(p) or _GRAPHBOLT in str(p)
    torch.classes.load_library = lambda p: None if _GRAPHBOLT in str(p) else load(p)
    try:
        yield
    finally:
        os.path.exists, torch.classes.load_library = exists, load


def import_dgl() -> ModuleType:
    """The ``dgl`` module; a clear error naming the extra to install when DGL is missing."""
    try:
        with _graphbolt_skipped(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchdata's DataPipes deprecation notice
            import dgl
    except ImportError as exc:
        raise ImportError(f"DGL is not installed ({exc}); install it with: pip install 'seraphim[gnn]'") from None
    return dgl
