"""The official OpenAI Python SDK against ``asrctl serve``.

Start a server first (it loads the model and serves the OpenAI API)::

    asrctl serve --model ~/models/Fun-ASR-Nano-2512 --served-model-name fun-asr --port 8000

then::

    python examples/openai_client.py http://127.0.0.1:8000/v1 a.wav b.wav --model fun-asr

Each file is transcribed twice: a plain request, and a streamed one whose text deltas are
printed as they arrive (``stream=True``). ``--api-key`` is needed when the server was
started with ``--api-key``.
"""

import argparse

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url", help="the server's /v1 URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("audio", nargs="+", help="audio files")
    parser.add_argument("--model", default="", help="a served model name (default: the first)")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--language", default=None)
    args = parser.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    extra = {"language": args.language} if args.language else {}
    for path in args.audio:
        with open(path, "rb") as f:
            result = client.audio.transcriptions.create(model=args.model, file=f, **extra)
        print(f"{path}: {result.text}")

        with open(path, "rb") as f:
            events = client.audio.transcriptions.create(
                model=args.model, file=f, stream=True, **extra
            )
            for event in events:
                if event.type == "transcript.text.delta":
                    print(event.delta, end="", flush=True)
                elif event.type == "transcript.text.done":
                    print(f"\n{path} (streamed): {event.text}")


if __name__ == "__main__":
    main()
