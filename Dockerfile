# asrctl serve on an NVIDIA GPU: vLLM (with its CUDA build of torch) and asrctl.
#   docker build -t asrctl .
#   docker run --gpus all -p 8000:8000 -v /path/to/models:/models:ro asrctl \
#       serve --model /models/Fun-ASR-Nano --host 0.0.0.0
# or `docker compose up` (compose.yaml). The model folder is mounted, never built in; the
# LLM export asrctl makes on first start goes to the /cache volume (ASRCTL_CACHE).
FROM nvidia/cuda:12.8.1-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    ASRCTL_CACHE=/cache

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libsndfile1 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /opt/asrctl
COPY pyproject.toml README.md ./
COPY asrctl ./asrctl
# the `gpu` extra is vLLM from PyPI (CUDA wheels); `ray` for --data-parallel / --ray
# (DL3013: this checkout is installed; its pyproject sets the versions)
# hadolint ignore=DL3013
RUN pip install ".[gpu,ray]"

VOLUME ["/cache"]
EXPOSE 8000
ENTRYPOINT ["asrctl"]
CMD ["serve", "--model", "/models/Fun-ASR-Nano", "--host", "0.0.0.0", "--port", "8000"]
