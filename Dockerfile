# tap-emulator image: the `tap-emulator` command in a slim Python 3.11, run as uid 65532.
#   docker build -t tap-emulator:0.1.0 .
#   docker run --rm -p 9000:9000 -p 9090:9090 tap-emulator:0.1.0
# Files are written to /tmp in the container; mount a volume there to keep them.
# The web page listens on the container's loopback (it shows captured bodies); to open it from
# the host, publish it on purpose:
#   docker run --rm -p 9000:9000 -p 127.0.0.1:8080:8080 tap-emulator:0.1.0 \
#     serve --config /etc/tap-emulator/config.yaml --ui-listen 0.0.0.0:8080

# Build stage: builds the wheel and installs it, with its dependencies, into a virtualenv
# that the final stage copies whole. Nothing else of this stage reaches the image.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/tap-emulator
COPY pyproject.toml README.md ./
COPY tap_emulator ./tap_emulator
RUN /opt/tap-emulator/bin/pip install --no-cache-dir . \
    && /opt/tap-emulator/bin/pip uninstall --yes pip \
    && /opt/tap-emulator/bin/tap-emulator --help >/dev/null

# Final stage: the base image, the virtualenv and the default settings; no compiler, no pip,
# no sources.
FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="tap-emulator" \
      org.opencontainers.image.description="Packet Inspector 2 analysis emulator: Envoy TapSinkService to one protobuf file per HTTP trace sequence" \
      org.opencontainers.image.licenses="Apache-2.0"
# The base image's own pip, setuptools and wheel are not needed to run: remove them.
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
    && groupadd --system --gid 65532 tap-emulator \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin tap-emulator
# MALLOC_ARENA_MAX: grpc core's threads otherwise each grow a malloc arena of their own, and
# RSS creeps under stream churn (docs/hardening.md, F5).
ENV PATH=/opt/tap-emulator/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2
COPY --from=build /opt/tap-emulator /opt/tap-emulator
COPY deploy/image/config.yaml /etc/tap-emulator/config.yaml
USER 65532:65532
WORKDIR /tmp
# 9000: gRPC TapSinkService and grpc.health.v1; 9090: /metrics, /healthz, /readyz.
EXPOSE 9000 9090
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
ENTRYPOINT ["tap-emulator"]
CMD ["serve", "--config", "/etc/tap-emulator/config.yaml"]
