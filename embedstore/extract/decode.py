"""Decoding encoded image bytes on the CPU with PIL, and the rules for unusual images.

Every image reaches the models as 8-bit RGB, converted the way the models' own libraries convert
(open_clip and timm call ``Image.convert("RGB")``): grayscale, palette, CMYK and RGBA/LA images are
converted (alpha is dropped, as ``convert`` does), so the CPU path stays equal to the libraries'.
16-bit images (``I;16``, ``I``) are scaled to 8 bits first (``convert`` would clip them to white).

A sample is *bad* — recorded in ``bad_samples`` with its reason, its rows left as zeros — when its
bytes are empty, are not an image PIL can identify, are truncated or corrupt, or its pixel count
exceeds ``pixel_limit`` (a decompression-bomb guard checked from the header, before decoding).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_PIXEL_LIMIT = 89_478_485  # PIL's own default MAX_IMAGE_PIXELS (~ 9459 x 9459)


class BadImage(Exception):
    """An image that cannot be decoded; ``str(exc)`` is the reason recorded in ``bad_samples``."""


@dataclass(frozen=True)
class DecodeOptions:
    pixel_limit: int = DEFAULT_PIXEL_LIMIT


def decode_rgb(data: bytes | None, options: DecodeOptions = DecodeOptions()) -> Image.Image:
    """Decode ``data`` to an 8-bit RGB PIL image, or raise ``BadImage`` with the reason."""
    if not data:
        raise BadImage("zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            check_pixel_limit(data, options)
            image.load()
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image PIL can identify") from None
    except Image.DecompressionBombError as exc:
        raise BadImage(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"truncated or corrupt image: {exc}") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB as the libraries' ``convert("RGB")``, with 16/32-bit integer images scaled first."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        array = np.asarray(image, dtype=np.uint16)
        image = Image.fromarray((array >> 8).astype(np.uint8), mode="L")
    elif image.mode == "I":
        array = np.asarray(image, dtype=np.int64)
        peak = 65535 if array.max(initial=0) > 255 else 255
        image = Image.fromarray((np.clip(array, 0, peak) * (255 / peak)).astype(np.uint8), mode="L")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def check_pixel_limit(data: bytes, options: DecodeOptions) -> str | None:
    """Raise ``BadImage`` when the header announces more pixels than allowed (no decoding);
    unreadable headers pass, the decoder reports them. Sizes beyond PIL's own bomb limit (twice
    ``Image.MAX_IMAGE_PIXELS``), which PIL refuses to open at all, are refused too. Returns the
    header's PIL mode, or None when the header is unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))
            (width, height), mode = header.size, header.mode
    except Image.DecompressionBombError as exc:
        raise BadImage(f"decompression bomb: {exc}") from None
    except Exception:  # noqa: BLE001 - the decoder gives the precise reason later
        return None
    if width * height > options.pixel_limit:
        raise BadImage(
            f"image of {width}x{height} = {width * height:,} pixels exceeds the pixel limit "
            f"{options.pixel_limit:,} (decompression-bomb guard; raise --pixel-limit to accept it)"
        )
    return mode


def is_jpeg(data: bytes | None) -> bool:
    """JPEG magic number (SOI marker)."""
    return bool(data) and data[:3] == b"\xff\xd8\xff"


def gpu_decodable(data: bytes, options: DecodeOptions) -> bool:
    """Whether the GPU's JPEG decoder may take ``data``: a JPEG whose header PIL reads as 8-bit colour
    (YCbCr/RGB) or grayscale and whose bytes end with the end-of-image marker (trailing zero padding
    allowed). Everything else goes to PIL: CMYK/YCCK JPEGs, which PIL converts the libraries' way;
    truncated files, which nvJPEG can turn into partly grey images without an error where PIL refuses
    them; unreadable headers, whose reason PIL gives. Raises ``BadImage`` past the pixel limit."""
    if not is_jpeg(data):
        return False
    mode = check_pixel_limit(data, options)
    return mode in ("RGB", "L") and data.rstrip(b"\0").endswith(b"\xff\xd9")
