"""The simulator's one exception, in its own module so every simulator module can raise it without cycles."""

from __future__ import annotations

__all__ = ["SimInputError"]


class SimInputError(ValueError):
    """Bad input to the simulator (trace, options, config): shown as one line, exit 2."""
