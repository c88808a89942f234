/* nbdfs: declarations shared inside nbdproto, not part of its interface.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDFS_NBDPROTO_INTERNAL_H
#define NBDFS_NBDPROTO_INTERNAL_H

#include <endian.h>
#include <string.h>

#include "nbdproto.h"

/* The two halves of a transport.  A plain socket and a TLS session each
 * supply one pair; STARTTLS swaps the pair in one place, so no protocol
 * code asks whether it is encrypted.  Both return a byte count, 0 for
 * end of stream (recv only), or a negative errno. */
struct nbd_transport_ops {
  ssize_t (*recv)(struct nbd_transport *t, void *buf, size_t len);
  ssize_t (*sendv)(struct nbd_transport *t, struct iovec *iov, int iovcnt);
  size_t (*pending)(struct nbd_transport *t);
  void (*close)(struct nbd_transport *t);
  /* Why the last recv (sending false) or sendv (true) failed, when the
   * errno alone says too little (a TLS alert); else NULL. */
  const char *(*why)(struct nbd_transport *t, bool sending);
  const char *what; /* "plain", "tls" */
};

struct nbd_transport {
  const struct nbd_transport_ops *ops;
  int fd;
  char *name;          /* endpoint, for messages */
  void *tls;           /* the TLS session when ops is the TLS pair */
  unsigned timeout_ms; /* SO_RCVTIMEO and SO_SNDTIMEO; 0: none */
  int big_sends;       /* atomic: the last send was large */
};

/* recv() on a socket without a timeout.  With poll_first it waits in
 * poll() when nothing is there yet (see transport.c).  Returns what
 * recv() returns. */
ssize_t nbd_socket_recv(int fd, void *buf, size_t len, bool poll_first);

/* Big-endian loads from a byte buffer that may be unaligned. */
static inline uint16_t
nbd_get16(const void *p)
{
  uint16_t v;

  memcpy(&v, p, sizeof v);
  return be16toh(v);
}

static inline uint32_t
nbd_get32(const void *p)
{
  uint32_t v;

  memcpy(&v, p, sizeof v);
  return be32toh(v);
}

static inline uint64_t
nbd_get64(const void *p)
{
  uint64_t v;

  memcpy(&v, p, sizeof v);
  return be64toh(v);
}

/* Copies at most max bytes of an untrusted server string into a new
 * NUL-terminated string fit for a log line: control characters and
 * invalid UTF-8 become '?' (V29). */
char *nbd_sanitize(const void *data, size_t len, size_t max);

/* ---- TLS (tls.c) ---- */

/* T4: runs the TLS handshake at once on t's socket and, when it
 * succeeds, swaps t's recv/sendv pair for the TLS one.  On failure t
 * is left for a hard disconnect (T6).  Returns 0 or a negative errno
 * with a message that names the cause. */
int nbd_tls_start(struct nbd_transport *t, struct nbd_tls_config *cfg,
                  GError **error);

/* Copies the TLS version, cipher and peer of t into info. */
void nbd_tls_describe(struct nbd_transport *t, struct nbd_export_info *info);

/* ---- Handshake variants for nbd_connect_*() (handshake.c) ---- */

/* As nbd_handshake_go() and nbd_handshake_list(); *starttls_dropped
 * tells whether the server closed the connection in reply to
 * STARTTLS. */
int nbd_handshake_go_ex(struct nbd_transport *t,
                        const struct nbd_handshake_opts *o,
                        struct nbd_export_info *info,
                        bool *starttls_dropped, GError **error);
int nbd_handshake_list_ex(struct nbd_transport *t,
                          const struct nbd_handshake_opts *o,
                          size_t max_entries, GPtrArray **out,
                          bool *starttls_dropped, GError **error);

#endif /* NBDFS_NBDPROTO_INTERNAL_H */
