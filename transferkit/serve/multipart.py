"""A multipart/form-data body parsed as it streams in, within limits, into memory.

Starlette's form parser reads the whole body before the endpoint sees a part: file parts are spooled to
temporary files, and its ``max_files`` refusal is an HTTP 400 "cannot be parsed". Here the parts are kept in
memory as they arrive (the body is already limited by :class:`transferkit.serve.inputs.BodyLimit`), and a limit
is enforced the moment it is passed: one file part more than allowed raises :class:`TooManyFiles` before the
rest of the body is read, and a text field over its size raises :class:`FieldTooLarge`. The file parts of
fields the caller does not want (``keep``) are counted but their bytes are dropped.

python-multipart does the parsing (as Starlette's own parser does); this module imports nothing else of the
service, so :mod:`transferkit.serve.inputs` can turn its exceptions into answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

__all__ = ["Part", "MultipartError", "TooManyFiles", "FieldTooLarge", "stream_parts"]


class MultipartError(Exception):
    """The body is not well-formed multipart (the message says how)."""


class TooManyFiles(MultipartError):
    """More file parts than allowed; ``count`` is how many were seen when reading stopped."""

    def __init__(self, count: int) -> None:
        super().__init__(f"more than {count - 1} file parts")
        self.count = count


class FieldTooLarge(MultipartError):
    """A text field (or the number of them) over its limit."""


@dataclass
class Part:
    """One part: its field ``name``, ``filename`` (None for a text field) and bytes (empty when not kept)."""

    name: str
    filename: str | None
    data: bytearray = field(default_factory=bytearray)
    kept: bool = True


class _Collector:
    """python-multipart's callbacks, collecting parts within the limits."""

    def __init__(self, max_files: int, keep: Callable[[str], bool], max_field_bytes: int, max_fields: int) -> None:
        self.max_files, self.keep = max_files, keep
        self.max_field_bytes, self.max_fields = max_field_bytes, max_fields
        self.parts: list[Part] = []
        self.files = self.fields = 0
        self._header_name = self._header_value = b""
        self._disposition = b""

    def on_part_begin(self) -> None:
        self._disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise MultipartError('a part has no Content-Disposition name (form-data; name="file"; filename=...)')
        name = options[b"name"].decode("utf-8", "replace")
        filename = options[b"filename"].decode("utf-8", "replace") if b"filename" in options else None
        if filename is not None:
            self.files += 1
            if self.files > self.max_files:
                raise TooManyFiles(self.files)
        else:
            self.fields += 1
            if self.fields > self.max_fields:
                raise FieldTooLarge(f"more than {self.max_fields} text fields")
        self.parts.append(Part(name, filename, kept=filename is None or self.keep(name)))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        if not part.kept:
            return
        part.data += data[start:end]
        if part.filename is None and len(part.data) > self.max_field_bytes:
            raise FieldTooLarge(f"the text field {part.name!r} is over {self.max_field_bytes} bytes")

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data}


async def stream_parts(content_type: str, chunks: AsyncIterator[bytes], *, max_files: int,
                       keep: Callable[[str], bool], max_field_bytes: int = 64 * 1024,
                       max_fields: int = 100) -> list[Part]:
    """The parts of a multipart body read from ``chunks``, stopping at the first limit passed.

    Raises:
        TooManyFiles: at the ``max_files + 1``-th file part (the rest of the body is not read).
        FieldTooLarge: a text field over ``max_field_bytes``, or more than ``max_fields`` of them.
        MultipartError: a body that is not multipart (no boundary, malformed).
    """
    from python_multipart import MultipartParser
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartState, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise MultipartError("the Content-Type has no boundary")
    collector = _Collector(max_files, keep, max_field_bytes, max_fields)
    parser = MultipartParser(boundary, collector.callbacks())
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise MultipartError(f"malformed multipart data ({exc})") from None
    if parser.state != MultipartState.END:
        raise MultipartError(f"the body ended before its closing boundary (--{boundary.decode('latin-1')}--)")
    return collector.parts
