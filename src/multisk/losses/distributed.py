"""Moved to :mod:`multisk.losses.collectives` (the global-batch gathers losses use); this re-export
keeps old imports working. Patch collectives there, not here."""

from multisk.losses.collectives import *  # noqa: F401,F403
from multisk.losses.collectives import ProcessGroup, __all__  # noqa: F401
