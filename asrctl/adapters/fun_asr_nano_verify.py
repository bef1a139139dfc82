"""Fun-ASR-Nano tensor shapes against its configs (``asrctl verify``).

``model.pt`` is memory-mapped, so only its tensor headers are read. Checked: the LLM's
embedding and output tables against the Qwen3 ``vocab_size`` × ``hidden_size``, its layer
count and attention projections, the encoder's input width (``n_mels`` × ``lfr_m``) and
block counts, and the adaptor from the encoder width to the LLM hidden size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LLM_CONFIG = "Qwen3-0.6B/config.json"


class _Shapes:
    """Collects mismatches between a state dict and expected shapes."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        self.state = state
        self.problems: list[str] = []

    def expect(self, key: str, shape: tuple, why: str) -> None:
        if None in shape:
            return  # the config does not say: nothing to compare with
        tensor = self.state.get(key)
        if tensor is None:
            self.problems.append(f"model.pt: missing tensor {key} ({why})")
        elif tuple(tensor.shape) != shape:
            self.problems.append(
                f"model.pt: {key} has shape {tuple(tensor.shape)}, expected {shape} ({why})"
            )

    def count(self, prefix: str, expected: int | None, why: str) -> None:
        if expected is None:
            return
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        found = {m.group(1) for k in self.state if (m := pattern.match(k))}
        if len(found) != expected:
            self.problems.append(
                f"model.pt: {len(found)} blocks {prefix}N, expected {expected} ({why})"
            )


def check_shapes(model_dir: Path, config: Mapping, state: Mapping[str, Any]) -> list[str]:
    """Every mismatch between ``state`` (model.pt), ``config`` (config.yaml) and the LLM's."""
    llm = json.loads((model_dir / LLM_CONFIG).read_text())
    shapes = _Shapes(state)
    _llm(shapes, llm)
    _audio(shapes, config, llm.get("hidden_size"))
    return shapes.problems


def _llm(shapes: _Shapes, llm: Mapping) -> None:
    vocab, hidden = llm.get("vocab_size"), llm.get("hidden_size")
    table = f"{LLM_CONFIG} vocab_size × hidden_size"
    shapes.expect("llm.model.embed_tokens.weight", (vocab, hidden), table)
    if "llm.lm_head.weight" in shapes.state:
        shapes.expect("llm.lm_head.weight", (vocab, hidden), table)
    head_dim = llm.get("head_dim")
    for proj, heads in (("q", "num_attention_heads"), ("k", "num_key_value_heads")):
        if llm.get(heads) and head_dim:
            shapes.expect(
                f"llm.model.layers.0.self_attn.{proj}_proj.weight",
                (llm[heads] * head_dim, hidden),
                f"{LLM_CONFIG} {heads} × head_dim",
            )
    shapes.count("llm.model.layers.", llm.get("num_hidden_layers"), f"{LLM_CONFIG} layers")


def _audio(shapes: _Shapes, config: Mapping, hidden: int | None) -> None:
    enc, adp, fe = (
        config.get(k) or {} for k in ("audio_encoder_conf", "audio_adaptor_conf", "frontend_conf")
    )
    d = enc.get("output_size")
    n_in = fe["n_mels"] * fe["lfr_m"] if fe.get("n_mels") and fe.get("lfr_m") else None
    shapes.expect(
        "audio_encoder.encoders0.0.self_attn.linear_q_k_v.weight",
        (3 * d if d else None, n_in),
        "config.yaml: 3 × output_size by n_mels × lfr_m",
    )
    blocks = enc.get("num_blocks")
    shapes.count("audio_encoder.encoders.", blocks - 1 if blocks else None, "num_blocks - 1")
    shapes.count("audio_encoder.tp_encoders.", enc.get("tp_blocks"), "config.yaml tp_blocks")
    ffn = adp.get("ffn_dim")
    shapes.expect(
        "audio_adaptor.linear1.weight",
        (ffn, adp.get("encoder_dim") or d),
        "config.yaml adaptor ffn_dim by encoder_dim",
    )
    shapes.expect(
        "audio_adaptor.linear2.weight",
        (hidden, ffn),
        f"the adaptor's output must be the LLM hidden size of {LLM_CONFIG}",
    )
    for key, want, what in (
        ("llm_dim", hidden, f"{LLM_CONFIG} hidden_size"),
        ("encoder_dim", d, "audio_encoder_conf.output_size"),
    ):
        if want is not None and adp.get(key) not in (None, want):
            shapes.problems.append(
                f"config.yaml: audio_adaptor_conf.{key} is {adp[key]}, but {what} is {want}"
            )
