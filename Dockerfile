# syntax=docker/dockerfile:1
# The image the Helm chart deploys: `ingest worker` / `ingest projector` (helm/cumi-pipeline).
#   docker build -t cumi-pipeline:0.1.0 .
# Stage 1 builds wheels for the package and its pinned dependencies; stage 2 installs only those
# wheels (no compiler, no pip cache, no source tree) and runs as an unprivileged user. The Avro
# schemas travel inside the package wheel (pyproject: force-include schemas → ingest/schemas).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ingest ./ingest
COPY schemas ./schemas
# the package wheel plus a wheel for every runtime dependency, at the versions pyproject pins
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# UID/GID 10001: the chart's securityContext runs as this user (values.yaml runAsUser)
RUN groupadd --system --gid 10001 cumi \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin cumi
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels cumi-pipeline \
 && python -c "import importlib.resources as r; assert r.files('ingest').joinpath('schemas').is_dir()" \
 && python -c "from ingest.state.read_api import openapi_document; assert openapi_document()"
# the root filesystem is read-only at run time; the chart mounts a writable emptyDir on /tmp
USER 10001:10001
# Outside Kubernetes the processes bind 127.0.0.1 unless told otherwise; in a container that
# would leave the published ports unreachable, and publishing them (-p) is the explicit step
ENV CUMI_METRICS_HOST=0.0.0.0
# 9102: /metrics and the probes (and the read API unless CUMI_READ_API_PORT); 9103: the chart's
# read API port
EXPOSE 9102 9103
ENTRYPOINT ["ingest"]
CMD ["worker"]
