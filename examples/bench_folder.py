"""Accuracy and speed on a folder with reference transcripts.

    python examples/bench_folder.py ~/models/Fun-ASR-Nano-2512 data/test --language zh

``data/test`` is a Kaldi data dir (``wav.scp`` + ``text``) or a ``.jsonl`` manifest whose
lines carry ``"text"``. Prints the error rate (CER for Chinese/Japanese/Korean, WER
otherwise, after the same text normalisation as ``asrctl bench``), the worst utterances
and the real-time factor. ``asrctl bench --model DIR --input data/test`` is the full
command-line benchmark (warm-up, repeated runs, JSON report).
"""

import argparse
import time

import asrctl
from asrctl.bench import scoring
from asrctl.inputs import iter_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model directory")
    parser.add_argument("data", help="Kaldi data dir (wav.scp + text) or .jsonl manifest")
    parser.add_argument("--language", default=None)
    args = parser.parse_args()

    items = iter_inputs(args.data)
    refs = {item.key: item.text for item in items if item.text is not None}
    if not refs:
        parser.error(f"{args.data} carries no reference texts")
    with asrctl.load(args.model) as asr:
        start = time.perf_counter()
        results = asr.transcribe(items, language=args.language)
        elapsed = time.perf_counter() - start

    hyps = {r.key: r.text for r in results}
    language = args.language or scoring.infer_language(list(refs.values()))
    score = scoring.score(refs, hyps, scoring.make_spec(language))
    rate = score.totals.error_rate
    audio = sum(r.duration for r in results)
    print(f"{score.spec.metric.upper()} {100 * (rate or 0):.2f} % over {score.totals.n} tokens")
    print(f"{len(results)} utterances, {audio:.1f} s of audio, RTF {elapsed / audio:.3f}")
    for utt in scoring.worst(score.utterances, 3):
        print(f"  {utt.key}: ref {utt.ref!r} hyp {utt.hyp!r}")


if __name__ == "__main__":  # required: vLLM's engine process re-imports this script
    main()
