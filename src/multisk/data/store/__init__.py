"""multisk.data.store — the feature store and the datasets the model reads from it (the paper's data
path): ``feature_store``, ``dataset``, ``store_for_config``, ``evaluation_batches``, ``pooled_features``."""
