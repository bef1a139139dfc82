"""Transcribe audio that is already in memory (numpy arrays), notebook style.

    python examples/numpy_arrays.py ~/models/Fun-ASR-Nano-2512 a.wav b.flac

Load the model once, then call ``asr.transcribe`` as often as you like: one array with its
sample rate, or a list of ``(array, sample_rate)`` pairs (any rates: they are resampled).
Results come back in input order. Here the arrays are read from files with soundfile, as
they might come from a microphone, a dataset or a signal-processing step.
"""

import argparse

import soundfile as sf

import asrctl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model directory")
    parser.add_argument("audio", nargs="+", help="audio files to read into arrays")
    args = parser.parse_args()

    clips = [sf.read(path, dtype="float32") for path in args.audio]  # (array, rate) pairs

    asr = asrctl.load(args.model)  # in a notebook: one cell
    try:
        # one at a time, as in a notebook loop
        for path, (samples, rate) in zip(args.audio, clips, strict=True):
            (result,) = asr.transcribe(samples, sample_rate=rate)
            print(f"{path}: {result.text!r} ({result.duration:.2f} s)")

        # or all at once: one batch, results in input order
        results = asr.transcribe(clips)
        print([r.text for r in results])
    finally:
        asr.close()  # or: with asrctl.load(...) as asr:


if __name__ == "__main__":  # required: vLLM's engine process re-imports this script
    main()
