"""Pictures and video frames -> "video" tokens from the EfficientNet-Lite0 feature map.

A picture becomes ``1 + grid * grid`` tokens of 1280 dims:

* it is composited onto white (transparent clip art would otherwise turn black), padded to a square
  with white (no crop, no distortion) and resized to ``image_size`` x ``image_size`` (bicubic);
* Lite0 gives the feature map A of shape (1280, h, w), h = w = ceil(image_size / 32) (7 at 224 px);
* token 0 is the global mean  g = (1 / hw) sum_ij A[:, i, j]  (the vector Lite0's classifier reads);
  tokens 1.. are ``adaptive_avg_pool2d(A, grid)`` cells in row-major order (for grid 2 at 224 px:
  the four overlapping 4 x 4 quadrants of the 7 x 7 map).

So a picture is a short token sequence, like the per-second features of a video, and the same token
pipeline applies. Video frames (1 fps) use only the global mean: one token per second.

Vector pictures (``.svg``, ``.svgz``) are rasterised with resvg (PyPI ``resvg-py``) to fit in the
``image_size`` square, aspect kept, at the CSS resolution of 96 dpi (so ``pt`` / ``mm`` / ``cm`` sizes
resolve as in a browser), then follow the same path: the transparent background is composited onto
white.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from multisk.data.encoders.lite0 import fold_batchnorm, images_to_tensor, load_lite0
from multisk.errors import DataFormatError

DEFAULT_IMAGE_SIZE = 224
DEFAULT_GRID = 2
SVG_EXTENSIONS = {".svg", ".svgz"}
SVG_DPI = 96.0  # CSS px per inch: width="128pt" is 170.7 px, as browsers draw it


_SHARED_MODEL = None


def shared_lite0():
    """The packaged Lite0 with batch norms folded (eval mode), loaded once per process."""
    global _SHARED_MODEL
    if _SHARED_MODEL is None:
        _SHARED_MODEL = fold_batchnorm(load_lite0())
    return _SHARED_MODEL


def square_on_white(image, image_size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """A PIL image -> (image_size, image_size, 3) uint8 RGB: alpha composited onto white, padded to a
    centred white square, resized with bicubic filtering."""
    from PIL import Image

    if image.mode.startswith(("I", "F")):  # 16/32-bit grey: PIL converts to RGBA only through 8-bit grey
        image = image.convert("L")
    rgba = image.convert("RGBA")  # palette / grey / RGB transparency becomes a real alpha channel
    width, height = rgba.size
    side = max(width, height)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(rgba, ((side - width) // 2, (side - height) // 2))
    rgb = canvas.convert("RGB").resize((image_size, image_size), Image.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


@lru_cache(maxsize=1)
def _resvg_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("resvg-py")
    except PackageNotFoundError:
        return "not installed"


def picture_reader(path: str | Path) -> Dict[str, str]:
    """What besides the file's bytes decides its pixels (part of the token cache key): ``{}`` for
    raster formats, the rasteriser and its settings for SVG."""
    if Path(path).suffix.lower() in SVG_EXTENSIONS:
        return {"svg_rasteriser": f"resvg-py {_resvg_version()}, fit in square, {SVG_DPI:g} dpi"}
    return {}


def rasterise_svg(path: str | Path, image_size: int = DEFAULT_IMAGE_SIZE):
    """Render an SVG to a PIL RGBA image whose longer side is ``image_size`` (aspect kept, transparent
    background), at :data:`SVG_DPI`.

    Raises:
        DataFormatError: resvg-py missing, or the file is unreadable / not a valid SVG (names the file).
    """
    from PIL import Image

    path = Path(path)
    try:
        import resvg_py  # type: ignore[import-not-found]
    except ImportError:
        raise DataFormatError(f"{path}: SVG pictures need resvg-py (pip install 'multisk[demo]')") from None
    if not path.is_file():
        raise DataFormatError(f"{path}: cannot read image (file not found)")
    try:
        png = resvg_py.svg_to_bytes(svg_path=str(path), width=image_size, height=image_size, dpi=SVG_DPI)
        image = Image.open(io.BytesIO(bytes(png)))
        image.load()
    except Exception as err:  # resvg reports every parse / render failure as ValueError; PIL as OSError
        raise DataFormatError(f"{path}: cannot render SVG ({type(err).__name__}: {err})") from None
    return image


def load_picture(path: str | Path, image_size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Read an image file (PNG, JPEG, ..., or SVG) as (image_size, image_size, 3) uint8 (see
    :func:`square_on_white`; SVG through :func:`rasterise_svg`).

    Raises:
        DataFormatError: missing, unreadable, truncated or empty image (names the file).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.suffix.lower() in SVG_EXTENSIONS:
        return square_on_white(rasterise_svg(path, image_size), image_size)
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (image_size, image_size))  # decode JPEGs at a reduced scale: faster
            image.load()
            if image.size[0] == 0 or image.size[1] == 0:
                raise DataFormatError(f"{path}: image has zero size {image.size}")
            return square_on_white(image, image_size)
    except DataFormatError:
        raise
    except Image.DecompressionBombError as err:
        raise DataFormatError(f"{path}: image too large to decode safely ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataFormatError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None


def pool_tokens(feature_map: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, h, w) feature map -> (B, 1 + grid^2, C): the global mean, then the pooled grid cells
    (row-major). ``grid = 0`` keeps the global mean only."""
    global_mean = feature_map.mean(dim=(2, 3)).unsqueeze(1)
    if grid <= 0:
        return global_mean
    cells = F.adaptive_avg_pool2d(feature_map, grid).flatten(2).transpose(1, 2)
    return torch.cat([global_mean, cells], dim=1)


class PictureEncoder:
    """Batched Lite0 encoding of pictures into tokens (see the module docstring).

    Args:
        image_size: side of the square input in pixels.
        grid: side of the pooled grid (0: the global-mean token only).
        batch_size: pictures per Lite0 forward pass.
        threads: torch intra-op threads while encoding (None: leave torch's setting).
    """

    def __init__(
        self,
        image_size: int = DEFAULT_IMAGE_SIZE,
        grid: int = DEFAULT_GRID,
        batch_size: int = 32,
        threads: Optional[int] = None,
    ) -> None:
        if image_size < 32:
            raise ValueError(f"PictureEncoder: image_size must be >= 32, got {image_size}")
        self.image_size = image_size
        self.grid = grid
        self.batch_size = batch_size
        self.threads = threads
        self._model = None

    @property
    def tokens_per_picture(self) -> int:
        return 1 + self.grid * self.grid if self.grid > 0 else 1

    @property
    def model(self):
        if self._model is None:
            self._model = shared_lite0()
        return self._model

    def describe(self) -> dict:
        """Settings that determine the tokens (recorded in manifests and cache keys)."""
        return {"encoder": "efficientnet-lite0", "image_size": self.image_size, "grid": self.grid, "dim": 1280}

    @torch.inference_mode()
    def encode_arrays(self, pictures: Sequence[np.ndarray], grid: Optional[int] = None) -> np.ndarray:
        """(N, S, S, 3) uint8 pictures (already squared and resized) -> (N, T, 1280) float32 tokens,
        T = 1 + grid^2 (``grid`` defaults to the encoder's)."""
        grid = self.grid if grid is None else grid
        out: List[np.ndarray] = []
        previous_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            for start in range(0, len(pictures), self.batch_size):
                batch = images_to_tensor(pictures[start : start + self.batch_size])
                batch = batch.contiguous(memory_format=torch.channels_last)
                tokens = pool_tokens(self.model.extract_feature_map(batch), grid)
                out.append(tokens.float().numpy())
        finally:
            if self.threads:
                torch.set_num_threads(previous_threads)
        if not out:
            return np.zeros((0, 1 + grid * grid if grid > 0 else 1, 1280), dtype=np.float32)
        return np.concatenate(out, axis=0)

    def encode_files(
        self, paths: Sequence[str | Path], on_error: Optional[Callable[[Path, DataFormatError], None]] = None
    ) -> List[Optional[np.ndarray]]:
        """Encode image files; returns one (T, 1280) array per path (None for a skipped bad file).

        A bad file raises :class:`DataFormatError` naming it, unless ``on_error`` is given: then it is
        called with (path, error) and the file's entry is None.
        """
        pictures: List[np.ndarray] = []
        kept: List[int] = []
        for i, path in enumerate(paths):
            try:
                pictures.append(load_picture(path, self.image_size))
                kept.append(i)
            except DataFormatError as err:
                if on_error is None:
                    raise
                on_error(Path(path), err)
        tokens = self.encode_arrays(pictures)
        result: List[Optional[np.ndarray]] = [None] * len(paths)
        for row, i in enumerate(kept):
            result[i] = tokens[row]
        return result


__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_IMAGE_SIZE",
    "SVG_EXTENSIONS",
    "PictureEncoder",
    "load_picture",
    "picture_reader",
    "pool_tokens",
    "rasterise_svg",
    "shared_lite0",
    "square_on_white",
]
