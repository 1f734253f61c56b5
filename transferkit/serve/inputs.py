"""What a prediction request may hold, read within limits, and the errors that say what to send instead.

Two request forms are accepted (anything else is answered 415):

* ``multipart/form-data`` with one or more file parts named ``file`` or ``files`` (``curl -F file=@a.jpg``),
  and optionally a ``top_k`` field;
* ``application/json``: ``{"images": [{"name": "a.jpg", "data": "<base64>"}], "top_k": 3}`` (``data`` may be a
  ``data:image/...;base64,`` URL).

The body is limited as it is read (:class:`BodyLimit`): a declared ``Content-Length`` over the limit is
refused before a byte of the body is read, and a body without one (chunked) is refused as soon as it passes
the limit. Nothing beyond the limit is kept in memory. Before the 413 goes out, up to :data:`DRAIN_BYTES` of
the rest are read and thrown away (for at most :data:`DRAIN_SECONDS`): closing a connection whose incoming
data is unread makes the kernel send a reset, which destroys the answer on its way to a client that is still
uploading (as nginx's "lingering close" avoids). Larger bodies get the 413 at once.
A file part's declared content type is not trusted either way: the bytes decide (:mod:`transferkit.data.decode`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, MutableMapping

from transferkit.errors import TransferKitError

__all__ = ["RequestError", "BodyLimit", "Upload", "read_uploads", "parse_top_k", "image_error", "ACCEPTED",
           "CURL_EXAMPLE", "DRAIN_BYTES", "DRAIN_SECONDS"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ACCEPTED = "multipart/form-data (file parts named 'file' or 'files') or application/json ({\"images\": [{\"name\", \"data\": base64}]})"
CURL_EXAMPLE = "curl -F file=@photo.jpg http://HOST:PORT/v1/predict"
FORMATS = "a JPEG, PNG, BMP, GIF, WebP or TIFF image"
DRAIN_BYTES = 64 * 2 ** 20  # the most of a refused body read (and discarded) so that the client sees the 413
DRAIN_SECONDS = 10.0


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
            await _send_json(send, 413, {"error": too_large(self.max_bytes, int(declared)).message})
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
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


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    """A complete JSON response that also closes the connection (the unread body is never read)."""
    body = json.dumps(payload).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
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
    try:
        k = int(value)
        if isinstance(value, float) and value != k:
            raise ValueError
    except (TypeError, ValueError):
        raise RequestError(422, f"top_k={value!r} is not a whole number; pass how many classes to return, "
                                f"e.g. top_k=3 (the model has {n_classes})") from None
    if isinstance(value, bool) or k < 1:
        raise RequestError(422, f"top_k={value!r} must be at least 1; pass e.g. top_k=3 (the model has {n_classes} classes)")
    return min(k, n_classes)


async def read_uploads(request: Any, max_images: int) -> tuple[list[Upload], Any]:
    """The images of a prediction request and its ``top_k`` (None when not given), or a RequestError."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        uploads, top_k = await _read_multipart(request, max_images)
    elif media == "application/json" or media.endswith("+json"):
        uploads, top_k = _read_json(await request.body())
    elif not media and not await request.body():
        raise RequestError(400, f"the request is empty; send images as {ACCEPTED}, e.g. `{CURL_EXAMPLE}`")
    else:
        shown = repr(content_type) if content_type else "no Content-Type"
        form = (" (an HTML form sends files only with enctype=\"multipart/form-data\")"
                if media == "application/x-www-form-urlencoded" else "")
        raise RequestError(415, f"a request with {shown} cannot be read{form}; send {ACCEPTED}, e.g. `{CURL_EXAMPLE}`")
    query_top_k = request.query_params.get("top_k")
    if not uploads:
        raise RequestError(400, f"the request holds no images; send {ACCEPTED}, e.g. `{CURL_EXAMPLE}`")
    if len(uploads) > max_images:
        raise RequestError(413, f"the request holds {len(uploads)} images; the limit is {max_images} per request. "
                                "Split them into several requests (they are batched together on the server anyway), "
                                "or start the server with a larger --max-images")
    return uploads, query_top_k if query_top_k is not None else top_k


async def _read_multipart(request: Any, max_images: int) -> tuple[list[Upload], Any]:
    from starlette.exceptions import HTTPException

    try:
        form = await request.form(max_files=max_images + 1, max_fields=100)
    except HTTPException as exc:  # starlette's MultiPartException, already turned into a 400
        raise RequestError(400, f"the multipart body cannot be parsed ({exc.detail}); send file parts named "
                                f"'file' or 'files', e.g. `{CURL_EXAMPLE}`") from None
    try:
        parts = form.getlist("file") + form.getlist("files")
        texts = [value for value in parts if isinstance(value, str)]
        if texts:
            raise RequestError(422, "the 'file'/'files' field holds text, not a file; send each image as a file part "
                                    f"(`curl -F file=@photo.jpg`, not `-F file=photo.jpg`)")
        if not parts:
            other = sorted({key for key, value in form.multi_items() if not isinstance(value, str)})
            hint = f" (found file field(s) {', '.join(map(repr, other))})" if other else ""
            raise RequestError(400, f"the multipart body holds no field named 'file' or 'files'{hint}; name the "
                                    f"image field 'file' (one) or 'files' (several), e.g. `{CURL_EXAMPLE}`")
        uploads = []
        for i, part in enumerate(parts):
            uploads.append(Upload(part.filename or f"file-{i + 1}", await part.read()))
        return uploads, form.get("top_k")
    finally:
        await form.close()


def _read_json(body: bytes) -> tuple[list[Upload], Any]:
    example = '{"images": [{"name": "a.jpg", "data": "<base64 of the file>"}], "top_k": 3}'
    if not body:
        raise RequestError(400, f"the JSON request is empty; send {example}")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not valid JSON ({exc}); send {example}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise RequestError(422, f"the JSON body needs a list under \"images\"; send {example}")
    uploads = []
    for i, entry in enumerate(payload["images"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), str):
            raise RequestError(422, f"images[{i}] needs a \"data\" string (the file's bytes in base64); send {example}")
        name = entry.get("name")
        uploads.append(_from_base64(str(name) if name not in (None, "") else f"image-{i + 1}", entry["data"]))
    return uploads, payload.get("top_k")


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
    elif reason.startswith("image too large"):
        fix = "downscale it (e.g. to 4000 px on the longer side) and send it again"
    elif reason.startswith("image too small"):
        fix = "send a photo, not an icon or a tracking pixel"
    elif reason.startswith("empty file"):
        fix = "the upload held no bytes: check the file you picked"
    else:
        fix = f"send {FORMATS}"
    return f"{reason}; {fix}"
