"""Shared-memory ring arena: one lock-free SPSC ring per call leg (see layout.py)."""

from .arena import Arena, LegWriter, sweep_stale

__all__ = ["Arena", "LegWriter", "sweep_stale"]
