"""multisk.data.encoders — frozen encoders that turn captions, pictures and sounds into tokens: ``text``,
``word_vectors``, ``lite0``, ``image_features``, ``audio_features``, ``class_names``, and ``encoding``
(the cached encoding toolkit the media pipeline writes stores with)."""
