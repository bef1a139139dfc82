"""asrctl: prepare, run, serve and measure LLM-based speech recognition models on vLLM.

The library in four names (see README "Library" and examples/)::

    import asrctl

    if __name__ == "__main__":  # vLLM re-imports the script in its engine process
        with asrctl.load("Fun-ASR-Nano-2512") as asr:
            for t in asr.transcribe(["a.wav", "b.flac"], language="zh"):
                print(t.key, t.text)

Everything is imported on first use, so ``import asrctl`` (and the CLI) stays fast.
"""

import importlib as _importlib
import os as _os

# torch.cuda.is_available() would otherwise initialise CUDA, after which vLLM can no longer
# fork its engine core; NVML answers the same question without touching CUDA.
_os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

__version__ = "0.1.0"

# public name -> the module that defines it (imported lazily by __getattr__)
_EXPORTS = {
    "load": "asrctl.api",
    "ASR": "asrctl.api",
    "TranscriptionError": "asrctl.errors",
    "Transcript": "asrctl.results",
    "Failure": "asrctl.results",
    "StreamUpdate": "asrctl.streaming",
    "Sentence": "asrctl.streaming",
    "AudioItem": "asrctl.inputs",
    "iter_inputs": "asrctl.inputs",
    "from_arrays": "asrctl.inputs",
    "Transcriber": "asrctl.transcribe",
    "TranscribeOptions": "asrctl.transcribe",
    "LongAudio": "asrctl.segment",
    "EngineOptions": "asrctl.engine",
    "AsrctlError": "asrctl.errors",
    "MainGuardError": "asrctl.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'asrctl' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
