"""Typed configuration: dataclasses validated by OmegaConf.

A configuration file is YAML whose keys mirror :class:`Config`. ``key=value`` overrides use dotted
paths (``model.num_anchors=32``). Unknown keys and values of the wrong type are errors that name the
offending key — never a silent default.

    cfg = load_config("configs/demo.yaml", ["train.steps=100", "loss.sspc.enabled=false"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from multisk.errors import ConfigError  # defined in the leaf module, re-exported here
from multisk.modalities import MODALITIES, modality_spec, modality_table  # the modality table (name, dims, budget, crop, encoder)


@dataclass
class ModalityRowConfig:
    """One further modality declared in configuration (``model.modality_specs.<name>``), a row of the
    modality table (multisk.modalities) beside the built-in text / video / audio."""

    letter: str = MISSING  # its letter in retrieval directions (t2f); one lowercase letter, not t / v / a
    dim: int = MISSING  # feature width of its (L, dim) token features
    max_tokens: int = MISSING  # the most tokens one item feeds (training crop and padded length)
    crop: str = "center"  # "start" | "center": which part of a longer sequence a training item keeps
    encoder: str = "tokens"  # configured rows are token features read by a token projection


@dataclass
class PriorConfig:
    """The closed-form text-space prior (multisk.prior; not in the paper: docs/prior.md, docs/results.md)."""

    enabled: bool = False
    # C > 0: a concept head for pictures (Lite0's ImageNet classifier read through the caption encoder's
    # embeddings of its class names; needs Lite0 pictures and MiniLM captions): 1000, or 0 for none
    concept_classes: int = 0
    # w of the retrieval embeddings [sqrt(1-w) learned ; sqrt(w) prior]; null = chosen on data.val_split
    # after training (the grid 0, 0.1, ..., 1)
    weight: Optional[float] = None
    # w_train in [0, 1): > 0 trains the learned part *with* the prior, the contrastive loss then scores the
    # embeddings [sqrt(1-w_train) learned ; sqrt(w_train) prior] (the learned part learns what the prior gets
    # wrong; SSPC still reads the learned embeddings). 0 = the prior is added only after training
    train_weight: float = 0.0


@dataclass
class ModelConfig:
    """The Everything-at-Once family (docs/architecture.md) with anchor heads (docs/losses.md)."""

    # "per_modality": one fusion transformer per modality (the paper's released model);
    # "everything_at_once": one shared transformer that also encodes the pairs tv, ta, va.
    variant: str = "per_modality"
    modalities: List[str] = field(default_factory=lambda: list(MODALITIES))
    # further modalities beyond text / video / audio, name -> row (each may then appear in modalities,
    # data.modality_map and the loss weights); see multisk.modalities and docs/architecture.md
    modality_specs: Dict[str, ModalityRowConfig] = field(default_factory=dict)
    text_dim: int = 300  # word-vector size
    video_dim: int = 4096  # 2D (2048) + 3D (2048) features per time step
    audio_mels: int = 40
    audio_encoder: str = "davenet_v2"  # "davenet_v2" | "davenet_v1"
    # divide every DAVEnet channel width by this (1 = the paper's encoder); small CPU models and tests
    # use e.g. 32, which keeps the depth, kernel and total stride (64 frames per token for v2)
    audio_width_divisor: int = 1
    embed_dim: int = 4096  # token width inside the fusion transformer (D)
    depth: int = 1
    num_heads: int = 64
    mlp_ratio: float = 1.0
    qkv_bias: bool = True
    use_cls_token: bool = False
    use_positional_embedding: bool = False
    max_positions: int = 256  # per modality, only used with positional embeddings
    projection_dim: int = 6144  # joint embedding size (E)
    num_anchors: int = 64  # K, for each of the six anchor sets
    dropout: float = 0.0
    compile: bool = False  # wrap the forward in torch.compile
    # memory options (docs/benchmarks.md, "Memory"): under autocast, round LayerNorm outputs to the
    # autocast dtype (CUDA autocast returns float32, so the residual streams stay float32); recompute
    # DAVEnet's stages in backward instead of keeping their activations
    norm_outputs_in_autocast_dtype: bool = False
    recompute_audio_encoder: bool = False
    # run DAVEnet only on the samples that have audio frames (their outputs are the only ones kept; also
    # keeps empty samples' zero padding out of BatchNorm's training statistics). Not the reference; off by
    # default; the picture-heavy clipart demo turns it on (5 of 6 items there have no sound)
    audio_skip_empty: bool = False
    # add Linear(LayerNorm(mean input features)) to each text / video joint embedding: a linear path
    # from the frozen pre-trained features around the transformer (not in the paper; docs/results.md)
    input_residual: bool = False
    # the space of the input-space anchors Z_m (docs/losses.md): "projected" (the paper: the masked mean of the
    # learned token projections, width embed_dim) or "frozen" (the frozen input features as the
    # text-space prior pools and standardises them: MiniLM / GloVe mean, Lite0 mean token, log-mel
    # mean;std; needs model.prior.enabled) — SSPC then preserves the pre-trained encoders' structure
    input_space: str = "projected"
    # a frozen closed-form embedding of every modality in the text encoder's space, mixed into the
    # retrieval embeddings (multisk.prior)
    prior: PriorConfig = field(default_factory=PriorConfig)


@dataclass
class ContrastiveConfig:
    """Combinatorial contrastive loss over modality pairs (docs/losses.md)."""

    kind: str = "norm_softmax"  # "norm_softmax" | "mms"
    temperature: float = 0.05
    margin: float = 0.001  # MMS only
    # pair name "a-b" (joint embedding names, fused ones like "video_audio" allowed) -> weight;
    # a config file's pairs merge with these defaults, so drop a default pair by giving it weight 0
    pair_weights: Dict[str, float] = field(
        default_factory=lambda: {"text-video": 1.0, "text-audio": 0.1, "video-audio": 0.1}
    )


@dataclass
class SSPCConfig:
    """Semantic-structure-preserving consistency loss (docs/losses.md, docs/sinkhorn.md)."""

    enabled: bool = True
    weight: float = 1.0  # beta
    solver: str = "multi"  # "multi" (Multi-SK) | "classic" (SwAV Sinkhorn, one assignment)
    assign_fraction: float = 0.5  # r / K
    epsilon: float = 0.07
    n_iters: int = 20
    low_scale: float = 0.25
    queue_size: int = 5500
    cost: str = "reference"  # "reference" (BCE on exp(s/tau)) | "soft_ce"
    temperature: float = 0.1
    # "queue_full": zero until the queue has filled once (the reference); "none": on from step one
    warmup: str = "queue_full"
    # term weight = min(weight[m], weight[n]) for anchor modality m and joint modality n
    modality_weights: Dict[str, float] = field(
        default_factory=lambda: {"text": 1.0, "video": 1.0, "audio": 0.1}
    )


@dataclass
class LossConfig:
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    sspc: SSPCConfig = field(default_factory=SSPCConfig)


@dataclass
class DataConfig:
    """Where the training and evaluation data come from."""

    # "store": a multisk feature store (see docs/feature-format.md); "howto100m": the field's layout
    train_format: str = "store"
    root: str = "data/clipart"  # feature-store root
    train_split: str = "train"
    eval_splits: List[str] = field(default_factory=lambda: ["test_in_domain", "test_out_of_domain"])
    # held-out split of the training source for choices made on data (model.prior's λ, α and w); never
    # a test split. null = none (the prior then chooses λ and α on a seeded 10 % of train)
    val_split: Optional[str] = None
    # model modality -> feature-store modality name
    modality_map: Dict[str, str] = field(
        default_factory=lambda: {"text": "text", "video": "video", "audio": "audio"}
    )
    max_text_tokens: int = 20
    max_video_tokens: int = 12
    max_audio_frames: int = 768
    # shuffle the captions of this seeded fraction (seed = train.seed) of the training split's pairs
    # (store training only; evaluation splits are never touched): the weak-alignment experiment
    corrupt_fraction: float = 0.0
    # DataLoader processes per rank, and batches each keeps requested ahead. Shared memory per node is
    # about ranks x (num_workers x prefetch_factor + 1) x per-rank batch bytes (docs/data.md has the rule;
    # multisk.train.datasets_for_config.estimate_loader_memory computes it for a config)
    num_workers: int = 0
    prefetch_factor: int = 2
    # dtype of the collated training video features between worker and device: "float16" halves the
    # largest tensor of a batch; exact for float16 stores (the default storage dtype), <= 2.4e-4 relative
    # error per L2-normalised 2048-d half of HowTo100M's float32 features (docs/data.md); the trainer
    # widens it to float32 on the device
    video_transfer_dtype: str = "float16"
    # HowTo100M layout (docs/data.md); only read when train_format == "howto100m"
    howto_csv: str = ""
    howto_features_path: str = ""
    howto_audio_path: str = ""
    howto_caption_path: str = ""
    word_vectors: str = ""
    clips_per_video: int = 10
    clip_seconds: float = 8.0
    # EAO's audio-text disentangling (the reference's clip sampling, docs/data.md): the audio window starts clip_seconds / 2 after the text
    # span's start and lasts clip_seconds (it may run past the span); false = audio of the text span
    flag_text_audio_misaligned: bool = False


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    batch_size: int = 64
    epochs: int = 1
    steps: int = 0  # > 0 caps the number of optimizer steps
    optimizer: str = "adam"  # "adam" | "adamw"
    lr: float = 5e-5
    weight_decay: float = 0.0
    lr_gamma: float = 0.9  # ExponentialLR per epoch
    grad_clip: float = 0.0  # 0 disables
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16"
    ema_decay: float = 0.0  # 0 disables the EMA copy
    log_every: int = 10
    eval_every: int = 0  # steps; 0 evaluates at the end only
    checkpoint_every: int = 0  # steps; 0 saves at epoch ends only
    on_nonfinite: str = "stop"  # "stop" | "skip"
    # start from the model weights of this checkpoint (fine-tuning); optimizer, queues and data
    # position start fresh. Ignored when resuming (--resume restores everything).
    init_checkpoint: str = ""
    # DAVEnet's BatchNorm normalises with each rank's statistics (as the reference's DataParallel
    # replicas did); true makes them global-batch statistics under DDP (CUDA only: SyncBatchNorm)
    sync_batchnorm: bool = False
    device: str = "auto"  # "auto" | "cpu" | "cuda" (under torchrun: cuda:LOCAL_RANK) | "cuda:N" (one process)
    # "stop" reads the device-side non-finite flag every this many steps (one host sync each time; the
    # error still names the first bad step and its batch). "skip" decides every step (docs/training.md)
    nonfinite_check_every: int = 10
    # under torchrun: how long ranks wait for rank 0 writing a checkpoint or evaluating, on a CPU barrier
    barrier_timeout_s: float = 3600.0
    # under torchrun: how long a rank waits inside a training collective (gradient all-reduce, loss
    # all-gathers) for the others; past it the run ends with an error naming the ranks that never arrived
    collective_timeout_s: float = 1800.0
    # rank 0 copies the checkpoint's tensors to host memory and writes the file in a background thread
    # (training continues; one more copy of the state in host memory while it writes; docs/training.md)
    async_checkpoint: bool = False
    # > 0: keep only this many newest step_N.pt checkpoints (epoch_N.pt and latest.pt always stay)
    keep_step_checkpoints: int = 0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# The values of every choice field of the model and loss sections: the one list that validation and its
# messages read, and that the registries implementing the choices are checked against when they are
# built (multisk.losses: CRITERIA, SOLVERS, COSTS; multisk.models.davenet: AUDIO_ENCODERS), so a
# name cannot be accepted here and unknown there, or the other way round.
MODEL_VARIANTS = ("per_modality", "everything_at_once")
AUDIO_ENCODER_NAMES = ("davenet_v1", "davenet_v2")
CONTRASTIVE_KINDS = ("norm_softmax", "mms")
SSPC_SOLVERS = ("multi", "classic")
SSPC_COSTS = ("reference", "soft_ce")
SSPC_WARMUPS = ("queue_full", "none")


def check_choice(key: str, value: object, choices: Sequence[str]) -> None:
    """Raise :class:`ConfigError` naming ``key`` and the allowed values unless ``value`` is one of them."""
    if value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def check_registry(key: str, registry: Mapping[str, object], choices: Sequence[str]) -> None:
    """Raise unless the implementations in ``registry`` are exactly the configurable ``choices``."""
    if tuple(sorted(registry)) != tuple(sorted(choices)):
        raise ConfigError(f"{key}: implemented {sorted(registry)} but the configuration accepts {sorted(choices)}")


def validate_sspc_config(s: SSPCConfig) -> None:
    """Checks of ``loss.sspc`` shared by :func:`load_config` and :class:`StructurePreservingLoss`."""
    check_choice("loss.sspc.solver", s.solver, SSPC_SOLVERS)
    check_choice("loss.sspc.cost", s.cost, SSPC_COSTS)
    check_choice("loss.sspc.warmup", s.warmup, SSPC_WARMUPS)
    if not 0 < s.assign_fraction <= 1:
        raise ConfigError(f"loss.sspc.assign_fraction: must be in (0, 1], got {s.assign_fraction}")
    if s.queue_size < 0:
        raise ConfigError(f"loss.sspc.queue_size: must be >= 0, got {s.queue_size}")
    if s.temperature <= 0:
        raise ConfigError(f"loss.sspc.temperature: must be > 0, got {s.temperature}")
    if s.weight < 0:
        raise ConfigError(f"loss.sspc.weight: must be >= 0, got {s.weight}")


def validate_contrastive_config(c: ContrastiveConfig) -> None:
    """Checks of ``loss.contrastive`` shared by :func:`load_config` and the contrastive loss."""
    check_choice("loss.contrastive.kind", c.kind, CONTRASTIVE_KINDS)
    # temperature and margin are checked by the criteria themselves (they can be built without a config)


def validate_loss_config(loss: LossConfig) -> None:
    validate_contrastive_config(loss.contrastive)
    validate_sspc_config(loss.sspc)


def validate_model_config(m: ModelConfig) -> None:
    """Checks shared by :func:`load_config` and models built from a hand-made ModelConfig."""
    if not m.modalities:
        raise ConfigError("model.modalities: at least one modality is required")
    check_choice("model.variant", m.variant, MODEL_VARIANTS)
    table = modality_table(m)  # validates model.modality_specs
    for name in m.modalities:
        modality_spec(name, "model.modalities", table)
    check_choice("model.audio_encoder", m.audio_encoder, AUDIO_ENCODER_NAMES)
    if m.embed_dim % m.num_heads:
        raise ConfigError(f"model.num_heads: {m.num_heads} does not divide model.embed_dim {m.embed_dim}")
    p = m.prior
    if p.enabled and "text" not in m.modalities:
        raise ConfigError("model.prior.enabled: the prior lives in the text encoder's space; model.modalities has no text")
    if p.concept_classes < 0 or (p.concept_classes > 0 and "video" not in m.modalities):
        raise ConfigError(f"model.prior.concept_classes: must be >= 0, and > 0 needs video in model.modalities "
                          f"(got {p.concept_classes})")
    if p.weight is not None and not 0.0 <= p.weight <= 1.0:
        raise ConfigError(f"model.prior.weight: must be in [0, 1] or null (chosen on data.val_split), got {p.weight}")
    if m.input_space not in ("projected", "frozen"):
        raise ConfigError(f"model.input_space: must be 'projected' or 'frozen', got {m.input_space!r}")
    if m.input_space == "frozen" and not p.enabled:
        raise ConfigError("model.input_space: 'frozen' reads the frozen features as the text-space prior pools and "
                          "standardises them; set model.prior.enabled: true (model.prior.weight: 0 keeps retrieval "
                          "on the learned embeddings alone)")
    if not 0.0 <= p.train_weight < 1.0:
        raise ConfigError(f"model.prior.train_weight: must be in [0, 1) (1 would leave nothing to train), "
                          f"got {p.train_weight}")
    if p.train_weight > 0 and not p.enabled:
        raise ConfigError("model.prior.train_weight: > 0 trains with the text-space prior, which needs "
                          "model.prior.enabled: true")


def _check(cfg: Config) -> None:
    validate_model_config(cfg.model)
    validate_loss_config(cfg.loss)
    d = cfg.data
    if not 0.0 <= d.corrupt_fraction <= 1.0:
        raise ConfigError(f"data.corrupt_fraction: must be in [0, 1], got {d.corrupt_fraction}")
    if cfg.model.prior.enabled and cfg.model.prior.weight is None and d.val_split is None:
        raise ConfigError("model.prior.weight: null means 'chosen on data.val_split', but data.val_split is not "
                          "set; give a held-out split of the training source or a fixed weight in [0, 1]")
    if d.val_split is not None and d.val_split in d.eval_splits:
        raise ConfigError(f"data.val_split: {d.val_split!r} is also in data.eval_splits; choices made on a split "
                          "must not be scored on it")
    if d.corrupt_fraction > 0 and d.train_format != "store":
        raise ConfigError("data.corrupt_fraction: only implemented for data.train_format 'store'")
    if d.num_workers < 0 or d.prefetch_factor < 1:
        raise ConfigError(f"data.num_workers / data.prefetch_factor: need >= 0 / >= 1, got {d.num_workers} / {d.prefetch_factor}")
    if d.video_transfer_dtype not in ("float32", "float16"):
        raise ConfigError(f"data.video_transfer_dtype: expected 'float32' or 'float16', got {d.video_transfer_dtype!r}")
    t = cfg.train
    if t.precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision: expected fp32, bf16 or fp16, got {t.precision!r}")
    if t.optimizer not in ("adam", "adamw"):
        raise ConfigError(f"train.optimizer: expected 'adam' or 'adamw', got {t.optimizer!r}")
    if t.on_nonfinite not in ("stop", "skip"):
        raise ConfigError(f"train.on_nonfinite: expected 'stop' or 'skip', got {t.on_nonfinite!r}")
    if t.nonfinite_check_every < 1 or t.barrier_timeout_s <= 0:
        raise ConfigError(f"train.nonfinite_check_every / train.barrier_timeout_s: need >= 1 / > 0, got "
                          f"{t.nonfinite_check_every} / {t.barrier_timeout_s}")
    if t.keep_step_checkpoints < 0:
        raise ConfigError(f"train.keep_step_checkpoints: need >= 0 (0 keeps all), got {t.keep_step_checkpoints}")
    if t.collective_timeout_s <= 0:
        raise ConfigError(f"train.collective_timeout_s: need > 0 seconds, got {t.collective_timeout_s}")


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (optional), apply ``key=value`` overrides and validate.

    Raises :class:`ConfigError` naming the file and key on unknown keys, wrong types or bad values.
    """
    schema = OmegaConf.structured(Config)
    try:
        merged = schema
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"{path}: config file not found")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r}: expected key=value")
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        where = f"{path}: " if path is not None else ""
        key = getattr(err, "full_key", None)
        raise ConfigError(f"{where}invalid configuration at {key!r}: {err.msg if hasattr(err, 'msg') else err}") from None
    _check(cfg)
    return cfg


def config_to_dict(cfg: Config) -> Dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_dict(data: Dict[str, Any]) -> Config:
    """Rebuild a validated Config from :func:`config_to_dict` output (e.g. stored in a checkpoint)."""
    try:
        cfg: Config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))  # type: ignore
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid stored configuration at {getattr(err, 'full_key', None)!r}: {err}") from None
    _check(cfg)
    return cfg


__all__ = [
    "MODALITIES", "MISSING", "Config", "ConfigError", "ContrastiveConfig", "DataConfig", "LossConfig", "ModalityRowConfig",
    "ModelConfig", "SSPCConfig", "TrainConfig", "config_from_dict", "config_to_dict", "config_to_yaml",
    "load_config", "validate_model_config", "AUDIO_ENCODER_NAMES", "CONTRASTIVE_KINDS", "MODEL_VARIANTS",
    "SSPC_COSTS", "SSPC_SOLVERS", "SSPC_WARMUPS", "check_choice", "check_registry", "validate_loss_config",
    "validate_contrastive_config", "validate_sspc_config",
]
