"""Many concurrent requests from asyncio code, sharing one engine.

    python examples/async_concurrency.py ~/models/Fun-ASR-Nano-2512 recordings/ --concurrency 64

Each file is its own ``await asr.transcribe_async(path)`` task, as a web handler or a
queue consumer would issue them; at most ``--concurrency`` run at once. The engine runs in
the model's own event loop (a background thread), so your loop only awaits, and vLLM
batches whatever is in flight.
"""

import argparse
import asyncio
import time

import asrctl
from asrctl.inputs import iter_inputs


async def transcribe_all(asr: asrctl.ASR, folder: str, concurrency: int) -> None:
    items = iter_inputs(folder)
    limit = asyncio.Semaphore(concurrency)

    async def one(item: asrctl.AudioItem) -> asrctl.Transcript:
        async with limit:
            (result,) = await asr.transcribe_async(item)
            return result

    start = time.perf_counter()
    results = await asyncio.gather(*(one(item) for item in items))
    elapsed = time.perf_counter() - start
    for result in results:
        print(f"{result.key}\t{result.text}")
    audio = sum(r.duration for r in results)
    print(f"{len(results)} files, {audio:.1f} s of audio in {elapsed:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model directory")
    parser.add_argument("folder", help="folder of audio files")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with asrctl.load(args.model) as asr:
        asyncio.run(transcribe_all(asr, args.folder, args.concurrency))


if __name__ == "__main__":  # required: vLLM's engine process re-imports this script
    main()
