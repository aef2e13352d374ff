"""Log-mel spectrogram frames for the audio modality (the reference's front end: 16 kHz, 25 ms window, 10 ms hop, 40 mels; docs/clipart.md).

For a mono waveform x (any sample rate sr), :func:`log_mel_spectrogram` computes

1. resampling to 16 kHz with a polyphase filter (``scipy.signal.resample_poly``, ratio 16000/sr reduced
   by their gcd);
2. frames: the signal is reflect-padded by n_fft/2 = 200 samples at both ends, and frame t covers
   samples [160 t, 160 t + 400) of the padded signal (centred frames, F = 1 + floor(N / 160), i.e.
   100 frames per second);
3. power spectrum  P[t, k] = |sum_n w[n] x_t[n] exp(-2 pi i k n / 400)|^2,  k = 0..200, with the
   periodic Hann window w[n] = 0.5 - 0.5 cos(2 pi n / 400);
4. mel energies  M[t, m] = sum_k P[t, k] H[m, k]  with 40 triangular filters H that are equally spaced
   on the HTK mel scale mel(f) = 2595 log10(1 + f / 700) between 0 Hz and 8 kHz: filter m rises
   linearly from f_{m} to a peak of 1 at f_{m+1} and falls back to 0 at f_{m+2};
5. log compression  L[t, m] = ln(M[t, m] + 1e-6).

The result is (F, 40) float32: time-major frames, as the feature store keeps them (the dataset
transposes to (40, F) for DAVEnet).
"""

from __future__ import annotations

from math import gcd
from pathlib import Path
from typing import Tuple

import numpy as np

from multisk.errors import DataFormatError

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms at 16 kHz
HOP_LENGTH = 160  # 10 ms at 16 kHz
N_MELS = 40
F_MIN = 0.0
F_MAX = SAMPLE_RATE / 2
LOG_FLOOR = 1e-6


def hz_to_mel(freq_hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: mel = 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(freq_hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`: f = 700 (10^(mel / 2595) - 1)."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    f_min: float = F_MIN,
    f_max: float = F_MAX,
) -> np.ndarray:
    """Triangular mel filters H of shape (n_mels, n_fft // 2 + 1), peak value 1 (see module docstring).

    Filter m has edges f_m, f_{m+1}, f_{m+2} where f = mel_to_hz(linspace(mel(f_min), mel(f_max),
    n_mels + 2)); FFT bin k sits at frequency k * sample_rate / n_fft.
    """
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    bin_hz = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    left, centre, right = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz[None, :] - left) / (centre - left)
    falling = (right - bin_hz[None, :]) / (right - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def resample_to(waveform: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling of a 1-D signal from ``sample_rate`` to ``target_rate`` (float64 out)."""
    waveform = np.asarray(waveform, dtype=np.float64)
    if sample_rate == target_rate:
        return waveform
    from scipy.signal import resample_poly

    common = gcd(int(sample_rate), int(target_rate))
    return resample_poly(waveform, target_rate // common, int(sample_rate) // common)


def power_spectrogram(waveform: np.ndarray, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> np.ndarray:
    """Centred-frame power spectrum of a 1-D signal: (1 + len // hop_length, n_fft // 2 + 1) float64."""
    x = np.asarray(waveform, dtype=np.float64)
    pad = n_fft // 2
    # reflect padding needs at least pad + 1 samples; shorter clips are zero-padded first
    if x.shape[0] <= pad:
        x = np.pad(x, (0, pad + 1 - x.shape[0]))
    n_frames = 1 + x.shape[0] // hop_length
    padded = np.pad(x, (pad, pad), mode="reflect")
    needed = (n_frames - 1) * hop_length + n_fft
    if padded.shape[0] < needed:
        padded = np.pad(padded, (0, needed - padded.shape[0]))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length][:n_frames]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    spectrum = np.fft.rfft(frames * window, n=n_fft, axis=1)
    return spectrum.real**2 + spectrum.imag**2


_FILTERBANK = None


def log_mel_spectrogram(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """(N,) mono waveform at ``sample_rate`` Hz -> (F, 40) float32 log-mel frames at 100 frames/s.

    F = 1 + floor(N' / 160) where N' is the length after resampling to 16 kHz. Steps and equations:
    see the module docstring.
    """
    global _FILTERBANK
    waveform = np.asarray(waveform)
    if waveform.ndim != 1:
        raise ValueError(f"log_mel_spectrogram: expected a 1-D mono waveform, got shape {waveform.shape}")
    if sample_rate <= 0:
        raise ValueError(f"log_mel_spectrogram: sample_rate must be positive, got {sample_rate}")
    if waveform.shape[0] == 0:
        raise ValueError("log_mel_spectrogram: empty waveform")
    if _FILTERBANK is None:
        _FILTERBANK = mel_filterbank()
    power = power_spectrogram(resample_to(waveform, int(sample_rate)))
    return np.log(power @ _FILTERBANK.T + LOG_FLOOR).astype(np.float32)


def read_audio(path: str | Path) -> Tuple[np.ndarray, int]:
    """Read a WAV / OGG / FLAC file with soundfile; returns (mono float32 waveform (N,), sample rate).

    Multi-channel audio is mixed down by averaging the channels.

    Raises:
        DataFormatError: unreadable, corrupt or empty file (names the file).
    """
    import soundfile as sf

    path = Path(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError) as err:  # soundfile raises LibsndfileError (a RuntimeError)
        raise DataFormatError(f"{path}: cannot read audio ({err})") from None
    if data.shape[0] == 0:
        raise DataFormatError(f"{path}: audio file has no samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise DataFormatError(f"{path}: audio contains NaN or inf samples")
    return np.ascontiguousarray(mono), int(rate)


def audio_file_features(path: str | Path) -> np.ndarray:
    """Log-mel frames (F, 40) float32 of an audio file (see :func:`read_audio`, :func:`log_mel_spectrogram`)."""
    waveform, rate = read_audio(path)
    return log_mel_spectrogram(waveform, rate)


__all__ = [
    "HOP_LENGTH",
    "N_FFT",
    "N_MELS",
    "SAMPLE_RATE",
    "audio_file_features",
    "hz_to_mel",
    "log_mel_spectrogram",
    "mel_filterbank",
    "mel_to_hz",
    "power_spectrogram",
    "read_audio",
    "resample_to",
]
