// no-resume.so: preloaded into wrk (LD_PRELOAD) by native-bench/tls.mjs so that every connection makes a
// full TLS handshake. wrk 4.1 keeps one SSL object per connection slot and SSL_clear()s it between
// connections, which keeps the last session: with `Connection: close` it resumed 2,253 of 2,257
// handshakes against nginx (measured with $ssl_session_reused). Before each handshake this drops the
// session (SSL_set_session(ssl, NULL): no session ID, no ticket offered), pins TLS 1.2 (with TLS 1.3
// forced wrk 4.1 completed no request: measured) and sends the SNI name in NO_RESUME_SNI; it counts the
// handshakes that completed, full and resumed, and writes {"full":N,"resumed":N,"version","cipher"} (of
// the last handshake) to NO_RESUME_STATS when wrk exits. Built by tls.mjs: gcc -O2 -shared -fPIC -o no-resume.so no-resume.c -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>

static unsigned long full, resumed;
static char version[32] = "", cipher[64] = "";
static int (*real_connect)(SSL *);

int SSL_connect (SSL *ssl) {
  if (real_connect == NULL) real_connect = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
  if (SSL_in_before(ssl)) {
    SSL_set_session(ssl, NULL);
    SSL_set_min_proto_version(ssl, TLS1_2_VERSION);
    SSL_set_max_proto_version(ssl, TLS1_2_VERSION);
    const char *sni = getenv("NO_RESUME_SNI");
    if (sni != NULL && sni[0] != '\0') SSL_set_tlsext_host_name(ssl, sni);
  }
  int r = real_connect(ssl);
  if (r == 1) {
    if (SSL_session_reused(ssl)) resumed++; else full++;
    snprintf(version, sizeof version, "%s", SSL_get_version(ssl));
    snprintf(cipher, sizeof cipher, "%s", SSL_get_cipher_name(ssl));
  }
  return r;
}

__attribute__((destructor)) static void report (void) {
  const char *path = getenv("NO_RESUME_STATS");
  if (path == NULL) return;
  FILE *f = fopen(path, "w");
  if (f == NULL) return;
  fprintf(f, "{\"full\":%lu,\"resumed\":%lu,\"version\":\"%s\",\"cipher\":\"%s\"}\n", full, resumed, version, cipher);
  fclose(f);
}
