"""Scoring against hand-computed examples: counts, normalisers, units, reference files."""

from __future__ import annotations

import json

import jiwer
import pytest

from asrctl.bench.scoring import (
    alignment,
    infer_language,
    make_spec,
    normalise_cjk,
    read_references,
    score,
    score_utterance,
    tokens,
    worst,
)
from asrctl.errors import InputError, OptionsError


def counts(u) -> tuple[int, int, int, int, int]:
    return u.n, u.hits, u.substitutions, u.deletions, u.insertions


def test_wer_counts_one_substitution_deletion_and_insertion():
    spec = make_spec("fr")  # basic normaliser, words
    u = score_utterance(
        "k", "One two three four five six seven", "one too three five six seven eight", spec
    )
    # one=one, two→too (S), three=three, four (D), five six seven =, eight (I)
    assert counts(u) == (7, 5, 1, 1, 1)
    assert u.error_rate == pytest.approx(3 / 7)
    marks = alignment(u, spec).splitlines()
    assert marks[0].startswith("REF:") and marks[1].startswith("HYP:")
    assert sorted(marks[2].split()) == ["D", "I", "S"]


def test_cer_on_chinese_counts_characters():
    spec = make_spec("zh")
    assert (spec.metric, spec.unit) == ("cer", "mixed")
    u = score_utterance("k", "今天天气很好", "今天天汽很好啊", spec)
    assert counts(u) == (6, 5, 1, 0, 1)  # 气→汽, 啊 inserted
    u = score_utterance("k", "我们去公园吧", "我们公园吧", spec)
    assert counts(u) == (6, 5, 0, 1, 0)  # 去 deleted


def test_chinese_normaliser_drops_punctuation_and_folds_full_width():
    assert normalise_cjk("你好，世界！ＡＢＣ１２３。「引号」…") == "你好 世界 abc123 引号"
    spec = make_spec("zh")
    u = score_utterance("k", "你好，世界！ＡＢＣ１２３", "你好世界 abc123?", spec)
    assert counts(u) == (5, 5, 0, 0, 0)  # 你 好 世 界 abc123: all hits
    assert u.ref_norm == "你好 世界 abc123" and u.hyp_norm == "你好世界 abc123"


def test_traditional_to_simplified_is_optional():
    plain = score_utterance("k", "語音識別", "语音识别", make_spec("zh"))
    assert counts(plain) == (4, 1, 3, 0, 0)  # 語/识/別 differ, 音 is the same
    t2s = score_utterance("k", "語音識別", "语音识别", make_spec("zh", t2s=True))
    assert counts(t2s) == (4, 4, 0, 0, 0)
    with pytest.raises(OptionsError):
        make_spec("en", t2s=True)


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("Mr. Smith's 2 cats!", "mister smith is 2 cats"),  # Whisper spells out 's as "is"
        ("I won't go, OK?", "i will not go ok"),
        ("Hello, World!", "hello world"),
        ("The colour of twenty-five", "the color of 25"),
        ("um, well [laughs] yes", "well yes"),  # fillers and bracketed noise dropped
    ],
)
def test_english_uses_whisper_normaliser(text, normalised):
    assert make_spec("en").normalise(text) == normalised


def test_english_normaliser_applies_to_both_sides():
    u = score_utterance("k", "Mr. Smith's 2 cats!", "mister smith is two cats", make_spec("en"))
    assert counts(u) == (5, 5, 0, 0, 0)


def test_mixed_text_counts_cjk_characters_and_latin_words():
    assert tokens("我用python写代码 ok", "mixed") == ["我", "用", "python", "写", "代", "码", "ok"]
    spec = make_spec("zh")
    u = score_utterance("k", "我用Python写代码", "我用python写的代码", spec)
    assert counts(u) == (6, 6, 0, 0, 1)  # case folded; 的 inserted
    u = score_utterance("k", "我用Python写代码", "我用Pyhton写代码", spec)
    assert counts(u) == (6, 5, 1, 0, 0)  # a misspelt word is one substitution


def test_metric_override_and_units():
    assert (make_spec("en").metric, make_spec("en").unit) == ("wer", "word")
    assert make_spec("zh", metric="wer").unit == "word"
    spec = make_spec("en", metric="cer")
    assert spec.unit == "char"
    assert counts(score_utterance("k", "abc", "abd", spec)) == (3, 2, 1, 0, 0)
    assert make_spec("ko").unit == "mixed" and make_spec("zh-CN").language == "zh"
    with pytest.raises(OptionsError):
        make_spec("zh", metric="ser")


def test_missing_keys_are_reported_and_totals_cover_the_intersection():
    refs = {"a": "今天", "b": "天气很好", "c": "你好"}
    hyps = {"b": "天气好", "c": "你好啊", "d": "多余"}
    result = score(refs, hyps, make_spec("zh"))
    assert result.keys.scored == ("b", "c")
    assert result.keys.missing_hypothesis == ("a",)
    assert result.keys.missing_reference == ("d",)
    t = result.totals
    assert (t.utterances, t.n, t.substitutions, t.deletions, t.insertions) == (2, 6, 0, 1, 1)
    assert t.error_rate == pytest.approx(2 / 6)


def test_totals_equal_jiwer_on_the_same_normalised_strings():
    refs = {"a": "the quick brown fox", "b": "jumps over the lazy dog", "c": "hello there"}
    hyps = {"a": "the quick brown box", "b": "jumps over lazy dog dog", "c": "hello"}
    result = score(refs, hyps, make_spec("en"))
    ours = result.totals
    keys = list(refs)
    spec = result.spec
    theirs = jiwer.process_words(
        [spec.normalise(refs[k]) for k in keys], [spec.normalise(hyps[k]) for k in keys]
    )
    assert (ours.substitutions, ours.deletions, ours.insertions, ours.hits) == (
        theirs.substitutions,
        theirs.deletions,
        theirs.insertions,
        theirs.hits,
    )
    assert ours.error_rate == pytest.approx(theirs.wer)
    assert sum(u.errors for u in result.utterances) == ours.errors
    assert [u.key for u in worst(result.utterances, 2)] == ["b", "c"]  # c: 1 of 2 words


def test_empty_reference_has_no_rate_but_counts_insertions():
    u = score_utterance("k", "。", "你好", make_spec("zh"))
    assert (u.n, u.insertions, u.error_rate) == (0, 2, None)


def test_language_is_inferred_from_references():
    assert infer_language(["今天天气很好", "hello"]) == "zh"
    assert infer_language(["こんにちは世界"]) == "ja"
    assert infer_language(["안녕하세요"]) == "ko"
    assert infer_language(["hello world", "你"]) is None


def test_reference_files_kaldi_and_jsonl(tmp_path):
    kaldi = tmp_path / "text"
    kaldi.write_text("utt1 今天 天气\nutt2\n\nutt3 hello world\n", encoding="utf-8")
    assert read_references(kaldi) == {"utt1": "今天 天气", "utt2": "", "utt3": "hello world"}
    jsonl = tmp_path / "refs.jsonl"
    rows = [{"key": "a", "text": "你好"}, {"utt": "b", "text": "hi", "audio": "b.wav"}]
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    assert read_references(jsonl) == {"a": "你好", "b": "hi"}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("text", "a x\na y\n", "duplicate key 'a'"),
        ("r.jsonl", '{"key": "a"}\n', ":1: expected"),
        ("r.jsonl", '{"key": "a", "text": "x"}\nnot json\n', ":2: not valid JSON"),
        ("text", "\n\n", "empty"),
    ],
)
def test_bad_reference_files_name_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_references(path)


def test_bench_reads_a_kaldi_dirs_whole_text_file(tmp_path):
    from asrctl.cli.bench import _references
    from asrctl.inputs import iter_inputs

    (tmp_path / "a.wav").write_bytes(b"RIFF")  # never decoded here
    (tmp_path / "wav.scp").write_text(f"a {tmp_path / 'a.wav'}\n")
    (tmp_path / "text").write_text("a 你好\nno_audio 多余\n")
    refs = _references(None, [str(tmp_path)], iter_inputs(str(tmp_path)))
    assert refs == {"a": "你好", "no_audio": "多余"}  # keys without audio stay, to be reported


def test_bench_needs_a_model_or_a_server(tmp_path):
    from typer.testing import CliRunner

    from asrctl.cli.app import app

    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF")
    result = CliRunner().invoke(app, ["bench", str(wav)])
    assert isinstance(result.exception, OptionsError) and "--model" in str(result.exception)
    result = CliRunner().invoke(app, ["bench", str(wav), "--server", "ftp://x"])
    assert isinstance(result.exception, OptionsError) and "http" in str(result.exception)
