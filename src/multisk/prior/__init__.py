"""multisk.prior — the text-space prior, an option that is not in the paper (docs/prior.md).

A frozen closed-form embedding of every modality in the caption encoder's space, mixed into the
retrieval embeddings of the paper's model at a weight chosen on held-out data:

* :mod:`multisk.prior.maps` — the frozen maps (:class:`TextSpacePrior`, :class:`RidgeMap`) and the mix
  ``[√(1 − w) x̂ ; √w p]`` (:func:`combine_with_prior`);
* :mod:`multisk.prior.mixed` — :class:`PriorMixedModel`, the paper's model plus the prior
  (:func:`build_model_with_prior`), and the objective's hook for ``model.prior.train_weight`` (:func:`training_mix`);
* :mod:`multisk.prior.fit` — fitting the maps and choosing λ, α and w (imported on demand: it loads Lite0);
* :mod:`multisk.prior.validation` — the held-out pairs and the score every choice maximises.

The paper's model (:mod:`multisk.models`) and the losses (:mod:`multisk.losses`) know nothing of it.
"""

from multisk.prior.maps import RidgeMap, TextSpacePrior, combine_with_prior, pool_inputs, pooled_width
from multisk.prior.mixed import (
    PriorMixedModel,
    build_model_with_prior,
    mixed_embeddings,
    prior_of,
    text_space_prior,
    training_mix,
    with_prior,
)

__all__ = [
    "PriorMixedModel", "RidgeMap", "TextSpacePrior", "build_model_with_prior", "combine_with_prior",
    "mixed_embeddings", "pool_inputs", "pooled_width", "prior_of", "text_space_prior", "training_mix", "with_prior",
]
