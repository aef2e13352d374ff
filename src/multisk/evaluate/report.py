"""Metric tables: fixed-width text for the terminal, Markdown for documents, JSON for machines.

Shapes of the data handled here:

* a *metrics dict*: ``{"R1": 12.3, "R5": ..., "MedR": ..., "n_queries": 968}`` (one direction);
* a *direction table*: ``{"t2v": metrics dict, "v2t": metrics dict, ...}`` (one split of one run),
  as returned by :func:`multisk.metrics.evaluate_directions`;
* *runs*: ``{run name: {split name: direction table}}`` for :func:`comparison_table`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from multisk.errors import DataFormatError

DEFAULT_COLUMNS = ("R1", "R5", "R10", "R50", "MedR", "MeanR", "n_queries")
COMPARISON_COLUMNS = ("R1", "R5", "R10", "MedR")
MISSING = "-"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _as_direction_table(metrics: Mapping[str, Any]) -> Dict[str, Mapping[str, Any]]:
    """Accept a direction table or a single flat metrics dict (shown as one unnamed row)."""
    if not metrics:
        raise ValueError("metrics: empty dict, nothing to format")
    if all(_is_number(v) for v in metrics.values()):
        return {"": metrics}
    for name, row in metrics.items():
        if not isinstance(row, Mapping):
            raise ValueError(
                f"metrics[{name!r}]: expected a metrics dict per direction, got {type(row).__name__}"
            )
    return dict(metrics)


def format_value(value: Any) -> str:
    """Integers as they are, other numbers with two decimals (MedR 41.5 -> '41.50'), None as '-'."""
    if value is None:
        return MISSING
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if _is_number(value):
        return "nan" if math.isnan(float(value)) else f"{float(value):.2f}"
    return str(value)


def _columns(table: Mapping[str, Mapping[str, Any]], columns: Optional[Sequence[str]]) -> List[str]:
    if columns is not None:
        return list(columns)
    present = [c for c in DEFAULT_COLUMNS if any(c in row for row in table.values())]
    extra = sorted({k for row in table.values() for k in row} - set(present))
    return present + extra


def _rows(table: Mapping[str, Mapping[str, Any]], columns: Sequence[str]) -> List[List[str]]:
    return [[name] + [format_value(row.get(c)) for c in columns] for name, row in table.items()]


def format_text_table(
    metrics: Mapping[str, Any], columns: Optional[Sequence[str]] = None, title: Optional[str] = None
) -> str:
    """Fixed-width table, one row per direction (first column) and one column per metric."""
    table = _as_direction_table(metrics)
    cols = _columns(table, columns)
    header = ["direction"] + cols
    rows = _rows(table, cols)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    out = [title] if title else []
    out += [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    return "\n".join(out)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int) -> str:
    align = [":--" if i < numeric_from else "--:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def format_markdown_table(metrics: Mapping[str, Any], columns: Optional[Sequence[str]] = None) -> str:
    """Markdown table, one row per direction and one column per metric."""
    table = _as_direction_table(metrics)
    cols = _columns(table, columns)
    return _markdown(["direction"] + cols, _rows(table, cols), numeric_from=1)


def _to_jsonable(value: Any, where: str) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _to_jsonable(value.tolist(), where)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{where}: cannot write a {type(value).__name__} to JSON")


def write_metrics_json(metrics: Mapping[str, Any], path: Union[str, os.PathLike]) -> Path:
    """Write any nested metrics dict (numpy scalars allowed) as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_to_jsonable(metrics, "metrics"), indent=2, sort_keys=False, allow_nan=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_metrics_json(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read a file written by :func:`write_metrics_json`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metrics file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected a JSON object at top level, got {type(data).__name__}")
    return data


def _split_entries(results: Mapping[str, Any]):
    """Yield (split, direction table, entry) from ``{split: {"retrieval": table, ...}}`` results
    (the output of :func:`multisk.evaluate.pipeline.evaluate_model`); a bare direction table per split
    is accepted too."""
    if not results:
        raise ValueError("results: empty, nothing to format")
    for split, entry in results.items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"results[{split!r}]: expected a dict, got {type(entry).__name__}")
        table = entry["retrieval"] if "retrieval" in entry else entry
        yield split, table, entry


def _split_heading(split: str, entry: Mapping[str, Any]) -> str:
    details = []
    if "n_items" in entry:
        details.append(f"{entry['n_items']} items")
    if entry.get("complete_size"):
        details.append(f"R@k over the complete size {entry['complete_size']}")
    return f"{split} ({', '.join(details)})" if details else str(split)


def format_inputs_line(entry: Mapping[str, Any]) -> str:
    """One line saying what a split's evaluation fed the model and how it scored empty modalities."""
    inputs = entry.get("inputs")
    if not isinstance(inputs, Mapping):
        return ""
    crop = inputs.get("crop") or {}
    first = "first" if crop.get("video") == "start" else (f"{crop.get('video')} crop" if crop.get("video") else "")
    window = (f"inputs: video {inputs.get('video_tokens')} tokens, audio {inputs.get('audio_frames')} frames, "
              f"text {inputs.get('text_tokens')} tokens")
    if first or inputs.get("window_from"):
        window += f" ({', '.join(x for x in (first, inputs.get('window_from')) if x)})"
    parts = [window, f"empty modalities: {inputs.get('empty_modalities')}", f"precision {inputs.get('precision')}"]
    stored = inputs.get("storage_dtype")
    if isinstance(stored, Mapping) and stored:
        parts.append("stored " + "/".join(sorted(set(map(str, stored.values())))))
    if isinstance(inputs.get("items_with"), Mapping):
        parts.append("items with " + ", ".join(f"{m} {n}" for m, n in inputs["items_with"].items()))
    return "; ".join(parts)


def _classification_line(name: str, classification: Mapping[str, Any]) -> str:
    parts = [f"{key} {format_value(classification[key])}" for key in ("top1", "top5", "mean_per_class")
             if key in classification]
    classes = classification.get("n_classes", classification.get("classes"))
    details = ([f"{classes} classes"] if classes is not None else []) + (
        [f"{classification['n_items']} items"] if "n_items" in classification else [])
    suffix = f" ({', '.join(details)})" if details else ""
    label = f"zero-shot classification ({name})" if name else "zero-shot classification"
    return f"{label}: " + ", ".join(parts) + suffix


def _classification_lines(entry: Mapping[str, Any]) -> List[str]:
    """One line per classified input; a flat metrics dict (older results) is one unnamed line."""
    classification = entry.get("classification")
    if not isinstance(classification, Mapping) or not classification:
        return []
    if all(isinstance(v, Mapping) for v in classification.values()):
        return [_classification_line(name, metrics) for name, metrics in classification.items()]
    return [_classification_line("", classification)]


def _structure_lines(entry: Mapping[str, Any]) -> List[str]:
    """``structure preservation (10-NN Jaccard ...)`` line from an entry's ``structure`` block."""
    structure = entry.get("structure")
    if not isinstance(structure, Mapping) or not structure:
        return []
    parts = [f"{m} {float(v['knn_jaccard']):.3f} ({v.get('n_items', '?')} items)"
             for m, v in structure.items() if isinstance(v, Mapping) and "knn_jaccard" in v]
    k = next((v.get("k") for v in structure.values() if isinstance(v, Mapping)), 10)
    return [f"structure preservation (mean {k}-NN Jaccard, frozen input features vs joint space; 1 = kept): "
            + ", ".join(parts)] if parts else []


def _skipped_lines(entry: Mapping[str, Any]) -> List[str]:
    """``skipped ...: a, b (reason)`` lines, directions sharing a reason on one line."""
    skipped = entry.get("skipped")
    if not isinstance(skipped, Mapping):
        return []
    lines = []
    for kind, label in (("directions", "skipped directions"), ("classification", "skipped classification")):
        by_reason: Dict[str, List[str]] = {}
        for name, reason in (skipped.get(kind) or {}).items():
            by_reason.setdefault(str(reason), []).append(str(name))
        lines += [f"{label}: {', '.join(names)} ({reason})" for reason, names in by_reason.items()]
    return lines


def format_results_table(results: Mapping[str, Any], columns: Optional[Sequence[str]] = None) -> str:
    """Fixed-width report of evaluation results: per split a heading, the inputs line, the direction
    table, the zero-shot classification lines and what was skipped, with the reason."""
    blocks = []
    for split, table, entry in _split_entries(results):
        lines = [_split_heading(split, entry)]
        if format_inputs_line(entry):
            lines.append(format_inputs_line(entry))
        lines.append(format_text_table(table, columns) if table else "(no retrieval direction)")
        lines += _classification_lines(entry)
        lines += _structure_lines(entry)
        lines += _skipped_lines(entry)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def results_to_markdown(results: Mapping[str, Any], columns: Optional[Sequence[str]] = None) -> str:
    """Markdown report of evaluation results: a ``##`` section per split (see
    :func:`format_results_table`)."""
    blocks = []
    for split, table, entry in _split_entries(results):
        lines = [f"## {_split_heading(split, entry)}", ""]
        if format_inputs_line(entry):
            lines += [format_inputs_line(entry), ""]
        lines.append(format_markdown_table(table, columns) if table else "(no retrieval direction)")
        extra = _classification_lines(entry) + _structure_lines(entry) + _skipped_lines(entry)
        if extra:
            lines += [""] + [f"- {line}" for line in extra]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def comparison_table(
    runs: Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]],
    directions: Sequence[str] = ("t2v+a", "t2v"),
    columns: Sequence[str] = COMPARISON_COLUMNS,
    style: str = "markdown",
) -> str:
    """Compare runs: one row per (run, split), columns ``direction metric`` for chosen directions.

    Args:
        runs: run name -> split name -> direction table (``{"t2v": {"R1": ...}, ...}``).
        directions: direction labels to show; a run lacking one shows ``-``.
        columns: metrics shown for each direction.
        style: ``"markdown"`` or ``"text"`` (fixed width).
    """
    if style not in ("markdown", "text"):
        raise ValueError(f"style: expected 'markdown' or 'text', got {style!r}")
    if not runs:
        raise ValueError("runs: empty, nothing to compare")
    if not directions or not columns:
        raise ValueError("directions and columns must be non-empty")
    header = ["run", "split"] + [f"{d} {c}" for d in directions for c in columns]
    rows: List[List[str]] = []
    for run_name, splits in runs.items():
        if not isinstance(splits, Mapping):
            raise ValueError(f"runs[{run_name!r}]: expected split -> direction table, got {type(splits).__name__}")
        for split_name, table in splits.items():
            if not isinstance(table, Mapping):
                raise ValueError(
                    f"runs[{run_name!r}][{split_name!r}]: expected a direction table, got {type(table).__name__}"
                )
            row = [str(run_name), str(split_name)]
            for direction in directions:
                direction_metrics = table.get(direction) or {}
                row += [format_value(direction_metrics.get(c)) for c in columns]
            rows.append(row)
    if style == "markdown":
        return _markdown(header, rows, numeric_from=2)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


__all__ = [
    "COMPARISON_COLUMNS", "DEFAULT_COLUMNS", "comparison_table", "format_inputs_line", "format_markdown_table",
    "format_results_table", "format_text_table", "format_value", "read_metrics_json",
    "results_to_markdown", "write_metrics_json",
]
