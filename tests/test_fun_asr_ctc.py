"""Fun-ASR-Nano CTC timestamps: head parity with funasr 1.4.16, tokenizer parity, Viterbi
forced alignment against brute force, word times, and the ``--ctc`` fixture.

funasr is a test-only reference (see test_funasr_parity.py for how it is installed and
loaded without its slow ``__init__``); torchaudio, which funasr's ``forced_align`` calls, is
not installed, so its grouping code is fed the brute-force best path through a stand-in.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from test_funasr_parity import FP32_ATOL, funasr_adaptor
from torch import Tensor

from asrctl.fixtures import fun_asr_nano
from asrctl.fixtures.fun_asr_nano import CTC_VOCAB_FILE, SIZES, ctc_shapes, ctc_vocab_tokens
from asrctl.models.ctc_tokenizer import CtcTokenizer, ctc_vocab_path, special_tokens
from asrctl.models.ctc_words import WordTime, split_words, word_times
from asrctl.models.fun_asr_ctc import (
    DEFAULT_CTC_VOCAB_SIZE,
    FunAsrCtcHead,
    TokenSpan,
    forced_align,
    min_frames,
)

ENCODER_DIM = 64  # the tiny fixture's encoder output size
LENGTHS = (29, 17, 6)  # encoder frames of the padded batch
PUBLISHED_CONFIG = {  # Fun-ASR-Nano-2512 (ModelScope) CTC blocks
    "ctc_decoder": "Transformer",
    "ctc_decoder_conf": {
        "downsample_rate": 1,
        "ffn_dim": 2048,
        "llm_dim": 512,
        "encoder_dim": 512,
        "n_layer": 5,
    },
}
TEXTS = (
    "你好世界，我们 hello world! 识别",
    "<|zh|><|nospeech|> speech recognition<|endoftext|>",
    "It's 3.14 — the test's fine, isn't it?",
    "こんにちは 안녕하세요 ASR；谢谢！",
    "  spaces\n\ttabs  ",
    "",
    "<|0.00|>今天天气很不错<|SPECIAL_TOKEN_1|>",
)


def _import_funasr(*names: str) -> list[ModuleType]:
    """funasr modules, imported under a bare package shell as in test_funasr_parity.py."""
    spec = importlib.util.find_spec("funasr")
    assert spec is not None, "funasr is needed (see test_funasr_parity.py)"
    shell = "funasr" not in sys.modules
    if shell:
        sys.modules["funasr"] = importlib.util.module_from_spec(spec)
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        if shell:
            del sys.modules["funasr"]


funasr_ctc, funasr_tokenizer, funasr_utils = _import_funasr(
    "funasr.models.fun_asr_nano.ctc",
    "funasr.models.sense_voice.whisper_lib.tokenizer",
    "funasr.models.fun_asr_nano.tools.utils",
)


@pytest.fixture(scope="module")
def ctc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Fun-ASR-Nano fixture with the CTC head (seed 0)."""
    return fun_asr_nano.make(tmp_path_factory.mktemp("fun-asr-ctc"), ctc=True)


@pytest.fixture(scope="module")
def config(ctc_dir: Path) -> dict:
    return yaml.safe_load((ctc_dir / "config.yaml").read_text())


@pytest.fixture(scope="module")
def state(ctc_dir: Path) -> dict[str, Tensor]:
    return torch.load(ctc_dir / "model.pt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def head(config: dict, state: dict[str, Tensor]) -> FunAsrCtcHead:
    loaded = FunAsrCtcHead.from_checkpoint(
        config, state, encoder_dim=ENCODER_DIM, device="cpu", dtype=torch.float32
    )
    assert loaded is not None
    return loaded


@pytest.fixture(scope="module")
def tokenizer(ctc_dir: Path, config: dict) -> CtcTokenizer:
    tok = CtcTokenizer.from_model_dir(ctc_dir, config)
    assert tok is not None
    return tok


def _encoder_batch() -> tuple[Tensor, Tensor]:
    """Seeded (3, 29, 64) encoder output, padded frames random too, and the lengths."""
    generator = torch.Generator().manual_seed(5)
    enc = torch.randn(len(LENGTHS), max(LENGTHS), ENCODER_DIM, generator=generator)
    return enc, torch.tensor(LENGTHS)


def _reference_modules(config: dict, state: dict[str, Tensor]) -> tuple[torch.nn.Module, ...]:
    """funasr's ctc_decoder (Transformer) and CTC, built as FunASRNano builds them, fp32."""
    conf = {**config["ctc_decoder_conf"], "encoder_dim": ENCODER_DIM}
    decoder = funasr_adaptor.Transformer(**conf)
    vocab = config["ctc_vocab_size"]
    ctc = funasr_ctc.CTC(
        odim=vocab, encoder_output_size=ENCODER_DIM, blank_id=vocab - 1, **config["ctc_conf"]
    )
    for module, prefix in [(decoder, "ctc_decoder."), (ctc, "ctc.")]:
        sub = {k.removeprefix(prefix): v.float() for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(sub, strict=True)
        module.eval()
    return decoder, ctc


# --- the head ---------------------------------------------------------------------------


def test_head_keys_match_funasr(config: dict, state: dict[str, Tensor]) -> None:
    """Our state_dict is funasr's ``ctc_decoder.*`` + ``ctc.*``, shapes included."""
    decoder, ctc = _reference_modules(config, state)
    ours = FunAsrCtcHead.from_config(config, encoder_dim=ENCODER_DIM)
    refs = {f"ctc_decoder.{k}": v for k, v in decoder.state_dict().items()}
    refs |= {f"ctc.{k}": v for k, v in ctc.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in refs.items()
    }


def test_published_config_shapes() -> None:
    """The published blocks give 84 ctc_decoder tensors, ctc_lo 512 -> 60515, blank 60514,
    matching the fixture's key table written from the published format."""
    with torch.device("meta"):
        ours = FunAsrCtcHead.from_config(PUBLISHED_CONFIG, encoder_dim=512)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert sum(k.startswith("ctc_decoder.") for k in shapes) == 84
    assert shapes["ctc.ctc_lo.weight"] == (60515, 512)
    assert (ours.vocab_size, ours.blank_id) == (DEFAULT_CTC_VOCAB_SIZE, 60514)
    assert shapes == ctc_shapes(SIZES["full"]["ctc_decoder"], DEFAULT_CTC_VOCAB_SIZE)


def test_log_probs_match_funasr(
    head: FunAsrCtcHead, config: dict, state: dict[str, Tensor]
) -> None:
    """Padded batch and each utterance alone equal funasr's ``ctc.log_softmax(ctc_decoder(.))``
    on the valid frames (fixture weights, fp32)."""
    decoder, ctc = _reference_modules(config, state)
    enc, lens = _encoder_batch()
    with torch.no_grad():
        frames = head(enc, lens)
        ref = ctc.log_softmax(decoder(enc.clone(), lens.clone())[0])
        alone = [head(enc[i : i + 1, :n], lens[i : i + 1])[0] for i, n in enumerate(LENGTHS)]
        ours = [head.log_probs(f) for f in frames]
        ours_alone = [head.log_probs(f) for f in alone]
    assert [f.num_frames for f in frames] == list(LENGTHS)
    assert min(float(r.std()) for r in ref) > 0.1  # a real signal
    for i, n in enumerate(LENGTHS):
        diff = float((ours[i] - ref[i, :n]).abs().max())
        assert diff < FP32_ATOL, f"utterance {i}: max abs diff {diff:.3g} vs funasr"
        diff = float((ours_alone[i] - ref[i, :n]).abs().max())
        assert diff < FP32_ATOL, f"utterance {i} alone: max abs diff {diff:.3g} vs funasr"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_emissions_equal_full_log_softmax(
    config: dict, state: dict[str, Tensor], dtype: torch.dtype
) -> None:
    """Log-probs of selected ids (from the stored hidden and normaliser) equal the columns of
    a full-vocabulary log_softmax of the same hidden, in either decoder dtype."""
    head = FunAsrCtcHead.from_checkpoint(
        config, state, encoder_dim=ENCODER_DIM, device="cpu", dtype=dtype
    )
    assert head is not None and head.ctc.ctc_lo.weight.dtype == torch.float32
    enc, lens = _encoder_batch()
    ids = [head.blank_id, 5, 300, 5, 17, head.vocab_size - 2]
    with torch.no_grad():
        for frames in head(enc, lens):
            assert frames.hidden.dtype == dtype and frames.log_norm.dtype == torch.float32
            lo = head.ctc.ctc_lo
            full = F.log_softmax(F.linear(frames.hidden.float(), lo.weight, lo.bias), dim=-1)
            got = head.emissions(frames, ids)
            assert got.shape == (frames.num_frames, len(ids))
            assert float((got - full[:, ids]).abs().max()) < 1e-5
            assert float((head.log_probs(frames) - full).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="token ids"):
        head.emissions(frames, [head.vocab_size])


def test_no_head_without_trained_tensors(
    config: dict, state: dict[str, Tensor], fun_asr_tiny: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No config block, no CTC tensors (the HF release) or a partial set: None, not fakes."""
    kwargs = dict(encoder_dim=ENCODER_DIM, device="cpu", dtype=torch.float32)
    hf_config = yaml.safe_load((fun_asr_tiny / "config.yaml").read_text())
    hf_state = torch.load(fun_asr_tiny / "model.pt", weights_only=True)["state_dict"]
    assert FunAsrCtcHead.from_checkpoint(hf_config, hf_state, **kwargs) is None
    assert FunAsrCtcHead.from_checkpoint(config, hf_state, **kwargs) is None
    assert FunAsrCtcHead.from_checkpoint(hf_config, state, **kwargs) is None
    for dropped in ("ctc.ctc_lo.bias", "ctc_decoder.blocks.1.norm2.weight"):
        partial = {k: v for k, v in state.items() if k != dropped}
        assert FunAsrCtcHead.from_checkpoint(config, partial, **kwargs) is None
        assert dropped in caplog.text


def test_blank_id_and_malformed_checkpoints(config: dict, state: dict[str, Tensor]) -> None:
    """``ctc_conf.blank_id`` wins over vocab - 1; keys or shapes that do not fit raise."""
    kwargs = dict(encoder_dim=ENCODER_DIM, device="cpu", dtype=torch.float32)
    custom = {**config, "ctc_conf": {**config["ctc_conf"], "blank_id": 0}}
    loaded = FunAsrCtcHead.from_checkpoint(custom, state, **kwargs)
    assert loaded is not None and loaded.blank_id == 0
    no_vocab = {k: v for k, v in config.items() if k != "ctc_vocab_size"}  # default 60515
    with pytest.raises(ValueError, match=r"ctc\.ctc_lo\.weight has shape"):
        FunAsrCtcHead.from_checkpoint(no_vocab, state, **kwargs)
    extra = {**state, "ctc_decoder.blocks.9.norm1.weight": torch.ones(64)}
    with pytest.raises(ValueError, match="unexpected CTC tensors"):
        FunAsrCtcHead.from_checkpoint(config, extra, **kwargs)


# --- the tokenizer ----------------------------------------------------------------------


def test_special_token_layout() -> None:
    """1,679 specials, so 58,836 published ranks give ctc_vocab_size 60515 (blank <|30.00|>)."""
    specials = special_tokens()
    assert len(specials) == DEFAULT_CTC_VOCAB_SIZE - 58836 == 1679
    assert specials[:3] == ["<|endoftext|>", "<|startoftranscript|>", "<|en|>"]
    assert specials[-1] == "<|30.00|>"
    assert special_tokens(3)[2:6] == ["<|en|>", "<|zh|>", "<|de|>", "<|ASR|>"]


def test_tokenizer_matches_funasr(ctc_dir: Path, tokenizer: CtcTokenizer) -> None:
    """Same ids as funasr's SenseVoiceTokenizer on the fixture vocabulary: ordinary text,
    special-looking strings encoded as text, and every special token's id."""
    ref = funasr_tokenizer.get_tokenizer(
        multilingual=True, num_languages=8749, vocab_path=str(ctc_dir / CTC_VOCAB_FILE)
    )
    for text in TEXTS:
        assert tokenizer.encode(text) == ref.encode(text), text
        assert b"".join(tokenizer.token_bytes(i) for i in tokenizer.encode(text)) == text.encode()
    assert tokenizer.vocab_size == ref.encoding.n_vocab
    assert {t: tokenizer.special_id(t) for t in special_tokens()} == ref.special_tokens
    assert tokenizer.special_id("<|30.00|>") == tokenizer.vocab_size - 1


def test_tokenizer_splits_characters(tokenizer: CtcTokenizer) -> None:
    """The fixture vocabulary has multi-character tokens and characters split over tokens."""
    pieces = [tokenizer.token_bytes(i) for i in tokenizer.encode("你好们")]
    assert pieces == ["你好".encode(), "们".encode()[:2], "们".encode()[2:]]


def test_vocab_path_resolution(ctc_dir: Path, config: dict, tmp_path: Path) -> None:
    """Like funasr's loader: absolute vocab_path, then model_dir/multilingual.tiktoken, then a
    relative vocab_path under model_dir; None without any."""
    default = ctc_dir / CTC_VOCAB_FILE
    assert ctc_vocab_path(ctc_dir, config) == default
    other = tmp_path / "other.tiktoken"
    other.write_bytes(default.read_bytes())
    absolute = {"ctc_tokenizer_conf": {"vocab_path": str(other)}}
    assert ctc_vocab_path(ctc_dir, absolute) == other
    relative = {"dataset_conf": {"ctc_tokenizer_conf": {"vocab_path": "other.tiktoken"}}}
    assert ctc_vocab_path(tmp_path, relative) == other
    assert ctc_vocab_path(tmp_path, config) is None
    assert CtcTokenizer.from_model_dir(tmp_path, config) is None


# --- forced alignment -------------------------------------------------------------------

BLANK = 4  # the small cases' vocabulary is 0..4
CASES = (  # (targets, frames)
    ([1], 1),
    ([1], 4),
    ([1, 1], 3),
    ([1, 1], 5),
    ([1, 2], 2),
    ([2, 1, 2], 4),
    ([3, 3, 3], 5),
    ([0, 1, 1, 0], 5),
    ([0, 1, 2], 7),
    ([2, 2], 6),
    ([1, 1], 2),  # impossible: a blank is needed between the two
    ([1, 2, 3], 2),  # impossible: more tokens than frames
    ([], 3),  # nothing to align
)


def _log_probs(frames: int, seed: int, vocab: int = BLANK + 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(frames, vocab, generator=generator, dtype=torch.float64)
    return F.log_softmax(logits, dim=-1)


def _collapse(labels: tuple[int, ...]) -> list[int]:
    return [label for label, _ in itertools.groupby(labels) if label != BLANK]


def _brute_force(log_probs: Tensor, targets: list[int]) -> list[int] | None:
    """Frame labels of the most probable path that collapses to ``targets``, by enumerating
    every label sequence; None if no path does."""
    frames = log_probs.shape[0]
    alphabet = sorted({BLANK, *targets})
    paths = np.array(list(itertools.product(alphabet, repeat=frames)))
    scores = log_probs.numpy()[np.arange(frames), paths].sum(axis=1)
    for k in np.argsort(-scores, kind="stable"):
        if _collapse(tuple(paths[k])) == targets:
            return paths[k].tolist()
    return None


def _reference_spans(log_probs: Tensor, labels: list[int]) -> list[TokenSpan]:
    """funasr's grouping of a frame-label path: runs of one non-blank label."""
    spans, start = [], 0
    for label, run in itertools.groupby(labels):
        end = start + len(list(run))
        if label != BLANK:
            best = max(math.exp(float(log_probs[t, label])) for t in range(start, end))
            spans.append(TokenSpan(label, start, end, best))
        start = end
    return spans


def _emissions(log_probs: Tensor, targets: list[int]) -> Tensor:
    return log_probs[:, [BLANK, *targets]]


def _assert_same(got: list[TokenSpan], want: list[TokenSpan]) -> None:
    assert [(s.token_id, s.start_frame, s.end_frame) for s in got] == [
        (s.token_id, s.start_frame, s.end_frame) for s in want
    ]
    # float32 scores: batched and single-utterance paths sum in different orders, and
    # BLAS builds (AMD, Intel) round differently, so a few ulp apart (seen: 9.5e-7)
    assert [s.score for s in got] == pytest.approx([s.score for s in want], rel=1e-5)


def _cases() -> Iterator[tuple[list[int], Tensor]]:
    for seed, (targets, frames) in enumerate(CASES):
        yield targets, _log_probs(frames, seed)


def test_min_frames() -> None:
    assert [min_frames(t) for t in ([], [1], [1, 1], [1, 2, 1], [3, 3, 3])] == [0, 1, 3, 3, 5]


def test_viterbi_matches_brute_force() -> None:
    """Each small case alone: the best valid path's spans, or none when impossible."""
    for targets, log_probs in _cases():
        labels = _brute_force(log_probs, targets) if targets else None
        (got,) = forced_align([_emissions(log_probs, targets)], [targets])
        want = [] if labels is None else _reference_spans(log_probs, labels)
        _assert_same(got, want)
        assert (labels is not None) == (len(targets) > 0 and min_frames(targets) <= len(log_probs))
        if got:
            assert [s.token_id for s in got] == targets
            assert got[0].start_frame >= 0 and got[-1].end_frame <= len(log_probs)


def test_batched_equals_alone() -> None:
    """All cases (different lengths, impossible and empty ones) in one batch."""
    cases = list(_cases())
    batched = forced_align([_emissions(lp, t) for t, lp in cases], [t for t, _ in cases])
    for (targets, log_probs), got in zip(cases, batched, strict=True):
        _assert_same(got, forced_align([_emissions(log_probs, targets)], [targets])[0])


def _textbook_viterbi(log_probs: Tensor, targets: list[int]) -> list[int]:
    """Frame labels of the best CTC path by the textbook per-state recursion (one utterance)."""
    ext = [BLANK]
    for y in targets:
        ext += [y, BLANK]
    lp, frames, states = log_probs.numpy(), len(log_probs), len(ext)
    score = np.full((frames, states), -np.inf)
    back = np.zeros((frames, states), dtype=int)
    score[0, :2] = lp[0, ext[:2]]
    for t in range(1, frames):
        for s in range(states):
            prev = [s, s - 1, s - 2] if s >= 2 and ext[s] not in (BLANK, ext[s - 2]) else [s, s - 1]
            prev = [p for p in prev if p >= 0]
            best = max(prev, key=lambda p: score[t - 1, p])
            score[t, s], back[t, s] = score[t - 1, best] + lp[t, ext[s]], best
    s = max((states - 1, states - 2), key=lambda p: score[-1, p])
    path = [s]
    for t in range(frames - 1, 0, -1):
        s = back[t, s]
        path.append(s)
    return [ext[s] for s in reversed(path)]


def test_longer_batch_matches_textbook_viterbi() -> None:
    """Longer utterances of mixed lengths, batched, against a plain per-utterance DP."""
    rng = np.random.default_rng(0)
    cases = []
    for seed, (frames, count) in enumerate([(60, 12), (35, 20), (80, 3), (20, 9), (41, 15)]):
        targets = rng.integers(0, BLANK, size=count).tolist()
        assert min_frames(targets) <= frames
        cases.append((targets, _log_probs(frames, 100 + seed)))
    got = forced_align([_emissions(lp, t) for t, lp in cases], [t for t, _ in cases])
    for (targets, log_probs), spans in zip(cases, got, strict=True):
        _assert_same(spans, _reference_spans(log_probs, _textbook_viterbi(log_probs, targets)))


def test_matches_funasr_forced_align(monkeypatch: pytest.MonkeyPatch) -> None:
    """funasr's forced_align, given the brute-force path where it calls torchaudio, returns
    the same tokens, frames and (3-decimal) scores, and nothing for impossible cases."""

    def best_path(log_probs: Tensor, targets: Tensor, blank: int) -> tuple[Tensor, Tensor]:
        assert blank == BLANK
        labels = _brute_force(log_probs[0], targets[0].tolist())
        if labels is None:
            raise RuntimeError("targets length is too long for CTC")
        path = torch.tensor([labels])
        return path, log_probs[0, torch.arange(path.shape[1]), path[0]][None]

    fake = SimpleNamespace(functional=SimpleNamespace(forced_align=best_path))
    monkeypatch.setitem(sys.modules, "torchaudio", fake)
    for targets, log_probs in _cases():
        if not targets:
            continue
        ref = funasr_utils.forced_align(log_probs, torch.tensor(targets), BLANK)
        (got,) = forced_align([_emissions(log_probs, targets)], [targets])
        assert [
            {"token": s.token_id, "start_time": s.start_frame, "end_time": s.end_frame}
            | {"score": round(s.score, 3)}
            for s in got
        ] == ref


def test_head_align(head: FunAsrCtcHead, tokenizer: CtcTokenizer) -> None:
    """The head's align equals forced_align on columns of the full log-probs; a text too long
    for its frames gives no spans."""
    enc, lens = _encoder_batch()
    texts = ["你好世界", "hello world", "识别们 test 今天天气很不错，谢谢！"]
    targets = [tokenizer.encode(t) for t in texts]
    with torch.no_grad():
        frames = head(enc, lens)
        got = head.align(frames, targets)
        full = [head.log_probs(f) for f in frames]
    assert len(targets[2]) > LENGTHS[2] and got[2] == []
    for f, ids, spans in zip(full[:2], targets[:2], got[:2], strict=True):
        want = forced_align([f[:, [head.blank_id, *ids]]], [ids])[0]
        _assert_same(spans, want)
        assert [s.token_id for s in spans] == ids
    with pytest.raises(ValueError, match="blank"):
        head.align(frames[:1], [[head.blank_id]])


# --- word times -------------------------------------------------------------------------


class _Pieces:
    """A stand-in tokenizer whose token i is ``pieces[i]``."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def token_bytes(self, token_id: int) -> bytes:
        return self.pieces[token_id]


def _spans(
    pieces: list[bytes], frames: list[tuple[int, int]], scores: list[float] | None = None
) -> tuple[_Pieces, list[TokenSpan]]:
    """A stand-in tokenizer and one span per piece (token id = index)."""
    scores = scores or [0.5] * len(pieces)
    spans = [
        TokenSpan(i, a, z, s) for i, ((a, z), s) in enumerate(zip(frames, scores, strict=True))
    ]
    return _Pieces(pieces), spans


def _words(text: str) -> list[str]:
    return [text[a:z] for a, z, _ in split_words(text)]


def test_split_words() -> None:
    assert _words("你好，世界。") == ["你", "好，", "世", "界。"]
    assert _words("Hello, world! It's fine.") == ["Hello,", "world!", "It's", "fine."]
    assert _words('he said "hi" ok') == ["he", "said", '"hi"', "ok"]
    assert _words("他说“好”。") == ["他", "说", "“好”。"]
    assert _words("abc你好 x-ray 3.14") == ["abc", "你", "好", "x-ray", "3.14"]
    assert _words("こんにちは 안녕") == ["こ", "ん", "に", "ち", "は", "안", "녕"]
    assert _words("Hello - world") == ["Hello -", "world"]
    assert _words("...") == ["..."]
    assert _words("  ") == []


def test_word_times_cjk_with_partial_byte_tokens() -> None:
    """你 split over two tokens (2 + 1 bytes), 好世 in one token, then 界 and ，。"""
    text = "你好世界，"
    ni, hao_shi, jie, comma = (ch.encode() for ch in ("你", "好世", "界", "，"))
    pieces = [ni[:2], ni[2:], hao_shi, jie, comma]
    tok, spans = _spans(pieces, [(1, 2), (3, 5), (5, 6), (8, 9), (9, 10)], [0.2, 0.4, 0.9, 1, 0])
    assert word_times(text, tok, spans) == [
        WordTime("你", 0.06, 0.3, pytest.approx(0.3)),
        WordTime("好", 0.3, 0.36, 0.9),
        WordTime("世", 0.3, 0.36, 0.9),
        WordTime("界，", 0.48, 0.54, 1.0),  # the comma's token does not time the word
    ]


def test_word_times_partial_bytes_across_characters() -> None:
    """A token holding the end of one character and the start of the next covers both."""
    text = "我们"
    raw = text.encode()
    tok, spans = _spans([raw[:2], raw[2:4], raw[4:]], [(0, 1), (2, 3), (4, 6)])
    words = word_times(text, tok, spans, frame_seconds=0.1)
    assert [(w.word, w.start, w.end) for w in words] == [("我", 0.0, 0.3), ("们", 0.2, 0.6)]


def test_word_times_english_and_punctuation() -> None:
    text = ' "Hi," he said.'
    pieces = [b' "', b"Hi", b",", b'"', b" he", b" said", b"."]
    tok, spans = _spans(pieces, [(0, 1), (2, 4), (4, 5), (5, 6), (7, 9), (10, 13), (13, 14)])
    words = word_times(text, tok, spans)
    assert [(w.word, w.start, w.end) for w in words] == [
        ('"Hi,"', 0.12, 0.24),
        ("he", 0.42, 0.54),
        ("said.", 0.6, 0.78),
    ]


def test_word_times_edge_cases() -> None:
    """Rounded to ms; no spans gives no words; spans that do not spell the text raise."""
    tok, spans = _spans([b"ok"], [(7, 9)])
    (word,) = word_times("ok", tok, spans)
    assert (word.start, word.end) == (0.42, 0.54)  # 7 * 0.06 = 0.42000000000000004
    assert word_times("ok", tok, []) == []
    with pytest.raises(ValueError, match="do not spell"):
        word_times("no", tok, spans)


def test_word_times_from_fixture_alignment(head: FunAsrCtcHead, tokenizer: CtcTokenizer) -> None:
    """End to end on the fixture: words are ordered and inside the audio."""
    enc, lens = _encoder_batch()
    text = "你好世界，我们 hello world!"
    with torch.no_grad():
        (spans,) = head.align(head(enc[:1], lens[:1]), [tokenizer.encode(text)])
    words = word_times(text, tokenizer, spans)
    assert [w.word for w in words] == ["你", "好", "世", "界，", "我", "们", "hello", "world!"]
    assert all(0 <= w.start < w.end <= LENGTHS[0] * 0.06 + 1e-9 for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)


# --- the fixture ------------------------------------------------------------------------


def test_ctc_fixture_cli(tmp_path: Path, state: dict[str, Tensor], config: dict) -> None:
    """``--ctc`` writes the CTC tensors, config blocks and vocabulary; the other tensors are
    the default fixture's."""
    out = tmp_path / "ctc"
    cmd = [sys.executable, "-m", "asrctl.fixtures", "fun-asr-nano", str(out), "--ctc"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    again = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert again.keys() == state.keys() and all(torch.equal(again[k], state[k]) for k in state)
    assert sum(k.startswith("ctc_decoder.") for k in state) == 4 + 16 * 2
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    vocab = CtcTokenizer.from_file(out / CTC_VOCAB_FILE).vocab_size
    assert state["ctc.ctc_lo.weight"].shape == (vocab, 64) == (config["ctc_vocab_size"], 64)
    assert config["ctc_decoder"] == "Transformer"
    assert config["ctc_decoder_conf"] == {"downsample_rate": 1, **SIZES["tiny"]["ctc_decoder"]}
    assert "blank_id" not in config["ctc_conf"]  # funasr passes blank_id besides ctc_conf
    assert config["dataset_conf"]["ctc_tokenizer"] == "SenseVoiceTokenizer"
    assert config["dataset_conf"]["ctc_tokenizer_conf"] == {
        "vocab_path": None,
        "is_multilingual": True,
        "num_languages": 8749,
    }


def test_default_fixture_has_no_ctc(
    fun_asr_tiny: Path, state: dict[str, Tensor], config: dict
) -> None:
    """Without ``--ctc``: the Hugging Face layout, the same tensors minus the head."""
    default = torch.load(fun_asr_tiny / "model.pt", weights_only=True)["state_dict"]
    assert set(default) == {k for k in state if not k.startswith(("ctc_decoder.", "ctc."))}
    assert all(torch.equal(default[k], state[k]) for k in default)
    assert not (fun_asr_tiny / CTC_VOCAB_FILE).exists()
    default_config = yaml.safe_load((fun_asr_tiny / "config.yaml").read_text())
    assert default_config == {
        k: v for k, v in config.items() if not k.startswith(("ctc", "detach_ctc"))
    } | {"dataset_conf": {"do_think": True}}


def test_fixture_vocab_merges_are_reachable() -> None:
    """Every merged token splits into two lower-ranked tokens, as BPE needs."""
    tokens = ctc_vocab_tokens()
    rank = {t: r for r, t in enumerate(tokens)}
    assert len(rank) == len(tokens) and tokens[:256] == [bytes([b]) for b in range(256)]
    for r, token in enumerate(tokens[256:], start=256):
        splits = [(token[:k], token[k:]) for k in range(1, len(token))]
        assert any(rank.get(a, r) < r and rank.get(b, r) < r for a, b in splits), token


def test_ctc_fixture_full_size_shapes() -> None:
    """``--size full --ctc`` key table: 84 ctc_decoder tensors, ctc_lo 60515 x 512."""
    shapes = ctc_shapes(SIZES["full"]["ctc_decoder"], DEFAULT_CTC_VOCAB_SIZE)
    assert sum(k.startswith("ctc_decoder.") for k in shapes) == 84
    assert shapes["ctc.ctc_lo.weight"] == (60515, 512)
    assert shapes["ctc_decoder.linear1.weight"] == (2048, 512)
    assert shapes["ctc_decoder.blocks.4.feed_forward.w_1.weight"] == (128, 512)
