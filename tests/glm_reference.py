"""What the GLM-ASR-Nano tests that compare with transformers share: their test audio and
the original (transformers' ``GlmAsrProcessor`` + ``GlmAsrForConditionalGeneration``, fp32)
on a fixture folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SR = 16000


def chirp(seconds: float, seed: int) -> np.ndarray:
    """A seeded chirp plus noise (no digital silence), float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(SR * seconds)) / SR
    x = 0.3 * np.sin(2 * np.pi * (150 + 250 * seed) * t * (1 + 0.1 * t))
    x += 0.05 * rng.standard_normal(t.size)
    return np.clip(x, -1, 1).astype(np.float32)


def transformers_glm(model_dir: Path):
    """(processor, model in eval mode) as the model card builds them, in float32."""
    from transformers import (
        AutoTokenizer,
        GlmAsrForConditionalGeneration,
        GlmAsrProcessor,
        WhisperFeatureExtractor,
    )

    processor = GlmAsrProcessor(
        WhisperFeatureExtractor.from_pretrained(model_dir),
        AutoTokenizer.from_pretrained(model_dir),
        chat_template=(model_dir / "chat_template.jinja").read_text(),
    )
    model = GlmAsrForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    return processor, model.eval()
