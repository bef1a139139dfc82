"""asrctl: prepare, run, serve and measure LLM-based speech recognition models on vLLM."""

import os as _os

# torch.cuda.is_available() would otherwise initialise CUDA, after which vLLM can no longer
# fork its engine core; NVML answers the same question without touching CUDA.
_os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

__version__ = "0.1.0"
