"""Uploaded bytes → pixels, with every limit checked before the expensive step.

- The body is read in memory up to ``max_bytes`` (413 beyond; a declared ``Content-Length`` over the limit
  is refused before a byte is read). Multipart bodies are parsed in memory too: nothing touches the disk,
  and no name sent by a client is ever used as a path (the file name is only echoed back, shortened).
- Images are opened with Pillow restricted to the formats ``anomalens`` reads from folders (PNG, JPEG,
  BMP, TIFF, WebP): no other decoder — a PostScript one that starts Ghostscript, say — is reachable.
- Width × height is checked from the header before the pixels are decoded (a decompression bomb is
  refused without allocating its frame), and Pillow's own bomb check stays on.
- Every failure is an :class:`UploadError` carrying the HTTP status and one line for the client.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import AsyncIterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomalens.data.io import SUPPORTED_FORMATS, pil_to_float, supported_formats
from anomalens.errors import DataError

#: Pillow format names accepted: the suffixes ``anomalens`` reads from folders (MPO: multi-picture JPEG, a
#: separate opener in older Pillow releases, part of JPEG's since).
ACCEPTED_FORMATS = SUPPORTED_FORMATS  # one list with predict (anomalens.data.io)
MAX_NAME = 120


class UploadError(Exception):
    """A request the service refuses: ``status`` (400, 413, ...) and a one-line ``message``; ``close``: the
    connection is closed after the answer (the body was not read to its end); ``headers``: more headers."""

    def __init__(self, status: int, message: str, close: bool = False,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        if close:
            self.headers["Connection"] = "close"


class ClientGone(UploadError):
    """The client disconnected before its body was complete: nobody is left to answer (status 499, nginx's
    "client closed request", only ever seen in the server's counters)."""

    def __init__(self) -> None:
        super().__init__(499, "the client disconnected before its request body was complete", close=True)


@dataclass
class Upload:
    """One uploaded file: its bytes and the (display-only) name the client gave it."""

    name: str
    data: bytes


def clean_name(name: str | None, default: str) -> str:
    """The client's file name for display only: last path component, printable, at most ``MAX_NAME`` chars."""
    if not name:
        return default
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return (name[:MAX_NAME] or default)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.3g} MB"


async def read_body(headers: dict[str, str], chunks: AsyncIterator[bytes], max_bytes: int) -> bytes:
    """The whole request body, or UploadError(413) as soon as it is known to exceed ``max_bytes``;
    :class:`ClientGone` when the client disconnects before its end."""
    from starlette.requests import ClientDisconnect

    declared = headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise UploadError(400, "invalid Content-Length header", close=True) from None
        if length > max_bytes:
            raise UploadError(413, f"upload of {_megabytes(length)} exceeds the limit of {_megabytes(max_bytes)}",
                              close=True)
    body = bytearray()
    try:
        async for chunk in chunks:
            body += chunk
            if len(body) > max_bytes:
                raise UploadError(413, f"upload exceeds the limit of {_megabytes(max_bytes)}", close=True)
    except ClientDisconnect:
        raise ClientGone() from None
    return bytes(body)


def parse_multipart(content_type: str, body: bytes, max_files: int) -> list[Upload]:
    """The file parts of a multipart/form-data ``body`` (fields without a file name are ignored)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart body without a boundary in its Content-Type")
    uploads: list[Upload] = []
    state: dict = {}

    def on_part_begin() -> None:
        state.update(headers={}, field=b"", value=b"", data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"] += data[start:end]

    def on_part_end() -> None:
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        if b"filename" not in disposition:
            return  # a plain form field
        if len(uploads) >= max_files:
            raise UploadError(400, f"too many files in one request (at most {max_files})")
        raw_name = disposition[b"filename"].decode("utf-8", "replace")
        uploads.append(Upload(clean_name(raw_name, f"image {len(uploads) + 1}"), bytes(state["data"])))

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                 "on_header_value": on_header_value, "on_header_end": on_header_end,
                 "on_part_data": on_part_data, "on_part_end": on_part_end}
    parser = MultipartParser(boundary, callbacks)
    try:
        parser.write(body)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # python-multipart's MultipartParseError and friends
        raise UploadError(400, f"malformed multipart body: {_first_line(exc)}") from None
    return uploads





def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image's header — nothing decoded — or None when the header cannot be read
    (then decoding it fails with its own message)."""
    if not data:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=supported_formats()) as img:
                width, height = img.size
    except Exception:  # noqa: BLE001 - not an image / a corrupt header: decode_image says which
        return None
    return int(width), int(height)


def _orientation(img: Image.Image) -> int | None:
    """The EXIF Orientation tag (1–8) of the file, or None. It is reported, never applied (see decode_upload)."""
    try:
        value = img.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block does not make the pixels unusable
        return None
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def decode_image(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Uploaded bytes → the pixels ``anomalens.data.io.read_pixels`` gives for the same file: uint8 (H, W) or
    (H, W, 3) for plain 8-bit grey / RGB, else float32 (H, W, 1|3) in [0, 1] (alpha composited)."""
    return decode_upload(data, name, max_pixels)[0]


def decode_upload(data: bytes, name: str, max_pixels: int) -> tuple[np.ndarray, int | None]:
    """(the pixels of :func:`decode_image`, the file's EXIF orientation tag or None).

    The orientation is **not applied**: the service scores the pixels as stored, as ``anomalens predict``,
    ``fit`` and an export do (``anomalens.data.io``), and its regions and heatmap are in that pixel grid; the
    operator page draws the image as stored too (CSS ``image-orientation: none``)."""
    if not data:
        raise UploadError(400, f"{name}: empty upload (no image data)")
    formats = supported_formats()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=formats)
            width, height = img.size
            if width < 1 or height < 1:
                raise UploadError(400, f"{name}: image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise UploadError(400, f"{name}: image too large: {width}x{height} pixels exceeds the limit of "
                                       f"{max_pixels} pixels (decompression bomb?)")
            img.load()
            orientation = _orientation(img)
            if img.mode in ("L", "RGB"):
                return np.asarray(img), orientation
            return pil_to_float(img, name), orientation
    except UploadError:
        raise
    except DataError as exc:  # pixels anomalens refuses (e.g. 32-bit values outside 0..65535): names the file
        raise UploadError(400, _first_line(exc)) from None
    except UnidentifiedImageError:
        raise UploadError(400, f"{name}: not an image, or one with a corrupt header (accepted formats: PNG, JPEG, BMP, "
                                "TIFF, WebP)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadError(400, f"{name}: image too large ({_first_line(exc)})") from None
    except MemoryError:
        raise UploadError(400, f"{name}: image too large to decode") from None
    except Exception as exc:  # corrupt / truncated data: Pillow raises OSError, SyntaxError, ValueError, ...
        raise UploadError(400, f"{name}: cannot decode image: {_first_line(exc)}") from None
