"""Error types whose messages are meant for the user (they name the file or field at fault)."""

from multisk.config import ConfigError
from multisk.data.feature_store import FeatureStoreError


class DataFormatError(ValueError):
    """A data file is missing, corrupt, or has the wrong shape / keys; the message names file and field."""


UserFacingError = (ConfigError, FeatureStoreError, DataFormatError, FileNotFoundError)

__all__ = ["ConfigError", "DataFormatError", "FeatureStoreError", "UserFacingError"]
