"""The transport-independent streaming session (a fake decode: no model)."""

from __future__ import annotations

import asyncio

import numpy as np

from asrctl.server.options import RealtimeOptions
from asrctl.streaming import Sentence, StreamingSession, StreamUpdate

SR = 16000


def test_partials_then_locked_sentences_then_final():
    rng = np.random.default_rng(0)
    audio = np.concatenate(
        [0.1 * rng.standard_normal(SR), np.zeros(SR), 0.1 * rng.standard_normal(SR)]
    ).astype(np.float32)
    calls: list[tuple[int, int | None]] = []
    updates: list[StreamUpdate] = []

    async def decode(samples: np.ndarray, max_tokens: int | None) -> str:
        calls.append((len(samples), max_tokens))
        await asyncio.sleep(0)
        return f"n{len(samples)}"

    async def collect(update: StreamUpdate) -> None:
        updates.append(update)

    async def main() -> StreamUpdate:
        session = StreamingSession(decode, SR, RealtimeOptions(), on_update=collect)
        for i in range(0, len(audio), 1600):
            await session.feed(audio[i : i + 1600])
            await session.wait_partial()  # as a paced (real-time) client would allow
        return await session.finish()

    final = asyncio.run(main())
    partials = [u for u in updates if u.partial]
    assert partials and all(not u.is_final for u in updates)
    assert partials[0].partial_start == 0.0 and partials[0].sentences == ()
    assert any(m == RealtimeOptions().partial_max_tokens for _, m in calls)
    assert final.is_final and final.partial == "" and final.duration == 3.0
    first, second = final.sentences
    assert first.start == 0.0 and abs(second.start - 1.78) < 1e-9
    assert first.text == f"n{round(first.end * SR)}"  # locked: decoded in full
    assert final.text == f"{first.text} {second.text}" == final.confirmed


def test_update_text_joins_confirmed_and_partial():
    update = StreamUpdate((Sentence("你好", 0, 1), Sentence("世界", 1, 2)), "再见", 2.0, 3.0, False)
    assert update.confirmed == "你好世界" and update.text == "你好世界再见"
