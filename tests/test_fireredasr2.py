"""FireRedASR2-LLM in exactly its release shape, end to end against its own pipeline.

The release (FireRedTeam, 2026-02-25) has FireRedASR-LLM-L's file names, but
``asr_encoder.pth.tar`` holds only the pickled args (1.47 kB; the encoder is built from
them and takes its weights from ``model.pth.tar``) and ``Qwen2-7B-Instruct/`` is a folder
inside the repo. Its pipeline lower-cases the text.

The reference is ``fireredasr2`` as bundled by ``fasr-asr-firered`` 0.5.8 (the
FireRedASR2S inference code; ``pip install --no-deps fasr-asr-firered==0.5.8``), run
unmodified through ``FireRedAsr2.from_pretrained("llm", DIR).transcribe``, with shims:

* ``fireredasr2.models.fireredasr_aed`` imports ``torchaudio`` (only for AED timestamps);
  a stand-in module is in place while it is imported;
* the bundle forces ``args.use_fp16 = True`` (the LLM in bf16): the comparison is in fp32,
  so ``FireRedAsrLlm.from_args`` sees ``use_fp16 = False``;
* transformers 5's ``apply_chat_template(tokenize=True)`` gets ``return_dict=False``.

Greedy (beam 1) at repetition penalty 3.0 (asrctl's default for the family, the README's
setting), ``decode_max_len=0``: identical token ids, and the reference pipeline's text.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import soundfile as sf
import torch
from clirun import run_asrctl
from parity import assert_same_text, chirp_wavs

from asrctl.adapters.fireredasr_llm import LLM_DIR, FireRedAsrLlmAdapter, load_checkpoint
from asrctl.adapters.registry import load_adapter
from asrctl.engine import EngineOptions
from asrctl.export import export_llm
from asrctl.fixtures import make_fixture
from asrctl.inputs import from_arrays
from asrctl.results import Transcript
from asrctl.transcribe import TranscribeOptions, Transcriber

SR = 16000
DURATIONS = (0.5, 1.2, 2.3)
PENALTY = 3.0
REFERENCE_INSTALL = "pip install --no-deps fasr-asr-firered==0.5.8"


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fixture("fireredasr-llm-v2", tmp_path_factory.mktemp("fr2") / "FireRedASR2-LLM")


def test_fixture_is_the_release_shape(v2: Path) -> None:
    enc = load_checkpoint(v2 / "asr_encoder.pth.tar")
    assert set(enc) == {"args"}
    assert (v2 / "asr_encoder.pth.tar").stat().st_size < 2048  # the release's is 1.47 kB
    llm = v2 / LLM_DIR
    assert llm.is_dir() and not llm.is_symlink()
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= {p.name for p in llm.iterdir()}
    state = load_checkpoint(v2 / "model.pth.tar")["model_state_dict"]
    assert {k.split(".")[0] for k in state} == {"encoder", "encoder_projector", "llm"}
    assert (v2 / "config.yaml").read_bytes() == b""


def test_recognised_as_v2_and_set_up(v2: Path, tmp_path: Path) -> None:
    import shutil

    model_dir = Path(shutil.copytree(v2, tmp_path / "m"))
    adapter = load_adapter(model_dir)
    assert isinstance(adapter, FireRedAsrLlmAdapter) and adapter.version == 2
    assert "FireRedASR2-LLM" in adapter.layout and "inside the repo" in adapter.layout
    assert adapter.postprocess(" Hello World ") == "hello world"
    state = load_checkpoint(model_dir / "model.pth.tar")["model_state_dict"]
    ours = adapter.encoder_state()
    assert all(torch.equal(ours[k], v) for k, v in state.items() if k.startswith("encoder"))
    proc = run_asrctl("setup", str(model_dir), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert export_llm(adapter).reused


def test_v1_encoder_weights_come_from_model_pth_tar(tmp_path: Path) -> None:
    """v1's asr_encoder.pth.tar has its own encoder weights; model.pth.tar's win."""
    v1 = make_fixture("fireredasr-llm", tmp_path / "v1")
    adapter = load_adapter(v1)
    assert adapter.version == 1 and "v1 layout" in adapter.layout
    assert adapter.postprocess(" Hello ") == "Hello"
    aed = load_checkpoint(v1 / "asr_encoder.pth.tar")["model_state_dict"]
    main = load_checkpoint(v1 / "model.pth.tar")["model_state_dict"]
    key = "encoder.layer_stack.0.mhsa.w_qs.weight"
    assert not torch.equal(aed[key], main[key])
    assert torch.equal(adapter.encoder_state()[key], main[key])


# --- against the original pipeline ---------------------------------------------------------


def _import_reference() -> types.SimpleNamespace:
    if importlib.util.find_spec("fireredasr2") is None:
        pytest.skip(f"the FireRedASR2 reference is not installed: {REFERENCE_INSTALL}")
    import transformers  # noqa: F401  (before the stand-in: it probes torchaudio's spec)

    stub = "torchaudio" not in sys.modules and importlib.util.find_spec("torchaudio") is None
    if stub:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        from fireredasr2.asr import FireRedAsr2, FireRedAsr2Config
        from fireredasr2.models.fireredasr_llm import FireRedAsrLlm
    finally:
        if stub:
            del sys.modules["torchaudio"]
    return types.SimpleNamespace(
        FireRedAsr2=FireRedAsr2, Config=FireRedAsr2Config, Llm=FireRedAsrLlm
    )


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("wav2")
    return chirp_wavs(folder, DURATIONS, SR, seed=10, base_hz=200, step_hz=170, sweep=1.0)


@pytest.fixture(scope="module")
def reference(v2: Path, monkeypatch_module):
    import argparse

    ref = _import_reference()
    real = ref.Llm.from_args.__func__

    def fp32_from_args(cls, args, *a, **kw):
        args.use_fp16 = False  # the bundle forces bf16; compare in fp32
        return real(cls, args, *a, **kw)

    monkeypatch_module.setattr(ref.Llm, "from_args", classmethod(fp32_from_args))
    config = ref.Config(use_gpu=False, beam_size=1, repetition_penalty=PENALTY, decode_max_len=0)
    with torch.serialization.safe_globals([argparse.Namespace]):
        asr = ref.FireRedAsr2.from_pretrained("llm", str(v2), config)
    asr.tokenizer.apply_chat_template = functools.partial(
        asr.tokenizer.apply_chat_template, return_dict=False
    )
    return asr


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@torch.no_grad()
def _ref_tokens(asr, wav: Path) -> list[int]:
    from fireredasr2.tokenizer.llm_tokenizer import LlmTokenizerWrapper

    feats, lengths, *_ = asr.feat_extractor([str(wav)], ["u"])
    ids, mask, _, _ = LlmTokenizerWrapper.preprocess_texts(
        [""], asr.tokenizer, max_len=128, decode=True
    )
    c = asr.config
    out = asr.model.transcribe(
        feats,
        lengths,
        ids,
        mask,
        c.beam_size,
        c.decode_max_len,
        c.decode_min_len,
        c.repetition_penalty,
        c.llm_length_penalty,
        c.temperature,
    )[0].tolist()
    # it stops at <|im_end|> only; asrctl also at <|endoftext|> (Qwen2's other eos)
    stops = {asr.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    for i, token in enumerate(out):
        if token in stops:
            return out[: i + 1]
    return out


@pytest.mark.vllm
def test_transcribe_defaults_equal_the_fireredasr2_pipeline(v2, reference, wavs) -> None:
    arrays = [sf.read(p, dtype="float32")[0] for p in wavs]
    options = EngineOptions(dtype="float32", enforce_eager=True, max_model_len=1024)
    with Transcriber(v2, engine_options=options, device="cpu") as t:
        results = sorted(
            (r for b in t.transcribe(from_arrays(arrays, SR), TranscribeOptions()) for r in b),
            key=lambda r: r.key,
        )
    assert [type(r) for r in results] == [Transcript] * len(wavs)
    assert len({tuple(r.token_ids) for r in results}) == len(wavs)  # depends on the audio
    for r, wav in zip(results, wavs, strict=True):
        [ref] = reference.transcribe(["u"], [str(wav)])  # each alone, no padding
        expected = _ref_tokens(reference, wav)
        assert list(r.token_ids) == expected, wav.name
        text = reference.tokenizer.decode(expected, skip_special_tokens=True).lower().strip()
        assert_same_text(wav.name, r.text, text)
        assert ref["text"].strip().startswith(r.text), wav.name  # the whole pipeline's text
