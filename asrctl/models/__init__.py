"""PyTorch modules that asrctl runs outside vLLM (audio encoders and adaptors)."""
