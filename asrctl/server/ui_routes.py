"""The web page on ``GET /`` and ``/ui``: drop a file or speak, watch the transcript.

The page is three static files shipped in the package (``asrctl/server/ui/``: no CDN, no
build step) plus an AudioWorklet. It talks to the server's own APIs only: uploads go to
``POST /v1/audio/transcriptions`` (``verbose_json``), the microphone streams 16 kHz PCM16
over ``/ws`` (FunASR's realtime protocol), and ``GET /ui/info`` tells it the model and the
limits. With ``--api-key`` the page asks for the key and keeps it in memory only; it is sent
as ``Authorization: Bearer`` and, for the WebSocket, as ``?api_key=``. ``serve --no-ui``
leaves this router out.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from asrctl.server import realtime
from asrctl.server.errors import ApiError
from asrctl.server.state import ServerState

# the files the page is made of, and their media types (nothing else is served)
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "mic-worklet.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page runs only its own scripts and styles; its data comes from this origin (the
# WebSocket too: ws: and wss: are listed because older browsers do not count them as
# 'self'); the uploaded file plays back from a blob: URL.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self' ws: wss:; worker-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@cache
def asset(name: str) -> bytes:
    return resources.files("asrctl.server").joinpath("ui", name).read_bytes()


@router.get("/")
@router.get("/ui")
@router.get("/ui/")
async def page() -> Response:
    return HTMLResponse(asset("index.html"), headers=HEADERS)


@router.get("/ui/info")
async def info(request: Request) -> dict:
    """What the page shows and needs: the model, its options and the server's limits.

    Behind the API key like ``/v1/models`` (401 without it, which tells the page to ask).
    """
    state: ServerState = request.app.state.asr
    if not state.authorized(request.headers):
        raise ApiError(401, "this server needs an API key", code="invalid_api_key")
    return server_info(state)


@router.get("/ui/{name}")
async def static(name: str) -> Response:
    if name not in ASSETS:
        raise ApiError(404, f"no such file: /ui/{name}", code="not_found")
    return Response(asset(name), media_type=ASSETS[name], headers=HEADERS)


def server_info(state: ServerState) -> dict:
    family = state.model.adapter.family
    live = state.options.realtime
    return {
        "models": list(state.names),
        "family": family.name,
        "title": family.title,
        "sample_rate": state.model.sample_rate,
        "languages": sorted(family.languages),
        "hotwords": family.chat_text == "hotwords",
        "word_timestamps": bool(state.model.word_timing),
        "speakers": family.writes_segments,
        "max_upload_mb": state.options.max_upload_mb,
        "max_audio_seconds": state.limits.max_seconds,
        "model_max_audio_seconds": family.max_audio_seconds,
        "vad": state.options.vad,
        "realtime": {
            "path": realtime.ENDPOINT,
            "sample_rate": realtime.PCM_RATE,
            "max_sessions": live.max_sessions,
            "idle_timeout_s": live.idle_timeout_s,
            "min_silence_s": live.min_silence_s,
        },
    }
