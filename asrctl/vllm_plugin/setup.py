"""The folder vLLM loads: ``<cache>/vllm/`` beside asrctl's LLM export (``<cache>/llm/``).

``asrctl setup DIR`` writes it: the export's config.json naming the plugin's architecture
(the stock LLM's kept in an ``asrctl`` section with the family and DIR), the export's
tokenizer plus one added special token, the audio placeholder, a chat template (chat
completions transcribe with the family's prompt) and links to the export's weights and
generation files. DIR itself is left as released: GLM-ASR and VibeVoice-HF
folders hold a transformers config.json of their own (vLLM has native classes for them),
and no family's DIR holds weights or a tokenizer where vLLM looks. Written into a
temporary folder and moved into place in one rename; rewritten only when it changed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from asrctl.adapters.base import Adapter
from asrctl.export import WEIGHTS_FILE, PreparedModel, replace_dir
from asrctl.vllm_plugin import ARCH
from asrctl.vllm_plugin.family import AUDIO_TOKEN, CONFIG_KEY, PluginConfig

VLLM_DIRNAME = "vllm"
STALE_TEMP_S = 600.0
LINKED = (  # the export's files vLLM reads unchanged: relative links
    WEIGHTS_FILE,
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "generation_config.json",
)
# Chat completions transcribe as asrctl's own chat API does: the family's prompt around the
# audio, the users' text entering it as the family takes text (Family.chat_text). The
# template renders only that text (no placeholder), so the processor builds that prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages if message['role'] == 'user' -%}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | replace(AUDIO, '') }}{{ ' ' }}"
    "{%- else -%}{%- for part in message['content'] if part['type'] == 'text' -%}"
    "{{ part['text'] | replace(AUDIO, '') }}{{ ' ' }}"
    "{%- endfor -%}{%- endif -%}{%- endfor -%}"
)


def vllm_dir(prepared: PreparedModel) -> Path:
    """Where the vLLM folder of an export lives."""
    return prepared.llm_dir.parent / VLLM_DIRNAME


def write_vllm_dir(adapter: Adapter, prepared: PreparedModel) -> Path:
    """Write (or keep) the vLLM folder of ``prepared``; returns its path."""
    dest = vllm_dir(prepared)
    _remove_stale_temps(dest.parent)
    files = vllm_files(adapter, prepared.llm_dir)
    if _is_current(dest, prepared.llm_dir, files):
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=f"{VLLM_DIRNAME}.tmp-", dir=dest.parent))
    tmp.chmod(0o755)
    try:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        for name in _linked(prepared.llm_dir):
            (tmp / name).symlink_to(Path("..") / prepared.llm_dir.name / name)
        replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def vllm_files(adapter: Adapter, llm_dir: Path) -> dict[str, str]:
    """The files written (not linked): config and tokenizer files, name -> content."""
    tokenizer = json.loads((llm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    token_id = _add_token(tokenizer)
    config = json.loads((llm_dir / "config.json").read_text(encoding="utf-8"))
    plugin = PluginConfig(
        family=adapter.family.name,
        model_dir=adapter.model_dir,
        text_architectures=tuple(config.get("architectures") or ()),
        audio_token_id=token_id,
        sample_rate=adapter.family.sample_rate,
        max_audio_seconds=adapter.family.max_audio_seconds,
    )
    config["architectures"] = [ARCH]
    config[CONFIG_KEY] = plugin.to_dict()
    files = {
        "config.json": _dumps(config),
        "tokenizer.json": json.dumps(tokenizer, ensure_ascii=False),
        "chat_template.jinja": CHAT_TEMPLATE.replace("AUDIO", repr(AUDIO_TOKEN)) + "\n",
    }
    entry = _token_entry(token_id)
    tok_config = llm_dir / "tokenizer_config.json"
    if tok_config.is_file():
        data = json.loads(tok_config.read_text(encoding="utf-8"))
        data.pop("chat_template", None)  # chat_template.jinja's instead
        if isinstance(data.get("added_tokens_decoder"), dict):
            data["added_tokens_decoder"][str(token_id)] = {
                k: v for k, v in entry.items() if k != "id"
            }
        files["tokenizer_config.json"] = _dumps(data)
    added = llm_dir / "added_tokens.json"
    if added.is_file():
        data = json.loads(added.read_text(encoding="utf-8"))
        data[AUDIO_TOKEN] = token_id
        files["added_tokens.json"] = _dumps(data)
    return files


def _add_token(tokenizer: dict) -> int:
    """Add the audio placeholder to a tokenizer.json (as a special token with the next free
    id, or its id if already there); returns the id."""
    added = tokenizer.setdefault("added_tokens", [])
    for token in added:
        if token.get("content") == AUDIO_TOKEN:
            return int(token["id"])
    vocab = (tokenizer.get("model") or {}).get("vocab") or {}
    ids = list(vocab.values()) if isinstance(vocab, dict) else [len(vocab) - 1]
    token_id = max([*ids, *(int(t["id"]) for t in added), -1]) + 1
    added.append(_token_entry(token_id))
    return token_id


def _token_entry(token_id: int) -> dict:
    return {
        "id": token_id,
        "content": AUDIO_TOKEN,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def _dumps(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _linked(llm_dir: Path) -> list[str]:
    return [name for name in LINKED if (llm_dir / name).is_file()]


def _is_current(dest: Path, llm_dir: Path, files: dict[str, str]) -> bool:
    try:
        same = all((dest / n).read_text(encoding="utf-8") == t for n, t in files.items())
    except OSError:
        return False
    return same and all((dest / n).resolve() == (llm_dir / n).resolve() for n in _linked(llm_dir))


def _remove_stale_temps(root: Path) -> None:
    """Remove what a killed setup left (``vllm.tmp-*``, written in milliseconds: one older
    than :data:`STALE_TEMP_S` is no write in progress)."""
    for path in root.glob(f"{VLLM_DIRNAME}.tmp-*"):
        try:
            stale = time.time() - path.stat().st_mtime > STALE_TEMP_S
        except OSError:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)


def write_entry_point(root: Path) -> Path:
    """A stand-in distribution in ``root`` declaring asrctl's ``vllm.general_plugins``
    entry point, for an asrctl run from a source tree (not installed, or installed
    elsewhere): put ``root`` on ``PYTHONPATH`` and every vLLM process registers the
    plugin. An installed asrctl declares it itself (pyproject.toml)."""
    info = root / "asrctl_vllm_plugin_entry_point-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: asrctl-vllm-plugin-entry-point\nVersion: 0\n"
    )
    (info / "entry_points.txt").write_text(
        "[vllm.general_plugins]\nasrctl = asrctl.vllm_plugin:register\n"
    )
    return root
