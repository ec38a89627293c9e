"""The one error type of the DiT workload: input that cannot be used as given (a shape, a file, a spec value)."""

from __future__ import annotations

from seraphim.proto.errors import FatalJobError


class DiTInputError(FatalJobError, ValueError):
    """A tensor shape, image file, captions file or spec value the DiT code cannot use; the message says which
    value, what came and what is allowed. A restarted worker would hit it again, so the job fails at once."""
