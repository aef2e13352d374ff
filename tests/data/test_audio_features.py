"""Log-mel features against a literal slow reference (explicit DFT sums, hand-built triangles) and
properties of pure tones."""

import math

import numpy as np
import pytest
import soundfile as sf

from multisk.data.encoders.audio_features import (
    audio_file_features,
    hz_to_mel,
    log_mel_spectrogram,
    mel_filterbank,
    mel_to_hz,
    read_audio,
    resample_to,
)
from multisk.errors import DataFormatError


def reference_log_mel_16k(x: np.ndarray) -> np.ndarray:
    """Slow, literal version of the documented pipeline for a 16 kHz signal (no resampling)."""
    n_fft, hop, n_mels, rate = 400, 160, 40, 16000
    pad = n_fft // 2
    n = len(x)
    # reflect padding written out index by index: x[-j] mirrors x[j], x[n-1+j] mirrors x[n-1-j]
    padded = [x[pad - i] for i in range(pad)] + list(x) + [x[n - 2 - i] for i in range(pad)]
    n_frames = 1 + n // hop
    window = [0.5 - 0.5 * math.cos(2 * math.pi * i / n_fft) for i in range(n_fft)]
    # triangles from the mel formula written out directly
    lo_mel, hi_mel = 2595 * math.log10(1 + 0 / 700), 2595 * math.log10(1 + 8000 / 700)
    edges = [700 * (10 ** ((lo_mel + (hi_mel - lo_mel) * j / (n_mels + 1)) / 2595) - 1) for j in range(n_mels + 2)]
    filters = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        a, b, c = edges[m], edges[m + 1], edges[m + 2]
        for k in range(n_fft // 2 + 1):
            f = k * rate / n_fft
            if a < f <= b:
                filters[m, k] = (f - a) / (b - a)
            elif b < f < c:
                filters[m, k] = (c - f) / (c - b)
    out = np.zeros((n_frames, n_mels))
    ns = np.arange(n_fft)
    for t in range(n_frames):
        frame = np.array(padded[t * hop : t * hop + n_fft]) * np.array(window)
        power = np.zeros(n_fft // 2 + 1)
        for k in range(n_fft // 2 + 1):  # DFT sum, not an FFT
            re = np.sum(frame * np.cos(2 * math.pi * k * ns / n_fft))
            im = -np.sum(frame * np.sin(2 * math.pi * k * ns / n_fft))
            power[k] = re * re + im * im
        out[t] = np.log(filters @ power + 1e-6)
    return out


def test_log_mel_matches_literal_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(800) * 0.1 + np.sin(2 * np.pi * 700 * np.arange(800) / 16000)
    ours = log_mel_spectrogram(x, 16000)
    ref = reference_log_mel_16k(x)
    assert ours.shape == ref.shape == (6, 40)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_mel_scale_round_trip_and_filter_shape():
    freqs = np.array([0.0, 100.0, 1000.0, 7999.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(freqs)), freqs, atol=1e-9)
    assert abs(float(hz_to_mel(1000.0)) - 999.99) < 0.1  # HTK: 1000 Hz is ~1000 mel
    fb = mel_filterbank()
    assert fb.shape == (40, 201)
    assert fb.min() >= 0 and fb.max() <= 1 + 1e-12
    # every filter is non-empty and consecutive filters overlap (no hole in the spectrum above the first bin)
    assert (fb.max(axis=1) > 0).all()
    assert (fb[:, 1:200].sum(axis=0) > 0).all()


@pytest.mark.parametrize("rate,freq", [(16000, 1000.0), (8000, 440.0), (44100, 3000.0), (22050, 250.0)])
def test_pure_tone_peaks_in_nearest_mel_bin(rate, freq):
    seconds = 0.5
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.5 * np.sin(2 * np.pi * freq * t)
    feats = log_mel_spectrogram(tone, rate)
    assert feats.shape == (1 + int(16000 * seconds) // 160, 40)  # 100 frames per second
    edges = mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(8000), 42))
    centres = edges[1:-1]
    # filters at the low end are narrower than an FFT bin; compare with the filter that gets most weight
    fb = mel_filterbank()
    expected = int(np.argmax(fb[:, int(round(freq * 400 / 16000))]))
    middle = feats[5:-5]
    assert (np.argmax(middle, axis=1) == expected).all(), (np.argmax(middle, axis=1), expected, centres[expected])


def test_resampling_preserves_a_sine():
    t8 = np.arange(8000) / 8000
    up = resample_to(np.sin(2 * np.pi * 300 * t8), 8000, 16000)
    t16 = np.arange(16000) / 16000
    assert up.shape == (16000,)
    np.testing.assert_allclose(up[200:-200], np.sin(2 * np.pi * 300 * t16)[200:-200], atol=2e-3)


def test_read_audio_mixes_down_and_names_bad_files(tmp_path):
    rate = 8000
    t = np.arange(rate) / rate
    stereo = np.stack([np.sin(2 * np.pi * 500 * t), np.zeros_like(t)], axis=1).astype(np.float32) * 0.5
    wav = tmp_path / "stereo.wav"
    sf.write(wav, stereo, rate, subtype="FLOAT")
    mono, got_rate = read_audio(wav)
    assert got_rate == rate and mono.shape == (rate,)
    np.testing.assert_allclose(mono, stereo.mean(axis=1), atol=1e-6)
    assert audio_file_features(wav).shape == (101, 40)

    bad = tmp_path / "broken.ogg"
    bad.write_bytes(b"OggS" + b"\x00" * 50)
    with pytest.raises(DataFormatError, match="broken.ogg"):
        read_audio(bad)
    with pytest.raises(ValueError, match="1-D"):
        log_mel_spectrogram(stereo, rate)
