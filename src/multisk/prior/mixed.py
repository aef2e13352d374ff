"""The text-space prior around the paper's model: :class:`PriorMixedModel` and the training hook.

The paper's model (:class:`multisk.models.MultiModalModel`) knows nothing of the prior. With
``model.prior.enabled`` an application builds :func:`build_model_with_prior` instead of
:func:`multisk.models.build_model`; the wrapper runs the paper's model and adds, per batch (B items):

* ``out["prior"]``: ``{m: (B, T)}`` the frozen prior embeddings p_m (:class:`TextSpacePrior`);
* in evaluation mode ``out["joint_normalized"]`` becomes the retrieval embeddings
  ``[√(1 − w) n(x̂) ; √w p]`` (B, E + T) with w = ``prior.mix_weight`` (:func:`combine_with_prior`);
  the anchor scores stay those of the learned embeddings;
* with ``model.input_space: frozen`` the model's input-space embeddings are the prior's standardised
  pools (:meth:`TextSpacePrior.input_space`), passed to ``MultiModalModel.forward(batch, input_embedding=)``.

``model.prior.train_weight`` w_t > 0 is a hook on the objective, not a model output:
:func:`training_mix` gives ``TrainingObjective(..., contrastive_embeddings=)`` the function
``output ↦ [√(1 − w_t) n(x̂) ; √w_t p]`` the contrastive loss then scores.

Checkpoints. The wrapper's state dict has the layout checkpoints always had: the paper model's keys
and ``prior.<buffer>`` (the ``model.`` prefix of the wrapped module is dropped on saving and restored on
loading), so checkpoints written before and after this wrapper load either way. Attributes the wrapper
does not have (``modality_table``, ``anchors``, ``joint_names``, ...) are the wrapped model's.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Dict, Mapping, Optional, Union

from torch import Tensor, nn

from multisk.config import Config, ModelConfig
from multisk.modalities import feature_dim
from multisk.models import MultiModalModel, build_model
from multisk.prior.maps import TextSpacePrior, combine_with_prior

_INNER = "model."


class PriorMixedModel(nn.Module):
    """The paper's model plus the frozen text-space prior (module docstring).

    Args:
        model: the paper's model (:func:`multisk.models.build_model`).
        prior: its :class:`TextSpacePrior` (buffers; filled by :func:`multisk.prior.fit.fit_text_space_prior`).
    """

    def __init__(self, model: MultiModalModel, prior: TextSpacePrior) -> None:
        super().__init__()
        self.model = model
        self.prior = prior
        self.register_state_dict_post_hook(_flatten_inner_keys)
        self.register_load_state_dict_pre_hook(_nest_inner_keys)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(super().__getattr__("model"), name)

    def forward(self, batch: Mapping[str, Tensor]) -> Dict[str, Dict]:
        """The paper model's output dict, plus ``prior`` and, in evaluation mode, the mixed
        ``joint_normalized`` (module docstring)."""
        frozen_inputs = self.prior.input_space(batch) if self.model.input_space == "frozen" else None
        out = self.model(batch, input_embedding=frozen_inputs)
        out["prior"] = self.prior(batch)
        if not self.training:
            out["joint_normalized"] = combine_with_prior(out["joint_normalized"], out["prior"], self.prior.mix_weight)
        return out


def _flatten_inner_keys(module: nn.Module, state_dict, prefix: str, local_metadata) -> None:
    """State-dict post-hook: ``<prefix>model.<key>`` → ``<prefix><key>`` (the checkpoint layout)."""
    ours = [key for key in state_dict if key.startswith(prefix)]
    values = [state_dict.pop(key) for key in ours]
    inner = prefix + _INNER
    for key, value in zip(ours, values):
        state_dict[prefix + key[len(inner):] if key.startswith(inner) else key] = value


def _nest_inner_keys(module: nn.Module, state_dict, prefix: str, local_metadata, strict, missing_keys,
                     unexpected_keys, error_msgs) -> None:
    """Load pre-hook, the inverse of :func:`_flatten_inner_keys`: every key of this module but the
    prior's goes to the wrapped model (a key already under ``model.`` is left as it is)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        if not rest.startswith("prior.") and not rest.startswith(_INNER):
            state_dict[prefix + _INNER + rest] = state_dict.pop(key)


def text_space_prior(model: MultiModalModel, model_cfg: ModelConfig) -> TextSpacePrior:
    """An unfitted :class:`TextSpacePrior` for ``model``'s modalities (``model.prior.concept_classes``)."""
    table = model.modality_table
    dims = {m: feature_dim(model_cfg, m, table) for m in model.modalities}
    return TextSpacePrior(table, dims, model_cfg.prior.concept_classes)


def with_prior(model: MultiModalModel, model_cfg: ModelConfig) -> Union[MultiModalModel, PriorMixedModel]:
    """``model`` wrapped with its text-space prior when ``model.prior.enabled``, else ``model`` itself."""
    if not model_cfg.prior.enabled:
        return model
    return PriorMixedModel(model, text_space_prior(model, model_cfg))


def build_model_with_prior(cfg: Union[Config, ModelConfig]) -> Union[MultiModalModel, PriorMixedModel]:
    """:func:`multisk.models.build_model` (same arguments), wrapped by :func:`with_prior`: what a run of
    ``cfg`` trains and evaluates."""
    model_cfg = cfg.model if isinstance(cfg, Config) else cfg
    return with_prior(build_model(cfg), model_cfg)


def mixed_embeddings(output: Mapping, weight: float) -> Dict[str, Tensor]:
    """``[√(1 − w) joint_normalized ; √w prior]`` of a :class:`PriorMixedModel` training output."""
    return combine_with_prior(output["joint_normalized"], output["prior"], weight)


def training_mix(model_cfg: ModelConfig) -> Optional[Callable[[Mapping], Dict[str, Tensor]]]:
    """The ``contrastive_embeddings`` hook of :class:`multisk.losses.TrainingObjective` for
    ``model.prior.train_weight`` w_t > 0 (:func:`mixed_embeddings` at w_t); None otherwise."""
    weight = float(model_cfg.prior.train_weight) if model_cfg.prior.enabled else 0.0
    return partial(mixed_embeddings, weight=weight) if weight > 0 else None


def prior_of(model: nn.Module) -> Optional[TextSpacePrior]:
    """The model's :class:`TextSpacePrior`, None for the paper's model alone (also through DDP's ``module``)."""
    model = getattr(model, "module", model)
    return model.prior if isinstance(model, PriorMixedModel) else None


__all__ = ["PriorMixedModel", "build_model_with_prior", "mixed_embeddings", "prior_of", "text_space_prior",
           "training_mix", "with_prior"]
