"""Every CLI option, declared once as an ``Annotated`` alias and reused by the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ENGINE = "Engine (vLLM)"

ModelOpt = Annotated[
    Path, typer.Option("--model", "-m", help="Model directory, as released (see `asrctl setup`).")
]
ModelDirArg = Annotated[Path, typer.Argument(help="Model directory, as released.")]
InputsArg = Annotated[
    list[str],
    typer.Argument(
        help="Audio file(s), folder, Kaldi data dir, wav.scp, segments or jsonl manifest."
    ),
]
OutputDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--output-dir",
        "-o",
        help="Write OUT/text and OUT/results.jsonl (default: print `key text` to stdout).",
    ),
]
LanguageOpt = Annotated[
    str | None,
    typer.Option(
        "--language", "-l", help="Language code (e.g. zh, en); default: the model decides."
    ),
]
HotwordsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--hotwords", help="Words to bias recognition towards; comma-separated or repeated."
    ),
]
NoItnOpt = Annotated[
    bool,
    typer.Option("--no-itn", help="Ask for raw, unnormalised text where the model supports it."),
]
NoWordTimesOpt = Annotated[
    bool,
    typer.Option(
        "--no-word-timestamps",
        help="Skip word timing (only Fun-ASR-Nano checkpoints with the CTC head give it).",
    ),
]
BatchSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        min=1,
        show_default=False,
        help="Utterances loaded and encoded together, sorted by length within a batch "
        "(default: 1024 with a GPU, 64 without).",
    ),
]
EncoderBatchSecondsOpt = Annotated[
    float,
    typer.Option(
        "--encoder-batch-seconds",
        min=1.0,
        help="Most padded audio per encoder pass (utterances x the longest): bounds its GPU "
        "memory; short utterances share larger passes.",
    ),
]
MaxInFlightOpt = Annotated[
    int,
    typer.Option(
        "--max-in-flight",
        min=1,
        help="Most utterances queued in vLLM at once; a killed run loses at most these.",
    ),
]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option("--max-tokens", min=1, help="Most tokens generated per utterance (default: 512)."),
]
# decoding (transcribe, bench): DecodeOptions' fields
TemperatureOpt = Annotated[
    float,
    typer.Option("--temperature", min=0.0, max=2.0, help="0 decodes greedily; above 0 samples."),
]
TopPOpt = Annotated[
    float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass (1: off).")
]
TopKOpt = Annotated[
    int | None, typer.Option("--top-k", min=1, help="Sample among the k likeliest tokens.")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Sampling seed (temperature > 0).")]
RepetitionPenaltyOpt = Annotated[
    float | None,
    typer.Option(
        "--repetition-penalty",
        help="Penalty on generated tokens (1: none; default: the family's, 3.0 for FireRed).",
    ),
]
RawTextOpt = Annotated[
    bool,
    typer.Option(
        "--raw-text",
        help="Text exactly as decoded (no clean-up, parsing or repetition guard), "
        "to diff against the original pipelines.",
    ),
]
SamplingOverrideOpt = Annotated[
    str | None,
    typer.Option(
        "--sampling-override",
        help="Decoding settings that beat what clients send, as JSON or a JSON file: "
        """'{"temperature": 0, "repetition_penalty": 1.1}'.""",
    ),
]
AllowedMediaOpt = Annotated[
    Path | None,
    typer.Option(
        "--allowed-local-media-path",
        help="Let chat requests name file:// audio under this folder (off by default).",
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option("--resume", help="Skip keys already in OUT/results.jsonl and append the rest."),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device", help="Device of the audio encoder (default: cuda if available, else cpu)."
    ),
]
EncoderDtypeOpt = Annotated[
    str,
    typer.Option(
        "--encoder-dtype",
        help="Audio encoder precision: auto (tf32 on a GPU, float32 on a CPU), float32 (the "
        "reference implementations'), tf32 (float32 weights, TensorFloat-32 matmuls on a "
        "GPU: embeddings within 0.04 % of float32) or bfloat16 (within 2 %).",
    ),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help="Where LLM exports live (default: DIR/.asrctl, or $ASRCTL_CACHE)."
    ),
]
FormatOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--format",
        "-f",
        help="Outputs: text, jsonl, srt, vtt; comma-separated or repeated (default: text,jsonl). "
        "srt/vtt go to OUT/<key>.srt|.vtt (stdout for a single input without --output-dir).",
    ),
]
VadOpt = Annotated[
    bool | None,
    typer.Option(
        "--vad/--no-vad",
        help="Split audio at pauses (Silero VAD) and stitch the texts back with segment times. "
        "Default: only inputs longer than the model's per-pass limit (30 s for Fun-ASR-Nano).",
    ),
]
DIARIZE = "Speakers"
DiarizeOpt = Annotated[
    bool,
    typer.Option(
        "--diarize",
        help="Label speakers (SPEAKER_0, SPEAKER_1, ...): every input is split at pauses and "
        "speaker changes, each turn transcribed as its own segment.",
        rich_help_panel=DIARIZE,
    ),
]
NumSpeakersOpt = Annotated[
    int | None,
    typer.Option(
        "--num-speakers",
        min=1,
        help="Exactly this many speakers (--diarize).",
        rich_help_panel=DIARIZE,
    ),
]
MinSpeakersOpt = Annotated[
    int | None,
    typer.Option(
        "--min-speakers",
        min=1,
        help="At least this many speakers (--diarize).",
        rich_help_panel=DIARIZE,
    ),
]
MaxSpeakersOpt = Annotated[
    int | None,
    typer.Option(
        "--max-speakers",
        min=1,
        help="At most this many speakers (--diarize).",
        rich_help_panel=DIARIZE,
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rebuild the export even if current.")]

DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype", help="LLM dtype: auto, float32, bfloat16, float16.", rich_help_panel=ENGINE
    ),
]
TensorParallelOpt = Annotated[
    int,
    typer.Option(
        "--tensor-parallel-size",
        "-tp",
        min=1,
        help="GPUs to shard the LLM over.",
        rich_help_panel=ENGINE,
    ),
]
GpuMemOpt = Annotated[
    float | None,
    typer.Option(
        "--gpu-memory-utilization",
        min=0.01,
        max=1.0,
        help="Fraction of GPU memory vLLM may use (default on a GPU: 0.8, leaving the rest "
        "to the audio encoder).",
        rich_help_panel=ENGINE,
    ),
]
MaxModelLenOpt = Annotated[
    int | None,
    typer.Option(
        "--max-model-len",
        min=16,
        help="Longest prompt + output, in positions.",
        rich_help_panel=ENGINE,
    ),
]
MaxNumSeqsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-num-seqs", min=1, help="Most sequences vLLM decodes at once.", rich_help_panel=ENGINE
    ),
]
EnforceEagerOpt = Annotated[
    bool,
    typer.Option(
        "--enforce-eager",
        help="No CUDA graphs / compilation (starts faster, runs slower).",
        rich_help_panel=ENGINE,
    ),
]
CudaGraphsOpt = Annotated[
    bool,
    typer.Option(
        "--cuda-graphs",
        help="Start vLLM in full even for a short input. By default, with a GPU, inputs of "
        "under an hour of audio start vLLM without CUDA graphs and with its engine core in "
        "asrctl's process, each ~20 s sooner, which a short run never wins back "
        "(BENCHMARKS.md, rounds 5 and 9).",
        rich_help_panel=ENGINE,
    ),
]

# --- bench and verify ---
BENCH = "Load test (--server)"

OptionalModelOpt = Annotated[
    Path | None,
    typer.Option("--model", "-m", help="Model directory, as released (see `asrctl setup`)."),
]
RefOpt = Annotated[
    Path | None,
    typer.Option(
        "--ref",
        help="References: Kaldi `text` (key transcript) or jsonl {key, text} "
        "(default: the `text` carried by a Kaldi data dir or manifest).",
    ),
]
BenchOutputDirOpt = Annotated[
    Path, typer.Option("--output-dir", "-o", help="Write OUT/bench.json, worst.txt, bench.png.")
]
MetricOpt = Annotated[
    str | None,
    typer.Option("--metric", help="cer or wer (default: cer for zh/yue/ja/ko, else wer)."),
]
T2sOpt = Annotated[
    bool,
    typer.Option("--t2s", help="Score Chinese after traditional → simplified (asrctl[zh])."),
]
WarmupOpt = Annotated[
    int, typer.Option("--warmup", min=0, help="Utterances (or requests) run before timing.")
]
RepeatOpt = Annotated[
    int, typer.Option("--repeat", min=1, help="Timed runs per mode; the median is reported.")
]
WorstOpt = Annotated[
    int, typer.Option("--worst", min=0, help="Worst utterances shown aligned (ref vs hyp).")
]
ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="Load-test this OpenAI-compatible server (base URL) instead of a model.",
        rich_help_panel=BENCH,
    ),
]
ConcurrencyOpt = Annotated[
    str | None,
    typer.Option(
        "--concurrency",
        help="Closed-loop levels, comma-separated (default: 1,8,32,128; none with --rate).",
        rich_help_panel=BENCH,
    ),
]
RateOpt = Annotated[
    str | None,
    typer.Option(
        "--rate", help="Poisson arrivals, requests/s (comma-separated).", rich_help_panel=BENCH
    ),
]
RequestsOpt = Annotated[
    int | None,
    typer.Option(
        "--requests",
        min=1,
        help="Requests per level (default: max(inputs, 4 × level)).",
        rich_help_panel=BENCH,
    ),
]
ServerModelOpt = Annotated[
    str | None,
    typer.Option(
        "--server-model",
        help="The `model` form field (default: first id of GET /v1/models).",
        rich_help_panel=BENCH,
    ),
]
BenchApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="ASRCTL_API_KEY",
        help="Bearer token sent to the server.",
        rich_help_panel=BENCH,
    ),
]
WsOpt = Annotated[
    bool,
    typer.Option(
        "--ws",
        help="Stream to URL/ws in real time instead of posting files.",
        rich_help_panel=BENCH,
    ),
]
RequestTimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", min=0.1, help="Seconds per request.", rich_help_panel=BENCH),
]
TokensPerSecondOpt = Annotated[
    float | None,
    typer.Option(
        "--tokens-per-second",
        min=0.01,
        hidden=True,
        help="Benchmarks with random-weight checkpoints (which rarely stop): every "
        "utterance generates exactly ceil(N x its seconds) tokens, EOS ignored.",
    ),
]
TimeLimitOpt = Annotated[
    float,
    typer.Option(
        "--time-limit",
        min=1,
        help="Seconds per level; no request starts after.",
        rich_help_panel=BENCH,
    ),
]
SmokeOpt = Annotated[
    bool,
    typer.Option("--smoke", help="Also transcribe 1 s of generated noise through the engine."),
]

# `asrctl serve`
SERVER = "Server"

HostOpt = Annotated[
    str, typer.Option("--host", help="Interface to listen on.", rich_help_panel=SERVER)
]
PortOpt = Annotated[
    int, typer.Option("--port", min=1, max=65535, help="TCP port.", rich_help_panel=SERVER)
]
ServedModelNameOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--served-model-name",
        help="Name(s) clients pass as `model`; repeatable (default: the model folder's name).",
        rich_help_panel=SERVER,
    ),
]
ApiKeyOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--api-key",
        help="Require `Authorization: Bearer KEY`; repeatable (default: $ASRCTL_API_KEY, "
        "one key, if set; else no authentication).",
        rich_help_panel=SERVER,
    ),
]
MaxUploadMbOpt = Annotated[
    float,
    typer.Option("--max-upload-mb", min=0.001, help="Largest upload, MiB.", rich_help_panel=SERVER),
]
MaxAudioSecondsOpt = Annotated[
    float | None,
    typer.Option(
        "--max-audio-seconds",
        min=0.001,
        help="Longest audio per request (default and maximum: the model's per-pass limit).",
        rich_help_panel=SERVER,
    ),
]
BatchWindowMsOpt = Annotated[
    float,
    typer.Option(
        "--batch-window-ms",
        min=0,
        max=1000,
        help="How long the audio encoder waits to batch concurrent requests.",
        rich_help_panel=SERVER,
    ),
]
EncoderBatchSizeOpt = Annotated[
    int,
    typer.Option(
        "--encoder-batch-size",
        min=1,
        help="Most utterances per audio-encoder pass.",
        rich_help_panel=SERVER,
    ),
]
EncoderGraphsOpt = Annotated[
    bool,
    typer.Option(
        "--encoder-graphs/--no-encoder-graphs",
        help="Replay the audio encoder's small passes as CUDA graphs (Fun-ASR-Nano on a "
        "GPU): one 5 s clip's pass 5.4x faster on an H100.",
        rich_help_panel=SERVER,
    ),
]
ServeVadOpt = Annotated[
    bool,
    typer.Option(
        "--vad",
        help="Accept audio longer than the model's window: split it at pauses (Silero VAD) "
        "and answer with the stitched text and segment times.",
        rich_help_panel=SERVER,
    ),
]
EmbeddingCacheMbOpt = Annotated[
    float,
    typer.Option(
        "--embedding-cache-mb",
        min=0,
        help="Memory (MiB) for recent audio embeddings: the same audio sent again is not "
        "encoded again (0: off).",
        rich_help_panel=SERVER,
    ),
]
UiOpt = Annotated[
    bool,
    typer.Option(
        "--ui/--no-ui",
        help="Serve the web page on / (drop a file or use the microphone).",
        rich_help_panel=SERVER,
    ),
]
WsMaxSessionsOpt = Annotated[
    int,
    typer.Option(
        "--ws-max-sessions",
        min=1,
        help="Most /ws (live) sessions open at once; more are refused with 503.",
        rich_help_panel=SERVER,
    ),
]
WsIdleTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--ws-idle-timeout",
        min=0.001,
        help="Seconds a /ws session may send nothing before it is closed.",
        rich_help_panel=SERVER,
    ),
]
ShutdownTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--shutdown-timeout",
        min=0,
        help="Seconds a shutdown waits for in-flight requests.",
        rich_help_panel=SERVER,
    ),
]

# scale-out (transcribe): asrctl.distributed
SCALE = "Scale-out (Ray)"
DataParallelOpt = Annotated[
    int,
    typer.Option(
        "--data-parallel",
        "-dp",
        min=1,
        help="Pipeline replicas on this host, one per GPU (tensor-parallel-size GPUs each; "
        "on CPU: processes), fed from one input list, on a local Ray cluster.",
        rich_help_panel=SCALE,
    ),
]
RayOpt = Annotated[
    bool,
    typer.Option(
        "--ray",
        help="Shard the inputs over a Ray cluster's workers (pip install 'asrctl[ray]'). "
        "The model folder must be at the same path on every node.",
        rich_help_panel=SCALE,
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="Cluster to join (HOST:6379 from `ray start --head`, or auto); default: "
        "$RAY_ADDRESS, else a new local cluster.",
        rich_help_panel=SCALE,
    ),
]
NumWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--num-workers",
        min=1,
        show_default=False,
        help="Pipeline replicas (default: one per --gpus-per-worker GPUs; 1 without GPUs).",
        rich_help_panel=SCALE,
    ),
]
GpusPerWorkerOpt = Annotated[
    float | None,
    typer.Option(
        "--gpus-per-worker",
        min=0.0,
        show_default=False,
        help="GPUs per replica (default: --tensor-parallel-size with GPUs, else 0).",
        rich_help_panel=SCALE,
    ),
]
EnginesPerGpuOpt = Annotated[
    int,
    typer.Option(
        "--engines-per-gpu",
        min=1,
        help="Pipeline replicas sharing each GPU (1/K GPU each, each its own process and "
        "vLLM engine; one small-LLM engine leaves the GPU mostly idle). They start one by "
        "one; --gpu-memory-utilization is then what the K engines take together (default "
        "0.8). Alone: K replicas per GPU of this host.",
        rich_help_panel=SCALE,
    ),
]
CpusPerWorkerOpt = Annotated[
    float,
    typer.Option(
        "--cpus-per-worker", min=0.0, help="CPUs Ray reserves per replica.", rich_help_panel=SCALE
    ),
]
ShardSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--shard-size",
        min=1,
        show_default=False,
        help="Inputs per shard a worker takes (default: up to 2048, 4+ shards per worker).",
        rich_help_panel=SCALE,
    ),
]
ServeDataParallelOpt = Annotated[
    int,
    typer.Option(
        "--data-parallel",
        "-dp",
        min=1,
        help="vLLM data parallelism: N engine replicas (tensor-parallel-size GPUs each) "
        "behind this server, requests balanced by vLLM; the audio encoder runs once, here.",
        rich_help_panel=ENGINE,
    ),
]
