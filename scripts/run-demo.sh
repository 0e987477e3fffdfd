#!/usr/bin/env bash
# `make run`: the bundled demo backend on 127.0.0.1:3000, the chat example backend on 127.0.0.1:7000, and Ferry on its embedded defaults
# (HTTP on :8080, admin on 127.0.0.1:9901), pretty logs. `make restart` (in another terminal) drains Ferry and
# this script starts it again while the backends keep running: open chat tabs resume their sessions. Ctrl-C stops everything.
#
# The resume secret is created once in .scratch/demo/resume-secret (git-ignored), so a restarted Ferry
# accepts the resume tokens the previous one issued. Extra arguments go to `ferry start` (e.g. --config FILE).
# FERRY_DEMO_PORT, FERRY_DEMO_CHAT_PORT and FERRY_DEMO_STATE move the backends and the state directory (tests).
set -euo pipefail
cd "$(dirname "$0")/.."
state=${FERRY_DEMO_STATE:-.scratch/demo}
mkdir -p "$state"
secret_file="$state/resume-secret"
if [ ! -s "$secret_file" ]; then
  (umask 077 && node -e "process.stdout.write(require('node:crypto').randomBytes(32).toString('hex'))" > "$secret_file")
fi
export FERRY_RESUME_SECRET="${FERRY_RESUME_SECRET:-$(cat "$secret_file")}"

# Each process in a session of its own: Ctrl-C reaches this script only, which stops Ferry first (one
# SIGTERM: it drains), then the backends.
setsid node dist/demo/backend.js --port "${FERRY_DEMO_PORT:-3000}" &
demo=$!
setsid node examples/chat/backend.mjs --port "${FERRY_DEMO_CHAT_PORT:-7000}" &
chat=$!
ferry=
stopping=0
stop () {
  stopping=1
  if [ -n "$ferry" ]; then kill -TERM "$ferry" 2>/dev/null || true; fi
}
trap stop INT TERM
trap 'kill -INT "$demo" "$chat" 2>/dev/null || true' EXIT
cat <<'TXT'

  Ferry is starting on its embedded defaults. In another terminal:
    curl localhost:8080/                  # proxied to the demo backend over a pooled keep-alive connection
    open http://localhost:8080/chat.html  # the chat example: WebSocket sessions as mux streams, rooms as topics
    make restart                          # restart Ferry alone: chat tabs resume their sessions
    curl localhost:9901/status            # endpoints, pool, queue
    curl localhost:9901/metrics           # Prometheus metrics

TXT
while :; do
  FERRY__logging__pretty="${FERRY__logging__pretty:-true}" setsid node --max-semi-space-size=32 dist/cli.js start "$@" &
  ferry=$!
  if [ "$stopping" = 1 ]; then stop; fi
  code=0
  # `wait` returns early when a trapped signal arrives; Ferry is still draining then.
  while kill -0 "$ferry" 2>/dev/null; do
    if wait "$ferry"; then code=0; else code=$?; fi
  done
  if [ "$stopping" = 1 ]; then break; fi
  if [ "$code" != 0 ]; then
    echo "Ferry exited with code $code; stopping the backends." >&2
    exit "$code"
  fi
  echo "Ferry drained and exited; starting it again (the backends keep running, Ctrl-C stops everything)."
done
