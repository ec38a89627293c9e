"""DGL 2.1.0 (the newest for Python 3.11) on torch 2.13: import it while skipping only its missing GraphBolt library.

``dgl/__init__.py`` imports ``dgl.graphbolt``, whose last line calls ``load_graphbolt()``: it builds the path
``dgl/graphbolt/libgraphbolt_pytorch_<torch version>.so``, raises FileNotFoundError when ``os.path.exists`` says it
is absent, then ``torch.classes.load_library(path)``. DGL 2.1.0 ships that library for torch 2.0-2.2 only. For the
length of the import we answer "exists" for exactly that missing file and make loading exactly that file a no-op;
every other path and library (DGL's core ``libdgl.so`` included) goes through untouched, and a GraphBolt library
that does exist is loaded as usual. Graphs, ``update_all``, sampling and METIS partitioning do not need GraphBolt;
only ``dgl.graphbolt``'s own operators stay unavailable.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator

_lock = threading.Lock()


def _missing_graphbolt(path: object, exists) -> bool:
    import torch

    name = f"libgraphbolt_pytorch_{torch.__version__.split('+', 1)[0]}."
    p = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
    return os.path.basename(os.path.dirname(p)) == "graphbolt" and os.path.basename(p).startswith(name) \
        and not exists(p)


@contextmanager
def _graphbolt_skipped() -> Iterator[None]:
    import torch

    exists, load = os.path.exists, torch.classes.load_library
    os.path.exists = lambda p: exists(p) or _missing_graphbolt(p, exists)
    torch.classes.load_library = lambda p: None if _missing_graphbolt(p, exists) else load(p)
    try:
        yield
    finally:
        os.path.exists, torch.classes.load_library = exists, load


def import_dgl() -> ModuleType:
    """The ``dgl`` module (imported once); an ImportError naming the extra to install when DGL is missing."""
    if "dgl" in sys.modules:
        return sys.modules["dgl"]
    with _lock:
        try:
            with _graphbolt_skipped(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torchdata's DataPipes deprecation notice
                import dgl
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.split(".")[0] not in ("dgl", "torchdata", "pandas"):
                raise
            raise ImportError(f"DGL is not usable here ({exc}); install it with: pip install 'seraphim[gnn]'") \
                from None
    return dgl
