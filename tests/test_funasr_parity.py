"""Parity of asrctl's Fun-ASR-Nano encoder and adaptor with funasr 1.4.16 (fp32, CPU).

funasr is a test-only reference, installed with:

    pip install --no-deps funasr==1.4.16
    pip install librosa==0.11.0

(``funasr.models.sense_voice.model`` imports ``funasr.utils.load_utils``, which imports librosa
at module level; nothing else outside torch/numpy/kaldiio is needed by the two modules.)
torchaudio is not needed: load_utils falls back to ``torchaudio = None`` on ImportError.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml
from precision import assert_bf16_close
from torch import Tensor, nn

from asrctl.models.funasr_adaptor import (
    FunAsrAdaptor,
    FunAsrAdaptorConfig,
    fun_asr_audio_token_count,
)
from asrctl.models.sensevoice import SenseVoiceEncoder, SenseVoiceEncoderConfig

REFERENCE_VERSION = "1.4.16"
REFERENCE_INSTALL = (
    f"pip install --no-deps funasr=={REFERENCE_VERSION} && pip install librosa==0.11.0"
)
FP32_ATOL = 2e-5  # max abs diff allowed between asrctl and funasr (fp32; measured about 3e-6)
LENGTHS = (29, 17, 6)  # LFR frames of the three utterances of the padded batch
INPUT_SIZE = 56  # stands for 80 mels x 7; any even size works
ENCODER_CONF = {
    "output_size": 64,
    "attention_heads": 4,
    "linear_units": 128,
    "num_blocks": 3,
    "tp_blocks": 2,
    "kernel_size": 11,
    "sanm_shfit": 0,
    "selfattention_layer_type": "sanm",
    "normalize_before": True,
}
ADAPTOR_CONF = {
    "downsample_rate": 1,
    "use_low_frame_rate": True,
    "ffn_dim": 256,
    "llm_dim": 128,
    "encoder_dim": 64,
    "n_layer": 2,
}
OFFICIAL_ENCODER_CONF = {**ENCODER_CONF, "output_size": 512, "linear_units": 2048}
OFFICIAL_ENCODER_CONF |= {"num_blocks": 50, "tp_blocks": 20}
OFFICIAL_ADAPTOR_CONF = {**ADAPTOR_CONF, "ffn_dim": 2048, "llm_dim": 1024, "encoder_dim": 512}


def _import_reference() -> tuple[ModuleType, ModuleType]:
    """Import funasr's sense_voice model and llm_asr adaptor modules, or fail with how to install.

    funasr/__init__.py imports every submodule of the package (about 25 s on CPU, swallowing
    the errors of optional ones). The two compared modules need none of that, so a bare package
    object stands in for ``funasr`` while they load and is removed afterwards; the modules
    themselves are funasr's unmodified source.
    """
    spec = importlib.util.find_spec("funasr")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(
            f"the funasr parity test needs the reference package: {REFERENCE_INSTALL}"
        )
    shell = "funasr" not in sys.modules
    if shell:
        sys.modules["funasr"] = importlib.util.module_from_spec(spec)
    try:
        encoder = importlib.import_module("funasr.models.sense_voice.model")
        adaptor = importlib.import_module("funasr.models.llm_asr.adaptor")
        # Transformer.__init__ imports this; load it now, while the bare package stands in.
        importlib.import_module("funasr.models.transformer.encoder")
    except ImportError as error:
        raise ImportError(
            f"cannot import funasr ({error}); install: {REFERENCE_INSTALL}"
        ) from error
    finally:
        if shell:
            del sys.modules["funasr"]
    return encoder, adaptor


def _reference_version() -> str:
    """Version of the installed funasr distribution (read without importing the package)."""
    return importlib.metadata.version("funasr")


funasr_sense_voice, funasr_adaptor = _import_reference()


def _random_state_dict(module: nn.Module, seed: int) -> dict[str, Tensor]:
    """Seeded values for every tensor: LN 1 + 0.1 N, biases 0.1 N, weights N / sqrt(fan_in)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in module.state_dict().items():
        noise = torch.randn(tensor.shape, generator=generator)
        if "norm" in name and name.endswith(".weight"):
            state[name] = 1 + 0.1 * noise
        elif name.endswith(".bias"):
            state[name] = 0.1 * noise
        else:
            state[name] = noise / tensor[0].numel() ** 0.5
    return state


def _build_pair(
    sanm_shift: int, downsample_rate: int
) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """(ours encoder, funasr encoder, ours adaptor, funasr adaptor) with identical weights, eval."""
    enc_conf = {**ENCODER_CONF, "sanm_shfit": sanm_shift}
    adp_conf = {**ADAPTOR_CONF, "downsample_rate": downsample_rate}
    ref_enc = funasr_sense_voice.SenseVoiceEncoderSmall(input_size=INPUT_SIZE, **enc_conf)
    ref_adp = funasr_adaptor.Transformer(**adp_conf)
    our_enc = SenseVoiceEncoder(SenseVoiceEncoderConfig.from_conf(enc_conf, INPUT_SIZE))
    our_adp = FunAsrAdaptor(FunAsrAdaptorConfig.from_conf(adp_conf))
    for seed, modules in enumerate([(ref_enc, our_enc), (ref_adp, our_adp)]):
        state = _random_state_dict(modules[0], seed)
        for module in modules:
            module.load_state_dict(state, strict=True)
            module.eval()
    return our_enc, ref_enc, our_adp, ref_adp


def _padded_batch() -> tuple[Tensor, Tensor]:
    """(3, max(LENGTHS), INPUT_SIZE) seeded features and the lengths.

    The padded frames hold random values too, so any leak of padding into valid frames shows.
    """
    generator = torch.Generator().manual_seed(1234)
    feats = torch.randn(len(LENGTHS), max(LENGTHS), INPUT_SIZE, generator=generator)
    return feats, torch.tensor(LENGTHS)


@torch.no_grad()
def _run(encoder: nn.Module, adaptor: nn.Module, feats: Tensor, lengths: Tensor) -> list[Tensor]:
    """[encoder out, adaptor out, adaptor lengths]; inputs cloned (funasr scales them in place)."""
    enc_out, enc_lens = encoder(feats.clone(), lengths.clone())
    adp_out, adp_lens = adaptor(enc_out, enc_lens)
    return [enc_out, adp_out, adp_lens]


def _max_diff(ours: list[Tensor], refs: list[Tensor]) -> float:
    """Largest absolute difference over pairs of (valid-frame) tensors."""
    return max(float((a - b).abs().max()) for a, b in zip(ours, refs, strict=True))


def test_reference_version() -> None:
    """The parity claims hold for the pinned funasr release."""
    assert _reference_version() == REFERENCE_VERSION, REFERENCE_INSTALL


def test_state_dict_keys_match_funasr() -> None:
    """Same key set and shapes as funasr's modules, so official checkpoints load strictly."""
    our_enc, ref_enc, our_adp, ref_adp = _build_pair(sanm_shift=0, downsample_rate=1)
    for ours, ref in [(our_enc, ref_enc), (our_adp, ref_adp)]:
        our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        assert our_shapes == {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def test_official_config_key_counts_and_shapes() -> None:
    """The Fun-ASR-Nano config yields the 914 encoder and 36 adaptor tensors of model.pt."""
    with torch.device("meta"):
        enc = SenseVoiceEncoder(SenseVoiceEncoderConfig.from_conf(OFFICIAL_ENCODER_CONF, 560))
        adp = FunAsrAdaptor(FunAsrAdaptorConfig.from_conf(OFFICIAL_ADAPTOR_CONF))
    enc_state, adp_state = enc.state_dict(), adp.state_dict()
    assert (len(enc_state), len(adp_state)) == (914, 36)
    assert enc_state["encoders0.0.self_attn.linear_q_k_v.weight"].shape == (1536, 560)
    assert enc_state["encoders.48.self_attn.fsmn_block.weight"].shape == (512, 1, 11)
    assert enc_state["tp_encoders.19.norm2.bias"].shape == (512,)
    assert adp_state["linear1.weight"].shape == (2048, 512)
    assert adp_state["linear2.weight"].shape == (1024, 2048)
    assert adp_state["blocks.1.feed_forward.w_1.weight"].shape == (256, 1024)


@pytest.mark.parametrize(("sanm_shift", "downsample_rate"), [(0, 1), (2, 2)])
def test_padded_batch_matches_funasr(sanm_shift: int, downsample_rate: int) -> None:
    """Encoder and encoder->adaptor outputs equal funasr's on a padded batch (valid frames)."""
    our_enc, ref_enc, our_adp, ref_adp = _build_pair(sanm_shift, downsample_rate)
    feats, lengths = _padded_batch()
    ours = _run(our_enc, our_adp, feats, lengths)
    refs = _run(ref_enc, ref_adp, feats, lengths)
    assert torch.equal(ours[2].long(), refs[2].long())
    enc_diff = _max_diff(
        [ours[0][i, :n] for i, n in enumerate(LENGTHS)],
        [refs[0][i, :n] for i, n in enumerate(LENGTHS)],
    )
    assert enc_diff < FP32_ATOL, f"encoder max abs diff {enc_diff:.3g}"
    if downsample_rate == 1:  # with k > 1 funasr stacks padded garbage, see funasr_adaptor.py
        adp_diff = _max_diff(
            [ours[1][i, :n] for i, n in enumerate(ours[2].tolist())],
            [refs[1][i, :n] for i, n in enumerate(refs[2].tolist())],
        )
        assert adp_diff < FP32_ATOL, f"adaptor max abs diff {adp_diff:.3g}"


@pytest.mark.parametrize(("sanm_shift", "downsample_rate"), [(0, 1), (2, 2)])
def test_each_utterance_alone_matches_funasr(sanm_shift: int, downsample_rate: int) -> None:
    """Each utterance alone equals funasr alone, and our padded batch equals funasr alone."""
    our_enc, ref_enc, our_adp, ref_adp = _build_pair(sanm_shift, downsample_rate)
    feats, lengths = _padded_batch()
    batched = _run(our_enc, our_adp, feats, lengths)
    for i, n in enumerate(LENGTHS):
        one = (feats[i : i + 1, :n], lengths[i : i + 1])
        ours, refs = _run(our_enc, our_adp, *one), _run(ref_enc, ref_adp, *one)
        alone_diff = _max_diff(ours[:2], refs[:2])
        assert alone_diff < FP32_ATOL, f"utterance {i} alone: max abs diff {alone_diff:.3g}"
        m = int(refs[2])
        batch_diff = _max_diff([batched[0][i : i + 1, :n], batched[1][i : i + 1, :m]], refs[:2])
        assert batch_diff < FP32_ATOL, f"utterance {i} batched vs alone: {batch_diff:.3g}"


def test_audio_token_count() -> None:
    """Fun-ASR-Nano splices about L/8 adaptor frames: 1 s (17 LFR frames) gives 3 tokens."""
    counts = {n: fun_asr_audio_token_count(n) for n in (1, 8, 9, 17, 47, 167)}
    assert counts == {1: 1, 8: 1, 9: 2, 17: 3, 47: 6, 167: 21}


def test_fixture_checkpoint_matches_funasr(fun_asr_tiny: Path) -> None:
    """The adapter's audio path on the fixture's model.pt equals funasr's modules on the same.

    funasr's WavFrontend needs torchaudio, so both sides get our LFR features (proven against
    kaldi-native-fbank in test_features.py); funasr's output is cut to FunASRNano's
    ``fake_token_len``, as FunASRNano.inference does. Outputs have std about 2; the max abs
    diff measured about 2.4e-6.
    """
    from asrctl.adapters.fun_asr_nano import FunAsrNanoAdapter

    adapter = FunAsrNanoAdapter(fun_asr_tiny)
    ours = adapter.audio_encoder("cpu", torch.float32)
    config = yaml.safe_load((fun_asr_tiny / "config.yaml").read_text())
    state = torch.load(fun_asr_tiny / "model.pt", weights_only=True)["state_dict"]
    ref_enc = funasr_sense_voice.SenseVoiceEncoderSmall(
        input_size=80 * 7, **config["audio_encoder_conf"]
    )
    llm_dim = state["llm.model.embed_tokens.weight"].shape[1]
    adp_conf = {**config["audio_adaptor_conf"], "encoder_dim": ref_enc.output_size()}
    ref_adp = funasr_adaptor.Transformer(**adp_conf | {"llm_dim": llm_dim})
    for module, prefix in [(ref_enc, "audio_encoder."), (ref_adp, "audio_adaptor.")]:
        sub = {k.removeprefix(prefix): v.float() for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(sub, strict=True)
        module.eval()
    generator = torch.Generator().manual_seed(7)
    waves = [0.1 * torch.randn(n, generator=generator) for n in (52800, 8000, 16000)]
    with torch.no_grad():
        got = ours(waves)
        feats, lengths = ours.features(waves)
        ref_out, _ = ref_adp(*ref_enc(feats.clone(), lengths.clone()))
    refs = [ref_out[i, : fun_asr_audio_token_count(int(n))] for i, n in enumerate(lengths)]
    assert [r.shape for r in refs] == [g.shape for g in got]
    assert min(float(r.std()) for r in refs) > 0.1  # a real signal, not near-zero outputs
    diff = _max_diff(got, refs)
    assert diff < FP32_ATOL, f"fixture checkpoint: max abs diff {diff:.3g} vs funasr"
    with torch.no_grad():  # the same in bfloat16 (asrctl's --encoder-dtype bfloat16)
        half = adapter.audio_encoder("cpu", torch.bfloat16)(waves)
    assert_bf16_close(half, refs)
