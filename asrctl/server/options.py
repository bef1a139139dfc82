"""Server settings, validated once (``ServerOptions._verify``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from asrctl.errors import OptionsError
from asrctl.pipeline import ENCODER_BATCH_SECONDS, SamplingOverride, resolve_encoder_dtype

# Most utterances per audio-encoder pass under load. A lone request is encoded alone (the
# batcher takes what is queued), so this bounds a pass, not a wait. Round 11 (H100, c=128,
# 16 a pass): the encoder thread was busy 99 % of the wall time and vLLM ran ~27
# sequences a step, so the server encodes larger passes, within ENCODER_BATCH_SECONDS.
SERVER_ENCODER_BATCH_SIZE = 64
# Small encoder passes replayed as CUDA graphs (Fun-ASR-Nano on a GPU): one 5 s clip's p50
# at c=1 76.6 ms against 137.2 ms eager on an H100 (BENCHMARKS.md, round 13).
SERVER_ENCODER_GRAPHS = True

MIB = 1 << 20


@dataclass(frozen=True)
class RealtimeOptions:
    """How ``/ws`` sessions decode live audio.

    Attributes:
        first_partial_s: audio of an utterance before its first partial result.
        partial_interval_s: new audio between partial re-decodes of the open utterance.
        partial_max_tokens: token cap of a partial decode (the locked decode uses the
            request default).
        energy_threshold_db: frames louder than this (dBFS, RMS) count as speech.
        min_speech_s: speech needed to open an utterance.
        min_silence_s: silence that closes (locks) an utterance.
        speech_pad_s: audio kept before an utterance's first speech frame.
        max_utterance_s: an utterance is cut here even without silence (None: the
            model's own per-pass limit, else 20 s).
        max_sessions: most ``/ws`` sessions open at once; more are refused (503) before
            the upgrade (None: no cap).
        idle_timeout_s: a session that sends nothing (no audio, no command) for this long
            gets an error event and is closed.
    """

    first_partial_s: float = 0.48
    partial_interval_s: float = 0.96
    partial_max_tokens: int = 200
    energy_threshold_db: float = -40.0
    min_speech_s: float = 0.15
    min_silence_s: float = 0.5
    speech_pad_s: float = 0.2
    max_utterance_s: float | None = None
    max_sessions: int | None = 100
    idle_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_sessions is not None and self.max_sessions < 1:
            raise OptionsError("--ws-max-sessions must be at least 1")
        if not self.idle_timeout_s > 0:
            raise OptionsError("--ws-idle-timeout must be greater than 0")


@dataclass(frozen=True)
class ServerOptions:
    """What ``asrctl serve`` listens on, accepts and how it batches.

    Attributes:
        host: interface to bind.
        port: TCP port.
        served_model_names: names clients pass as ``model`` (empty: the model folder's
            name). The first is the default when a request names none.
        api_keys: accepted ``Authorization: Bearer`` keys (empty: no authentication).
        max_upload_mb: largest accepted upload, in MiB (the request body, compressed).
        max_audio_seconds: longest accepted audio (None: the model's own per-pass limit;
            never more than it).
        batch_window_ms: how long the encoder waits for more requests to batch with.
        encoder_batch_size: most utterances per audio-encoder forward pass.
        encoder_batch_seconds: most padded audio (utterances x the longest) per encoder
            pass, in seconds; the batch path's default, which bounds the encoder's memory.
        encoder_graphs: replay the audio encoder's small passes as CUDA graphs
            (Fun-ASR-Nano on a GPU; elsewhere the encoder runs eagerly).
        max_tokens: cap on generated tokens per request (None: the family's default).
        shutdown_timeout_s: how long a shutdown waits for in-flight requests.
        device: device of the audio encoder (None: cuda if available, else cpu).
        encoder_dtype: precision of the audio encoder (float32 or bfloat16).
        cache_dir: where LLM exports live (see ``asrctl setup``).
        realtime: settings of ``/ws`` sessions.
        vad: accept uploads longer than the model's per-pass limit, split them at pauses
            (Silero VAD) and stitch the texts back (segments with their times).
        sampling_override: decoding settings pinned by the operator; they beat what
            clients send, on every endpoint.
        allowed_local_media_path: chat requests may name ``file://`` audio under this
            folder (None: never; the server reads no path a request names otherwise).
        embedding_cache_mb: memory for the audio embeddings of recent requests, so the
            same audio sent again is not encoded again (0: no cache).
        ui: serve the web page on ``/`` and ``/ui`` (``--no-ui``: off).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_names: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()
    max_upload_mb: float = 25.0
    max_audio_seconds: float | None = None
    batch_window_ms: float = 10.0
    encoder_batch_size: int = SERVER_ENCODER_BATCH_SIZE
    encoder_batch_seconds: float = ENCODER_BATCH_SECONDS
    encoder_graphs: bool = SERVER_ENCODER_GRAPHS
    max_tokens: int | None = None
    shutdown_timeout_s: float = 30.0
    device: str | None = None
    encoder_dtype: str = "auto"
    cache_dir: Path | None = None
    realtime: RealtimeOptions = field(default_factory=RealtimeOptions)
    vad: bool = False
    sampling_override: SamplingOverride = field(default_factory=SamplingOverride)
    allowed_local_media_path: Path | None = None
    embedding_cache_mb: float = 256.0
    ui: bool = True

    def __post_init__(self) -> None:
        self._verify()

    def _verify(self) -> None:
        if not 0 < self.port < 65536:
            raise OptionsError(f"--port must be 1-65535, not {self.port}")
        if self.max_upload_mb <= 0:
            raise OptionsError("--max-upload-mb must be positive")
        if self.max_audio_seconds is not None and self.max_audio_seconds <= 0:
            raise OptionsError("--max-audio-seconds must be positive")
        if not 0 <= self.batch_window_ms <= 1000:
            raise OptionsError("--batch-window-ms must be between 0 and 1000")
        if self.embedding_cache_mb < 0:
            raise OptionsError("--embedding-cache-mb must be 0 or more")
        if self.encoder_batch_size < 1:
            raise OptionsError("--encoder-batch-size must be at least 1")
        if self.encoder_batch_seconds < 1:
            raise OptionsError("--encoder-batch-seconds must be at least 1")
        resolve_encoder_dtype(self.encoder_dtype)  # fails fast, naming the choices
        if self.max_tokens is not None and self.max_tokens < 1:
            raise OptionsError("--max-tokens must be at least 1")
        if any(not k.strip() for k in self.api_keys):
            raise OptionsError("--api-key (or $ASRCTL_API_KEY) must not be empty or blank")
        if any(len(k.split()) != 1 or k != k.strip() for k in self.api_keys):
            raise OptionsError(
                "an API key (--api-key or $ASRCTL_API_KEY) must not contain whitespace",
                hint="pass several keys as repeated --api-key options",
            )
        media = self.allowed_local_media_path
        if media is not None and not media.is_dir():
            raise OptionsError(f"--allowed-local-media-path {media} is not a folder")
        if any(not n.strip() for n in self.served_model_names):
            raise OptionsError("--served-model-name must not be empty")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)
