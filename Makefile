# Ferry: the two commands a new user needs are `make run` and `make test`.
SHELL := /bin/bash
.PHONY: all setup build run restart test bench bench-workers bench-tls check docs clean

all: build

setup:
	scripts/setup.sh

build: setup
	npx tsc -p tsconfig.json

## Set up, build, and run Ferry on its embedded defaults next to the bundled demo backend.
run: build
	scripts/run-demo.sh

## Under `make run` (from another terminal): restart Ferry alone. It drains and `make run` starts it again with the same resume secret while the backends keep running, so chat tabs resume their sessions.
restart:
	node dist/cli.js drain

## Set up (npm packages, redis-server when missing), build, and run the whole test suite.
test:
	scripts/setup.sh --test
	npx tsc -p tsconfig.json
	scripts/test.sh

## Side-by-side benchmark against nginx and HAProxy (installs them when missing). QUICK=0 for the full profile.
bench:
	scripts/setup.sh --bench
	npx tsc -p tsconfig.json
	native-bench/run $(if $(filter 0,$(QUICK)),--full,--quick)
	native-bench/resume
	node native-bench/rolling-upgrade.mjs
	node native-bench/backend-rollout.mjs

## Ferry gateway.workers 1 and 2 against nginx worker_processes 2 and HAProxy nbthread 2 (native-bench/workers.mjs, quick profile: about 7 minutes).
bench-workers:
	scripts/setup.sh --bench
	npx tsc -p tsconfig.json
	node native-bench/workers.mjs --quick

## TLS termination: Ferry vs nginx and HAProxy with the same certificate, one worker each (handshakes, keep-alive, WSS echo), and a certificate rotation under 1,000 open WSS sessions (native-bench/tls.mjs, quick profile: about 4 minutes).
bench-tls:
	scripts/setup.sh --bench
	npx tsc -p tsconfig.json
	node native-bench/tls.mjs --quick

## Type-check only.
check: setup
	npx tsc -p tsconfig.json --noEmit

## Regenerate docs/config.md and docs/errors.md from the schema and the error table.
docs: build
	node dist/cli.js config-reference > docs/config.md
	node dist/cli.js errors-reference > docs/errors.md

clean:
	rm -rf dist .tap
