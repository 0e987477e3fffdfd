#!/usr/bin/env bash
# `make run`: the bundled demo backend on 127.0.0.1:3000, the chat example backend on 127.0.0.1:7000, and Ferry on its embedded defaults
# (HTTP on :8080, admin on 127.0.0.1:9901), pretty logs. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
node dist/demo/backend.js --port 3000 &
demo=$!
node examples/chat/backend.mjs --port 7000 &
chat=$!
trap 'kill "$demo" "$chat" 2>/dev/null || true' EXIT INT TERM
cat <<'TXT'

  Ferry is starting on its embedded defaults. In another terminal:
    curl localhost:8080/                  # proxied to the demo backend over a pooled keep-alive connection
    open http://localhost:8080/chat.html  # the chat example: WebSocket sessions as mux streams, rooms as topics
    curl localhost:9901/status            # endpoints, pool, queue
    curl localhost:9901/metrics           # Prometheus metrics

TXT
FERRY__logging__pretty=true node --max-semi-space-size=32 dist/cli.js start "$@"
