"""`multisk data convert howto100m --text-audio-misaligned` (the reference's audio window clip_seconds / 2
after the text span's start, SPEC §5) and its deprecated old spelling `--audio-offset-quirk`, which must
still do the same thing and say that it is deprecated; likewise the Python keyword ``audio_offset_quirk``."""

from __future__ import annotations

import numpy as np
import pytest

from multisk.cli import main
from multisk.data.store.feature_store import FeatureStore, read_manifest
from multisk.data.formats.howto100m import HowTo100MDataset

from test_data_formats import make_keyed_vectors, write_howto_fixture, write_word2vec_binary


@pytest.fixture
def howto(tmp_path):
    fx = write_howto_fixture(tmp_path / "howto")
    write_word2vec_binary(tmp_path / "w2v.bin")
    return tmp_path, fx


def _convert(tmp_path, fx, name, *flags):
    out = tmp_path / name
    code = main(["data", "convert", "howto100m", str(fx["csv"]), "--out", str(out), "--word-vectors",
                 str(tmp_path / "w2v.bin"), "--features-path", str(fx["features"]), "--audio-path", str(fx["audio"]),
                 "--caption-path", str(fx["captions"]), "--clips-per-video", "3", *flags])
    assert code == 0
    store = FeatureStore(out, "train")
    audio = [store.tokens("audio", i) for i in range(len(store))]
    return audio, read_manifest(out)["splits"]["train"]


def test_new_flag_misaligns_and_the_old_spelling_is_the_same_switch_with_a_note(howto, capsys):
    tmp_path, fx = howto
    aligned, aligned_info = _convert(tmp_path, fx, "aligned")
    assert "deprecated" not in capsys.readouterr().err
    misaligned, info = _convert(tmp_path, fx, "misaligned", "--text-audio-misaligned")
    assert "deprecated" not in capsys.readouterr().err
    old, old_info = _convert(tmp_path, fx, "old", "--audio-offset-quirk")
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "deprecated" in line]
    assert notes == ["note: --audio-offset-quirk is deprecated; use --text-audio-misaligned (same meaning)"]
    assert aligned_info["text_audio_misaligned"] is False
    assert info["text_audio_misaligned"] is True and old_info["text_audio_misaligned"] is True
    # the switch reaches the clips: same seed, so only the audio windows move
    assert len(old) == len(misaligned) == len(aligned)
    assert all(np.array_equal(a, b) for a, b in zip(old, misaligned))
    assert any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(aligned, misaligned))


def test_old_python_keyword_still_works_with_a_deprecation_warning(howto):
    from multisk.data.formats.convert import convert_dataset

    tmp_path, fx = howto
    common = dict(word_vectors=str(tmp_path / "w2v.bin"), features_path=fx["features"], audio_path=fx["audio"],
                  caption_path=fx["captions"], clips_per_video=2)
    with pytest.warns(DeprecationWarning, match="'audio_offset_quirk' is deprecated; use 'text_audio_misaligned'"):
        info = convert_dataset("howto100m", fx["csv"], tmp_path / "kw", audio_offset_quirk=True, **common)
    assert info["text_audio_misaligned"] is True
    kv = make_keyed_vectors()
    with pytest.warns(DeprecationWarning, match="keyword 'audio_offset_quirk' is deprecated"):
        old = HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], kv, audio_offset_quirk=True)
    assert old.text_audio_misaligned is True
    new = HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], kv, text_audio_misaligned=True)
    with pytest.warns(DeprecationWarning, match="audio_offset_quirk is deprecated"):
        assert new.audio_offset_quirk is True
