"""Decoding: turn encoded image bytes into fixed-size RGB uint8 arrays, many at a time.

Every file, whatever its source, goes through ``decode_image`` (Pillow), so a photo means
the same pixels in training, in the cache and at prediction time. Grayscale, CMYK, palette
and PNG-named-.jpg files are converted to RGB; a file that cannot be used raises
``ImageDecodeError`` with a short reason, so callers can skip it and count it instead of
failing. ``DecoderPool`` decodes chunks of files on threads for large jobs: Pillow releases
the GIL while it decodes and resizes, so threads use every core without pickling bytes.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_DECODE_PIXELS = 100_000_000
"""Images with more pixels are refused as ``too_large`` (a decompression bomb guard)."""
CHUNK_SIZE = 256
"""Files per task handed to a decoding thread: large enough to make the hand-over cheap."""
_MIN_FILES_FOR_THREADS = 500
"""Smaller jobs decode in the calling thread: starting a pool would cost more than it saves."""


class ImageDecodeError(ValueError):
    """One file is not a usable image; ``reason`` is the short name it is counted under and
    ``detail`` what the decoder said."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


Decoded = np.ndarray | ImageDecodeError
"""One file's outcome: its pixels, or why it cannot be used."""


def decode_image(data: bytes, image_size: int) -> np.ndarray:
    """Decode encoded image bytes to a ``(image_size, image_size, 3)`` uint8 RGB array.

    Any format Pillow reads is accepted whatever the file is named; grayscale, CMYK,
    palette and alpha images are converted to RGB. Raises ``ImageDecodeError`` with reason
    ``empty_file``, ``not_an_image``, ``truncated``, ``too_large`` or ``decode_error``.
    """
    if not data:
        raise ImageDecodeError("empty_file", "zero bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about odd EXIF data; the pixels are fine
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_DECODE_PIXELS:
                raise ImageDecodeError("too_large", f"{width}x{height} pixels")
            if width * height > 64 * image_size * image_size and image.format == "JPEG":
                image.draft("RGB", (4 * image_size, 4 * image_size))  # decode huge JPEGs scaled
            image.load()
        except ImageDecodeError:
            raise
        except UnidentifiedImageError as error:
            raise ImageDecodeError("not_an_image", str(error)) from error
        except Image.DecompressionBombError as error:
            raise ImageDecodeError("too_large", str(error)) from error
        except (OSError, SyntaxError, ValueError) as error:
            reason = "truncated" if "truncated" in str(error).lower() else "decode_error"
            raise ImageDecodeError(reason, str(error)) from error
        if image.mode != "RGB":
            image = image.convert("RGB")
        resized = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def _decode_chunk(chunk: list[bytes], image_size: int) -> list[Decoded]:
    """Decode a chunk (in a worker thread): each file's pixels or its ``ImageDecodeError``."""
    results: list[Decoded] = []
    for data in chunk:
        try:
            results.append(decode_image(data, image_size))
        except ImageDecodeError as error:
            results.append(error)
    return results


def _decoder_pool(file_count: int, workers: int | None) -> ThreadPoolExecutor | None:
    """A thread pool for large jobs (``workers`` defaults to every core), else None."""
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or file_count < _MIN_FILES_FOR_THREADS:
        return None
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")


class DecoderPool:
    """Decodes chunks of encoded images to ``image_size`` pixels, in order, on worker
    threads when about ``file_count`` files are expected (else in the calling thread).

    Use it as a context manager: leaving it waits for the threads and releases them.
    """

    def __init__(self, image_size: int, file_count: int, workers: int | None = None) -> None:
        self._decode = partial(_decode_chunk, image_size=image_size)
        self._executor = _decoder_pool(file_count, workers)

    def decode_chunks(self, chunks: Iterable[list[bytes]]) -> Iterator[list[Decoded]]:
        """Each chunk's outcomes, in the order given; with threads, all chunks start at once."""
        if self._executor is None:
            return map(self._decode, chunks)
        return self._executor.map(self._decode, chunks)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()

    def __enter__(self) -> DecoderPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def chunked(items: list, size: int = CHUNK_SIZE) -> list[list]:
    """``items`` cut into consecutive lists of ``size`` (the last one may be shorter)."""
    return [items[start : start + size] for start in range(0, len(items), size)]
