"""A calibrated low-confidence notice for text search: is this query's best match as good as a real
caption's?

Every query gets an answer: cosine ranking always has a top item, and a subword text encoder (MiniLM)
has no out-of-vocabulary words, so ``"qqqxj blorptang"`` lands somewhere in the joint space like any
caption. What differs is how close its nearest item is. So when ``multisk embed`` writes an index it
embeds real captions **exactly as queries are embedded** (:func:`multisk.evaluate.text_queries.embed_texts`
on the caption text) and scores each against the index's items, per search target ``t``::

    best_c = max_{i valid for t, i != own(c)} cos(q_c, g_i)        (one value per caption c)
    threshold_t = Quantile_q({best_c})                              (q = 0.05: linear interpolation)

and records ``threshold_t`` in the index. A search whose best score is below it is answered as usual
(results on stdout, exit 0) with a notice on stderr: the query matched the collection worse than 95 % of
real captions did, so the results are probably unrelated to it.

Which captions (:func:`calibration_source`): a held-out split of the same store (``--calibration-split``,
else the checkpoint's ``data.val_split`` if the store has it, else the split whose manifest ``role`` is
``validation``, else one named ``val`` / ``valid`` / ``validation``); its captions are not the index's items' own, so nothing is left out. Without one, the
indexed split's own captions, each scored with **its own item left out** (``own(c)``): with it, a
caption's best score would be its paired item's, higher than a query about the collection can expect.
A split the manifest marks ``role: test`` is never used (neither chosen nor accepted when named). At
most :data:`MAX_CALIBRATION_CAPTIONS` captions (a seeded subset); fewer than
:data:`MIN_CALIBRATION_CAPTIONS` usable ones give no threshold (a 5th percentile of a handful of values
is their minimum), with the reason recorded. A caption without any in-vocabulary word (word-vector
encoders) is not a query search would answer, so it is left out and counted.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from multisk.data.store.feature_store import FeatureStore
from multisk.errors import ConfigError, DataFormatError
from multisk.evaluate.index import ANY_TARGET, target_embeddings
from multisk.evaluate.text_queries import embed_texts

CALIBRATION_QUANTILE = 0.05
MIN_CALIBRATION_CAPTIONS = 20
MAX_CALIBRATION_CAPTIONS = 2000
VALIDATION_NAMES = ("val", "valid", "validation")
EMBED_CHUNK = 256  # texts per forward pass of the text branch


def _captions_of(root: str | Path, split: str) -> List[Optional[str]]:
    return [item.get("caption") or None for item in FeatureStore(root, split).items]


def calibration_source(manifest: Mapping[str, Any], root: str | Path, split: str,
                       requested: Optional[str] = None, preferred: Optional[str] = None) -> Dict[str, Any]:
    """The real captions to calibrate an index of ``split`` with (module docstring); ``preferred``: the
    model's own validation split (``data.val_split``), used first when this store has it (not as a test split).

    Returns ``{"split", "captions": [str | None per item], "leave_own_item_out": bool, "describe": str}``,
    or ``{"reason": str}`` when the store offers none. Raises :class:`ConfigError` for a named split that
    is missing or marked ``role: test``.
    """
    splits = manifest.get("splits", {})
    if requested is not None:
        if requested not in splits:
            raise ConfigError(f"--calibration-split {requested!r}: the store has no such split "
                              f"(have: {', '.join(sorted(splits))})")
        if splits[requested].get("role") == "test":
            raise ConfigError(f"--calibration-split {requested!r}: the manifest marks it role 'test'; calibrate "
                              f"on held-out captions that are not a test split (e.g. the validation split)")
        candidates = [requested]
    else:
        candidates = [preferred] if preferred in splits and splits[preferred].get("role") != "test" else []
        candidates += [s for s in sorted(splits) if splits[s].get("role") == "validation" and s not in candidates]
        candidates += [s for s in VALIDATION_NAMES if s in splits and s not in candidates]
        if splits.get(split, {}).get("role") != "test":
            candidates.append(split)
    if not candidates:
        return {"reason": f"the store has no validation split (role 'validation' or named "
                          f"{'/'.join(VALIDATION_NAMES)}) and the indexed split {split!r} is a test split"}
    name = candidates[0]
    own = name == split
    return {"split": name, "captions": _captions_of(root, name), "leave_own_item_out": own,
            "describe": (f"the indexed split {name!r}'s own captions, each with its own item left out" if own
                         else f"held-out split {name!r}")}


def search_targets(joint_names: Sequence[str]) -> List[str]:
    """Every ``--target`` a search can name: each non-text embedding, late fusions (``a+b``) of the
    single-modality ones, and ``any`` when there are several (each item by the modalities it has)."""
    single = [n for n in joint_names if n != "text"]
    plain = [n for n in single if "_" not in n]
    fused = ["+".join(c) for k in range(2, len(plain) + 1) for c in itertools.combinations(plain, k)]
    return single + fused + ([ANY_TARGET] if len(plain) > 1 else [])


def best_scores(queries: torch.Tensor, gallery: torch.Tensor, valid: torch.Tensor,
                own_rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(C,) best cosine of each query (C, E) over the valid gallery rows (N, E), both L2-normalised;
    query ``c`` skips gallery row ``own_rows[c]``. -inf where a query has no row left."""
    scores = queries @ gallery.T
    scores[:, ~valid] = -float("inf")
    if own_rows is not None:
        scores[torch.arange(len(own_rows)), own_rows] = -float("inf")
    return scores.max(dim=1).values


def _sample(captions: Sequence[Optional[str]], limit: int, seed: int = 0) -> List[int]:
    rows = [i for i, c in enumerate(captions) if c and c.strip()]
    if len(rows) > limit:
        rows = sorted(np.random.default_rng(seed).choice(rows, size=limit, replace=False).tolist())
    return rows


def _embed_in_chunks(model, texts: Sequence[str], spec, *, device, word_vectors) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [embed_texts(model, texts[i: i + EMBED_CHUNK], spec, device=device, word_vectors=word_vectors)
             for i in range(0, len(texts), EMBED_CHUNK)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def calibrate(model, embeddings: Mapping[str, Any], source: Mapping[str, Any], spec: Mapping[str, Any], *,
              device, quantile: float = CALIBRATION_QUANTILE, word_vectors: Optional[str] = None,
              max_captions: int = MAX_CALIBRATION_CAPTIONS) -> Dict[str, Any]:
    """The calibration record of an index (module docstring).

    ``embeddings``: the index's ``{"joint": {name: (N, E)}, "nonempty": {m: (N,)}}``; ``source``: from
    :func:`calibration_source`. Returns ``{"quantile", "source", "split", "leave_own_item_out",
    "captions", "captions_without_tokens", "targets": {target: {"threshold", "median", "captions"}}}``,
    or ``{"reason"}`` when there is nothing to calibrate with.
    """
    if not 0.0 < quantile < 1.0:
        raise ConfigError(f"calibration quantile must be in (0, 1), got {quantile}")
    if "reason" in source:
        return {"reason": source["reason"]}
    rows = _sample(source["captions"], max_captions)
    if source["leave_own_item_out"]:
        count = next(iter(embeddings["joint"].values())).shape[0]
        if len(source["captions"]) != count:
            raise DataFormatError(f"split {source['split']!r}: {len(source['captions'])} captions for {count} "
                                  f"embedded items")
    texts = [source["captions"][i] for i in rows]
    if texts:
        queries, has_tokens = _embed_in_chunks(model, texts, spec, device=device, word_vectors=word_vectors)
    else:
        queries, has_tokens = torch.zeros(0, 1), torch.zeros(0, dtype=torch.bool)
    queries = queries[has_tokens]
    own = torch.tensor(rows)[has_tokens] if source["leave_own_item_out"] else None
    record: Dict[str, Any] = {
        "quantile": float(quantile), "source": source["describe"], "split": source["split"],
        "leave_own_item_out": bool(source["leave_own_item_out"]), "captions": int(has_tokens.sum()),
        "captions_without_tokens": int((~has_tokens).sum()), "targets": {},
    }
    if len(queries) < MIN_CALIBRATION_CAPTIONS:
        return {"reason": f"{source['describe']} has {len(queries)} usable captions (at least "
                          f"{MIN_CALIBRATION_CAPTIONS} are needed for a {100 * quantile:g}th percentile)"}
    index_like = {"joint": embeddings["joint"], "nonempty": embeddings["nonempty"], "path": "the index"}
    for target in search_targets(list(embeddings["joint"])):
        try:
            gallery, valid = target_embeddings(index_like, target)
        except DataFormatError:
            continue  # no item has this target: search refuses it anyway
        best = best_scores(queries, gallery, valid, own)
        best = best[torch.isfinite(best)]
        if len(best) < MIN_CALIBRATION_CAPTIONS:
            continue
        record["targets"][target] = {"threshold": float(torch.quantile(best.double(), quantile)),
                                     "median": float(torch.quantile(best.double(), 0.5)), "captions": int(len(best))}
    if not record["targets"]:
        return {"reason": f"no search target has {MIN_CALIBRATION_CAPTIONS} captions with a valid item to score "
                          f"({source['describe']})"}
    return record


def confidence_notice(meta: Mapping[str, Any], target: str, best: float) -> Optional[str]:
    """One line for stderr about how far to trust a search's results, or None when nothing needs saying.

    ``meta``: the index's metadata; ``best``: the search's top score.
    """
    if "calibration" not in meta:
        return ("note: this index records no score calibration (written before `multisk embed` recorded "
                "one), so low-confidence queries are not flagged; run `multisk embed` again to get it")
    record = meta["calibration"] or {}
    if "reason" in record or "targets" not in record:
        return f"note: this index has no score calibration: {record.get('reason', 'none recorded')}"
    if target not in record["targets"]:
        have = ", ".join(sorted(record["targets"])) or "none"
        return f"note: this index has no score calibration for --target {target!r} (calibrated: {have})"
    threshold = record["targets"][target]["threshold"]
    if best >= threshold:
        return None
    share = 100 * (1 - record["quantile"])
    return (f"low confidence: best score {best:.3f} is below {threshold:.3f}, the best score that {share:g}% of "
            f"{record['targets'][target]['captions']} real captions ({record['source']}) reach in this index; "
            f"the results are probably unrelated to the query")


__all__ = ["CALIBRATION_QUANTILE", "MAX_CALIBRATION_CAPTIONS", "MIN_CALIBRATION_CAPTIONS", "best_scores",
           "calibrate", "calibration_source", "confidence_notice", "search_targets"]
