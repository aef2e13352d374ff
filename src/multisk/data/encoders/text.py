"""Caption tokenisation and word-vector encoding (the reference's GloVe captions; docs/data.md).

The reference turns a caption into text tokens as follows: split it with the regex ``[\\w']+`` (no
lower-casing), keep the words present in the word-vector vocabulary, take the first ``max_words`` of
them and stack their vectors. :func:`encode_text` does exactly that and returns a ``(T, dim)`` matrix
with ``0 <= T <= max_words`` (T = 0 when no word is in the vocabulary: the empty-modality path).

GloVe vocabularies are lower-case, so pass ``lowercase=True`` with GloVe vectors; GoogleNews word2vec is
case-sensitive and the reference does not lower-case.
"""

from __future__ import annotations

import re
from typing import List, Optional

import numpy as np

from multisk.errors import DataFormatError

WORD_PATTERN = re.compile(r"[\w']+")


def tokenize(text: str) -> List[str]:
    """Split ``text`` into the words matched by ``[\\w']+`` (letters, digits, underscore, apostrophe).

    No lower-casing: ``tokenize("Don't stop, Bob!") == ["Don't", "stop", "Bob"]``.
    """
    return WORD_PATTERN.findall(text)


def check_caption(text: object, where: str = "caption") -> str:
    """Return ``text`` if it is a non-empty string, else raise :class:`DataFormatError` naming ``where``.

    ``bytes`` are decoded as UTF-8 (an undecodable caption is an error, not a silent replacement).
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataFormatError(f"{where}: caption is not valid UTF-8 ({err})") from None
    if isinstance(text, np.str_):
        text = str(text)
    if not isinstance(text, str):
        raise DataFormatError(f"{where}: caption must be a string, got {type(text).__name__}")
    if not text.strip():
        raise DataFormatError(f"{where}: caption is empty")
    return text


def encode_text(
    kv,
    text: object,
    max_words: int = 20,
    lowercase: bool = False,
    where: Optional[str] = None,
) -> np.ndarray:
    """Word-vector tokens of a caption.

    Args:
        kv: a ``gensim.models.KeyedVectors`` (anything with ``key_to_index``, ``vectors``, ``vector_size``).
        text: the caption (str, or UTF-8 bytes).
        max_words: keep at most this many in-vocabulary words (the first ones, in caption order).
        lowercase: lower-case every word before the vocabulary look-up (use with GloVe).
        where: context for error messages, e.g. ``"captions.pickle: item 'abc' field 'text'"``.

    Returns:
        ``(T, dim)`` float32, ``T = min(max_words, #in-vocabulary words)`` (may be 0); row j is
        ``kv[w_j]`` for the j-th in-vocabulary word ``w_j``.

    Raises:
        DataFormatError: the caption is empty, not a string, or not valid UTF-8 (message names ``where``).
    """
    text = check_caption(text, where or "caption")
    key_to_index = kv.key_to_index
    rows: List[int] = []
    for word in tokenize(text):
        if lowercase:
            word = word.lower()
        idx = key_to_index.get(word)
        if idx is not None:
            rows.append(idx)
            if len(rows) >= max_words:
                break
    if not rows:
        return np.zeros((0, kv.vector_size), dtype=np.float32)
    return np.asarray(kv.vectors[rows], dtype=np.float32)


__all__ = ["WORD_PATTERN", "check_caption", "encode_text", "tokenize"]
