/* nbdfs: what tls.c, certfetch.c and tls-options.c share.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDFS_TLS_INTERNAL_H
#define NBDFS_TLS_INTERNAL_H

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "internal.h"

/* Longest chain a server may send, and intermediates fetched on top. */
#define NBD_TLS_MAX_CHAIN 16
#define NBD_TLS_MAX_FETCHED 3

struct nbd_tls_config {
  gint refs;

  bool psk;                          /* else X.509 */
  gnutls_certificate_credentials_t x509;
  gnutls_psk_client_credentials_t psk_cred;
  gnutls_priority_t prio;
  char *hostname;                    /* what the certificate must name */
  bool sni;                          /* hostname is a DNS name */
  bool verify;                       /* false only by explicit choice */
  bool client_cert;                  /* we have one to present */
  char *username;                    /* PSK identity */

  /* Fetching intermediates from AIA URLs (certfetch.c). */
  bool fetch;
  char *cache_dir;
  unsigned fetch_timeout_s;
  size_t fetch_max_bytes;
  GMutex lock;                       /* aia */
  GHashTable *aia;                   /* URL -> GBytes, known good */
};

/* ---- certfetch.c ---- */

struct nbd_fetch_opts {
  const char *cache_dir;
  unsigned timeout_s;
  size_t max_bytes;
  bool no_fetch;          /* cache only */
  const char *pin;        /* "sha256:HEX", or NULL */
  bool allow_http;        /* content is checked some other way (AIA) */
  const char *what;       /* "--tls-ca", for messages */
};

/* True for the URL schemes nbd_fetch() takes: https, http, file. */
bool nbd_fetch_is_url(const char *s);

/* The bytes at url (https://, file://, or http:// when allowed), at
 * most o->max_bytes, checked against o->pin, and cached: when the
 * network fails, a cached copy is used with a warning.  Returns 0 or a
 * negative errno with a message naming the URL and the cause. */
int nbd_fetch(const char *url, const struct nbd_fetch_opts *o,
              GBytes **out, GError **error);

/* Checks that pin reads "sha256:" and 64 hex digits. */
int nbd_fetch_check_pin(const char *pin, const char *what, GError **error);

/* Parses certificates in DER, PEM or PKCS#7 (DER or PEM).  Returns the
 * count (at least one) with *out a gnutls_malloc'ed array, or a
 * negative errno. */
int nbd_certs_parse(GBytes *data, gnutls_x509_crt_t **out, GError **error);
void nbd_certs_free(gnutls_x509_crt_t *list, unsigned n);

/* Completes chain (n certificates, leaf first, room for
 * NBD_TLS_MAX_FETCHED more) with intermediates from the AIA caIssuers
 * URL of its last certificate, remembered or fetched, until the chain
 * verifies.  Returns the new length with *status the verification
 * result of the longer chain, or 0 and a reason in why. */
unsigned nbd_aia_complete(struct nbd_tls_config *cfg,
                          gnutls_x509_crt_t *chain, unsigned n,
                          unsigned *status, GString *why);

/* ---- tls.c ---- */

/* Verifies chain against cfg's trust and hostname; returns the gnutls
 * status bits (0 when trusted). */
unsigned nbd_tls_verify_chain(struct nbd_tls_config *cfg,
                              gnutls_x509_crt_t *chain, unsigned n);

#endif /* NBDFS_TLS_INTERNAL_H */
