"""multisk.data: the feature store, the field's formats, word vectors, datasets and collate.

Modules (import them directly; this package imports nothing eagerly, so ``multisk.errors`` and the
feature store stay importable without pulling in gensim, pandas or torch):

* ``feature_store``  — the one on-disk format every prepared / converted dataset uses
* ``text``           — ``tokenize`` (regex ``[\\w']+``) and ``encode_text`` (word-vector tokens)
* ``word_vectors``   — ``load_word_vectors`` (word2vec binary/text, GloVe text, ``glove-6b-50d``), cached
* ``dataset``        — ``FeatureStoreDataset``, ``collate_batch`` (the batch dict), ``crop_tokens``
* ``store_for_config`` — ``store_dataset(cfg, root, split)``: a store split as the config's model expects it
* ``howto100m``      — HowTo100M files and training-clip sampling, ``HowTo100MDataset``
* ``eval_pickles``   — MSR-VTT 1k-A and YouCook2 val pickles (pickles execute code on load: trusted files only)
* ``convert``        — ``convert_dataset`` from those formats into a feature store
* ``clipart``, ``folder`` and their feature extractors — the embedded benchmark and the user's own media
"""
