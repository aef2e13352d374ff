"""How an evaluation split is fed to a model: every item padded to the split's fixed window, the model
run on fixed-size batches, and the caption groups that make identical captions all correct answers.

Shared by the evaluation (:mod:`multisk.evaluate.pipeline`) and the choices made on a validation split
(:mod:`multisk.prior.fit`), so both embed an item the same way whatever the loader's batch size.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from multisk.data.store.dataset import collate_batch
from multisk.modalities import ModalityTable


def evaluation_collate(dataset, table: ModalityTable):
    """The collate function evaluation feeds ``dataset`` with: every modality zero-padded to the
    dataset's fixed window ``dataset.max_tokens`` (the recorded evaluation window, e.g. 48 video steps /
    3072 audio frames for MSR-VTT, else the model's training lengths), float32 values.

    The padded length must not depend on which items share a batch: DAVEnet's convolutions and its
    eval-mode BatchNorm see the zero padding, so an audio clip padded to the longest clip of its batch
    gets embeddings that change with ``--batch-size`` (the reference always pads to the window).
    A dataset without ``max_tokens`` pads each batch to its longest item (then results may depend on
    the batch size; every dataset multisk builds has ``max_tokens``).
    """
    max_tokens = getattr(dataset, "max_tokens", None)
    pad_to = {m: int(max_tokens[m]) for m in table if m in max_tokens} if max_tokens else None
    return partial(collate_batch, pad_to=pad_to, table=table)


#: Items per model call in evaluation. Fixed, whatever ``--batch-size`` says: a CPU/GPU matrix kernel's
#: result for one row depends on the batch's size and on the row's position in it (tail tiles take other
#: code paths; measured: 3.5e-7 on a video embedding), and such last-bit differences break the exact
#: ties of identical captions that the rank of docs/evaluation.md averages, so R@k moved with the batch size.
EVAL_MODEL_BATCH = 16


def fixed_size_batches(batches: Iterable[Dict[str, Any]], size: int) -> Iterator[Tuple[Dict[str, Any], int]]:
    """Re-cut a stream of collated batches (all with the same fixed padded shapes) into batches of
    exactly ``size`` items, in order; the last is filled with copies of its last item.

    Yields ``(batch, n_real)``: the first ``n_real`` rows are the next items of the stream. Item i thus
    always sits at row ``i % size`` of a ``size``-row batch, whatever the loader's batch size.
    """
    pending: List[Dict[str, Any]] = []
    count = 0

    def take(n: int) -> Dict[str, Any]:
        nonlocal pending, count
        # one pending batch (the common case: a loader batch of >= size items) is sliced, not copied
        merged = pending[0] if len(pending) == 1 else {
            k: (torch.cat([b[k] for b in pending]) if torch.is_tensor(pending[0][k])
                else [x for b in pending for x in b[k]]) for k in pending[0]}
        head = {k: v[:n] for k, v in merged.items()}
        rest = {k: v[n:] for k, v in merged.items()}
        count -= n
        pending = [rest] if count else []
        return head

    for batch in batches:
        pending.append(batch)
        count += len(batch["id"])
        while count >= size:
            yield take(size), size
    if count:
        n_real = count
        tail = take(count)
        fill = size - n_real
        padded = {k: (torch.cat([v, v[-1:].expand(fill, *v.shape[1:])]) if torch.is_tensor(v) else v + [v[-1]] * fill)
                  for k, v in tail.items()}
        yield padded, n_real


def caption_groups(dataset) -> Optional[np.ndarray]:
    """Items sharing a ``group`` field (identical captions) are all correct answers; None if absent."""
    items = dataset.store.items
    if not items or all("group" not in item for item in items):
        return None
    keys: Dict[Any, int] = {}
    return np.asarray([keys.setdefault(item.get("group", f"__item{i}"), len(keys)) for i, item in enumerate(items)])


__all__ = ["EVAL_MODEL_BATCH", "caption_groups", "evaluation_collate", "fixed_size_batches"]
