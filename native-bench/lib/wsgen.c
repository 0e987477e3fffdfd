// wsgen: the WebSocket load generator of native-bench. One thread, epoll, non-blocking sockets, minimal
// RFC 6455 client framing (masked client frames, 7/16/64-bit lengths, ping → pong, close handshake), no
// dependencies. native-bench/run compiles it (gcc -O2) into native-bench/.work/ and runs one or more
// copies, each with its share of the sessions; it talks to them over stdin/stdout, one JSON line each way.
//
//   wsgen MODE key=value...      MODE: echo | idle | fanout
//     host=127.0.0.1 port=N path=/ws   where to connect (host must be an IPv4 address)
//     sessions=N                       WebSocket sessions this process opens
//     inflight=1                       echo: messages each session keeps in flight (1 = ping-pong)
//     size=64                          message payload bytes (text, ASCII; at least 32)
//     seconds=3                        echo/fanout: length of the measured window
//     conc=256                         handshakes in progress at once while opening
//     tag=0                            this process's number (written into every payload)
//     ctlpath=/ctl                     fanout: path of the control session that asks the backend to publish
//     window=8                         fanout: topic messages in flight (published, not yet delivered to all)
//     timeout=60                       seconds allowed for opening every session
//
// Protocol with the parent: after opening the sessions it prints {"event":"ready",...}; then it reads
// commands, one per line, from stdin:
//   go      echo/fanout: run the measured window, print {"event":"result",...}
//   check   idle: one echo round trip on every session, print {"event":"checked",...}
//   close   close every session (close frame, wait for the server's, at most 3 s), print {"event":"closed"}, exit
// End of stdin = close. Payloads carry the session and sequence number, so every echo and every topic
// message is checked byte for byte and in order; mismatches are counted as `bad`, missing ones as `lost`.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { ST_IDLE, ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_CLOSING, ST_CLOSED };
enum { M_ECHO, M_IDLE, M_FANOUT };

typedef struct {
  int fd;
  uint8_t state, sent_close, is_ctl, want_out;
  uint32_t idx;
  uint64_t seq_sent, seq_recv;   // echo: next sequence to send / expected next; fanout: topic messages received / highest seq seen + 1
  uint64_t *sent_at;             // echo: send times (ns) of the messages in flight, ring of `inflight`
  uint8_t *in; uint32_t inlen, incap;    // bytes read but not yet a whole frame (or the handshake response)
  uint8_t *out; uint32_t outlen, outcap; // bytes not yet written
} sess_t;

static int mode;
static char host[64] = "127.0.0.1", path[512] = "/", ctlpath[512] = "/ctl";
static int port, nsess, inflight = 1, msize = 64, conc = 256, tag, window = 8;
static double seconds = 3, open_timeout = 60;
static sess_t *S; static int ntotal; // subscribers/echo sessions + (fanout) the control session
static int ep;
static uint8_t rbuf[1 << 18];
static char first_error[256];

// counters
static uint64_t n_open, n_failed, n_closed_unexpected, n_bad, n_reordered, n_sent, n_recv_window, n_recv_total, n_pings;
static int running, stopping;
static uint64_t t_go, t_end;
#define HMAX 1000000 // latency histogram: 1 µs buckets up to 1 s, then one overflow bucket
static uint32_t *hist; static uint64_t hist_over;

static uint64_t now_ns (void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec; }
static double cpu_s (void) { struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd (void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t)rng; }
static void err1 (const char *msg) { if (first_error[0] == 0) snprintf(first_error, sizeof first_error, "%s", msg); }

static void lat (uint64_t sent) {
  uint64_t us = (now_ns() - sent) / 1000;
  if (us < HMAX) hist[us]++; else hist_over++;
}

static void grow (uint8_t **b, uint32_t *cap, uint32_t need) {
  if (need <= *cap) return;
  uint32_t c = *cap ? *cap : 256;
  while (c < need) c *= 2;
  *b = realloc(*b, c);
  if (*b == NULL) { fprintf(stderr, "wsgen: out of memory\n"); exit(1); }
  *cap = c;
}

static void ep_mod (sess_t *s, uint32_t ev) {
  struct epoll_event e = { .events = ev, .data.u32 = s->idx };
  epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &e);
}

static void sess_close (sess_t *s, int unexpected, const char *why) {
  if (s->state == ST_CLOSED) return;
  if (s->state == ST_CONNECTING || s->state == ST_HANDSHAKE) { n_failed++; err1(why); }
  else if (unexpected && !stopping) { n_closed_unexpected++; err1(why); }
  if (s->state == ST_OPEN || s->state == ST_CLOSING) n_open--;
  epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
  close(s->fd);
  s->state = ST_CLOSED;
  free(s->in); s->in = NULL; s->inlen = s->incap = 0;
  free(s->out); s->out = NULL; s->outlen = s->outcap = 0;
}

static void flush (sess_t *s) {
  while (s->outlen > 0) {
    ssize_t w = write(s->fd, s->out, s->outlen);
    if (w < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      char m[128]; snprintf(m, sizeof m, "write: %s", strerror(errno)); sess_close(s, 1, m); return;
    }
    memmove(s->out, s->out + w, s->outlen - w);
    s->outlen -= (uint32_t)w;
  }
  int want = s->outlen > 0;
  if (want != s->want_out) { s->want_out = (uint8_t)want; ep_mod(s, EPOLLIN | (want ? EPOLLOUT : 0)); }
}

/** Appends one masked client frame to the session's output. */
static void frame (sess_t *s, int opcode, const uint8_t *p, uint32_t len) {
  grow(&s->out, &s->outcap, s->outlen + len + 14);
  uint8_t *d = s->out + s->outlen; uint32_t h = 0;
  d[h++] = 0x80 | opcode;
  if (len < 126) d[h++] = 0x80 | len;
  else if (len < 65536) { d[h++] = 0x80 | 126; d[h++] = len >> 8; d[h++] = len & 255; }
  else { d[h++] = 0x80 | 127; for (int i = 7; i >= 0; i--) d[h++] = (uint8_t)((uint64_t)len >> (8 * i)); }
  uint32_t m = rnd(); uint8_t *mk = d + h; memcpy(mk, &m, 4); h += 4;
  for (uint32_t i = 0; i < len; i++) d[h + i] = p[i] ^ mk[i & 3];
  s->outlen += h + len;
}

static const char HEX[] = "0123456789abcdef";
static void hex (uint8_t *d, uint64_t v, int n) { for (int i = n - 1; i >= 0; i--) { d[i] = HEX[v & 15]; v >>= 4; } }
/** Echo payload: "s<tag:4><session:8> q<seq:16> " then a filler that depends on the sequence. */
static void echo_payload (uint8_t *d, uint32_t sidx, uint64_t seq) {
  d[0] = 's'; hex(d + 1, (uint64_t)tag, 4); hex(d + 5, sidx, 8); d[13] = ' '; d[14] = 'q'; hex(d + 15, seq, 16); d[31] = ' ';
  for (int i = 32; i < msize; i++) d[i] = (uint8_t)('a' + (seq + i) % 26);
}
/** Topic payload: "f<tag:4> <seq:16> " then a filler. */
static void topic_payload (uint8_t *d, uint64_t seq) {
  d[0] = 'f'; hex(d + 1, (uint64_t)tag, 4); d[5] = ' '; hex(d + 6, seq, 16); d[22] = ' ';
  for (int i = 23; i < msize; i++) d[i] = (uint8_t)('A' + (seq + i) % 26);
}

static void echo_send (sess_t *s) {
  uint8_t p[65536 + 64];
  echo_payload(p, s->idx, s->seq_sent);
  s->sent_at[s->seq_sent % (uint64_t)inflight] = now_ns();
  s->seq_sent++; n_sent++;
  frame(s, 1, p, (uint32_t)msize);
}

// fanout state (per process: one topic, one control session)
#define RING 4096
static uint64_t pub_next, pub_done, pub_at[RING]; static uint32_t got[RING]; static uint64_t live_subs;
static uint64_t last_progress; static int stalled;

static void fanout_pump (void) {
  sess_t *c = &S[nsess];
  if (c->state != ST_OPEN) return;
  uint8_t p[65536 + 64];
  while (running && pub_next < pub_done + (uint64_t)window) {
    topic_payload(p, pub_next);
    pub_at[pub_next % RING] = now_ns();
    got[pub_next % RING] = 0;
    frame(c, 1, p, (uint32_t)msize);
    pub_next++; n_sent++;
  }
  flush(c);
}
static void fanout_advance (void) {
  while (pub_done < pub_next && got[pub_done % RING] >= live_subs) { pub_done++; last_progress = now_ns(); }
}

static void on_message (sess_t *s, const uint8_t *p, uint64_t len) {
  uint8_t e[65536 + 64];
  if (mode == M_FANOUT) {
    if (s->is_ctl) return; // the backend does not answer on the control session; ignore if it does
    uint64_t seq = 0;
    if (len != (uint64_t)msize || len < 23 || p[0] != 'f') { n_bad++; err1("unexpected topic message"); return; }
    for (int i = 6; i < 22; i++) seq = seq * 16 + (uint64_t)(p[i] <= '9' ? p[i] - '0' : p[i] - 'a' + 10);
    topic_payload(e, seq);
    if (memcmp(e, p, len) != 0 || seq >= pub_next) { n_bad++; err1("topic message content differs"); return; }
    // Arriving after a later one: reordered (or a duplicate, which then also shows as negative loss).
    if (seq + 1 <= s->seq_recv) n_reordered++; else s->seq_recv = seq + 1;
    s->seq_sent++;
    n_recv_total++;
    if (running) { n_recv_window++; lat(pub_at[seq % RING]); }
    if (pub_next - seq <= RING) got[seq % RING]++;
    return;
  }
  // echo (and idle's check round trip)
  if (s->seq_recv >= s->seq_sent) { n_bad++; err1("echo of a message never sent"); return; }
  echo_payload(e, s->idx, s->seq_recv);
  if (len != (uint64_t)msize || memcmp(e, p, len) != 0) { n_bad++; err1("echo differs from the message sent"); }
  n_recv_total++;
  if (running) { n_recv_window++; lat(s->sent_at[s->seq_recv % (uint64_t)inflight]); }
  s->seq_recv++;
  if (running && mode == M_ECHO) echo_send(s);
}

/** Parses whole frames out of `buf`; returns the bytes consumed. */
static uint32_t frames (sess_t *s, uint8_t *buf, uint32_t n) {
  uint32_t off = 0;
  while (n - off >= 2 && s->state != ST_CLOSED) {
    uint8_t *b = buf + off; uint32_t avail = n - off;
    int op = b[0] & 15, fin = b[0] & 0x80, masked = b[1] & 0x80;
    uint64_t len = b[1] & 127; uint32_t h = 2;
    if (len == 126) { if (avail < 4) break; len = ((uint64_t)b[2] << 8) | b[3]; h = 4; }
    else if (len == 127) { if (avail < 10) break; len = 0; for (int i = 0; i < 8; i++) len = (len << 8) | b[2 + i]; h = 10; }
    if (masked) h += 4;
    if (len > (1u << 26)) { sess_close(s, 1, "frame too large"); return n; }
    if (avail < h + len) break;
    uint8_t *p = b + h;
    if (masked) { uint8_t *mk = b + h - 4; for (uint64_t i = 0; i < len; i++) p[i] ^= mk[i & 3]; }
    off += h + (uint32_t)len;
    if (op == 1 || op == 2) {
      if (!fin) { n_bad++; err1("fragmented message (not expected here)"); continue; }
      on_message(s, p, len);
    } else if (op == 0) { n_bad++; err1("continuation frame (not expected here)");
    } else if (op == 9) { n_pings++; frame(s, 10, p, (uint32_t)len);
    } else if (op == 10) { /* pong */
    } else if (op == 8) {
      int expected = s->sent_close || stopping;
      if (!s->sent_close) { frame(s, 8, p, len >= 2 ? 2 : 0); s->sent_close = 1; flush(s); }
      char m[160]; int code = len >= 2 ? (p[0] << 8 | p[1]) : 1005;
      snprintf(m, sizeof m, "server closed the session: %d %.*s", code, (int)(len > 2 ? (len - 2 > 100 ? 100 : len - 2) : 0), (const char *)p + 2);
      sess_close(s, !expected, m);
      return n;
    } else { n_bad++; err1("unknown opcode"); }
  }
  return off;
}

static void handshake_send (sess_t *s) {
  static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  char key[25];
  for (int i = 0; i < 21; i++) key[i] = B64[rnd() & 63];
  key[21] = "AQgw"[rnd() & 3]; key[22] = '='; key[23] = '='; key[24] = 0;
  char req[1024];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nUser-Agent: native-bench-wsgen\r\n\r\n",
    s->is_ctl ? ctlpath : path, host, port, key);
  grow(&s->out, &s->outcap, s->outlen + (uint32_t)n);
  memcpy(s->out + s->outlen, req, (size_t)n); s->outlen += (uint32_t)n;
  s->state = ST_HANDSHAKE;
  flush(s);
}

static int in_progress;
static void start_connect (sess_t *s) {
  s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s->fd < 0) { char m[128]; snprintf(m, sizeof m, "socket: %s", strerror(errno)); err1(m); n_failed++; s->state = ST_CLOSED; return; }
  int one = 1; setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
  inet_pton(AF_INET, host, &a.sin_addr);
  s->state = ST_CONNECTING; in_progress++;
  struct epoll_event e = { .events = EPOLLOUT, .data.u32 = s->idx };
  epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &e);
  s->want_out = 1;
  if (connect(s->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
    char m[128]; snprintf(m, sizeof m, "connect: %s", strerror(errno)); in_progress--; sess_close(s, 1, m);
  }
}

static void on_event (sess_t *s, uint32_t ev) {
  if (s->state == ST_CONNECTING) {
    if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    int e = 0; socklen_t l = sizeof e; getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &e, &l);
    if (e != 0) { char m[128]; snprintf(m, sizeof m, "connect: %s", strerror(e)); in_progress--; sess_close(s, 1, m); return; }
    handshake_send(s);
    return;
  }
  if ((ev & EPOLLOUT) && s->outlen > 0) flush(s);
  if (s->state == ST_CLOSED) return;
  if (!(ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
  // Read into the shared buffer after whatever was left of an incomplete frame.
  uint32_t keep = s->inlen;
  if (keep > sizeof rbuf / 2) { sess_close(s, 1, "frame larger than the read buffer"); return; }
  if (keep) memcpy(rbuf, s->in, keep);
  ssize_t r = read(s->fd, rbuf + keep, sizeof rbuf - keep);
  if (r < 0) {
    if (errno == EAGAIN || errno == EINTR) return;
    char m[128]; snprintf(m, sizeof m, "read: %s", strerror(errno));
    if (s->state == ST_HANDSHAKE) in_progress--;
    sess_close(s, 1, m); return;
  }
  if (r == 0) {
    if (s->state == ST_HANDSHAKE) in_progress--;
    sess_close(s, !s->sent_close, s->state == ST_HANDSHAKE ? "connection closed during the handshake" : "connection closed without a close frame");
    return;
  }
  uint32_t n = keep + (uint32_t)r, off = 0;
  if (s->state == ST_HANDSHAKE) {
    uint8_t *end = memmem(rbuf, n, "\r\n\r\n", 4);
    if (end == NULL) {
      if (n > 8192) { in_progress--; sess_close(s, 1, "handshake response too long"); return; }
      grow(&s->in, &s->incap, n); memcpy(s->in, rbuf, n); s->inlen = n; return;
    }
    in_progress--;
    if (n < 12 || memcmp(rbuf, "HTTP/1.1 101", 12) != 0) {
      char m[200]; uint8_t *eol = memmem(rbuf, n, "\r\n", 2);
      snprintf(m, sizeof m, "handshake refused: %.*s", (int)(eol ? eol - rbuf : 80), (const char *)rbuf);
      sess_close(s, 1, m); return;
    }
    s->state = ST_OPEN; n_open++;
    off = (uint32_t)(end + 4 - rbuf);
  }
  off += frames(s, rbuf + off, n - off);
  if (s->state == ST_CLOSED) return;
  s->inlen = n - off;
  if (s->inlen) { grow(&s->in, &s->incap, s->inlen); memcpy(s->in, rbuf + off, s->inlen); }
  if (s->outlen) flush(s);
}

static char cmdbuf[256]; static int cmdlen;
/** Reads stdin; returns a command word when a whole line arrived, "close" at end of input, NULL otherwise. */
static const char *read_cmd (void) {
  ssize_t r = read(0, cmdbuf + cmdlen, sizeof cmdbuf - 1 - (size_t)cmdlen);
  if (r <= 0) { if (r < 0 && (errno == EAGAIN || errno == EINTR)) return NULL; return "close"; }
  cmdlen += (int)r; cmdbuf[cmdlen] = 0;
  char *nl = strchr(cmdbuf, '\n');
  if (nl == NULL) { if (cmdlen >= (int)sizeof cmdbuf - 1) cmdlen = 0; return NULL; }
  *nl = 0;
  static char word[256]; snprintf(word, sizeof word, "%s", cmdbuf);
  int rest = cmdlen - (int)(nl + 1 - cmdbuf); memmove(cmdbuf, nl + 1, (size_t)rest); cmdlen = rest;
  return word;
}

/** One epoll round; returns a command if stdin delivered one. */
static const char *poll_once (int timeout_ms) {
  struct epoll_event evs[512];
  int k = epoll_wait(ep, evs, 512, timeout_ms);
  const char *cmd = NULL;
  for (int i = 0; i < k; i++) {
    if (evs[i].data.u32 == UINT32_MAX) { const char *c = read_cmd(); if (c) cmd = c; continue; }
    on_event(&S[evs[i].data.u32], evs[i].events);
  }
  return cmd;
}

static void print_json_str (const char *k, const char *v) {
  printf("\"%s\":\"", k);
  for (const char *p = v; *p; p++) { if (*p == '"' || *p == '\\') putchar('\\'); if ((unsigned char)*p >= 32) putchar(*p); }
  putchar('"');
}

static void close_all (void) {
  stopping = 1;
  static const uint8_t bye[2] = { 0x03, 0xe8 }; // 1000
  for (int i = 0; i < ntotal; i++) {
    sess_t *s = &S[i];
    if (s->state == ST_OPEN) { frame(s, 8, bye, 2); s->sent_close = 1; s->state = ST_CLOSING; flush(s); }
    else if (s->state != ST_CLOSED && s->state != ST_CLOSING) sess_close(s, 0, "");
  }
  uint64_t deadline = now_ns() + 3000000000ull;
  while (n_open > 0 && now_ns() < deadline) poll_once(50);
  for (int i = 0; i < ntotal; i++) sess_close(&S[i], 0, "");
  printf("{\"event\":\"closed\"}\n"); fflush(stdout);
}

int main (int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: wsgen echo|idle|fanout key=value...\n"); return 2; }
  mode = !strcmp(argv[1], "echo") ? M_ECHO : !strcmp(argv[1], "idle") ? M_IDLE : !strcmp(argv[1], "fanout") ? M_FANOUT : -1;
  if (mode < 0) { fprintf(stderr, "wsgen: unknown mode %s\n", argv[1]); return 2; }
  for (int i = 2; i < argc; i++) {
    char *eq = strchr(argv[i], '='); if (!eq) { fprintf(stderr, "wsgen: bad argument %s\n", argv[i]); return 2; }
    *eq = 0; const char *k = argv[i], *v = eq + 1;
    if (!strcmp(k, "host")) snprintf(host, sizeof host, "%s", v);
    else if (!strcmp(k, "port")) port = atoi(v);
    else if (!strcmp(k, "path")) snprintf(path, sizeof path, "%s", v);
    else if (!strcmp(k, "ctlpath")) snprintf(ctlpath, sizeof ctlpath, "%s", v);
    else if (!strcmp(k, "sessions")) nsess = atoi(v);
    else if (!strcmp(k, "inflight")) inflight = atoi(v);
    else if (!strcmp(k, "size")) msize = atoi(v);
    else if (!strcmp(k, "seconds")) seconds = atof(v);
    else if (!strcmp(k, "conc")) conc = atoi(v);
    else if (!strcmp(k, "tag")) tag = atoi(v);
    else if (!strcmp(k, "window")) window = atoi(v);
    else if (!strcmp(k, "timeout")) open_timeout = atof(v);
    else { fprintf(stderr, "wsgen: unknown option %s\n", k); return 2; }
  }
  if (port <= 0 || nsess <= 0 || inflight < 1 || msize < 32 || msize > 65536 || window < 1 || window > RING / 2) { fprintf(stderr, "wsgen: bad options\n"); return 2; }
  signal(SIGPIPE, SIG_IGN);
  rng ^= (uint64_t)getpid() << 32 ^ now_ns();
  hist = calloc(HMAX, sizeof *hist);
  ntotal = nsess + (mode == M_FANOUT ? 1 : 0);
  S = calloc((size_t)ntotal, sizeof *S);
  ep = epoll_create1(EPOLL_CLOEXEC);
  for (int i = 0; i < ntotal; i++) {
    S[i].idx = (uint32_t)i; S[i].fd = -1; S[i].is_ctl = mode == M_FANOUT && i == nsess;
    if (mode != M_FANOUT) S[i].sent_at = calloc((size_t)inflight, sizeof(uint64_t));
  }
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  struct epoll_event se = { .events = EPOLLIN, .data.u32 = UINT32_MAX };
  epoll_ctl(ep, EPOLL_CTL_ADD, 0, &se);

  // Open every session, at most `conc` handshakes at a time.
  uint64_t t0 = now_ns(), deadline = t0 + (uint64_t)(open_timeout * 1e9);
  int next = 0; const char *cmd = NULL; static char pending[256];
  while ((next < ntotal || in_progress > 0) && now_ns() < deadline) {
    while (next < ntotal && in_progress < conc) start_connect(&S[next++]);
    const char *c = poll_once(50);
    if (c) { snprintf(pending, sizeof pending, "%s", c); if (!strcmp(c, "close")) break; }
  }
  for (int i = 0; i < ntotal; i++) if (S[i].state == ST_CONNECTING || S[i].state == ST_HANDSHAKE || S[i].state == ST_IDLE) {
    if (S[i].state == ST_IDLE) { n_failed++; S[i].state = ST_CLOSED; err1("not started before the timeout"); }
    else sess_close(&S[i], 1, "timed out opening");
  }
  printf("{\"event\":\"ready\",\"open\":%llu,\"failed\":%llu,\"ms\":%.1f,", (unsigned long long)n_open, (unsigned long long)n_failed, (now_ns() - t0) / 1e6);
  print_json_str("error", first_error); printf("}\n"); fflush(stdout);
  for (;;) {
    if (pending[0]) { cmd = pending[0] ? pending : NULL; static char cur[256]; snprintf(cur, sizeof cur, "%s", pending); pending[0] = 0; cmd = cur; }
    else cmd = poll_once(1000);
    if (cmd == NULL) continue;
    if (!strcmp(cmd, "close")) { close_all(); return 0; }
    if (!strcmp(cmd, "check")) {
      // One round trip on every open session (idle mode's proof that the sessions are alive end to end).
      uint64_t before_bad = n_bad, before_closed = n_closed_unexpected, sent = 0;
      for (int i = 0; i < ntotal; i++) if (S[i].state == ST_OPEN) { echo_send(&S[i]); flush(&S[i]); sent++; }
      uint64_t until = now_ns() + 15000000000ull, t = now_ns();
      uint64_t recv0 = n_recv_total;
      while (n_recv_total - recv0 < sent && now_ns() < until) poll_once(50);
      printf("{\"event\":\"checked\",\"sent\":%llu,\"ok\":%llu,\"bad\":%llu,\"closed\":%llu,\"open\":%llu,\"ms\":%.1f,", (unsigned long long)sent,
        (unsigned long long)(n_recv_total - recv0), (unsigned long long)(n_bad - before_bad), (unsigned long long)(n_closed_unexpected - before_closed), (unsigned long long)n_open, (now_ns() - t) / 1e6);
      print_json_str("error", first_error); printf("}\n"); fflush(stdout);
      continue;
    }
    if (strcmp(cmd, "go") != 0) continue;
    // The measured window.
    double c0 = cpu_s();
    t_go = now_ns(); t_end = t_go + (uint64_t)(seconds * 1e9); running = 1;
    if (mode == M_ECHO) {
      for (int i = 0; i < ntotal; i++) if (S[i].state == ST_OPEN) { for (int k = 0; k < inflight; k++) echo_send(&S[i]); flush(&S[i]); }
    } else if (mode == M_FANOUT) {
      live_subs = n_open - (S[nsess].state == ST_OPEN ? 1 : 0);
      last_progress = t_go; fanout_pump();
    }
    uint64_t t;
    while ((t = now_ns()) < t_end) {
      poll_once((int)((t_end - t) / 1000000) + 1 > 5 ? 5 : (int)((t_end - t) / 1000000) + 1);
      if (mode == M_FANOUT) {
        live_subs = n_open - (S[nsess].state == ST_OPEN || S[nsess].state == ST_CLOSING ? 1 : 0);
        fanout_advance(); fanout_pump();
        if (now_ns() - last_progress > 3000000000ull) { stalled = 1; err1("no topic message reached every subscriber for 3 s"); break; }
      }
    }
    double window_s = (now_ns() - t_go) / 1e9;
    running = 0;
    double cpu = cpu_s() - c0;
    // Let what is in flight come back (at most 3 s), to tell slow from lost.
    uint64_t drain_until = now_ns() + 3000000000ull;
    if (mode == M_ECHO) {
      for (;;) {
        uint64_t outstanding = 0; for (int i = 0; i < ntotal; i++) if (S[i].state == ST_OPEN) outstanding += S[i].seq_sent - S[i].seq_recv;
        if (outstanding == 0 || now_ns() > drain_until) break;
        poll_once(20);
      }
    } else {
      while (now_ns() < drain_until) { fanout_advance(); if (pub_done >= pub_next) break; poll_once(20); }
    }
    uint64_t lost = 0;
    if (mode == M_ECHO) { for (int i = 0; i < ntotal; i++) if (S[i].state == ST_OPEN) lost += S[i].seq_sent - S[i].seq_recv; }
    else { for (int i = 0; i < nsess; i++) if (S[i].state == ST_OPEN && pub_next > S[i].seq_sent) lost += pub_next - S[i].seq_sent; }
    printf("{\"event\":\"result\",\"seconds\":%.4f,\"cpu\":%.4f,\"sent\":%llu,\"received\":%llu,\"receivedTotal\":%llu,\"lost\":%llu,\"bad\":%llu,\"closed\":%llu,\"open\":%llu,\"stalled\":%d,\"pings\":%llu,\"reordered\":%llu,",
      window_s, cpu, (unsigned long long)n_sent, (unsigned long long)n_recv_window, (unsigned long long)n_recv_total, (unsigned long long)lost,
      (unsigned long long)n_bad, (unsigned long long)n_closed_unexpected, (unsigned long long)n_open, stalled, (unsigned long long)n_pings, (unsigned long long)n_reordered);
    if (mode == M_FANOUT) printf("\"published\":%llu,", (unsigned long long)pub_next);
    print_json_str("error", first_error);
    printf(",\"hist\":[");
    int first = 1;
    for (int i = 0; i < HMAX; i++) if (hist[i]) { printf("%s[%d,%u]", first ? "" : ",", i, hist[i]); first = 0; }
    if (hist_over) printf("%s[%d,%llu]", first ? "" : ",", HMAX, (unsigned long long)hist_over);
    printf("]}\n"); fflush(stdout);
  }
}
