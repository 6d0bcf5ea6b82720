"""Shared-memory ring arena: one lock-free SPSC ring per call leg (see layout.py)."""

from .arena import Arena, LegReader, LegWriter, sweep_stale

__all__ = ["Arena", "LegReader", "LegWriter", "sweep_stale"]
