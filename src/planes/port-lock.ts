import { createServer, type Server } from 'node:net'
import { FerryError } from '../errors.js'

/**
 * The workers of a pod share their HTTP ports (SO_REUSEPORT), so the kernel alone would let a second
 * Ferry on the same port take half the connections without a word. The control plane holds this lock
 * for each such port while the pod runs: an abstract Unix socket named after the address (Linux; it
 * vanishes with the process, whatever kills it). A second pod cannot take it and stops, naming the port;
 * a second single-process Ferry binds exclusively, which the workers' sockets already prevent.
 */
export class PortLock {
  private constructor (private readonly server: Server, readonly name: string) {}

  static async take (field: string, host: string, port: number): Promise<PortLock> {
    const name = `\0ferry-port:${host}:${port}`
    const server = createServer()
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        reject(new FerryError('FERRY_ERR_LISTEN', `${field}: cannot listen on ${host}:${port}: another Ferry holds it (its workers share the port, and its control plane holds the port's lock: ${err.code ?? err.message})`, { cause: err }))
      })
      server.listen({ path: name, exclusive: true }, () => { resolve() })
    })
    server.unref()
    return new PortLock(server, name)
  }

  release (): void {
    this.server.close()
  }
}

/** A port on `host` that nobody holds now (port 0 in a pod's config: chosen once, for every worker). */
export async function freePort (field: string, host: string): Promise<number> {
  const server = createServer()
  return await new Promise<number>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      reject(new FerryError('FERRY_ERR_LISTEN', `${field}: cannot listen on ${host}:0: ${err.code ?? err.message}`, { cause: err }))
    })
    server.listen({ host, port: 0, exclusive: true }, () => {
      const port = (server.address() as { port: number }).port
      server.close(() => { resolve(port) })
    })
  })
}
