"""Moved to :mod:`multisk.train.process_group` (torchrun process groups, host barriers); this
re-export keeps old imports working."""

from multisk.train.process_group import *  # noqa: F401,F403
from multisk.train.process_group import __all__  # noqa: F401
