"""Error types whose messages are meant for the user (they name the file or field at fault).

A leaf module: it imports nothing from multisk, so every layer (library, applications, command line)
can import it without pulling in any other part of the package. ``multisk.config`` re-exports
:class:`ConfigError` and ``multisk.data.store.feature_store`` re-exports :class:`FeatureStoreError`, so
the old import paths keep working.
"""


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


class DataFormatError(ValueError):
    """A data file is missing, corrupt, or has the wrong shape / keys; the message names file and field."""


class FeatureStoreError(ValueError):
    """Bad or inconsistent feature-store content; the message names the file and field."""


# what the command line reports as one line (no traceback)
UserFacingError = (ConfigError, FeatureStoreError, DataFormatError, FileNotFoundError)

__all__ = ["ConfigError", "DataFormatError", "FeatureStoreError", "UserFacingError"]
