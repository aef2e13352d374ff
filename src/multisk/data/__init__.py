"""multisk.data: everything between files on disk and the model's batch dict, in three roles.

* :mod:`multisk.data.store` — the paper's data path: ``feature_store`` (the one on-disk format every
  prepared or converted dataset uses), ``dataset`` (``FeatureStoreDataset``, ``collate_batch``: the batch
  dict, ``crop_tokens``), ``store_for_config`` (a store split as a config's model expects it),
  ``evaluation_batches`` (how evaluation feeds a split: fixed window, fixed model batches, caption
  groups), ``pooled_features`` (one frozen vector per item, for baselines and the structure metric).
* :mod:`multisk.data.formats` — files of the field and of the user turned into stores: ``howto100m``
  (training layout, clip sampling), ``eval_pickles`` (MSR-VTT, YouCook2), ``convert`` (those → a store),
  ``arrays`` (checked numpy arrays, the reference's video layout and pickles they share) and, optional,
  the media pipeline:
  ``clipart`` (the embedded benchmark) and ``folder`` (the user's own pictures, sounds, videos).
* :mod:`multisk.data.encoders` — frozen encoders that make tokens: ``text`` and ``word_vectors``
  (captions), ``lite0`` / ``image_features`` (pictures), ``audio_features`` (log-mel), ``class_names``,
  and ``encoding`` (the cached encoding toolkit of the media pipeline).

Import modules directly; the packages import nothing eagerly, so ``multisk.errors`` and the feature store
stay importable without pulling in gensim, pandas or torch.
"""
