"""Bulk-dialing campaign engine for Aculab Cloud."""

from __future__ import annotations

__version__ = "0.1.0"
