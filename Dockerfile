# Surge on CPU: `surge serve /models` as a non-root user, health checks on /v2/health/*.
#
#   docker build -t surge .
#   docker run -p 8000:8000 -p 8001:8001 -p 8002:8002 -v $PWD/examples/repository:/models:ro surge
#
# CUDA: build from an NVIDIA CUDA runtime image instead (docs/production.md, "Container"):
#   docker build --build-arg BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04 \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t surge:cuda .
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN (command -v python3.11 >/dev/null || (apt-get update && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv && rm -rf /var/lib/apt/lists/*)) \
    && python3.11 -m venv /opt/surge
WORKDIR /src
# As scripts/setup.sh installs: torch==2.13.0 first from its own index (the CPU wheel unless
# TORCH_INDEX says otherwise), then Surge with the tracing extra.
RUN /opt/surge/bin/pip install --index-url "${TORCH_INDEX}" torch==2.13.0
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/surge/bin/pip install '.[tracing]'

FROM ${BASE}
RUN (command -v python3.11 >/dev/null || (apt-get update && apt-get install -y --no-install-recommends \
        python3.11 && rm -rf /var/lib/apt/lists/*)) \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin surge
COPY --from=build /opt/surge /opt/surge
ENV PATH=/opt/surge/bin:$PATH PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8000 8001 8002
# Health needs no key; the check uses the standard library only (no curl in the image).
COPY deploy/healthcheck.py /opt/surge/healthcheck.py
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "/opt/surge/healthcheck.py", "8000"]
# Bind every interface inside the container; keys (SURGE_API_KEY / SURGE_API_KEYS_FILE) and TLS
# (--tls-cert, --tls-key) come from the deployment.
ENTRYPOINT ["surge", "serve", "/models", "--host", "0.0.0.0"]
