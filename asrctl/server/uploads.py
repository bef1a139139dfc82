"""Uploaded audio: read the multipart form, check the caps, decode off the event loop.

Only the bytes of the uploaded file are ever decoded; no field is taken as a path or URL.
Decoding goes through :mod:`asrctl.server.decoding`'s allowlist of containers and codecs
(never FFmpeg's probing), with the length cap enforced while decoding. Text payloads are
refused first with a clearer message than "not an accepted audio file".
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from asrctl.errors import AudioError
from asrctl.server.decoding import TooLong, decode_untrusted
from asrctl.server.errors import ApiError

MAX_FORM_FIELDS = 64
MAX_FIELD_BYTES = 64 << 10  # one non-file form field
TEXT_SNIFF_BYTES = 1024  # head of an upload inspected for text
_SAFE_NAME = re.compile(r"[^\w.\- ]+")


@dataclass(frozen=True)
class AudioLimits:
    """Caps on uploads, with the model's per-pass limit folded into ``max_seconds``."""

    max_bytes: int
    max_seconds: float
    model_title: str
    model_max_seconds: float | None  # the family's own per-pass limit

    def too_long(self, seconds: float, *, at_least: bool = False) -> ApiError:
        """The 413 for audio of ``seconds`` (or longer, ``at_least``)."""
        if self.model_max_seconds is not None and self.max_seconds >= self.model_max_seconds:
            why = (
                f"{self.model_title} accepts at most {self.max_seconds:g} s of audio per "
                "request (start the server with --vad to accept longer audio)"
            )
        else:
            why = f"this server accepts at most {self.max_seconds:g} s of audio per request"
        length = f"longer than {seconds:.1f} s" if at_least else f"{seconds:.1f} s"
        return ApiError(413, f"audio is {length}; {why}", param="file", code="audio_too_long")


async def read_form(request: Request) -> FormData:
    """The request's multipart form (400 if it is not one)."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise ApiError(
            400,
            f"expected a multipart/form-data body with a `file` field, got {kind or 'none'!r}",
            code="invalid_content_type",
        )
    return await request.form(
        max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES
    )


def form_text(form: FormData, name: str, default: str | None = None) -> str | None:
    """A text field (400 if a file was sent under that name)."""
    value = form.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"`{name}` must be a text field", param=name)
    return value


def form_list(form: FormData, names: Sequence[str]) -> list[str]:
    """Every text value sent under any of ``names`` (e.g. ``x[]`` and ``x``)."""
    values = [v for n in names for v in form.getlist(n)]
    if any(not isinstance(v, str) for v in values):
        raise ApiError(400, f"`{names[0]}` must be text fields", param=names[0])
    return [v for v in values if isinstance(v, str)]


def form_bool(form: FormData, name: str) -> bool:
    """A boolean text field (absent or empty: False; 400 if not a boolean)."""
    value = (form_text(form, name) or "").strip().lower()
    if value in ("", "false", "0", "no", "off"):
        return False
    if value in ("true", "1", "yes", "on"):
        return True
    raise ApiError(400, f"{name} must be true or false, not {value[:20]!r}", param=name)


def upload_name(upload: UploadFile) -> str:
    """A printable, bounded version of the client's file name, for messages only."""
    name = (upload.filename or "file").rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    return _SAFE_NAME.sub("_", name)[:80] or "file"


async def decode_upload(
    form: FormData,
    *,
    limits: AudioLimits,
    sample_rate: int,
    pool: Executor,
) -> np.ndarray:
    """Decode the form's ``file`` to float32 mono at ``sample_rate``, enforcing ``limits``.

    Raises:
        ApiError: 400 when the file is missing, empty, text or undecodable; 413 when it is
            larger or longer than the limits (the message states the limit).
    """
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "the audio goes in a multipart file field named `file`", param="file")
    data = await upload.read()
    return await decode_audio(
        data, upload_name(upload), limits=limits, sample_rate=sample_rate, pool=pool
    )


async def decode_audio(
    data: bytes,
    name: str,
    *,
    limits: AudioLimits,
    sample_rate: int,
    pool: Executor,
    param: str = "file",
) -> np.ndarray:
    """Decode an upload's bytes (``name``: for messages only) to float32 mono at
    ``sample_rate``, enforcing ``limits``; errors name ``param``.

    Raises:
        ApiError: 400 when the data is empty, text or undecodable; 413 when it is larger
            or longer than the limits (the message states the limit).
    """
    if not data:
        raise ApiError(400, f"{name}: the file is empty", param=param, code="invalid_audio")
    if len(data) > limits.max_bytes:
        raise ApiError(
            413,
            f"{name} is {len(data) / (1 << 20):.1f} MiB; the limit is "
            f"{limits.max_bytes / (1 << 20):g} MiB",
            param=param,
            code="file_too_large",
        )
    if looks_like_text(data[:TEXT_SNIFF_BYTES]):
        raise ApiError(
            400, f"{name}: this is text, not an audio file", param=param, code="invalid_audio"
        )
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(
            pool,
            lambda: decode_untrusted(
                data, sample_rate=sample_rate, key=name, max_seconds=limits.max_seconds
            ),
        )
    except AudioError as e:
        message = f"could not decode the audio: {e}"
        raise ApiError(400, message, param=param, code="invalid_audio") from None
    except TooLong as e:
        raise limits.too_long(e.seconds, at_least=e.at_least) from None


def looks_like_text(head: bytes) -> bool:
    """True for a head of bytes that is printable UTF-8 (audio containers are binary)."""
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the end
            return False
        text = head[: e.start].decode("utf-8")
    return all(c.isprintable() or c in "\r\n\t" for c in text)
