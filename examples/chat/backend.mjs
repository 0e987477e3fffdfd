#!/usr/bin/env node
// A chat backend on Ferry's mux protocol: rooms are topics, so one publish reaches every member of a
// room through the gateway's native pub/sub, however many clients there are.
//
//   node examples/chat/backend.mjs [--port 7000] [--host 127.0.0.1]
//   clients: ws://<ferry>/chat?room=lobby&name=ann   (page: http://<ferry>/chat.html with `make run`)
//
// Client → backend: a text message is said to the room. Backend → client: JSON lines
//   { type: 'welcome', room, members } | { type: 'said', room, name, text, at } | { type: 'joined'|'left', room, name, members }
import { parseArgs } from 'node:util'
import { createMuxServer } from 'ferry/backend'

const { values } = parseArgs({ options: { port: { type: 'string', default: '7000' }, host: { type: 'string', default: '127.0.0.1' } } })
const server = createMuxServer({ port: Number(values.port), host: values.host, id: 'chat-example' })
const members = new Map() // room → count

const clean = (s, max) => String(s ?? '').replace(/[\u0000-\u001f]/g, '').slice(0, max)

const joinedAt = new WeakMap() // session → when its user joined (the state a handoff carries)

server.on('session', (session) => {
  const room = clean(session.query.get('room'), 40) || 'lobby'
  const name = clean(session.query.get('name'), 32) || `guest-${session.key.slice(-4)}`
  const topic = `room:${room}`
  members.set(room, (members.get(room) ?? 0) + 1)
  // A session handed over by another backend process (a deploy, or a crash there) is the same user,
  // still connected and already in the room: no welcome, no "joined". Its topics came along with it.
  const moved = session.handoff
  joinedAt.set(session, moved !== undefined && !moved.lost ? moved.state?.joinedAt ?? Date.now() : Date.now())
  if (moved === undefined) {
    session.subscribe(topic)
    session.send(JSON.stringify({ type: 'welcome', room, name, members: members.get(room) }))
    server.publish(topic, JSON.stringify({ type: 'joined', room, name, members: members.get(room) }))
  }

  session.on('message', (data, isBinary) => {
    if (isBinary) { session.close(1003, 'text only'); return }
    const text = clean(data.toString('utf8'), 2000)
    if (text === '') return
    server.publish(topic, JSON.stringify({ type: 'said', room, name, text, at: Date.now() }))
  })
  session.on('close', () => {
    const n = (members.get(room) ?? 1) - 1
    if (n === 0) members.delete(room); else members.set(room, n)
    // handedOff: the user did not leave, the session moved to another backend process.
    if (n > 0 && !session.handedOff) server.publish(topic, JSON.stringify({ type: 'left', room, name, members: n }))
  })
})
// What a session takes along when this process drains (JSON, bounded): the new process reads session.handoff.state.
server.on('handoff', (session) => ({ joinedAt: joinedAt.get(session) }))
server.on('link', (l) => { process.stdout.write(`chat backend: gateway ${l.gateway} link ${l.event}${l.reason ? ` (${l.reason})` : ''}\n`) })
await server.listening
process.stdout.write(`chat backend (ferry/backend mux) listening on ${values.host}:${server.address().port}\n`)
// A deploy (SIGTERM) hands every session to another backend of the upstream through Ferry, 200 a second:
// no user is disconnected. With no other backend up, sessions are closed 1012 and clients reconnect.
process.on('SIGTERM', () => { server.drain({ deadlineMs: 20_000, maxMigrationsPerSec: 200 }).then(() => process.exit(0), () => process.exit(1)) })
process.on('SIGINT', () => { server.close().then(() => process.exit(0), () => process.exit(1)) })
