"""The one image loader used everywhere: training, probes, predict and the demo.

It turns whatever a user has (8/16-bit grey, RGB, RGBA, palette, EXIF-rotated,
huge, JPEG/PNG/WebP/TIFF/DICOM) into an 8-bit PIL image of the requested mode, or
raises :class:`ImageLoadError` naming the file and the reason.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO, Literal, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sslmed.errors import ImageLoadError

Mode = Literal["L", "RGB"]
Source = Union[str, Path, bytes, BinaryIO]

#: images whose longer side exceeds this are downscaled while loading
DEFAULT_MAX_SIDE = 2048
#: refuse files that would decode to more pixels than this (decompression bombs)
MAX_PIXELS = 40_000 * 40_000

DICOM_SUFFIXES = {".dcm", ".dicom"}


def _name(source: Source) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return getattr(source, "name", "<uploaded image>")


def _is_dicom(source: Source, head: bytes) -> bool:
    if isinstance(source, (str, Path)) and Path(source).suffix.lower() in DICOM_SUFFIXES:
        return True
    return len(head) >= 132 and head[128:132] == b"DICM"


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale any numeric array into 0..255 using its own range (for >8-bit data)."""
    array = array.astype(np.float64)
    low, high = float(np.min(array)), float(np.max(array))
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((array - low) / (high - low) * 255.0).astype(np.uint8)


def _read_dicom(data: bytes, name: str) -> Image.Image:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:  # pragma: no cover - pydicom is a dependency
        raise ImageLoadError(f"{name}: DICOM support needs pydicom (pip install pydicom)") from None
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, Exception) as exc:
        raise ImageLoadError(f"{name}: not a readable DICOM file ({exc})") from None
    if "PixelData" not in dataset:
        raise ImageLoadError(f"{name}: DICOM file has no pixel data (PixelData element missing)")
    try:
        pixels = dataset.pixel_array.astype(np.float64)
    except Exception as exc:
        raise ImageLoadError(f"{name}: DICOM pixel data cannot be decoded ({exc})") from None
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
        pixels = pixels[0]  # multi-frame: the first frame
    slope = float(getattr(dataset, "RescaleSlope", 1) or 1)
    intercept = float(getattr(dataset, "RescaleIntercept", 0) or 0)
    pixels = pixels * slope + intercept
    center, width = getattr(dataset, "WindowCenter", None), getattr(dataset, "WindowWidth", None)
    if center is not None and width is not None:
        center = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        if width > 0:
            pixels = np.clip(pixels, center - width / 2, center + width / 2)
    grey = _to_uint8(pixels)
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        grey = 255 - grey  # MONOCHROME1: low values are bright
    return Image.fromarray(grey)


def _normalise_mode(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit 'L' or 'RGB' without changing what a person sees."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image)))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        # composite onto black: X-ray background is black, white would add a bright frame
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    return image


def load_image(source: Source, mode: Mode = "L", max_side: int | None = DEFAULT_MAX_SIDE) -> Image.Image:
    """Read one image file (or bytes) as an 8-bit PIL image in ``mode``.

    Grey radiographs stay grey; colour files are converted; transparency is
    composited onto black; EXIF orientation is applied; images larger than
    ``max_side`` on their longer side are downscaled while loading.
    """
    name = _name(source)
    try:
        if isinstance(source, (str, Path)):
            data = Path(source).read_bytes()
        elif isinstance(source, bytes):
            data = source
        else:
            data = source.read()
    except FileNotFoundError:
        raise ImageLoadError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise ImageLoadError(f"{name}: is a directory, not an image file") from None
    except OSError as exc:
        raise ImageLoadError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    if not data:
        raise ImageLoadError(f"{name}: file is empty (0 bytes)")

    if _is_dicom(source, data[:132]):
        image = _read_dicom(data, name)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                if image.width * image.height > MAX_PIXELS:
                    raise ImageLoadError(f"{name}: image is too large ({image.width}x{image.height} pixels)")
                if max_side and image.format == "JPEG":
                    image.draft(image.mode, (max_side, max_side))  # decode JPEG at reduced size
                image.load()
        except ImageLoadError:
            raise
        except UnidentifiedImageError:
            raise ImageLoadError(f"{name}: not an image file PIL can read (PNG, JPEG, WebP, TIFF, BMP) nor DICOM") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageLoadError(f"{name}: image is too large to decode safely") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageLoadError(f"{name}: image is corrupt or truncated ({exc})") from None
        image = ImageOps.exif_transpose(image) or image
    image = _normalise_mode(image)
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return image.convert(mode) if image.mode != mode else image
