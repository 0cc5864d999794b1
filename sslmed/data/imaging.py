"""The one image loader used everywhere: training, probes, predict and the demo.

It turns whatever a user has (8/16-bit grey, RGB, RGBA, palette, EXIF-rotated,
huge, JPEG/PNG/WebP/TIFF/DICOM) into an 8-bit PIL image of the requested mode, or
raises :class:`~sslmed.core.errors.ImageLoadError` naming the file and the reason. No PIL
or pydicom exception escapes it.

* Grey radiographs stay grey; colour files are converted with the usual luma weights.
* Transparency (RGBA, LA, palette with transparency) is composited onto **black**: an
  X-ray's background is dark, a white fill would add a bright frame.
* More than 8 bits (16-bit PNG/TIFF, 12/16-bit DICOM, float TIFF) is scaled into
  0..255 by the image's own value range (or the DICOM window when it has one).
* EXIF orientation is applied. Images whose longer side exceeds ``max_side`` are
  downscaled while loading (JPEG decodes directly at a reduced scale).
* DICOM: modality LUT (rescale slope/intercept), VOI window centre/width (linear or
  sigmoid), ``MONOCHROME1`` inversion, first frame of multi-frame files.
"""

from __future__ import annotations

import io
import logging
import math
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sslmed.core.errors import ImageLoadError
from sslmed.core.files import read_bounded

Mode = Literal["L", "RGB"]
Source = str | Path | bytes | BinaryIO

#: images whose longer side exceeds this are downscaled while loading
DEFAULT_MAX_SIDE = 2048
#: refuse files that would decode to more pixels than this (decompression bombs);
#: PIL's own hard limit, so a 10,000² scan still loads (and is downscaled)
MAX_PIXELS = 2 * 89_478_485

#: refuse images that would decode to more bytes than this (pixels x samples per pixel x
#: bytes per sample), before decoding: the pixel cap alone let an RGBA or 16-bit file cost
#: gigabytes. A 5,792² 16-bit grey scan or an 8,192² 8-bit one still loads.
MAX_DECODED_BYTES = 64 * 2**20
#: image files larger than this are refused before they are read (a FIFO or /dev/zero too)
MAX_FILE_BYTES = 512 * 2**20

DICOM_SUFFIXES = {".dcm", ".dicom"}
#: the only DICOM fields ever read out for people (page, API, log): none identifies a patient
DICOM_SHOWN = ("modality", "view_position", "photometric_interpretation", "window", "bits_stored")
HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


@dataclass(frozen=True)
class ImageInfo:
    """What a file holds before any conversion: size, PIL mode, format, bit depth."""

    width: int
    height: int
    mode: str
    format: str
    bits: int
    #: for a DICOM file, what explains the picture (:data:`DICOM_SHOWN`: modality, view
    #: position, photometric interpretation, the window applied); never a patient identifier
    dicom: dict[str, str] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` as PIL gives it."""
        return self.width, self.height


def _name(source: Source) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return str(getattr(source, "name", "<uploaded image>"))


def check_decoded_size(name: str, width: int, height: int, samples: int, bytes_per_sample: int) -> None:
    """Refuse an image whose decoded pixels would take more than :data:`MAX_DECODED_BYTES`."""
    total = width * height * samples * bytes_per_sample
    if total > MAX_DECODED_BYTES:
        raise ImageLoadError(
            f"{name}: image is too large to decode ({width}x{height} pixels x {samples} samples x "
            f"{bytes_per_sample} bytes = {total / 2**20:,.0f} MiB; the limit is {MAX_DECODED_BYTES / 2**20:,.0f} MiB): "
            "export it with fewer pixels, 8 bits or grey"
        )


def _read_bytes(source: Source, name: str) -> bytes:
    try:
        if isinstance(source, (str, Path)):
            path = Path(source)
            if path.is_dir():
                raise IsADirectoryError(str(path))
            if not path.exists():
                raise FileNotFoundError(str(path))
            # a FIFO would block for ever, /dev/zero never ends: a regular file of bounded size
            data = read_bounded(path, MAX_FILE_BYTES, "image file", ImageLoadError)
        elif isinstance(source, (bytes, bytearray)):
            data = bytes(source)
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
    return data


def _has_dicom_magic(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale any numeric array into 0..255 using its own finite value range.

    Up to 16-bit values are exact in float32, which halves the memory of float64.
    """
    array = np.asarray(array)
    wide = array.dtype.itemsize > 2 and array.dtype != np.float32
    array = array.astype(np.float64 if wide else np.float32, copy=False)
    finite = np.isfinite(array)
    if not finite.any():
        return np.zeros(array.shape, dtype=np.uint8)
    low, high = float(array[finite].min()), float(array[finite].max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = np.where(finite, (array - low) / (high - low) * 255.0, 0.0)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------- DICOM


def _first_value(value: Any) -> float | None:
    """A DICOM number that may be multi-valued (window centre/width): its first value."""
    if value is None:
        return None
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def apply_window(pixels: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI windowing (PS3.3 C.11.2.1.2) of modality values to 0..255 floats."""
    if function.upper() == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (pixels - center) / width))
    if function.upper() == "LINEAR_EXACT":
        return np.clip((pixels - center) / width + 0.5, 0.0, 1.0) * 255.0
    if width <= 1:  # LINEAR needs width >= 1; width 1 is a threshold
        return np.where(pixels > center - 0.5, 255.0, 0.0)
    return np.clip(((pixels - (center - 0.5)) / (width - 1)) + 0.5, 0.0, 1.0) * 255.0


def _header_int(dataset: Any, keyword: str, default: int) -> int:
    """An integer header element, ``default`` when absent; refuse nonsense values."""
    value = getattr(dataset, keyword, None)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{keyword} is not a number ({value!r})") from None
    if number < 0:
        raise ValueError(f"{keyword} is negative ({number})")
    return number


def _check_dicom_size(dataset: Any, name: str) -> int:
    """Refuse a DICOM whose header declares more pixels than :data:`MAX_PIXELS`, before
    anything is decoded (a small compressed file can declare a huge image); returns the
    number of frames."""
    try:
        rows = _header_int(dataset, "Rows", 0)
        columns = _header_int(dataset, "Columns", 0)
        frames = max(1, _header_int(dataset, "NumberOfFrames", 1))
        samples = max(1, _header_int(dataset, "SamplesPerPixel", 1))
        bits = _header_int(dataset, "BitsAllocated", 8)
    except ValueError as exc:
        raise ImageLoadError(f"{name}: DICOM header is invalid ({exc})") from None
    if rows * columns > MAX_PIXELS:
        raise ImageLoadError(
            f"{name}: image is too large ({columns}x{rows} pixels; the limit is {MAX_PIXELS:,} pixels)"
        )
    if bits > 64 or samples > 4:
        raise ImageLoadError(f"{name}: DICOM header is invalid (BitsAllocated {bits}, SamplesPerPixel {samples})")
    # one frame is decoded (and widened to float32 for grey): count samples and bytes
    check_decoded_size(name, columns, rows, samples, max(1, -(-bits // 8)))
    return frames


def _read_dicom(data: bytes, name: str) -> tuple[Image.Image, ImageInfo]:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:  # pragma: no cover - pydicom is a dependency
        raise ImageLoadError(f"{name}: DICOM support needs pydicom (pip install pydicom)") from None
    # pydicom warns *and* logs every oddity of a file (missing meta, bad VRs): the loader
    # either reads the file or names its problem, so neither reaches the user's stderr
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _decode_dicom(pydicom, InvalidDicomError, data, name)


def _decode_dicom(pydicom: Any, invalid: type[Exception], data: bytes, name: str) -> tuple[Image.Image, ImageInfo]:
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=not _has_dicom_magic(data[:132]))
    except (invalid, Exception) as exc:  # pydicom raises many types on bad input
        raise ImageLoadError(f"{name}: not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in dataset:
        if not _has_dicom_magic(data[:132]) and not len(dataset):
            raise ImageLoadError(f"{name}: not a DICOM file (no 'DICM' header and no DICOM elements)")
        raise ImageLoadError(f"{name}: DICOM file has no pixel data (PixelData element missing)")
    frames = _check_dicom_size(dataset, name)
    try:
        if frames > 1:
            dataset.pixel_array_options(index=0)  # decode the first frame only
        pixels = np.asarray(dataset.pixel_array)
    except Exception as exc:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        what = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise ImageLoadError(f"{name}: DICOM pixel data cannot be decoded{what}: {exc}") from None
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")).upper()
    colour = photometric.startswith(("RGB", "YBR"))
    if (pixels.ndim == 3 and not colour) or pixels.ndim == 4:
        pixels = pixels[0]  # multi-frame: the first frame
    bits = int(getattr(dataset, "BitsStored", 0) or getattr(dataset, "BitsAllocated", 8) or 8)
    shown = {
        "modality": str(getattr(dataset, "Modality", "") or "not recorded"),
        "view_position": str(getattr(dataset, "ViewPosition", "") or "not recorded"),
        "photometric_interpretation": photometric,
        "bits_stored": str(bits),
    }

    def described(window: str) -> ImageInfo:
        return ImageInfo(
            int(pixels.shape[1]),
            int(pixels.shape[0]),
            f"DICOM {photometric}",
            "DICOM",
            bits,
            {**shown, "window": window},
        )

    info = described("none (colour image shown as stored)")
    if colour:
        if photometric.startswith("YBR"):
            try:
                from pydicom.pixels import convert_color_space

                pixels = convert_color_space(pixels, photometric, "RGB")
            except Exception as exc:
                raise ImageLoadError(f"{name}: DICOM colour space {photometric} cannot be converted ({exc})") from None
        rgb = pixels if pixels.dtype == np.uint8 else _to_uint8(pixels)
        return Image.fromarray(np.ascontiguousarray(rgb[..., :3]), "RGB"), info
    # float32, not float64: the largest allowed image then needs 0.7 GB, not 1.4 GB
    values = pixels.astype(np.float32)
    slope = _first_value(getattr(dataset, "RescaleSlope", None))
    intercept = _first_value(getattr(dataset, "RescaleIntercept", None))
    values = values * (slope if slope else 1.0) + (intercept or 0.0)
    center = _first_value(getattr(dataset, "WindowCenter", None))
    width = _first_value(getattr(dataset, "WindowWidth", None))
    if center is not None and width is not None and width > 0 and math.isfinite(center):
        function = str(getattr(dataset, "VOILUTFunction", "LINEAR") or "LINEAR")
        grey = np.round(apply_window(values, center, width, function)).astype(np.uint8)
        info = described(f"centre {center:g}, width {width:g} ({function.upper()}, from the file)")
    elif bits <= 8 and values.min() >= 0 and values.max() <= 255:
        grey = values.astype(np.uint8)  # 8-bit data is shown as stored
        info = described("none (8-bit values shown as stored)")
    else:
        grey = _to_uint8(values)  # more than 8 bits, no window: the image's own range
        info = described(
            f"none in the file: the image's own range {float(values.min()):g} to {float(values.max()):g} "
            "mapped to 0-255"
        )
    if photometric == "MONOCHROME1":
        info = described(info.dicom["window"] + "; MONOCHROME1 inverted so that bone is bright")  # type: ignore[index]
    if photometric == "MONOCHROME1":
        grey = 255 - grey  # MONOCHROME1: low values are displayed bright
    return Image.fromarray(np.ascontiguousarray(grey), "L"), info


# ------------------------------------------------------------------ other formats


def _bits_of(image: Image.Image) -> int:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return 16
    if image.mode in ("I", "F"):
        return 32
    return 1 if image.mode == "1" else 8


def _bytes_per_sample(mode: str) -> int:
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return 2
    return 4 if mode in ("I", "F") else 1


def _read_pil(data: bytes, name: str, max_side: int | None) -> tuple[Image.Image, ImageInfo]:
    try:
        with warnings.catch_warnings():
            # we downscale big images ourselves and keep our own hard limit below; PIL's
            # other warnings (broken EXIF or metadata) say nothing the loader does not
            warnings.simplefilter("ignore")
            image: Image.Image = Image.open(io.BytesIO(data))
            info = ImageInfo(image.width, image.height, image.mode, image.format or "unknown", _bits_of(image))
            if image.width * image.height > MAX_PIXELS:
                raise ImageLoadError(
                    f"{name}: image is too large ({image.width}x{image.height} pixels; "
                    f"the limit is {MAX_PIXELS:,} pixels)"
                )
            if max_side and image.format == "JPEG" and max(image.size) > max_side:
                image.draft(image.mode, (max_side, max_side))  # decode JPEG at reduced scale
            samples = 4 if image.mode == "P" else len(image.getbands())  # a palette may become RGBA
            check_decoded_size(name, image.width, image.height, samples, _bytes_per_sample(image.mode))
            image.load()
            if max_side and max(image.size) >= 2 * max_side:
                # shrink by a whole factor at once, before any conversion copies the full image
                try:
                    image = image.reduce(max(image.size) // max_side)
                except ValueError:  # a mode reduce does not take: the later thumbnail does it
                    pass
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        if _looks_like_text(data[:256]):
            head = data[:40].decode("utf-8", "replace").strip().splitlines()[0] if data.strip() else ""
            raise ImageLoadError(f"{name}: is a text file, not an image (it starts with {head!r})") from None
        raise ImageLoadError(
            f"{name}: not an image format sslmed can read (PNG, JPEG, WebP, TIFF, BMP, DICOM)"
        ) from None
    except Image.DecompressionBombError:
        raise ImageLoadError(f"{name}: image is too large to decode safely (more than {MAX_PIXELS:,} pixels)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as exc:
        raise ImageLoadError(f"{name}: image is corrupt or truncated ({exc})") from None
    try:
        with warnings.catch_warnings():  # PIL warns ("Truncated File Read") about broken EXIF blocks
            warnings.simplefilter("ignore")
            image = ImageOps.exif_transpose(image) or image
    except Exception:  # a broken EXIF block: keep the pixels as stored
        pass
    return image, info


def _normalise_mode(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit ``L`` or ``RGB`` without changing what a person sees."""
    if image.mode in HIGH_BIT_MODES:
        return Image.fromarray(_to_uint8(np.asarray(image)), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        # composite onto black: an X-ray's background is black, white would add a bright frame
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        composite = Image.alpha_composite(background, rgba)
        return composite.convert("L" if image.mode in ("LA", "La") else "RGB")
    if image.mode not in ("L", "RGB"):
        return image.convert("RGB")
    return image


def decode(source: Source, max_side: int | None = DEFAULT_MAX_SIDE) -> tuple[Image.Image, ImageInfo]:
    """Decode one file into an 8-bit ``L`` or ``RGB`` image, with what the file held.

    The image is EXIF-rotated, alpha-composited onto black and downscaled to
    ``max_side``; :class:`ImageInfo` describes the file before any of that.
    """
    name = _name(source)
    data = _read_bytes(source, name)
    suffix = Path(name).suffix.lower() if isinstance(source, (str, Path)) else ""
    if _has_dicom_magic(data[:132]) or suffix in DICOM_SUFFIXES:
        image, info = _read_dicom(data, name)
    else:
        image, info = _read_pil(data, name, max_side)
    try:
        image = _normalise_mode(image)
        if max_side and max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    except (OSError, ValueError) as exc:
        raise ImageLoadError(f"{name}: image cannot be converted ({exc})") from None
    return image, info


def load_image(source: Source, mode: Mode = "L", max_side: int | None = DEFAULT_MAX_SIDE) -> Image.Image:
    """Read one image file (or bytes, or an open file) as an 8-bit PIL image in ``mode``.

    Raises :class:`~sslmed.core.errors.ImageLoadError` naming the file and the reason.
    """
    image, _info = decode(source, max_side)
    return image if image.mode == mode else image.convert(mode)


def check_image(source: Source) -> ImageInfo:
    """Decode a file completely (as training would) and describe it; raise if unreadable.

    Used to verify every file of a data source once, before training starts.
    """
    _image, info = decode(source, DEFAULT_MAX_SIDE)
    return info
