#!/usr/bin/env bash
# Installs what Ferry needs on a fresh Debian 12 + Node 20 machine, and nothing that is already there.
#   scripts/setup.sh            npm packages (npm ci)
#   scripts/setup.sh --test     + Debian packages the test suite starts (redis-server; chromium, which
#                               playwright-core drives for the console tests: no browser download)
#   scripts/setup.sh --bench    + Debian packages the benchmark compares against (nginx, haproxy, wrk) and
#                               builds with (gcc; libssl-dev for native-bench/tls.mjs's wrk preload)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0; want_bench=0
for a in "$@"; do
  case "$a" in
    --test) want_test=1 ;;
    --bench) want_bench=1 ;;
    *) echo "setup: unknown option $a" >&2; exit 2 ;;
  esac
done

say() { printf '[setup] %s\n' "$*"; }

# Node 20 (or 22+): uWebSockets.js 20.30's native binary exists for Node 16/18/20 ABIs only.
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "setup: Ferry needs Node.js 20 (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

pkgs=()
need_cmd() { command -v "$1" >/dev/null 2>&1 || pkgs+=("$2"); }
# The suite also drives a real HAProxy (PROXY protocol) and runs the workers and TLS benchmarks small (nginx, wrk,
# gcc; the TLS one builds a wrk preload against OpenSSL's headers: libssl-dev).
if [ "$want_test" = 1 ]; then need_cmd redis-server redis-server; need_cmd openssl openssl; need_cmd curl curl; [ -x /usr/bin/chromium ] || pkgs+=(chromium); need_cmd haproxy haproxy; need_cmd nginx nginx-light; need_cmd wrk wrk; need_cmd gcc gcc; [ -e /usr/include/stdio.h ] || pkgs+=(libc6-dev); [ -e /usr/include/openssl/ssl.h ] || pkgs+=(libssl-dev); fi
if [ "$want_bench" = 1 ]; then need_cmd nginx nginx-light; need_cmd haproxy haproxy; need_cmd wrk wrk; need_cmd iperf3 iperf3; [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || pkgs+=(libnginx-mod-stream); need_cmd gcc gcc; [ -e /usr/include/stdio.h ] || pkgs+=(libc6-dev); need_cmd openssl openssl; [ -e /usr/include/openssl/ssl.h ] || pkgs+=(libssl-dev); need_cmd pushpin pushpin; need_cmd redis-server redis-server; fi
if [ "${#pkgs[@]}" -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "setup: need root (or sudo) to apt-get install ${pkgs[*]}" >&2; exit 1
    fi
  fi
  say "apt-get install ${pkgs[*]}"
  $sudo apt-get update -qq
  # Debian starts a package's service on install (nginx on :80, haproxy): Ferry's tests and benchmark
  # start their own, so service start-up is refused while installing (policy-rc.d), unless one is set already.
  blocked=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null && $sudo chmod +x /usr/sbin/policy-rc.d && blocked=1; fi
  rc=0
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null || rc=$?
  if [ "$blocked" = 1 ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi
  [ "$rc" = 0 ] || exit "$rc"
fi

# npm packages, from the lock file; skipped when node_modules already matches it.
stamp=node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ] || [ ! -d node_modules/uWebSockets.js ]; then
  say "npm ci"
  # playwright-core drives the Debian chromium; it must never fetch a browser of its own.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
fi
