"""Moved to :mod:`multisk.evaluate.run_figures` (the standard figures of a run); this re-export keeps old imports working."""

from multisk.evaluate.run_figures import MAIN_DIRECTIONS, write_run_figures  # noqa: F401

__all__ = ["MAIN_DIRECTIONS", "write_run_figures"]
