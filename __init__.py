"""Seraphim: a parameter-server platform for large and sparse models.

The repository root is the ``seraphim`` package; each role folder is a subpackage
(``seraphim.ps`` is ``ps/``, ``seraphim.storage`` is ``storage/`` and so on).
"""

__version__ = "0.1.0"
