# The API image: `skillcoach serve`, with the service package and its locked dependencies only.
# Build context: the repository root (`make image`). BASE_IMAGE is any Debian-like image with
# python3 and its venv module; both stages use the same one, because the virtualenv links to
# the base's interpreter.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# checkov:skip=CKV_DOCKER_7: the base is an ARG; its default above is a pinned version tag
FROM ${BASE_IMAGE} AS builder
# Unset unless the build passes it: a CA bundle for pip where outgoing TLS is intercepted.
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# The dependencies first, in a layer of their own: a change of the code reuses it.
COPY requirements/build.lock requirements/service.lock requirements/
# /opt/build holds the build tools and never reaches the final stage; /opt/venv gets no pip.
RUN python3 -m venv /opt/build \
    && /opt/build/bin/python -m pip install --require-hashes --no-deps --only-binary=:all: \
        -r requirements/build.lock \
    && python3 -m venv --without-pip /opt/venv \
    && /opt/build/bin/python -m pip --python /opt/venv/bin/python install --require-hashes \
        --no-deps --only-binary=:all: -r requirements/service.lock
COPY pyproject.toml README.md ./
COPY service/ service/
# The service's wheel, without its dependencies (they are the locked ones above); `pip check`
# fails the build when the lock misses a requirement of anything installed.
RUN /opt/build/bin/python -m pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/build/bin/python -m pip --python /opt/venv/bin/python install --no-deps --no-index \
        /wheels/skillcoach-*.whl \
    && /opt/build/bin/python -m pip --python /opt/venv/bin/python check

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="skillcoach-api" \
      org.opencontainers.image.description="skillcoach serve: one API replica (SKILLCOACH_* variables); /metrics also on SKILLCOACH_METRICS_PORT" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/venv /opt/venv
# A container listens on every interface (the service's own default is loopback), and serves
# /metrics on a port of its own besides the API's.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SKILLCOACH_HOST=0.0.0.0 \
    SKILLCOACH_PORT=8000 \
    SKILLCOACH_METRICS_PORT=9000
USER 10001:10001
EXPOSE 8000 9000
# Liveness on the port the replica was given; the runtime's probes replace it on Kubernetes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SKILLCOACH_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["skillcoach"]
CMD ["serve"]
