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
  const char *what; /* "plain", "tls" */
};

struct nbd_transport {
  const struct nbd_transport_ops *ops;
  int fd;
  char *name;          /* endpoint, for messages */
  void *tls;           /* the TLS session when ops is the TLS pair */
};

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

#endif /* NBDFS_NBDPROTO_INTERNAL_H */
