"""Transcribe with vLLM itself: seed 000's ``LLM(model=...)`` code on a folder asrctl set up.

    asrctl setup ~/models/FireRedASR-LLM-L          # prints vllm_dir: DIR/.asrctl/vllm
    python examples/vllm_plugin.py ~/models/FireRedASR-LLM-L/.asrctl/vllm a.wav b.wav
    python examples/vllm_plugin.py ~/models/FireRedASR-LLM-L/.asrctl/vllm a.wav --async

asrctl's vLLM plugin (installed with asrctl, loaded by vLLM itself) makes that folder a
vLLM model: the family's own audio encoder and prompt, vLLM's engine and scheduler. An
empty prompt gets the family's own prompt; audio is a path or a ``(samples, rate)`` pair.
Prints one JSON line per file: its text and generated token ids.
"""

import argparse
import asyncio
import json

from vllm import LLM, SamplingParams


def transcribe(args: argparse.Namespace) -> list:
    llm = LLM(
        model=args.model,
        trust_remote_code=True,  # harmless: the plugin needs no remote code
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        enforce_eager=args.enforce_eager,
    )
    prompts = [{"prompt": "", "multi_modal_data": {"audio": path}} for path in args.audio]
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=args.max_tokens))
    return [output.outputs[0] for output in outputs]


async def transcribe_async(args: argparse.Namespace) -> list:
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    engine_args = AsyncEngineArgs(
        model=args.model,
        trust_remote_code=True,
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        enforce_eager=args.enforce_eager,
    )
    async_llm = AsyncLLM.from_engine_args(engine_args)
    try:
        results = []
        for i, path in enumerate(args.audio):
            prompt = {"prompt": "", "multi_modal_data": {"audio": path}}
            params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
            async for output in async_llm.generate(prompt, params, request_id=f"asr_{i:03d}"):
                final = output.outputs[0]
            results.append(final)
        return results
    finally:
        async_llm.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the vllm_dir `asrctl setup` printed")
    parser.add_argument("audio", nargs="+", help="audio files")
    parser.add_argument("--async", dest="use_async", action="store_true", help="use AsyncLLM")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--enforce-eager", action="store_true")
    args = parser.parse_args()
    outputs = asyncio.run(transcribe_async(args)) if args.use_async else transcribe(args)
    for path, out in zip(args.audio, outputs, strict=True):
        print(json.dumps({"audio": path, "text": out.text, "token_ids": list(out.token_ids)}))


if __name__ == "__main__":  # required: vLLM's engine process re-imports this script
    main()
