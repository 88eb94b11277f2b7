# syntax=docker/dockerfile:1
# Lodestar: one image for all four services (gateway, profile, campaign, risk).
#   build:  podman build -t lodestar:0.1.0 .        (or: docker build ...)
#   run:    python -m services.<svc> serve | migrate (see deploy/k8s and docs/operations.md)
# Pin the base by version; for bit-for-bit rebuilds also pin the digest
# (PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src

# Runtime virtualenv: only the project's runtime dependencies.
RUN python -m venv /opt/venv
COPY pyproject.toml ./
COPY services ./services
COPY lodestar_cli ./lodestar_cli
RUN /opt/venv/bin/pip install --no-cache-dir . \
 && /opt/venv/bin/pip freeze --exclude lodestar > /tmp/runtime-constraints.txt

# Code generation in a throwaway virtualenv, constrained to the runtime's grpcio and
# protobuf versions so the generated code matches the runtime it is imported by.
RUN python -m venv /opt/tools \
 && /opt/tools/bin/pip install --no-cache-dir -c /tmp/runtime-constraints.txt "grpcio-tools>=1.70,<2"
COPY protos ./protos
RUN mkdir gen \
 && PROTO_INCLUDE="$(/opt/tools/bin/python -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')" \
 && /opt/tools/bin/python -m grpc_tools.protoc -I protos -I "$PROTO_INCLUDE" \
      --python_out=gen --grpc_python_out=gen $(find protos -name '*.proto' | sort) \
 && /opt/venv/bin/python -c "import sys; sys.path.insert(0, 'gen'); import lodestar.profile.v1.profile_service_pb2_grpc"

# -------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="lodestar" \
      org.opencontainers.image.description="Lodestar gRPC services: gateway, profile, campaign, risk" \
      org.opencontainers.image.version="0.1.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app/gen
RUN groupadd --system --gid 10001 lodestar \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin lodestar
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/gen /app/gen
WORKDIR /app
USER 10001:10001
# No HEALTHCHECK: Kubernetes uses native grpc probes (grpc.health.v1) on the grpc port.
EXPOSE 50050 50051 50052 50053
CMD ["python", "-m", "services.gateway", "serve"]
