"""model.audio_skip_empty: DAVEnet runs only on the samples that have audio frames. Evaluation outputs are
unchanged; in training, BatchNorm's batch statistics are those of the samples with audio only."""

import copy

import torch

from test_models import make_batch, small_config
from multisk.models import build_model


def _pair(**overrides):
    torch.manual_seed(0)
    plain = build_model(small_config(**overrides))
    skipping = copy.deepcopy(plain)
    skipping.cfg = small_config(audio_skip_empty=True, **overrides)
    return plain, skipping


def test_evaluation_outputs_are_unchanged_when_empty_audio_samples_skip_the_encoder():
    plain, skipping = _pair()
    batch = make_batch(plain.cfg, batch_size=5, seed=3)  # sample 3 has no audio
    assert not bool(batch["audio_mask"][3].any())
    plain.eval(), skipping.eval()
    with torch.no_grad():
        a, b = plain(batch), skipping(batch)
    for name in a["joint_normalized"]:
        torch.testing.assert_close(b["joint_normalized"][name], a["joint_normalized"][name], rtol=1e-5, atol=1e-6)
    assert torch.equal(a["nonempty"]["audio"], b["nonempty"]["audio"])


def test_training_batch_statistics_come_from_the_samples_with_audio_only():
    plain, skipping = _pair()
    batch = make_batch(plain.cfg, batch_size=5, seed=4)
    with_audio = batch["audio_mask"].any(dim=1)
    assert not bool(with_audio.all()) and bool(with_audio.any())
    plain.train(), skipping.train()
    skipping(batch)
    # reference: the plain encoder on exactly the samples that have frames
    plain.audio_encoder(batch["audio"][with_audio], batch["audio_mask"][with_audio])
    for (name, got), (_, want) in zip(skipping.audio_encoder.named_buffers(), plain.audio_encoder.named_buffers()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def test_a_batch_without_any_audio_gives_masking_tokens_only():
    _, skipping = _pair()
    batch = make_batch(skipping.cfg, batch_size=3, seed=5)
    batch["audio_mask"] = torch.zeros_like(batch["audio_mask"])
    skipping.train()
    out = skipping(batch)
    assert not bool(out["nonempty"]["audio"].any())
    assert torch.isfinite(out["joint"]["audio"]).all()
