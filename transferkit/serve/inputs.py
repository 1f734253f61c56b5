"""What a prediction request may hold, read within limits, and the errors that say what to send instead.

Two request forms are accepted (anything else is answered 415):

* ``multipart/form-data`` with one or more file parts named ``file`` or ``files`` (``curl -F file=@a.jpg``),
  and optionally a ``top_k`` field;
* ``application/json``: ``{"images": [{"name": "a.jpg", "data": "<base64>"}], "top_k": 3}`` (``data`` may be a
  ``data:image/...;base64,`` URL).

The body is limited as it is read (:class:`BodyLimit`): a declared ``Content-Length`` over the limit is
refused before a byte of the body is read, and a body without one (chunked) is refused as soon as it passes
the limit; a body that stalls for :data:`BODY_IDLE_SECONDS` is refused with 408. Nothing beyond the limit is
kept in memory, and multipart bodies are parsed as they stream in (:mod:`transferkit.serve.multipart`): one
file part more than allowed is refused before the rest is read. Before a 413 for a declared length goes out,
up to :data:`DRAIN_BYTES` of the rest are read and thrown away (for at most :data:`DRAIN_SECONDS`): closing a connection whose incoming
data is unread makes the kernel send a reset, which destroys the answer on its way to a client that is still
uploading (as nginx's "lingering close" avoids). Larger bodies get the 413 at once.
A file part's declared content type is not trusted either way: the bytes decide (:mod:`transferkit.data.decode`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, MutableMapping

from transferkit.errors import TransferKitError

__all__ = ["RequestError", "BodyLimit", "Upload", "read_uploads", "parse_top_k", "image_error", "ACCEPTED",
           "CURL_EXAMPLE", "DRAIN_BYTES", "DRAIN_SECONDS", "BODY_IDLE_SECONDS", "send_json", "DEFAULT_MAX_UPLOAD_BYTES",
           "DEFAULT_MAX_IMAGES", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_REQUEST_PIXELS", "DEFAULT_MAX_CONCURRENCY",
           "DEFAULT_MAX_PENDING"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ACCEPTED = "multipart/form-data (file parts named 'file' or 'files') or application/json ({\"images\": [{\"name\", \"data\": base64}]})"
CURL_EXAMPLE = "curl -F file=@photo.jpg http://HOST:PORT/v1/predict"
FORMATS = "a JPEG, PNG, BMP, GIF, WebP or TIFF image"
# The service's default limits, read by the CLI, the worker settings and the app (this module stays light: the
# CLI's --help imports it). Why each value: README's serve section and transferkit.serve.app.
DEFAULT_MAX_UPLOAD_BYTES = 20 * 2 ** 20
DEFAULT_MAX_IMAGES = 64
DEFAULT_MAX_PIXELS = 4096 * 4096  # transferkit.data.decode.DEFAULT_MAX_PIXELS (not imported: it loads numpy)
DEFAULT_MAX_REQUEST_PIXELS = 64 * 2 ** 20
DEFAULT_MAX_CONCURRENCY = 16
DEFAULT_MAX_PENDING = 256
DRAIN_BYTES = 64 * 2 ** 20  # the most of a refused body read (and discarded) so that the client sees the 413
DRAIN_SECONDS = 10.0
BODY_IDLE_SECONDS = 30.0  # the longest pause while a body streams in before it is refused (408)


class RequestError(TransferKitError):
    """A request the service refuses: ``status`` is the HTTP status, the message names the problem and the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _mb(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MB" if n >= 2 ** 20 else f"{n} bytes"


def too_large(limit: int, declared: int | None = None) -> RequestError:
    size = f"declares {_mb(declared)}" if declared is not None else "is larger than allowed"
    return RequestError(413, f"the request body {size}; the limit is {_mb(limit)} per request. Send fewer or "
                             "smaller images per request (a photo downscaled to ~2000 px is plenty for the model), "
                             "or start the server with a larger --max-upload-mb")


class BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` (413), by their ``Content-Length`` before reading,
    else while reading (the endpoint's read raises :class:`RequestError`, answered by the app's handler)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= DRAIN_BYTES:
                await _drain(receive, DRAIN_BYTES)
            await send_json(send, 413, {"error": too_large(self.max_bytes, int(declared)).message}, close=True)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), BODY_IDLE_SECONDS)
            except asyncio.TimeoutError:
                raise RequestError(408, f"the request body stopped arriving for {BODY_IDLE_SECONDS:g} s after "
                                        f"{_mb(received)}; send the whole request at once") from None
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await _drain(receive, DRAIN_BYTES - received)
                    raise too_large(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


async def _drain(receive: Receive, budget: int) -> None:
    """Read and discard the rest of a refused body (at most ``budget`` bytes, ``DRAIN_SECONDS``)."""
    async def discard() -> None:
        left = budget
        while left > 0:
            message = await receive()
            if message.get("type") != "http.request" or not message.get("more_body", False):
                return
            left -= len(message.get("body", b""))

    try:
        await asyncio.wait_for(discard(), DRAIN_SECONDS)
    except asyncio.TimeoutError:
        pass


async def send_json(send: Send, status: int, payload: dict[str, Any], *, close: bool = False,
                    headers: dict[str, str] | None = None) -> None:
    """A complete JSON response from middleware; ``close``: the connection closes after it (its body unread)."""
    body = json.dumps(payload).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(b"connection", b"close")] if close else []
    raw += [(key.lower().encode("latin-1"), value.encode("latin-1")) for key, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Upload:
    """One image of a request: its bytes, or why there are none (``error``, e.g. bad base64)."""

    name: str
    data: bytes | None = None
    error: str | None = None


def parse_top_k(value: Any, default: int, n_classes: int) -> int:
    """``top_k`` from the query, form or JSON: a whole number >= 1, clipped to the number of classes."""
    if value is None or value == "":
        return max(1, min(default, n_classes))
    example = f"pass how many classes to return, e.g. top_k=3 (the model has {n_classes})"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(422, f"top_k={_shown(value)} is not a whole number; {example}")
    try:
        if isinstance(value, str):
            value = value.strip()
            number = int(value) if value.lstrip("+-").isdigit() and len(value) <= 20 else float(value)
        else:
            number = value
        if isinstance(number, float) and (not math.isfinite(number) or number != int(number)):
            raise ValueError(value)
        k = int(number)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(422, f"top_k={_shown(value)} is not a whole number; {example}") from None
    if k < 1:
        raise RequestError(422, f"top_k={_shown(value)} must be at least 1; {example}")
    return min(k, n_classes)


def _shown(value: Any) -> str:
    """A client's value for an error message, cut short (a 5000-digit number is not worth echoing)."""
    return _cut(repr(value), 40)


async def read_uploads(request: Any, max_images: int) -> tuple[list[Upload], Any]:
    """The images of a prediction request and its ``top_k`` (None when not given), or a RequestError."""
    from starlette.requests import ClientDisconnect

    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    try:
        if media == "multipart/form-data":
            uploads, top_k = await _read_multipart(request, content_type, max_images)
        elif media == "application/json" or media.endswith("+json"):
            uploads, top_k = _read_json(await request.body())
        elif not media and not await request.body():
            raise RequestError(400, f"the request is empty; send images as {ACCEPTED}, e.g. `{CURL_EXAMPLE}`")
        else:
            raise _unreadable(media, content_type)
    except ClientDisconnect:  # nobody is left to read an answer; not a server error either
        raise RequestError(400, "the client disconnected before the request body was complete") from None
    query_top_k = request.query_params.get("top_k")
    if not uploads:
        raise RequestError(400, f"the request holds no images; send {ACCEPTED}, e.g. `{CURL_EXAMPLE}`")
    if len(uploads) > max_images:
        raise too_many_images(len(uploads), max_images)
    return uploads, query_top_k if query_top_k is not None else top_k


def _unreadable(media: str, content_type: str) -> RequestError:
    """415 for a body that is neither multipart nor JSON (its body is not read)."""
    shown = repr(content_type) if content_type else "no Content-Type"
    form = (" (an HTML form sends files only with enctype=\"multipart/form-data\")"
            if media == "application/x-www-form-urlencoded" else "")
    return RequestError(415, f"a request with {shown} cannot be read{form}; send {ACCEPTED}, e.g. `{CURL_EXAMPLE}`")


def too_many_images(count: int | str, max_images: int) -> RequestError:
    return RequestError(413, f"the request holds {count} images; the limit is {max_images} per request. Split them "
                             "into several requests (they are batched together on the server anyway), or start the "
                             "server with a larger --max-images")


async def _read_multipart(request: Any, content_type: str, max_images: int) -> tuple[list[Upload], Any]:
    """File parts named file/files, streamed into memory; one part more than ``max_images`` is 413 at once."""
    from transferkit.serve.multipart import FieldTooLarge, MultipartError, TooManyFiles, stream_parts

    try:
        parts = await stream_parts(content_type, request.stream(), max_files=max_images,
                                   keep=lambda name: name in ("file", "files"))
    except TooManyFiles:
        raise too_many_images(f"more than {max_images}", max_images) from None
    except FieldTooLarge as exc:
        raise RequestError(413, f"the multipart body has {exc}; send the images as file parts named 'file' or "
                                f"'files' and at most a top_k field, e.g. `{CURL_EXAMPLE}`") from None
    except MultipartError as exc:
        raise RequestError(400, f"the multipart body cannot be parsed ({exc}); send file parts named "
                                f"'file' or 'files', e.g. `{CURL_EXAMPLE}`") from None
    images = [part for part in parts if part.name in ("file", "files")]
    if any(part.filename is None for part in images):
        raise RequestError(422, "the 'file'/'files' field holds text, not a file; send each image as a file part "
                                "(`curl -F file=@photo.jpg`, not `-F file=photo.jpg`)")
    if not images:
        other = sorted({part.name for part in parts if part.filename is not None})
        hint = f" (found file field(s) {', '.join(map(repr, other))})" if other else ""
        raise RequestError(400, f"the multipart body holds no field named 'file' or 'files'{hint}; name the "
                                f"image field 'file' (one) or 'files' (several), e.g. `{CURL_EXAMPLE}`")
    top_k = next((part.data.decode("utf-8", "replace") for part in parts if part.name == "top_k"
                  and part.filename is None), None)
    return [Upload(part.filename or f"file-{i + 1}", bytes(part.data)) for i, part in enumerate(images)], top_k


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (only finite numbers are)")


def _read_json(body: bytes) -> tuple[list[Upload], Any]:
    example = '{"images": [{"name": "a.jpg", "data": "<base64 of the file>"}], "top_k": 3}'
    if not body:
        raise RequestError(400, f"the JSON request is empty; send {example}")
    try:
        payload = json.loads(body, parse_constant=_no_constants)
    except RecursionError:
        raise RequestError(400, f"the JSON body is nested too deeply; send {example}") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, NaN/Infinity, a number of 4300+ digits
        detail = "a number has thousands of digits" if "digits" in str(exc) else _cut(str(exc))
        raise RequestError(400, f"the body is not valid JSON ({detail}); send {example}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise RequestError(422, f"the JSON body needs a list under \"images\"; send {example}")
    uploads = []
    for i, entry in enumerate(payload["images"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), str):
            raise RequestError(422, f"images[{i}] needs a \"data\" string (the file's bytes in base64); send {example}")
        name = entry.get("name")
        if name is not None and not isinstance(name, (str, int, float)):
            raise RequestError(422, f"images[{i}].name must be a string (the file's name); send {example}")
        uploads.append(_from_base64(_cut(str(name), 200) if name not in (None, "") else f"image-{i + 1}", entry["data"]))
    return uploads, payload.get("top_k")


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _from_base64(name: str, text: str) -> Upload:
    if text.startswith("data:") and "," in text[:200]:  # a data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    try:
        return Upload(name, base64.b64decode("".join(text.split()), validate=True))
    except (binascii.Error, ValueError) as exc:
        return Upload(name, error=f"\"data\" is not valid base64 ({exc}); encode the file's bytes with standard "
                                  "base64 (e.g. `base64 -w0 photo.jpg`, or btoa / FileReader.readAsDataURL in a browser)")


def image_error(reason: str) -> str:
    """A decoder's reason (``transferkit.data.decode``) with what to do about it."""
    if reason.startswith("not an image"):
        fix = f"send {FORMATS}"
    elif reason.startswith("truncated or corrupt"):
        fix = "the file is damaged or incomplete: send the complete file (re-save it if it opens elsewhere)"
    elif reason.startswith("image too large to decode"):
        return reason  # names the limit and the fixes itself
    elif reason.startswith("image too large"):
        fix = "downscale it (e.g. to 4000 px on the longer side) and send it again"
    elif reason.startswith("image too small"):
        fix = "send a photo, not an icon or a tracking pixel"
    elif reason.startswith("empty file"):
        fix = "the upload held no bytes: check the file you picked"
    else:
        fix = f"send {FORMATS}"
    return f"{reason}; {fix}"
