"""Shared-memory ring arena: one lock-free SPSC ring per call leg (see layout.py)."""

from .arena import Arena, LegReader, LegWriter, sweep_stale
from .batch import LegBatchWriter

__all__ = ["Arena", "LegBatchWriter", "LegReader", "LegWriter", "sweep_stale"]
