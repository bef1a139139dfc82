"""A PNG chart of a benchmark, drawn from its ``bench.json`` data (needs ``asrctl[plot]``).

Offline: utterance durations, per-utterance latency, RTFx of every timed run.
Server: latency per level (box plots), requests/s and RTFx per level; with ``--ws``, time
to first partial and to final as well.
"""

from __future__ import annotations

from pathlib import Path


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def draw(report: dict, path: Path) -> Path:
    """Draw the chart for ``report`` (offline or server) into ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig = _offline(plt, report) if report["kind"] == "offline" else _server(plt, report)
    fig.suptitle(_title(report), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _title(report: dict) -> str:
    hw = report["hardware"]
    gpu = ", ".join(g["name"] for g in hw["gpus"]) or f"{hw['cores']} CPU cores"
    if report["kind"] == "offline":
        return f"asrctl bench: {Path(report['model']['dir']).name} on {gpu}"
    return f"asrctl bench --server {report['server']} (client: {gpu})"


def _offline(plt, report: dict):
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 4))
    utts = report["utterances"]
    ax1.hist([u["duration"] for u in utts], bins=min(30, max(5, len(utts) // 4)))
    ax1.set(title="utterance durations", xlabel="seconds of audio", ylabel="utterances")
    # per-utterance pipeline timing: whatever stages the transcriber recorded (seconds)
    latency = [
        sum(v for k, v in (u.get("timing") or {}).items() if k.endswith("_s") and v is not None)
        for u in utts
    ]
    ax2.hist(latency or [0.0], bins=min(30, max(5, len(latency) // 4)))
    ax2.set(
        title="per-utterance latency (first end-to-end run)",
        xlabel="encoder batch + engine seconds",
        ylabel="utterances",
    )
    speed = report["speed"]
    modes = [m for m in ("end_to_end", "engine_only") if m in speed]
    for i, mode in enumerate(modes):
        runs = [r for r in speed[mode]["rtfx_runs"] if r is not None]
        ax3.scatter(
            [i] * len(runs), runs, color="tab:blue", zorder=3, label="runs" if not i else None
        )
        ax3.bar(
            i, speed[mode]["rtfx"], color="tab:orange", alpha=0.6, label="median" if not i else None
        )
    ax3.set_xticks(range(len(modes)), [m.replace("_", "-") for m in modes])
    ax3.set(title="RTFx (audio s / wall s)", ylabel="RTFx")
    ax3.legend(fontsize=8)
    return fig


def _server(plt, report: dict):
    levels = report["levels"]
    ws = any(lvl["mode"] == "ws" for lvl in levels)
    fig, axes = plt.subplots(1, 3 if ws else 2, figsize=(13 if ws else 10, 4))
    labels = [_label(lvl) for lvl in levels]
    per_level = report["requests"]
    data = [
        [r["latency_s"] for r in rows if r["status"] == "200"] or [0.0]
        for rows in per_level.values()
    ]
    axes[0].boxplot(data, showfliers=True)
    axes[0].set_xticks(range(1, len(labels) + 1), labels, rotation=30, fontsize=8)
    axes[0].set(title="latency of successful requests", ylabel="seconds")
    x = range(len(levels))
    axes[1].bar(x, [lvl["rtfx"] or 0 for lvl in levels], color="tab:orange", alpha=0.7)
    axes[1].set_xticks(list(x), labels, rotation=30, fontsize=8)
    axes[1].set(title="RTFx (bars) and requests/s (line)", ylabel="RTFx")
    twin = axes[1].twinx()
    twin.plot(list(x), [lvl["requests_per_s"] or 0 for lvl in levels], "o-", color="tab:blue")
    twin.set_ylabel("requests/s")
    if ws:
        p50 = [(lvl.get("first_partial_s") or {}).get("p50") or 0 for lvl in levels]
        fin = [(lvl.get("final_after_stop_s") or {}).get("p50") or 0 for lvl in levels]
        axes[2].plot(list(x), p50, "o-", label="first partial p50")
        axes[2].plot(list(x), fin, "s-", label="final after STOP p50")
        axes[2].set_xticks(list(x), labels, rotation=30, fontsize=8)
        axes[2].set(title="live (/ws) latency", ylabel="seconds")
        axes[2].legend(fontsize=8)
    return fig


def _label(level: dict) -> str:
    if level["mode"] == "poisson":
        return f"rate {level['rate']:g}/s"
    return f"c={level['concurrency']}"
