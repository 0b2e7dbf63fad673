"""Image file formats: which extensions count as images, and which format a byte string holds."""

from __future__ import annotations

#: Extensions (lower case, without the dot) that image-folder and manifest readers accept as images.
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"})

#: WebDataset member extensions that hold the image, in CLIP_benchmark's order of preference.
WDS_IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")

_SIGNATURES = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
)


def has_image_extension(filename: str) -> bool:
    """Whether a file name ends in one of `IMAGE_EXTENSIONS` (case-insensitive)."""
    _, dot, extension = filename.rpartition(".")
    return bool(dot) and extension.lower() in IMAGE_EXTENSIONS


def sniff_image_format(data: bytes) -> str | None:
    """The file extension for encoded image bytes from their magic number (``jpg``, ``png``, ``webp``, ...)."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for signature, extension in _SIGNATURES:
        if data.startswith(signature):
            return extension
    return None
