"""``asrctl setup DIR``: validate a model directory and export its LLM for vLLM."""

from __future__ import annotations

from asrctl.cli import _output
from asrctl.cli._options import CacheDirOpt, ForceOpt, ModelDirArg


def setup(model_dir: ModelDirArg, cache_dir: CacheDirOpt = None, force: ForceOpt = False) -> None:
    """Validate a model directory, detect its family and export what vLLM loads; idempotent.

    Writes the LLM export, and the folder that LLM(model=...) loads with asrctl's plugin."""
    from asrctl.adapters.registry import load_adapter
    from asrctl.export import export_llm

    adapter = load_adapter(model_dir)
    _output.info(f"{adapter.family.title} model at {adapter.model_dir}")
    with _output.err.status("preparing…") as status:
        prepared = export_llm(
            adapter, cache_dir=cache_dir, force=force, on_step=_output.steps(status)
        )
    verb = "up to date, reused" if prepared.reused else "exported"
    _output.ok(f"LLM export {verb}: {prepared.llm_dir}")
    from asrctl.vllm_plugin.setup import write_vllm_dir

    vllm_dir = write_vllm_dir(adapter, prepared)  # LLM(model=vllm_dir) with the plugin
    _output.data(f"family\t{prepared.family}")
    _output.data(f"model_dir\t{prepared.model_dir}")
    _output.data(f"llm_dir\t{prepared.llm_dir}")
    _output.data(f"vllm_dir\t{vllm_dir}")
