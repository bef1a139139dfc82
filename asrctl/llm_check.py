"""Does an exported LLM hold every tensor its config implies, in the shapes it implies?

Setup runs this on the tensors it is about to write, so a checkpoint whose LLM weights are
missing, partial or of other sizes than its config fails there (exit 3, naming what is
wrong) instead of writing an export that vLLM cannot load. Covers the stock architectures
asrctl exports to: ``LlamaForCausalLM``, ``Qwen2ForCausalLM`` and ``Qwen3ForCausalLM``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")  # a buffer vLLM recomputes
_SHOWN = 6  # names listed before "and N more"


def expected_shapes(config: Mapping) -> dict[str, tuple[int, ...]]:
    """Every tensor name of the config's architecture with the shape the config implies."""
    arch = ((config.get("architectures") or ["?"])[0]).lower()
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config["intermediate_size"])
    vocab = int(config["vocab_size"])
    qwen2, qwen3 = arch.startswith("qwen2"), arch.startswith("qwen3")
    bias = qwen2 or bool(config.get("attention_bias", False))
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(int(config["num_hidden_layers"])):
        p = f"model.layers.{i}."
        attn = {"q_proj": heads * head_dim, "k_proj": kv * head_dim, "v_proj": kv * head_dim}
        for name, rows in attn.items():
            shapes[f"{p}self_attn.{name}.weight"] = (rows, hidden)
            if bias:
                shapes[f"{p}self_attn.{name}.bias"] = (rows,)
        shapes[f"{p}self_attn.o_proj.weight"] = (hidden, heads * head_dim)
        if bias and not qwen2:
            shapes[f"{p}self_attn.o_proj.bias"] = (hidden,)
        if qwen3:
            shapes[f"{p}self_attn.q_norm.weight"] = (head_dim,)
            shapes[f"{p}self_attn.k_norm.weight"] = (head_dim,)
        shapes[f"{p}mlp.gate_proj.weight"] = (inter, hidden)
        shapes[f"{p}mlp.up_proj.weight"] = (inter, hidden)
        shapes[f"{p}mlp.down_proj.weight"] = (hidden, inter)
        if config.get("mlp_bias", False):  # Llama's option
            shapes[f"{p}mlp.gate_proj.bias"] = (inter,)
            shapes[f"{p}mlp.up_proj.bias"] = (inter,)
            shapes[f"{p}mlp.down_proj.bias"] = (hidden,)
        shapes[f"{p}input_layernorm.weight"] = (hidden,)
        shapes[f"{p}post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def _listed(names: Sequence[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _missing(names: list[str], expected: Mapping[str, tuple[int, ...]]) -> str:
    """Missing names, whole layers folded into ``model.layers.N.*``."""
    per_layer: dict[int, int] = {}
    for name in expected:
        m = _LAYER.match(name)
        if m:
            per_layer[int(m[1])] = per_layer.get(int(m[1]), 0) + 1
    gone: dict[int, int] = {}
    for name in names:
        m = _LAYER.match(name)
        if m:
            gone[int(m[1])] = gone.get(int(m[1]), 0) + 1
    whole = sorted(i for i, n in gone.items() if n == per_layer[i])
    shown = [n for n in names if not ((m := _LAYER.match(n)) and int(m[1]) in whole)]
    if len(whole) == len(per_layer) and whole:
        shown.insert(0, f"every layer (model.layers.0-{whole[-1]}.*)")
    else:
        shown[:0] = [f"model.layers.{i}.*" for i in whole]
    return _listed(shown)


def check_llm(
    config: Mapping, shapes: Mapping[str, Sequence[int]], *, config_name: str
) -> list[str]:
    """Problems of exported tensors (name -> shape) against ``config``; [] when complete."""
    try:
        expected = expected_shapes(config)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        return [f"{config_name}: cannot derive the LLM's tensors from it (bad or missing {e})"]
    problems = []
    if not shapes:
        return [
            f"the checkpoint holds no LLM tensors (the export would be empty; {config_name} "
            f"implies {len(expected)})"
        ]
    missing = [n for n in expected if n not in shapes]
    if missing:
        problems.append(
            f"the LLM weights lack {len(missing)} of the {len(expected)} tensors "
            f"{config_name} implies: {_missing(missing, expected)}"
        )
    wrong = [
        f"{n} is {list(shapes[n])}, expected {list(s)}"
        for n, s in expected.items()
        if n in shapes and tuple(shapes[n]) != s
    ]
    if wrong:
        problems.append(
            f"{config_name} disagrees with the weights' sizes (hidden_size, intermediate_size, "
            f"heads, head_dim or vocab_size): {_listed(wrong)}"
        )
    tied = config.get("tie_word_embeddings", False)  # a saved tied lm_head is skipped by vLLM
    extra = sorted(
        n
        for n in shapes
        if n not in expected and not _IGNORED.search(n) and not (tied and n == "lm_head.weight")
    )
    if extra:
        problems.append(
            f"the LLM weights hold {len(extra)} tensors {config_name} does not describe "
            f"(e.g. more layers than num_hidden_layers): {_listed(extra)}"
        )
    return problems
