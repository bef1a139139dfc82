"""``bench.json``, the worst-utterance alignments and the chart of a benchmark run.

The report is plain data: every number the summary table and the chart show comes from
it, so a chart can be redrawn from ``bench.json`` alone.
"""

from __future__ import annotations

import datetime
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from asrctl import envinfo
from asrctl.bench.loadtest import Clip, Level, LoadOptions
from asrctl.bench.offline import OfflineRun
from asrctl.bench.scoring import MISSING_SHOWN, Score, UtteranceScore, alignment, worst

SCHEMA = 1  # bump when bench.json changes incompatibly
REPORT = "bench.json"
WORST = "worst.txt"
CHART = "bench.png"


def _header(kind: str) -> dict:
    return {
        "schema": SCHEMA,
        "kind": kind,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["asrctl", *sys.argv[1:]]),
        "hardware": envinfo.hardware(),
        "versions": envinfo.library_versions(),
    }


def _missing(keys: Sequence[str]) -> dict:
    return {"count": len(keys), "first": list(keys[:MISSING_SHOWN])}


def accuracy_json(score: Score) -> dict:
    t = score.totals
    return {
        "metric": score.spec.metric,
        "unit": score.spec.unit,
        "language": score.spec.language,
        "normaliser": score.spec.normaliser,
        "t2s": score.spec.t2s,
        "scope": "utterances with both a reference and a transcript (missing keys below)",
        "keys": {
            "scored": len(score.keys.scored),
            "missing_hypothesis": _missing(score.keys.missing_hypothesis),
            "missing_reference": _missing(score.keys.missing_reference),
        },
        "totals": {
            "utterances": t.utterances,
            "n": t.n,
            "hits": t.hits,
            "substitutions": t.substitutions,
            "deletions": t.deletions,
            "insertions": t.insertions,
            "errors": t.errors,
            "error_rate": t.error_rate,
        },
    }


def _utterance_json(transcript, scored: UtteranceScore | None) -> dict:
    row = transcript.to_json()
    row["hyp"] = row.pop("text")
    if scored is not None:
        row |= {
            "ref": scored.ref,
            "ref_norm": scored.ref_norm,
            "hyp_norm": scored.hyp_norm,
            "n": scored.n,
            "hits": scored.hits,
            "substitutions": scored.substitutions,
            "deletions": scored.deletions,
            "insertions": scored.insertions,
            "error_rate": scored.error_rate,
        }
    return row


def offline_report(
    run: OfflineRun,
    score: Score | None,
    *,
    model: dict,
    settings: dict,
    load_s: float,
    n_worst: int,
) -> dict:
    """The ``bench.json`` content of an offline run."""
    by_key = {u.key: u for u in score.utterances} if score else {}
    report = _header("offline")
    report |= {
        "model": model,
        "settings": settings,
        "inputs": {
            "utterances": len(run.transcripts) + len(run.failures),
            "transcribed": len(run.transcripts),
            "audio_s": round(sum(t.duration for t in run.transcripts), 3),
            "failed": [asdict(f) for f in run.failures],
        },
        "speed": {
            "model_load_s": round(load_s, 3),
            "warmup_utterances": run.warmup_utterances,
            "repeat": len(run.speeds[0].wall_s),
            "deterministic": run.deterministic,
            "notes": list(run.notes),
            **{s.mode: s.to_json() for s in run.speeds},
        },
        "accuracy": accuracy_json(score) if score else None,
        "worst": [u.key for u in worst(score.utterances, n_worst)] if score else [],
        "utterances": [_utterance_json(t, by_key.get(t.key)) for t in run.transcripts],
    }
    return report


def server_report(options: LoadOptions, clips: Sequence[Clip], levels: Sequence[Level]) -> dict:
    """The ``bench.json`` content of a load test."""
    report = _header("server")
    settings = asdict(options)
    settings["api_key"] = "***" if options.api_key else None
    report |= {
        "server": options.url,
        "settings": settings,
        "clips": {
            "count": len(clips),
            "audio_s": round(sum(c.duration_s for c in clips), 3),
            "bytes": sum(len(c.data) for c in clips),
        },
        "latency_scope": "client side: request sent → response parsed"
        + ("; ws: first partial from the first frame, final from STOP" if options.ws else ""),
        "levels": [lvl.to_json() for lvl in levels],
        "requests": {
            lvl.label: [
                {"key": r.key, "start_s": round(r.start_s, 4), "latency_s": round(r.latency_s, 4)}
                | {"status": r.status}
                for r in lvl.requests
            ]
            for lvl in levels
        },
    }
    return report


def worst_alignments(score: Score, n: int) -> str:
    """The ``n`` worst utterances, aligned, with their counts."""
    blocks = []
    for u in worst(score.utterances, n):
        rate = f"{u.error_rate:.1%}" if u.error_rate is not None else "n/a (empty reference)"
        head = (
            f"{u.key}: {score.spec.metric.upper()} {rate} "
            f"(S={u.substitutions} D={u.deletions} I={u.insertions} N={u.n})"
        )
        blocks.append(f"{head}\n{alignment(u, score.spec)}")
    return "\n\n".join(blocks)


def write(
    out_dir: Path, report: dict, alignments: str | None = None, chart: Path | None = None
) -> dict[str, Path]:
    """Write bench.json (and worst.txt); returns the paths of the run's files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": out_dir / REPORT}
    if chart is not None:
        paths["chart"] = chart
    if alignments:
        paths["worst"] = out_dir / WORST
        paths["worst"].write_text(alignments + "\n", encoding="utf-8")
    report["files"] = {k: str(v) for k, v in paths.items()}
    tmp = paths["report"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(paths["report"])
    return paths
