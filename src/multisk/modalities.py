"""The modalities as data: one row per input the model can read.

Everything that used to list ``("text", "video", "audio")`` iterates over a modality table instead:
config validation (``model.modalities``), the feature widths and token budgets a dataset is built with
(:mod:`multisk.data.store.store_for_config`), the crop of the feature-store dataset, collation, the model's
token projections, fused pairs and batch checks, the loss checks, and the letters of the retrieval
directions (``t2v``).

The table of a run is :func:`modality_table` of its ``model`` section: the three built-in rows of
:data:`MODALITY_SPECS`, then one row per entry of ``model.modality_specs`` (a fourth input declared in
YAML only; see docs/architecture.md, "Modalities"). It is a value carried by the config, never a
registry: two configs in one process do not see each other's rows.

Columns of the built-in rows:

=========  ======  ==================  ====================  ======  ===========
name       letter  feature dim         token budget          crop    encoder
=========  ======  ==================  ====================  ======  ===========
text       t       model.text_dim      data.max_text_tokens  start   tokens
video      v       model.video_dim     data.max_video_tokens center  tokens
audio      a       model.audio_mels    data.max_audio_frames center  spectrogram
=========  ======  ==================  ====================  ======  ===========

A configured row carries its width and budget itself::

    model:
      modalities: [text, video, flow]
      modality_specs:
        flow: {letter: f, dim: 24, max_tokens: 6, crop: center, encoder: tokens}

``encoder``: ``"tokens"`` — the batch holds (B, L, dim) features that the token projection reads
directly; ``"spectrogram"`` — the batch holds (B, dim, F) log-mel frames (dim = mel bins) that the
audio CNN (DAVEnet) turns into tokens first (the built-in ``audio`` only: DAVEnet reads
``model.audio_mels``). ``crop``: which part of a sequence longer than its budget a training item keeps
(``start``: the first tokens, as the reference keeps the first 20 words; ``center``: the middle
window). Evaluation may override the crop (:mod:`multisk.evaluate.inputs`).

This module is a leaf (it imports only :mod:`multisk.errors`), so ``multisk.config`` can build on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from multisk.errors import ConfigError

ENCODER_KINDS = ("tokens", "spectrogram")
CROP_RULES = ("start", "center")
# keys of one ``model.modality_specs`` entry (the schema is multisk.config.ModalityRowConfig)
ROW_KEYS = ("letter", "dim", "max_tokens", "crop", "encoder")
# a configured name is a batch key and a part of "a_b" pair names and "a-b" pair weights: no "_" or "-"
_NAME = re.compile(r"[a-z][a-z0-9]*\Z")

ModalityTable = Mapping[str, "ModalitySpec"]


@dataclass(frozen=True)
class ModalitySpec:
    """One input modality (see the module docstring for the columns).

    A built-in row names the config fields holding its width and budget (``dim_key``, ``budget_key``);
    a configured row carries the values (``dim``, ``max_tokens``). Exactly one of each pair is set.
    """

    name: str  # batch key, joint-embedding name and model.modalities entry
    letter: str  # its letter in retrieval direction names (t2v, v+a2t)
    dim_key: Optional[str]  # ModelConfig field holding the feature width (spectrogram: mel bins)
    budget_key: Optional[str]  # DataConfig field holding the most tokens (spectrogram: frames) an item feeds
    crop: str  # training crop of a longer sequence: "start" | "center"
    encoder: str  # "tokens" | "spectrogram"
    dim: Optional[int] = None  # the feature width of a configured row
    max_tokens: Optional[int] = None  # the token budget of a configured row

    def __post_init__(self) -> None:
        if self.encoder not in ENCODER_KINDS:
            raise ConfigError(f"modality {self.name!r}: encoder must be one of {ENCODER_KINDS}, got {self.encoder!r}")
        if self.crop not in CROP_RULES:
            raise ConfigError(f"modality {self.name!r}: crop must be one of {CROP_RULES}, got {self.crop!r}")
        if (self.dim_key is None) == (self.dim is None) or (self.budget_key is None) == (self.max_tokens is None):
            raise ConfigError(f"modality {self.name!r}: give either dim_key or dim, and either budget_key or max_tokens")


MODALITY_SPECS: Dict[str, ModalitySpec] = {
    spec.name: spec
    for spec in (
        ModalitySpec("text", "t", "text_dim", "max_text_tokens", crop="start", encoder="tokens"),
        ModalitySpec("video", "v", "video_dim", "max_video_tokens", crop="center", encoder="tokens"),
        ModalitySpec("audio", "a", "audio_mels", "max_audio_frames", crop="center", encoder="spectrogram"),
    )
}
"""The built-in rows: the default table, and the first rows of every configured one. Read only."""

# the built-in names in table order (the order of batch keys, joint names and report rows)
MODALITIES: Tuple[str, ...] = tuple(MODALITY_SPECS)


def _row_value(row: Any, key: str) -> Any:
    return row.get(key) if isinstance(row, Mapping) else getattr(row, key, None)


def _configured_row(name: str, row: Any, letters: Dict[str, str]) -> ModalitySpec:
    """A :class:`ModalitySpec` from one ``model.modality_specs`` entry; ConfigError naming the field."""
    where = f"model.modality_specs.{name}"
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"model.modality_specs: name {name!r} must be lowercase letters and digits, starting "
                          "with a letter (it is a batch key and part of pair names like 'text_video')")
    if name in MODALITY_SPECS:
        raise ConfigError(f"{where}: {name!r} is a built-in modality (its width and budget are model.* / data.* "
                          "fields); give the new modality another name")
    if isinstance(row, Mapping):
        unknown = sorted(set(row) - set(ROW_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(ROW_KEYS)})")
    letter, dim, budget = (_row_value(row, k) for k in ("letter", "dim", "max_tokens"))
    crop, encoder = _row_value(row, "crop") or "center", _row_value(row, "encoder") or "tokens"
    if not isinstance(letter, str) or not re.fullmatch(r"[a-z]", letter):
        raise ConfigError(f"{where}.letter: expected one lowercase letter (it names directions like t2{name[0]}), "
                          f"got {letter!r}")
    if letter in letters:
        raise ConfigError(f"{where}.letter: {letter!r} is already the letter of {letters[letter]!r}")
    for key, value in (("dim", dim), ("max_tokens", budget)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{where}.{key}: must be a positive integer, got {value!r}")
    if crop not in CROP_RULES:
        raise ConfigError(f"{where}.crop: expected one of {', '.join(CROP_RULES)}, got {crop!r}")
    if encoder != "tokens":
        raise ConfigError(f"{where}.encoder: a configured modality must be 'tokens' ((B, L, dim) features); "
                          f"'spectrogram' is the built-in audio's DAVEnet input; got {encoder!r}")
    return ModalitySpec(name, letter, None, None, crop=crop, encoder=encoder, dim=dim, max_tokens=budget)


def modality_table(model_cfg: Any = None) -> Dict[str, ModalitySpec]:
    """The modality table of a ``model`` config section: the built-in rows, then one row per entry of
    ``model.modality_specs`` in the order given. ``None`` (or a section without the field): the
    built-in rows. A fresh dict: callers may keep it, nobody else sees it.

    Raises :class:`ConfigError` naming the field for a malformed row (unknown key, a built-in or
    malformed name, a letter taken or not one lowercase letter, a non-positive dim / max_tokens, a
    crop or encoder outside :data:`CROP_RULES` / ``"tokens"``).
    """
    table = dict(MODALITY_SPECS)
    rows = getattr(model_cfg, "modality_specs", None) or {}
    letters = {spec.letter: spec.name for spec in table.values()}
    for name, row in rows.items():
        spec = _configured_row(name, row, letters)
        table[name] = spec
        letters[spec.letter] = name
    return table


def modality_spec(name: str, field: str = "model.modalities", table: Optional[ModalityTable] = None) -> ModalitySpec:
    """The row of ``name`` in ``table`` (default: the built-in rows); :class:`ConfigError` naming
    ``field`` for a modality without one."""
    table = MODALITY_SPECS if table is None else table
    spec = table.get(name)
    if spec is None:
        raise ConfigError(f"{field}: unknown modality {name!r} (known: {', '.join(table)}; a new modality is "
                          "an entry of model.modality_specs)")
    return spec


def in_table_order(names, table: Optional[ModalityTable] = None) -> Tuple[str, ...]:
    """``names`` sorted by the table (unknown names raise :class:`ConfigError`)."""
    table = MODALITY_SPECS if table is None else table
    for name in names:
        modality_spec(name, table=table)
    order = list(table)
    return tuple(sorted(set(names), key=order.index))


def feature_dim(model_cfg: Any, name: str, table: Optional[ModalityTable] = None) -> int:
    """Feature width of ``name`` for a ``ModelConfig``: ``model.<dim_key>`` of a built-in row, the
    ``dim`` of a configured one. ``table`` defaults to :func:`modality_table` of ``model_cfg``."""
    spec = modality_spec(name, table=modality_table(model_cfg) if table is None else table)
    if spec.dim is not None:
        return int(spec.dim)
    if not hasattr(model_cfg, spec.dim_key):
        raise ConfigError(f"model.{spec.dim_key}: missing; modality {name!r} reads its feature width there")
    return int(getattr(model_cfg, spec.dim_key))


def input_space_dims(model_cfg: Any, table: Optional[ModalityTable] = None) -> Dict[str, int]:
    """Width of each modality's input-space embedding (what the input-space anchors Z_m score):
    ``model.embed_dim`` for ``model.input_space: projected``; for ``frozen`` the pooled frozen feature,
    ``2 · n_mels`` for a spectrogram (mean ; std over time), else the feature width."""
    table = modality_table(model_cfg) if table is None else table
    if getattr(model_cfg, "input_space", "projected") != "frozen":
        return {m: int(model_cfg.embed_dim) for m in model_cfg.modalities}
    return {m: (2 if table[m].encoder == "spectrogram" else 1) * feature_dim(model_cfg, m, table)
            for m in model_cfg.modalities}


def token_budget(data_cfg: Any, name: str, table: Optional[ModalityTable] = None) -> int:
    """Token budget of ``name`` for a ``DataConfig``: ``data.<budget_key>`` of a built-in row, the
    ``max_tokens`` of a configured one (``table``: the run's table, default the built-in rows)."""
    spec = modality_spec(name, table=table)
    if spec.max_tokens is not None:
        return int(spec.max_tokens)
    if not hasattr(data_cfg, spec.budget_key):
        raise ConfigError(f"data.{spec.budget_key}: missing; modality {name!r} reads its token budget there")
    return int(getattr(data_cfg, spec.budget_key))


__all__ = [
    "CROP_RULES", "ENCODER_KINDS", "MODALITIES", "MODALITY_SPECS", "ModalitySpec", "ModalityTable", "ROW_KEYS",
    "feature_dim", "in_table_order", "input_space_dims", "modality_spec", "modality_table", "token_budget",
]
