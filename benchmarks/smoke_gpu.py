"""Quick GPU smoke: start the pipeline on a fixture and transcribe a few noise clips."""

import sys
import time

import numpy as np

if __name__ == "__main__":
    from asrctl.engine import EngineOptions
    from asrctl.inputs import from_arrays
    from asrctl.transcribe import TranscribeOptions, Transcriber

    t = time.time()
    options = EngineOptions(dtype="float32", enforce_eager=True, max_model_len=1024)
    with Transcriber(sys.argv[1], engine_options=options) as asr:
        print("ready in", round(time.time() - t, 1), "s; encoder on", asr.device, flush=True)
        rng = np.random.default_rng(0)
        clips = [(0.1 * rng.standard_normal(16000 * s)).astype(np.float32) for s in (1, 3, 7)]
        for batch in asr.transcribe(from_arrays(clips, 16000), TranscribeOptions(max_tokens=16)):
            print([(r.key, getattr(r, "token_ids", r)) for r in batch], flush=True)
