"""Transcribe every audio file in a folder and write one SubRip (.srt) file per input.

    python examples/folder_to_srt.py ~/models/Fun-ASR-Nano-2512 recordings/ subtitles/

Recordings longer than the model takes in one pass are split at pauses (Silero VAD) and
get one cue per segment; shorter ones get a single cue. ``asrctl transcribe DIR --format
srt`` does the same from the shell.
"""

import argparse
from pathlib import Path

import asrctl
from asrctl import writers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model directory")
    parser.add_argument("folder", help="folder of audio files (searched recursively)")
    parser.add_argument("out", help="folder for the .srt files")
    parser.add_argument("--language", default=None, help="e.g. zh, en (default: the model's)")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with asrctl.load(args.model) as asr:
        # errors="return": a file that cannot be read is reported, the others still written
        for result in asr.transcribe(args.folder, language=args.language, errors="return"):
            if isinstance(result, asrctl.Failure):
                print(f"skipped {result.error}")
                continue
            path = out / f"{result.key}.srt"
            path.write_text(writers.srt(result), encoding="utf-8")
            print(f"{path}  {result.text[:60]}")


if __name__ == "__main__":  # required: vLLM's engine process re-imports this script
    main()
