"""Parameter accounting: a per-module table of parameter counts.

Counts follow ``model.parameters()``, so a tensor shared by several modules is counted once (the
module that registers it first in ``named_parameters`` order owns it).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict

from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (shared tensors once); works on the meta device."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _group_counts(model: nn.Module) -> "OrderedDict[str, Dict[str, int]]":
    """top-level name → {second-level name → count}; a parameter registered directly on the model
    sits under the second-level name "" (shown as "(own)")."""
    groups: "OrderedDict[str, Dict[str, int]]" = OrderedDict()
    for name, param in model.named_parameters():  # deduplicated by tensor identity
        parts = name.split(".")
        top = parts[0]
        second = parts[1] if len(parts) > 1 else ""
        sub = groups.setdefault(top, OrderedDict())
        sub[second] = sub.get(second, 0) + param.numel()
    return groups


def parameter_table(model: nn.Module) -> str:
    """A text table of parameter counts per top-level and second-level module, then a total.

    Example (abridged)::

        module                      parameters
        audio_encoder               123,456,789
          stem_conv                       5,120
          ...
        parameters: 892745728

    The last line is exactly ``parameters: N`` (N without separators) so scripts can parse it.
    """
    groups = _group_counts(model)
    rows = []
    for top, subs in groups.items():
        rows.append((top, sum(subs.values())))
        if len(subs) > 1 or "" not in subs:
            for second, count in subs.items():
                rows.append(("  " + (second or "(own)"), count))
    total = count_parameters(model)
    trainable = count_parameters(model, trainable_only=True)
    name_width = max([len("module")] + [len(name) for name, _ in rows])
    lines = [f"{'module':<{name_width}}  {'parameters':>15}"]
    lines += [f"{name:<{name_width}}  {count:>15,}" for name, count in rows]
    lines.append(f"{'total':<{name_width}}  {total:>15,}")
    if trainable != total:
        lines.append(f"{'trainable':<{name_width}}  {trainable:>15,}")
    lines.append(f"parameters: {total}")
    return "\n".join(lines)


__all__ = ["count_parameters", "parameter_table"]
