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
BatchSizeOpt = Annotated[
    int,
    typer.Option(
        "--batch-size",
        "-b",
        min=1,
        help="Utterances per engine call; results are saved after each.",
    ),
]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option("--max-tokens", min=1, help="Most tokens generated per utterance (default: 512)."),
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
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help="Where LLM exports live (default: DIR/.asrctl, or $ASRCTL_CACHE)."
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
        help="Fraction of GPU memory vLLM may use.",
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
