"""Speaker embeddings: Resemblyzer's pretrained GE2E voice encoder, from its wheel.

The ``resemblyzer`` wheel on PyPI (Apache-2.0, 15.7 MB) ships its trained weights
(``resemblyzer/pretrained.pt``: a 3-layer LSTM over 40-channel mel power spectrograms,
256-dim embeddings, trained with the generalised end-to-end loss on LibriSpeech,
VoxCeleb 1 and 2). Nothing is fetched at run time. Only the weights file is read (located
through the package metadata, without importing the package): resemblyzer's own module
imports webrtcvad and prints on load, and asrctl already has its speech segments from
Silero VAD. So ``install.sh`` installs the wheel with ``--no-deps`` (its metadata would
pull the ``typing`` backport and build webrtcvad from source), and this module runs the
same network: :class:`VoiceEncoder` computes the mel spectrogram as resemblyzer does
(librosa, 25 ms windows, 10 ms hop, 40 mel channels, no log), lifts quiet audio to
-30 dBFS, and embeds fixed windows of :data:`WINDOW_FRAMES` frames (1.6 s) in batches.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

from asrctl.errors import AsrctlError

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16000
HOP = 160  # samples per mel frame (10 ms)
N_FFT = 400  # 25 ms
N_MELS = 40
WINDOW_FRAMES = 160  # frames per embedded window (1.6 s): the encoder's training length
HIDDEN = 256
LAYERS = 3
TARGET_DBFS = -30.0
BATCH = 256  # windows per LSTM pass
INSTALL_HINT = "pip install --no-deps resemblyzer==0.1.4 (./install.sh does)"


def weights_path():
    """Where the resemblyzer wheel put ``pretrained.pt`` (the package is not imported)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("resemblyzer")
    except metadata.PackageNotFoundError:
        raise AsrctlError(
            "speaker diarization needs the voice encoder shipped in the resemblyzer wheel",
            hint=INSTALL_HINT,
        ) from None
    path = dist.locate_file("resemblyzer/pretrained.pt")
    if not path.is_file():  # type: ignore[union-attr]
        raise AsrctlError(f"the resemblyzer install has no {path}", hint=INSTALL_HINT)
    return path


def _network() -> torch.nn.Module:
    import torch
    from torch import nn

    class GE2E(nn.Module):  # attribute names match the checkpoint's keys
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(N_MELS, HIDDEN, LAYERS, batch_first=True)
            self.linear = nn.Linear(HIDDEN, HIDDEN)

        def forward(self, mels: torch.Tensor) -> torch.Tensor:
            _, (hidden, _) = self.lstm(mels)
            raw = torch.relu(self.linear(hidden[-1]))
            return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-8)

    net = GE2E()
    state = torch.load(str(weights_path()), map_location="cpu", weights_only=True)
    net.load_state_dict(state["model_state"], strict=False)  # the loss's two scalars stay out
    return net.eval()


_lock = threading.Lock()
_net: torch.nn.Module | None = None


class VoiceEncoder:
    """GE2E embeddings of 16 kHz audio (one shared network per process)."""

    def __init__(self) -> None:
        global _net
        with _lock:
            if _net is None:
                _net = _network()
        self.net = _net

    @staticmethod
    def mel(audio: np.ndarray) -> np.ndarray:
        """(frames, 40) mel power spectrogram of 16 kHz float32 audio, quiet audio lifted to
        -30 dBFS first (as resemblyzer's preprocessing; louder audio is left as it is)."""
        import librosa

        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
        if rms > 0:
            gain = 10 ** ((TARGET_DBFS - 20 * np.log10(rms)) / 20)
            if gain > 1:
                audio = audio * np.float32(gain)
        frames = librosa.feature.melspectrogram(
            y=np.asarray(audio, dtype=np.float32),
            sr=SAMPLE_RATE,
            n_fft=N_FFT,
            hop_length=HOP,
            n_mels=N_MELS,
        )
        return frames.astype(np.float32).T

    def embed(self, windows: list[np.ndarray]) -> np.ndarray:
        """Unit-length embeddings (n, 256) of mel windows; windows of one length are batched."""
        import torch

        out = np.zeros((len(windows), HIDDEN), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_length.setdefault(len(w), []).append(i)
        with torch.inference_mode():
            for indices in by_length.values():
                for a in range(0, len(indices), BATCH):
                    chunk = indices[a : a + BATCH]
                    mels = torch.from_numpy(np.stack([windows[i] for i in chunk]))
                    out[chunk] = self.net(mels).numpy()
        return out
