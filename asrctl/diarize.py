"""Speaker diarization: who spoke when, for every family.

Pipeline (:class:`Diarizer`):

1. speech spans from Silero VAD (:mod:`asrctl.vad`, the same spans long audio is split at),
   each cut into *pieces* at its pauses (quiet runs of :data:`PAUSE` s, cut in their
   middle); pause-free stretches longer than :data:`MAX_PIECE` are cut at quiet frames;
   pieces under :data:`MIN_PIECE` join a neighbour;
2. each piece embedded by Resemblyzer's pretrained GE2E voice encoder
   (:mod:`asrctl.speaker_embed`; weights shipped inside the ``resemblyzer`` wheel, nothing
   downloaded at run time): the mean of 1.6 s windows every 0.4 s;
3. pieces clustered with scikit-learn (agglomerative, cosine distance, average linkage)
   on embeddings centred on the recording's mean: the count with the best silhouette
   (2 to ``max_speakers`` or :data:`MAX_AUTO_SPEAKERS`); clusters under
   :data:`MIN_CLUSTER_SHARE` of the pieces folded into their nearest; clusters whose mean
   (uncentred) embeddings are under :data:`SAME_SPEAKER` apart merged (so one voice is one
   speaker); the count then clamped to ``min_speakers``/``max_speakers``. With
   ``num_speakers`` the smallest clusters are folded until that many remain. Finally each
   piece moves to its nearest cluster mean (uncentred; k-means rounds), and the pieces of
   each speech span are smoothed by Viterbi (:func:`smooth`: a change of speaker inside a
   span costs :data:`SWITCH`);
4. speakers numbered in order of first appearance, labelled ``SPEAKER_0``, ``SPEAKER_1``…

Transcripts are split at speaker changes *before* they are transcribed: each speaker turn
is transcribed as its own segment (:class:`asrctl.segment.LongAudio`, the server's
``spk``/``diarize``), so for every family a segment, and so a subtitle cue, never spans a
speaker change; words, where the family times them, stay inside their speaker's segment.
VibeVoice-ASR writes speaker ids itself: those are kept, relabelled to the same scheme
(:func:`relabel`), and no acoustic diarization runs.

Why this encoder: Resemblyzer was the only PyPI package found that installs a pretrained
speaker encoder *with* its weights (speechbrain, pyannote.audio, wespeaker, NeMo and
3D-Speaker fetch theirs from a hub at run time). Measured on synthetic espeak-ng
conversations (tests/conversation.py: 1, 2, 3 and 4 voices, 6-12 turns, 0.3-0.8 s
between turns; DER from pyannote.metrics, 0.5 s collar), against a no-model baseline
(mean and standard deviation of 20 MFCCs, same pieces and clustering):

=====================  ===========================  ===============================
                       GE2E (resemblyzer)           MFCC statistics
=====================  ===========================  ===============================
speakers known         DER 1.5/1.1/2.3/4.2 %        DER 1.5/41/32/51 %
count automatic        found 1/2/4/6, DER 1.5/1.1/  found 1/1/1/1, DER 1.5/50/66/75 %
                       5.1/15 %
=====================  ===========================  ===============================

Cost on this project's 2-core CPU machine: diarization alone runs at RTFx 10-18 (mel
spectrogram, LSTM, clustering), before transcription; ``bench --diarize`` reports it.

Limits: one speaker per moment (overlapped speech goes to one of them); a speaker change
without a pause of :data:`PAUSE` s is found only at a :data:`MAX_PIECE` cut; the automatic
count may add a speaker for voices that vary (pass ``num_speakers`` or ``max_speakers``
when known); a speaker with under :data:`MIN_CLUSTER_SHARE` of the pieces is folded into
the nearest voice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from asrctl.errors import OptionsError

if TYPE_CHECKING:
    from asrctl.results import Transcript
    from asrctl.vad import Span

RATE = 16000  # Hz the encoder runs at
FRAME_S = 0.01  # one mel frame
STEP_FRAMES = 40  # window hop (0.4 s)
MIN_FRAMES = 30  # pieces shorter than 0.3 s are not embedded (they join a neighbour)
MAX_AUTO_SPEAKERS = 8  # most speakers found automatically (--max-speakers raises it)
SWITCH = 0.06  # cost of a speaker change between two pieces of one speech span
SAME_SPEAKER = 0.14  # clusters whose mean embeddings are closer (cosine) are one speaker
MIN_CLUSTER_SHARE = 0.05  # smaller clusters are folded into the nearest large one
MAX_CLUSTERED = 4000  # pieces clustered directly; the rest join their nearest centroid
PAUSE = 0.15  # s of quiet inside a speech span where a speaker may change
QUIET = 0.1  # a frame is quiet under this share of the span's 95th-percentile energy
MAX_PIECE = 3.0  # s: longer pause-free stretches are cut (at quiet frames) into pieces
MIN_PIECE = 0.5  # s: shorter pieces join a neighbour
SNAP = 0.3  # s: a cut moves to the quietest frame this close
OWN_SPEAKERS = frozenset({"vibevoice-asr"})  # families that write speaker ids themselves


@dataclass(frozen=True)
class DiarizeOptions:
    """Who-spoke-when settings (``--num-speakers`` / ``--min-speakers`` /
    ``--max-speakers``; ``spk=true`` and ``diarize=true`` on the server).

    Attributes:
        num_speakers: exactly this many speakers (None: found automatically).
        min_speakers: at least this many, when found automatically.
        max_speakers: at most this many, when found automatically (default: at most
            :data:`MAX_AUTO_SPEAKERS`).
    """

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionsError(f"{name.replace('_', '-')} must be at least 1, not {value}")
        lo, hi = self.min_speakers, self.max_speakers
        if lo is not None and hi is not None and lo > hi:
            raise OptionsError(f"min-speakers ({lo}) is more than max-speakers ({hi})")
        n = self.num_speakers
        if n is not None and ((lo is not None and n < lo) or (hi is not None and n > hi)):
            raise OptionsError(f"num-speakers {n} is outside min/max-speakers")


@dataclass(frozen=True)
class SpeakerTurn:
    """A stretch of one speaker (seconds from the input's start; ``speaker`` from 0)."""

    start: float
    end: float
    speaker: int

    @property
    def label(self) -> str:
        return speaker_label(self.speaker)


def speaker_label(index: int) -> str:
    return f"SPEAKER_{index}"


class Diarizer:
    """Speaker turns of 16 kHz audio whose speech spans are known (see the module doc)."""

    def __init__(self, options: DiarizeOptions | None = None) -> None:
        from asrctl.speaker_embed import VoiceEncoder

        self.options = options or DiarizeOptions()
        self.encoder = VoiceEncoder()

    def turns(self, audio: np.ndarray, spans: Sequence[Span]) -> list[SpeakerTurn]:
        """Turns covering exactly the speech ``spans`` (each turn inside one span)."""
        energy = _frame_energy(audio)
        cut = [(k, p) for k, s in enumerate(spans) if s.end > s.start for p in _pieces(s, energy)]
        pieces = [p for _, p in cut]
        if not pieces:
            return []
        maybe = [(i, self._embed(audio, p)) for i, p in enumerate(pieces)]
        embedded = [(i, e) for i, e in maybe if e is not None]
        labels = np.full(len(pieces), -1)
        if embedded:
            x = np.stack([e for _, e in embedded])
            found = cluster(x, self.options)
            smoothed = smooth(x, found, [cut[i][0] for i, _ in embedded])
            if self.options.num_speakers is None or smoothed.max() == found.max():
                found = smoothed  # a given count is kept
            labels[[i for i, _ in embedded]] = found
        turns = [SpeakerTurn(p.start, p.end, int(k)) for p, k in zip(pieces, labels, strict=True)]
        return renumber(_join_same(_fill_unlabelled(turns)))

    def _embed(self, audio: np.ndarray, piece: Span) -> np.ndarray | None:
        """Mean GE2E embedding of 1.6 s windows every 0.4 s over the piece (None if it is
        too short to embed)."""
        from asrctl.speaker_embed import WINDOW_FRAMES

        mel = self.encoder.mel(audio[round(piece.start * RATE) : round(piece.end * RATE)])
        n = len(mel)
        if n < MIN_FRAMES:
            return None
        starts = [0] if n <= WINDOW_FRAMES else list(range(0, n - WINDOW_FRAMES + 1, STEP_FRAMES))
        if n > WINDOW_FRAMES and starts[-1] != n - WINDOW_FRAMES:
            starts.append(n - WINDOW_FRAMES)
        windows = self.encoder.embed([mel[s : s + WINDOW_FRAMES] for s in starts])
        mean = windows.mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-8)


def _pieces(span: Span, energy: np.ndarray) -> list[Span]:
    """A speech span cut at its pauses (quiet runs of PAUSE s or more, cut in their middle),
    pieces longer than MAX_PIECE cut again at their quietest frames; pieces shorter than
    MIN_PIECE joined to a neighbour. The pieces cover the span exactly."""
    from asrctl.vad import Span

    a, b = round(span.start / FRAME_S), min(round(span.end / FRAME_S), len(energy))
    if b - a < 2:
        return [span]
    e = energy[a:b]
    quiet = e < QUIET * np.percentile(e, 95)
    cuts = [span.start]
    for q0, q1, is_quiet in _runs(quiet.astype(int)):
        if is_quiet and q0 > 0 and q1 < len(e) and (q1 - q0) * FRAME_S >= PAUSE:
            cuts.append(round((a + (q0 + q1) / 2) * FRAME_S, 3))
    cuts.append(span.end)
    out: list[tuple[float, float]] = []
    for lo, hi in pairwise(cuts):
        parts = max(1, int((hi - lo) // MAX_PIECE) + (1 if (hi - lo) % MAX_PIECE else 0))
        bounds = [lo]
        for k in range(1, parts):
            bounds.append(round(_snap(lo + k * (hi - lo) / parts, energy, bounds[-1], hi), 3))
        out += list(zip(bounds, [*bounds[1:], hi], strict=True))
    merged: list[list[float]] = []
    for lo, hi in out:
        if merged and (hi - lo < MIN_PIECE or merged[-1][1] - merged[-1][0] < MIN_PIECE):
            merged[-1][1] = hi
        else:
            merged.append([lo, hi])
    return [Span(lo, hi) for lo, hi in merged]


def cluster(embeddings: np.ndarray, options: DiarizeOptions) -> np.ndarray:
    """Cluster labels (0..k-1) of unit-length embeddings (see the module doc)."""
    n = len(embeddings)
    if n == 1:
        return np.zeros(1, dtype=int)
    picked = np.arange(n)
    if n > MAX_CLUSTERED:
        picked = np.linspace(0, n - 1, MAX_CLUSTERED).round().astype(int)
    sample = embeddings[picked]
    centred = sample - sample.mean(axis=0)
    centred /= np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-8)
    lo = options.min_speakers or 1
    hi = options.max_speakers or max(MAX_AUTO_SPEAKERS, lo)
    if options.num_speakers is not None:
        k = min(options.num_speakers, len(sample))
        labels = _best_silhouette(centred, max(2, k), max(k, MAX_AUTO_SPEAKERS))
        labels = _reduce_to(sample, labels, k) if labels.max() + 1 > k else labels
        if labels.max() + 1 < k:
            labels = _agglomerative(centred, k)
    else:
        labels = _best_silhouette(centred, max(2, lo), hi)
        labels = _fold_small(sample, labels, lo)
        labels = _merge_close(sample, labels, lo)
        k = labels.max() + 1
        if k > hi or k < lo:
            labels = _agglomerative(centred, min(max(k, lo), hi, len(sample)))
    labels = _refine(sample, labels)
    if n > MAX_CLUSTERED:
        labels = np.argmax(embeddings @ _centroids(sample, labels).T, axis=1)
    return labels


def smooth(x: np.ndarray, labels: np.ndarray, groups: Sequence[int]) -> np.ndarray:
    """Viterbi over consecutive pieces of one speech span: cost = cosine distance to the
    speaker's mean embedding, plus :data:`SWITCH` per change of speaker inside a span (a
    piece between two of one voice's, only slightly nearer another voice, stays with it)."""
    k = labels.max() + 1
    if k < 2:
        return labels
    cost = 1 - x @ _centroids(x, labels).T  # (pieces, speakers)
    out = labels.copy()
    start = 0
    for end in range(1, len(labels) + 1):
        if end < len(labels) and groups[end] == groups[start]:
            continue
        total = cost[start].copy()
        back = []
        for i in range(start + 1, end):
            stay = total[:, None] + np.where(np.eye(k, dtype=bool), 0.0, SWITCH)
            back.append(np.argmin(stay, axis=0))
            total = stay.min(axis=0) + cost[i]
        best = int(np.argmin(total))
        path = [best]
        for pointers in reversed(back):
            best = int(pointers[best])
            path.append(best)
        out[start:end] = path[::-1]
        start = end
    _, out = np.unique(out, return_inverse=True)
    return out


def _refine(x: np.ndarray, labels: np.ndarray, rounds: int = 5) -> np.ndarray:
    """Each embedding moved to its nearest cluster mean (uncentred), as k-means rounds,
    while no cluster empties: the clustering ran on centred embeddings, where a piece
    between two voices may fall on the wrong side."""
    for _ in range(rounds):
        moved = np.argmax(x @ _centroids(x, labels).T, axis=1)
        if (moved == labels).all() or len(np.unique(moved)) < labels.max() + 1:
            break
        labels = moved
    return labels


def _agglomerative(x: np.ndarray, k: int) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    if k <= 1:
        return np.zeros(len(x), dtype=int)
    return AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(x)


def _best_silhouette(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The clustering of ``lo``..``hi`` clusters with the best silhouette (cosine); with
    too few points for a silhouette, each point its own cluster (merged afterwards)."""
    from sklearn.metrics import silhouette_score

    best, labels = -2.0, np.arange(len(x))
    for k in range(lo, min(hi, len(x) - 1) + 1):
        candidate = _agglomerative(x, k)
        score = silhouette_score(x, candidate, metric="cosine")
        if score > best:
            best, labels = score, candidate
    return labels


def _reduce_to(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Fold the smallest cluster into its nearest until ``k`` remain (outlier clusters go
    first, where forcing average linkage to ``k`` would merge two real speakers)."""
    labels = labels.copy()
    while labels.max() + 1 > k:
        counts = np.bincount(labels)
        small = int(np.argmin(counts))
        c = _centroids(x, labels)
        sim = c @ c[small]
        sim[small] = -np.inf
        labels[labels == small] = int(np.argmax(sim))
        _, labels = np.unique(labels, return_inverse=True)
    return labels


def _centroids(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    c = np.stack([x[labels == k].mean(axis=0) for k in range(labels.max() + 1)])
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-8)


def _fold_small(x: np.ndarray, labels: np.ndarray, keep_at_least: int) -> np.ndarray:
    """Clusters under MIN_CLUSTER_SHARE of the windows join their nearest large cluster."""
    counts = np.bincount(labels)
    order = np.argsort(-counts)
    large = [k for k in order if counts[k] >= MIN_CLUSTER_SHARE * len(x)]
    large = large or [order[0]]
    for k in order[len(large) :]:
        if len(large) >= keep_at_least:
            break
        large.append(k)
    if len(large) == len(counts):
        return labels
    centroids = _centroids(x, labels)[large]
    out = labels.copy()
    small = ~np.isin(labels, large)
    out[small] = np.asarray(large)[np.argmax(x[small] @ centroids.T, axis=1)]
    _, dense = np.unique(out, return_inverse=True)
    return dense


def _merge_close(x: np.ndarray, labels: np.ndarray, keep_at_least: int) -> np.ndarray:
    """Merge the two clusters with the closest mean embeddings (uncentred) while they are
    under SAME_SPEAKER apart: centring splits one speaker's windows into noise clusters."""
    labels = labels.copy()
    while labels.max() + 1 > keep_at_least:
        c = _centroids(x, labels)
        dist = 1 - c @ c.T
        np.fill_diagonal(dist, np.inf)
        a, b = np.unravel_index(np.argmin(dist), dist.shape)
        if dist[a, b] >= SAME_SPEAKER:
            break
        labels[labels == max(a, b)] = min(a, b)
        _, labels = np.unique(labels, return_inverse=True)
    return labels


def _frame_energy(audio: np.ndarray) -> np.ndarray:
    hop = round(FRAME_S * RATE)
    n = len(audio) // hop
    frames = audio[: n * hop].reshape(n, hop)
    return np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))


def _runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """``[(start, end, label)]`` runs of equal labels."""
    edges = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(labels)]])
    return [(int(a), int(b), int(labels[a])) for a, b in zip(starts, ends, strict=True)]


def _snap(t: float, energy: np.ndarray, lo: float, hi: float) -> float:
    """The quietest 10 ms frame within SNAP of ``t``, strictly inside (lo, hi)."""
    a = max(round((t - SNAP) / FRAME_S), round(lo / FRAME_S) + 1)
    b = min(round((t + SNAP) / FRAME_S), round(hi / FRAME_S) - 1, len(energy))
    if b <= a:
        return t
    return (a + int(np.argmin(energy[a:b]))) * FRAME_S


def _join_same(turns: list[SpeakerTurn]) -> list[SpeakerTurn]:
    out: list[SpeakerTurn] = []
    for t in turns:
        if out and out[-1].speaker == t.speaker and abs(out[-1].end - t.start) < 1e-6:
            out[-1] = replace(out[-1], end=t.end)
        else:
            out.append(t)
    return out


def _fill_unlabelled(turns: list[SpeakerTurn]) -> list[SpeakerTurn]:
    """Spans too short to embed (speaker -1) take the nearest labelled turn's speaker."""
    known = [t for t in turns if t.speaker >= 0]
    if not known:
        return [replace(t, speaker=0) for t in turns]
    out = []
    for t in turns:
        if t.speaker < 0:
            mid = (t.start + t.end) / 2
            near = min(known, key=lambda k: min(abs(k.start - mid), abs(k.end - mid)))
            t = replace(t, speaker=near.speaker)
        out.append(t)
    return out


def renumber(turns: list[SpeakerTurn]) -> list[SpeakerTurn]:
    """Speakers numbered 0, 1, … in order of first appearance."""
    order: dict[int, int] = {}
    for t in sorted(turns, key=lambda t: t.start):
        order.setdefault(t.speaker, len(order))
    return [replace(t, speaker=order[t.speaker]) for t in turns]


def relabel(transcript: Transcript) -> Transcript:
    """The model's own speaker ids (VibeVoice-ASR) as ``SPEAKER_k``, numbered in order of
    first appearance; segments without a speaker keep None."""
    if not transcript.segments:
        return transcript
    order: dict[object, int] = {}
    segments = []
    for s in transcript.segments:
        if s.speaker is None:
            segments.append(s)
            continue
        index = order.setdefault(s.speaker, len(order))
        segments.append(replace(s, speaker=speaker_label(index)))
    return replace(transcript, segments=tuple(segments))


def gives_speakers(family_name: str) -> bool:
    """Whether the family writes speaker ids itself (then no acoustic diarization runs)."""
    return family_name in OWN_SPEAKERS
