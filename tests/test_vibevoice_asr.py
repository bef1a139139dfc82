"""VibeVoice-ASR without vLLM: layouts, detection, setup, the tokenizer step, prompts,
output parsing, and audio embeddings against transformers' ``VibeVoiceAsrForConditionalGeneration``.

The reference is transformers' own ``vibevoice_asr`` (5.19 here) loaded from the ``-HF``
fixture; the original-layout fixture of the same seed holds the same tensors, so comparing
our encoder loaded from either layout with it checks both key mappings. transformers adds
``vae_std`` noise to the acoustic latents (the original samples too); asrctl uses the mean,
so the reference runs with ``vae_std = 0``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from precision import assert_bf16_close

from asrctl.adapters.base import PromptOptions
from asrctl.adapters.registry import detect, load_adapter
from asrctl.adapters.vibevoice_asr import (
    GENERATED_FILES,
    VibeVoiceAsrAdapter,
    add_tokenizer,
    main,
    parse_transcription,
)
from asrctl.errors import ModelDirError, OptionsError
from asrctl.export import export_llm
from asrctl.fixtures.tokenizer import write_qwen_tokenizer
from asrctl.results import ResultsDir, Transcript

transformers = pytest.importorskip("transformers")
SR = 24000
DURATIONS = (0.3, 1.0, 2.05, 3.2)  # 3, 8, 7 (2.05 s = 49200 samples → 16 tokens), 24 tokens
EMBED_ATOL = 5e-5  # fp32, same weights (measured ≤5.5e-6 on values of magnitude ≈4)


@pytest.fixture(scope="module")
def dirs(vibevoice_dirs: dict[str, Path]) -> dict[str, Path]:
    return vibevoice_dirs


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    out = []
    for i, seconds in enumerate(DURATIONS):
        rng = np.random.default_rng(i)
        t = np.arange(round(SR * seconds)) / SR
        x = 0.3 * np.sin(2 * np.pi * (150 + 200 * i) * t * (1 + t)) + 0.05 * rng.standard_normal(
            t.size
        )
        out.append(x.astype(np.float32))
    out.append(np.zeros(SR // 2, np.float32))  # digital silence: normalisation must not blow up
    return out


@pytest.fixture(scope="module")
def reference(dirs):
    from transformers import (
        VibeVoiceAcousticTokenizerFeatureExtractor,
        VibeVoiceAsrForConditionalGeneration,
    )

    model = VibeVoiceAsrForConditionalGeneration.from_pretrained(dirs["hf"], dtype=torch.float32)
    model.config.acoustic_tokenizer_encoder_config.vae_std = 0.0  # the mean, as asrctl
    return model.eval(), VibeVoiceAcousticTokenizerFeatureExtractor()


def ref_embeddings(reference, wave: np.ndarray, chunk: int | None = None) -> torch.Tensor:
    model, fe = reference
    f = fe(wave, sampling_rate=SR)
    if chunk is not None:
        model.config.acoustic_tokenizer_chunk_size = chunk
    try:
        with torch.no_grad():
            out = model.get_audio_features(f["input_values"], padding_mask=f["padding_mask"])
    finally:
        model.config.acoustic_tokenizer_chunk_size = 1440000
    return out.pooler_output


# --- layouts, detection, setup ------------------------------------------------------------


def test_fixture_layouts(dirs) -> None:
    orig = json.loads((dirs["original"] / "config.json").read_text())
    assert (
        orig["architectures"] == ["VibeVoiceForASRTraining"] and orig["model_type"] == "vibevoice"
    )
    assert orig["acoustic_tokenizer_config"]["encoder_ratios"] == [8, 5, 5, 4, 2, 2]
    index = json.loads((dirs["original"] / "model.safetensors.index.json").read_text())
    keys = set(index["weight_map"])
    assert "lm_head.weight" in keys
    assert "model.acoustic_tokenizer.encoder.downsample_layers.0.0.conv.conv.weight" in keys
    assert "model.semantic_tokenizer.encoder.stages.0.0.mixer.conv.conv.conv.weight" in keys
    assert "model.acoustic_connector.fc1.weight" in keys
    assert len(set(index["weight_map"].values())) == 2  # sharded
    assert all((dirs["original"] / n).is_file() for n in GENERATED_FILES)
    hf = json.loads((dirs["hf"] / "config.json").read_text())
    assert hf["model_type"] == "vibevoice_asr"


def test_transformers_loads_the_hf_fixture_exactly(dirs) -> None:
    from transformers import VibeVoiceAsrForConditionalGeneration

    _, info = VibeVoiceAsrForConditionalGeneration.from_pretrained(
        dirs["hf"], dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), info


@pytest.mark.parametrize("layout", ["original", "hf"])
def test_detect_check_and_export(dirs, layout, tmp_path) -> None:
    model_dir = Path(shutil.copytree(dirs[layout], tmp_path / layout))
    adapter = load_adapter(model_dir)
    assert isinstance(adapter, VibeVoiceAsrAdapter)
    assert adapter.hf_layout == (layout == "hf")
    prepared = export_llm(adapter)
    config = json.loads((prepared.llm_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["model_type"] == "qwen2"
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    from safetensors import safe_open

    with safe_open(str(prepared.llm_dir / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" in keys and "model.embed_tokens.weight" in keys
    assert not any("tokenizer" in k or "connector" in k or "projector" in k for k in keys)
    assert (prepared.llm_dir / "tokenizer.json").is_file()
    assert export_llm(adapter).reused


def test_both_layouts_export_the_same_llm(dirs, tmp_path) -> None:
    """Only the original layout runs through vLLM in CI; the -HF export is tensor-identical."""
    from safetensors.torch import load_file

    exported = []
    for layout in ("original", "hf"):
        model_dir = Path(shutil.copytree(dirs[layout], tmp_path / layout))
        llm_dir = export_llm(load_adapter(model_dir)).llm_dir
        exported.append(load_file(llm_dir / "model.safetensors"))
    assert exported[0].keys() == exported[1].keys()
    assert all(torch.equal(exported[0][k], exported[1][k]) for k in exported[0])


def test_tts_checkpoint_is_refused(dirs, tmp_path) -> None:
    model_dir = Path(shutil.copytree(dirs["original"], tmp_path / "tts"))
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["architectures"] = ["VibeVoiceForConditionalGeneration"]
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match="not VibeVoiceForASRTraining"):
        load_adapter(model_dir)


def test_missing_tokenizer_says_what_to_provide_then_add_tokenizer(dirs, tmp_path) -> None:
    model_dir = Path(shutil.copytree(dirs["original"], tmp_path / "bare"))
    for name in GENERATED_FILES:
        (model_dir / name).unlink()
    assert isinstance(detect(model_dir), VibeVoiceAsrAdapter)
    with pytest.raises(ModelDirError) as err:
        load_adapter(model_dir)
    message = str(err.value)
    assert "ships no tokenizer" in message and "Qwen/Qwen2.5-7B" in message
    assert "add-tokenizer" in message
    # a folder that is not a Qwen2.5 tokenizer is refused with the same instructions
    assert main(["add-tokenizer", str(model_dir), str(tmp_path)]) == 2
    qwen = tmp_path / "qwen2.5"
    write_qwen_tokenizer(qwen, qwen3=False)
    assert main(["add-tokenizer", str(model_dir), str(qwen)]) == 0
    adapter = load_adapter(model_dir)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    base = Tokenizer.from_file(str(qwen / "tokenizer.json")).get_vocab_size()
    assert [tok.token_to_id(t) for t in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")] == [
        base,
        base + 1,
        base + 2,
    ]
    added = json.loads((model_dir / "added_tokens.json").read_text())
    assert added["<|audio_eos|>"] == base + 2
    assert all((model_dir / n).is_file() for n in GENERATED_FILES)
    assert adapter.check() == []
    # the generated files equal the fixture's (made the same way)
    assert add_tokenizer(model_dir, qwen)


# --- prompt -----------------------------------------------------------------------------


def test_prompt_states_duration_and_context(dirs) -> None:
    adapter = load_adapter(dirs["original"])
    p = adapter.prompt_for_audio(PromptOptions(), 12.345)
    assert p.prefix == (
        "<|im_start|>system\nYou are a helpful assistant that transcribes audio input into "
        "text output in JSON format.<|im_end|>\n<|im_start|>user\n<|object_ref_start|>"
    )
    assert p.suffix == (
        "<|object_ref_end|>\nThis is a 12.35 seconds audio, please transcribe it with these "
        "keys: Start time, End time, Speaker ID, Content<|im_end|>\n<|im_start|>assistant\n"
    )
    ctx = adapter.prompt_for_audio(PromptOptions(hotwords=("Azure", "VibeVoice")), 3.0)
    assert (
        "This is a 3.00 seconds audio, with extra info: Azure, VibeVoice\n\nPlease transcribe"
        in (ctx.suffix)
    )
    with pytest.raises(OptionsError):
        adapter.prompt(PromptOptions(language="en"))
    assert adapter.prompt(PromptOptions(language="auto")).prefix == p.prefix


# --- output parsing ------------------------------------------------------------------------

GOOD = '[{"Start":0.0,"End":3.52,"Speaker":0,"Content":"Hello there."},{"Start":3.6,"End":5,"Speaker":1,"Content":"Hi!"}]'  # noqa: E501


def test_parse_plain_json() -> None:
    text, segments, problem = parse_transcription(GOOD)
    assert problem is None and text == "Hello there. Hi!"
    assert segments == [
        {"start": 0.0, "end": 3.52, "speaker": 0, "text": "Hello there."},
        {"start": 3.6, "end": 5.0, "speaker": 1, "text": "Hi!"},
    ]


@pytest.mark.parametrize(
    "wrapped",
    [
        f"```json\n{GOOD}\n```",
        f"```\n{GOOD}```",
        f"assistant\n{GOOD}\n",
        f"  ```json{GOOD}",  # unclosed fence
    ],
)
def test_parse_tolerates_fences(wrapped: str) -> None:
    assert parse_transcription(wrapped)[:2] == parse_transcription(GOOD)[:2]


def test_parse_long_key_names() -> None:
    raw = '[{"Start time":"1.5","End time":2,"Speaker ID":"2","Content":" x "}]'
    assert parse_transcription(raw)[1] == [{"start": 1.5, "end": 2.0, "speaker": 2, "text": "x"}]


def test_parse_missing_times_and_speaker() -> None:
    raw = (
        '[{"Start":1,"End":2,"Content":"a"},{"Speaker":"S1","Content":"b"},'
        '{"End":"?","Content":"c"}]'
    )
    assert parse_transcription(raw)[1] == [
        {"start": 1.0, "end": 2.0, "speaker": None, "text": "a"},
        {"start": 2.0, "end": 2.0, "speaker": "S1", "text": "b"},
        {"start": 2.0, "end": 2.0, "speaker": None, "text": "c"},
    ]


def test_segments_feed_the_subtitle_writers(dirs) -> None:
    from asrctl import writers

    _, segments = load_adapter(dirs["original"]).parse_output(GOOD)
    srt = writers.srt(writers.transcript_cues(Transcript("a", "x", 5.0, segments=tuple(segments))))
    assert "00:00:03,600 --> 00:00:05,000" in srt and "Hi!" in srt


@pytest.mark.parametrize("cut", [len(GOOD) - 1, len(GOOD) - 8, GOOD.index("},{") + 2])
def test_parse_truncated_keeps_complete_segments(cut: int) -> None:
    _, segments, problem = parse_transcription(GOOD[:cut])
    assert segments[0]["text"] == "Hello there." and len(segments) in (1, 2)
    assert problem and "cut off" in problem


@pytest.mark.parametrize(
    "raw",
    [
        "hello world",
        '[{"Start":0.0,"End',  # truncated inside the first segment
        "[1, 2, 3]",
        '{"Content": "not a list"}',
        '[{"Start":0,"End":1,"Speaker":0}]',  # no Content
        "[not json at all",
        "",
    ],
)
def test_malformed_output_degrades_to_text(raw: str, caplog, dirs) -> None:
    text, segments, problem = parse_transcription(raw)
    assert segments == [] and problem and text == raw.strip()
    adapter = load_adapter(dirs["original"])
    with caplog.at_level(logging.WARNING, logger="asrctl"):
        assert adapter.parse_output(raw) == (raw.strip(), [])
    assert "kept as plain text" in caplog.text


def test_segments_reach_results_jsonl(dirs, tmp_path) -> None:
    adapter = load_adapter(dirs["original"])
    text, segments = adapter.parse_output(f"```json\n{GOOD}\n```")
    plain_text, plain_segments = adapter.parse_output("no json here")
    rows = [
        Transcript("a", text, 5.0, segments=tuple(segments) or None),
        Transcript("b", plain_text, 1.0, segments=tuple(plain_segments) or None),
    ]
    with ResultsDir(tmp_path / "out") as out:
        out.write(rows)
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert lines[0]["segments"][1] == {"start": 3.6, "end": 5.0, "speaker": 1, "text": "Hi!"}
    assert lines[0]["text"] == "Hello there. Hi!"
    assert "segments" not in lines[1] and lines[1]["text"] == "no json here"


# --- audio embeddings vs transformers ---------------------------------------------------------


@pytest.mark.parametrize("layout", ["original", "hf"])
def test_audio_embeddings_match_transformers(dirs, reference, waves, layout) -> None:
    encoder = load_adapter(dirs[layout]).audio_encoder("cpu", torch.float32)
    ours = encoder([torch.from_numpy(w) for w in waves])  # one padded batch
    for i, (emb, wave) in enumerate(zip(ours, waves, strict=True)):
        ref = ref_embeddings(reference, wave)
        assert emb.shape == ref.shape == (-(-len(wave) // 3200), 128), (emb.shape, ref.shape)
        assert torch.isfinite(emb).all()
        diff = float((emb - ref).abs().max())
        assert diff < EMBED_ATOL, f"{layout} utt{i}: max abs diff {diff:.3g}"


def test_bfloat16_encoder_stays_close_to_transformers(dirs, reference, waves) -> None:
    """asrctl's --encoder-dtype bfloat16 against the float32 reference."""
    half = load_adapter(dirs["original"]).audio_encoder("cpu", torch.bfloat16)
    with torch.no_grad():
        embeds = half([torch.from_numpy(w) for w in waves])
    assert_bf16_close(embeds, [ref_embeddings(reference, w) for w in waves])


def test_streamed_pieces_match_transformers_streaming(dirs, reference, waves) -> None:
    """Encoding in pieces (here 0.4 s instead of 60 s) with the conv cache equals both
    transformers' streamed encoder at the same piece size and the one-piece result."""
    from asrctl.models.vibevoice import VibeVoiceAudio

    adapter = load_adapter(dirs["original"])
    whole = adapter.audio_encoder("cpu", torch.float32)
    pieces = adapter.audio_encoder("cpu", torch.float32)
    assert isinstance(pieces, VibeVoiceAudio)
    pieces.chunk = 3 * 3200
    wave = np.concatenate(waves[:4])
    streamed = pieces([torch.from_numpy(wave)])[0]
    ref = ref_embeddings(reference, wave, chunk=3 * 3200)
    diff = float((streamed - ref).abs().max())
    assert diff < EMBED_ATOL, f"streamed vs transformers streamed: max abs diff {diff:.3g}"
    one = whole([torch.from_numpy(wave)])[0]
    diff = float((streamed - one).abs().max())
    assert diff < EMBED_ATOL, f"streamed vs one piece: max abs diff {diff:.3g}"


def test_normalisation_to_minus_25_dbfs() -> None:
    from asrctl.models.vibevoice import normalize_loudness

    x = torch.from_numpy(0.01 * np.random.default_rng(0).standard_normal(SR).astype(np.float32))
    y = normalize_loudness(x)
    rms_db = 20 * float(torch.log10(y.pow(2).mean().sqrt()))
    assert abs(rms_db - (-25.0)) < 1e-3
    spike = torch.zeros(SR)
    spike[0] = 1.0  # normalising to -25 dBFS would clip: the peak is scaled to just below 1
    assert float(normalize_loudness(spike).abs().max()) <= 1.0


def test_cli_setup_without_tokenizer_then_with(dirs, tmp_path) -> None:
    """``asrctl setup`` on the release as downloaded (no tokenizer) names what to provide;
    after ``add-tokenizer`` it exports."""
    import subprocess
    import sys

    model_dir = Path(shutil.copytree(dirs["original"], tmp_path / "VibeVoice-ASR"))
    for name in GENERATED_FILES:
        (model_dir / name).unlink()
    setup = [sys.executable, "-m", "asrctl", "setup", str(model_dir)]
    first = subprocess.run(setup, capture_output=True, text=True, timeout=300)
    assert first.returncode != 0
    assert "ships no tokenizer" in first.stderr and "add-tokenizer" in first.stderr, first.stderr
    qwen = tmp_path / "qwen2.5"
    write_qwen_tokenizer(qwen, qwen3=False)
    add = [sys.executable, "-m", "asrctl.adapters.vibevoice_asr", "add-tokenizer"]
    subprocess.run([*add, str(model_dir), str(qwen)], check=True, capture_output=True)
    second = subprocess.run(setup, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "family\tvibevoice-asr" in second.stdout


@pytest.mark.parametrize("layout", ["original", "hf"])
def test_audio_positions_equal_encoder_output(dirs, waves, layout) -> None:
    """7.5 per second, the last one partial; both layouts read the hop from their config."""
    adapter = load_adapter(dirs[layout])
    encoder = adapter.audio_encoder("cpu", torch.float32)
    with torch.no_grad():
        out = encoder([torch.from_numpy(w) for w in waves])
    assert [adapter.audio_positions(len(w)) for w in waves] == [len(o) for o in out]
    assert adapter.audio_positions(SR * 3600) == 27000


@pytest.mark.parametrize("layout", ["original", "hf"])
def test_encoder_keeps_the_encoder_contract(dirs, waves, layout) -> None:
    """The pipeline calls ``encode`` and ``word_timing`` (the AudioEncoder defaults here):
    VibeVoice gives its own timestamps, no word times."""
    from asrctl.adapters.base import AudioEncoder

    encoder = load_adapter(dirs[layout]).audio_encoder("cpu", torch.float32)
    assert isinstance(encoder, AudioEncoder) and not encoder.word_timing
    with torch.no_grad():
        embeds, timing = encoder.encode([torch.from_numpy(waves[0])], timing=True)
    assert timing is None and len(embeds) == 1
