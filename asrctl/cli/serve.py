"""``asrctl serve --model DIR``: the OpenAI-compatible transcription server."""

from __future__ import annotations

import os
from dataclasses import replace

from asrctl.cli._options import (
    AllowedMediaOpt,
    ApiKeyOpt,
    BatchWindowMsOpt,
    CacheDirOpt,
    DeviceOpt,
    DtypeOpt,
    EmbeddingCacheMbOpt,
    EncoderBatchSecondsOpt,
    EncoderBatchSizeOpt,
    EncoderDtypeOpt,
    EncoderGraphsOpt,
    EnforceEagerOpt,
    GpuMemOpt,
    HostOpt,
    MaxAudioSecondsOpt,
    MaxModelLenOpt,
    MaxNumSeqsOpt,
    MaxTokensOpt,
    MaxUploadMbOpt,
    ModelOpt,
    PortOpt,
    SamplingOverrideOpt,
    ServeDataParallelOpt,
    ServedModelNameOpt,
    ServeVadOpt,
    ShutdownTimeoutOpt,
    TensorParallelOpt,
    UiOpt,
    WsIdleTimeoutOpt,
    WsMaxSessionsOpt,
)
from asrctl.pipeline import ENCODER_BATCH_SECONDS
from asrctl.server.options import SERVER_ENCODER_BATCH_SIZE, SERVER_ENCODER_GRAPHS

API_KEY_ENV = "ASRCTL_API_KEY"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def serve(
    model: ModelOpt,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    served_model_name: ServedModelNameOpt = None,
    api_key: ApiKeyOpt = None,
    max_upload_mb: MaxUploadMbOpt = 25.0,
    max_audio_seconds: MaxAudioSecondsOpt = None,
    batch_window_ms: BatchWindowMsOpt = 10.0,
    encoder_batch_size: EncoderBatchSizeOpt = SERVER_ENCODER_BATCH_SIZE,
    encoder_batch_seconds: EncoderBatchSecondsOpt = ENCODER_BATCH_SECONDS,
    encoder_graphs: EncoderGraphsOpt = SERVER_ENCODER_GRAPHS,
    max_tokens: MaxTokensOpt = None,
    shutdown_timeout: ShutdownTimeoutOpt = 30.0,
    device: DeviceOpt = None,
    encoder_dtype: EncoderDtypeOpt = "auto",
    cache_dir: CacheDirOpt = None,
    dtype: DtypeOpt = "auto",
    tensor_parallel_size: TensorParallelOpt = 1,
    gpu_memory_utilization: GpuMemOpt = None,
    max_model_len: MaxModelLenOpt = None,
    max_num_seqs: MaxNumSeqsOpt = None,
    enforce_eager: EnforceEagerOpt = False,
    vad: ServeVadOpt = False,
    sampling_override: SamplingOverrideOpt = None,
    allowed_local_media_path: AllowedMediaOpt = None,
    ws_max_sessions: WsMaxSessionsOpt = 100,
    ws_idle_timeout: WsIdleTimeoutOpt = 60.0,
    embedding_cache_mb: EmbeddingCacheMbOpt = 256.0,
    ui: UiOpt = True,
    data_parallel: ServeDataParallelOpt = 1,
) -> None:
    """Serve a model over HTTP (OpenAI /v1/audio/transcriptions, FunASR /asr) and WebSocket."""
    from asrctl.cli import _output
    from asrctl.cli._common import engine_options
    from asrctl.pipeline import SamplingOverride
    from asrctl.server.app import serve as run_server
    from asrctl.server.options import RealtimeOptions, ServerOptions

    options = ServerOptions(
        host=host,
        port=port,
        served_model_names=tuple(served_model_name or ()),
        api_keys=api_keys(api_key),
        max_upload_mb=max_upload_mb,
        max_audio_seconds=max_audio_seconds,
        batch_window_ms=batch_window_ms,
        encoder_batch_size=encoder_batch_size,
        encoder_batch_seconds=encoder_batch_seconds,
        encoder_graphs=encoder_graphs,
        max_tokens=max_tokens,
        shutdown_timeout_s=shutdown_timeout,
        device=device,
        encoder_dtype=encoder_dtype,
        cache_dir=cache_dir,
        vad=vad,
        allowed_local_media_path=allowed_local_media_path,
        sampling_override=(
            SamplingOverride.parse(sampling_override) if sampling_override else SamplingOverride()
        ),
        embedding_cache_mb=embedding_cache_mb,
        ui=ui,
        realtime=RealtimeOptions(max_sessions=ws_max_sessions, idle_timeout_s=ws_idle_timeout),
    )
    engine = engine_options(
        dtype=dtype,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        enforce_eager=enforce_eager,
    )
    if not options.api_keys and host not in LOOPBACK:
        _output.warn(f"no --api-key: every route is open to anyone who can reach {host}:{port}")
    if data_parallel > 1:  # vLLM's own DP: N engine cores, one AsyncLLM front balancing them
        engine = replace(engine, extra={**engine.extra, "data_parallel_size": data_parallel})
    _output.info(f"loading {model} and starting vLLM…")
    run_server(model, options, engine)


def api_keys(given: list[str] | None) -> tuple[str, ...]:
    """The keys from ``--api-key``, else the one in ``$ASRCTL_API_KEY``.

    A variable that is set but blank is an error, not "no authentication": that is
    what a failed secret lookup (``ASRCTL_API_KEY=$(cat missing)``) looks like."""
    from asrctl.errors import OptionsError

    if given:
        return tuple(given)
    value = os.environ.get(API_KEY_ENV)
    if value is None:
        return ()
    if not value.strip():
        raise OptionsError(
            f"${API_KEY_ENV} is set but empty",
            hint="set it to the key, or unset it to serve without authentication",
        )
    return (value,)
