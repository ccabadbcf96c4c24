"""Load a folder of the user's own images as a training tensor.

Layout: either images directly in the folder (no labels), or one subfolder per class, whose
sorted names become the class names and label indices. Files with other extensions are
ignored, as are hidden entries (names starting with ``.``: editor and OS metadata such as
macOS ``._x.png`` files). Every matching file must decode: nothing is skipped silently.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

from ddpm.progress import progress_bar

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_PIXELS = 100_000_000  # larger images are refused as likely decompression bombs


class FolderError(ValueError):
    """The image folder is unusable; the message is one line naming the folder or file."""


class FolderData(NamedTuple):
    """Images (N, C, size, size) in [-1, 1]; int64 labels and class names when the folder has classes."""

    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str] | None


def load_folder(
    path: str | os.PathLike,
    size: int,
    channels: int = 3,
    extensions: tuple[str, ...] = EXTENSIONS,
    progress: bool = True,
) -> FolderData:
    """Load every image under ``path``, center-cropped to a square and resized to ``size``.

    Returns ``(images, labels, class_names)``; ``labels`` and ``class_names`` are None when
    the images sit directly in ``path`` rather than in class subfolders.

    Raises:
        FolderError: for a missing or empty folder, a class folder without images, images both
            at the top level and in class folders, or a file that is broken or too large.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    root = Path(path)
    if not root.is_dir():
        raise FolderError(f"{root}: not a folder")
    extensions = tuple(ext.lower() for ext in extensions)
    files, labels, class_names = _collect(root, extensions)
    mode = "L" if channels == 1 else "RGB"
    pixels = np.empty((len(files), size, size, channels), dtype=np.uint8)
    bar = progress_bar(iterable=files, desc=f"loading {root.name}", unit="img", disable=not progress)
    for i, file in enumerate(bar):
        pixels[i] = _load_image(file, size, mode).reshape(size, size, channels)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().float().div_(127.5).sub_(1.0)
    label_tensor = None if labels is None else torch.tensor(labels, dtype=torch.int64)
    return FolderData(images, label_tensor, class_names)


def _collect(
    root: Path, extensions: tuple[str, ...]
) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """Find image files, and class labels when ``root`` has subfolders."""
    top_files = _images_in(root, extensions, recursive=False)
    class_dirs = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
    )
    if not class_dirs:
        if not top_files:
            raise FolderError(f"{root}: no images with extensions {', '.join(extensions)}")
        return top_files, None, None
    if top_files:
        raise FolderError(
            f"{root}: has both class subfolders and loose images (e.g. {top_files[0].name}); "
            "put every image in a class folder"
        )
    files, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        found = _images_in(class_dir, extensions, recursive=True)
        if not found:
            raise FolderError(
                f"{class_dir}: class folder has no images with extensions {', '.join(extensions)}"
            )
        files += found
        labels += [label] * len(found)
    return files, labels, [d.name for d in class_dirs]


def _images_in(folder: Path, extensions: tuple[str, ...], recursive: bool) -> list[Path]:
    """Sorted non-hidden files under ``folder`` whose extension matches (case-insensitively)."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in candidates
        if p.is_file()
        and p.suffix.lower() in extensions
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _load_image(file: Path, size: int, mode: str) -> np.ndarray:
    """Decode, orient, flatten transparency, convert, center-crop and resize one image."""
    fitted = ImageOps.fit(decode_image(file, mode), (size, size), method=Image.Resampling.LANCZOS)
    return np.asarray(fitted, dtype=np.uint8)


GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def decode_image(file: Path, mode: str | None = None) -> Image.Image:
    """Decode, orient and flatten transparency onto white; convert to ``mode`` ("L" or "RGB"), or, when
    None, to "L" for grey images and "RGB" for the others (a palette image counts as colour)."""
    try:
        with warnings.catch_warnings():
            # Our limit (MAX_PIXELS) decides, in one line; Pillow's warning below it would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                _check_pixels(file, image.size)
                image.load()
                mode = mode or ("L" if image.mode in GREY_MODES else "RGB")
                image = ImageOps.exif_transpose(image)
                return _on_white(image).convert(mode)
    except FolderError:
        raise
    except Image.DecompressionBombError as exc:
        raise FolderError(f"{file}: refused as a possible decompression bomb ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's errors for broken/unknown files
        raise FolderError(f"{file}: not a readable image ({' '.join(str(exc).split())})") from exc


def _check_pixels(file: Path, dims: tuple[int, int]) -> None:
    """Refuse huge images from the header alone, before decoding allocates memory."""
    width, height = dims
    if width * height > MAX_PIXELS:
        raise FolderError(
            f"{file}: {width}x{height} is over the {MAX_PIXELS / 1e6:g}-megapixel limit "
            "(possible decompression bomb)"
        )


def _on_white(image: Image.Image) -> Image.Image:
    """Composite transparent images onto white, so transparent pixels do not turn black."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return image
