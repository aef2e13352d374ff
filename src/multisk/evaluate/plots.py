"""Moved to :mod:`multisk.evaluate.plot_primitives` (one drawing function per figure kind); this
re-export keeps old imports working."""

from multisk.evaluate.plot_primitives import *  # noqa: F401,F403
from multisk.evaluate.plot_primitives import __all__  # noqa: F401
