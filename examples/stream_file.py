"""Live transcription: feed a file in 100 ms chunks and print partial results as they come.

    python examples/stream_file.py ~/models/Fun-ASR-Nano-2512 speech.wav

``asr.stream`` is the machinery of the server's ``/ws`` endpoint: an endpointer finds
utterances, the open one is re-decoded as it grows (tentative ``partial`` text) and each
finished one is locked as a sentence with its start and end times. The chunks are paced
in real time, as from a microphone (``--fast`` sends them as fast as possible: fewer
partials).
"""

import argparse
import time

import soundfile as sf

import asrctl


def chunks(samples, rate: int, chunk_ms: int, realtime: bool):
    step = rate * chunk_ms // 1000
    for start in range(0, len(samples), step):
        if realtime:
            time.sleep(chunk_ms / 1000)
        yield samples[start : start + step]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model directory")
    parser.add_argument("audio", help="audio file to stream")
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument("--fast", action="store_true", help="do not pace the chunks")
    args = parser.parse_args()

    samples, rate = sf.read(args.audio, dtype="float32", always_2d=True)
    samples = samples.mean(axis=1)  # mono
    with asrctl.load(args.model) as asr:
        feed = chunks(samples, rate, args.chunk_ms, realtime=not args.fast)
        for update in asr.stream(feed, sample_rate=rate):
            locked = " | ".join(f"[{s.start:.2f}-{s.end:.2f}] {s.text}" for s in update.sentences)
            kind = "final" if update.is_final else "partial"
            print(f"{kind} {update.duration:6.2f}s  {locked}  ~ {update.partial}")


if __name__ == "__main__":  # required: vLLM's engine process re-imports this script
    main()
