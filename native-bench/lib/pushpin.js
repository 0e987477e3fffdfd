// Pushpin (Debian package `pushpin`, 1.36) as a native-bench target: its runner (`pushpin --config`)
// starts condure (client side), zurl (backend side), pushpin-proxy and pushpin-handler as its children;
// native-bench measures the CPU and RSS of the runner and those children together. Everything stays
// on 127.0.0.1: the HTTP port, the handler's four control ports (5560–5563 + portOffset) and ipc
// sockets under `dir`. Requests and WebSocket sessions are proxied to `backend` as they come (no GRIP).
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

/** The handler's TCP control ports for a port offset (to check they are free before starting). */
export const pushpinControlPorts = (portOffset) => [5560, 5561, 5562, 5563].map((p) => p + portOffset)

/** Writes `dir`/pushpin.conf and `dir`/routes; returns the args for `pushpin`. */
export function writePushpinConfig ({ dir, host, port, portOffset, backend, maxConn = 20000 }) {
  mkdirSync(join(dir, 'run'), { recursive: true })
  mkdirSync(join(dir, 'log'), { recursive: true })
  writeFileSync(join(dir, 'routes'), `* ${backend}\n`)
  writeFileSync(join(dir, 'pushpin.conf'), `[global]
include={libdir}/internal.conf
rundir=${dir}/run
ipc_prefix=nb-
port_offset=${portOffset}
stats_connection_ttl=120
[runner]
services=condure,zurl,pushpin-proxy,pushpin-handler
http_port=${host}:${port}
logdir=${dir}/log
log_level=1
client_buffer_size=8192
client_maxconn=${maxConn}
condure_bin=condure
zurl_bin=zurl
[proxy]
routesfile=${dir}/routes
zurl_out_specs=ipc://{rundir}/{ipc_prefix}zurl-in
zurl_out_stream_specs=ipc://{rundir}/{ipc_prefix}zurl-in-stream
zurl_in_specs=ipc://{rundir}/{ipc_prefix}zurl-out
debug=false
auto_cross_origin=false
updates_check=off
sig_key=native-bench
[handler]
push_in_spec=tcp://${host}:5560
push_in_sub_specs=tcp://${host}:5562
push_in_sub_connect=false
push_in_http_addr=${host}
push_in_http_port=5561
stats_spec=ipc://{rundir}/{ipc_prefix}stats
command_spec=tcp://${host}:5563
`)
  return ['--config', join(dir, 'pushpin.conf')]
}
