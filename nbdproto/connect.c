/* nbdfs: connect to a URI and negotiate, with the one retry the TLS
 * policy allows.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>

#include "internal.h"

/* A server that accepts and then says nothing must not hold the caller
 * (a mount, an open of --all) for ever. */
#define HANDSHAKE_TIMEOUT_MS 30000

/* Old qemu (2.5) hung up on STARTTLS instead of refusing it.  Only a
 * user who said TLS is merely preferred gets a second, plaintext
 * attempt; under require the hang-up is final (T5, T14).  The decision
 * concerns this attempt only: the next connection asks again (T13). */
static bool
may_retry_plain(const struct nbd_handshake_opts *o, bool dropped,
                GError **error, struct nbd_handshake_opts *plain)
{
  if (!dropped || o->tls != NBD_TLS_PREFER)
    return false;

  nbd_log(NBD_LOG_WARNING, "%s; trying once more without TLS "
          "(--tls=prefer)", error && *error ? (*error)->message
                                            : "tls: STARTTLS failed");
  if (error != NULL)
    g_clear_error(error);
  *plain = *o;
  plain->tls = NBD_TLS_OFF;
  return true;
}

int
nbd_connect_go(const struct nbd_uri *uri, const struct nbd_handshake_opts *o,
               struct nbd_transport **t, struct nbd_export_info *info,
               GError **error)
{
  struct nbd_handshake_opts plain;
  bool dropped = false;
  int rc;

  for (int attempt = 0; attempt < 2; attempt++) {
    rc = nbd_transport_connect(uri, t, error);
    if (rc < 0)
      return rc;

    nbd_transport_set_timeout(*t, HANDSHAKE_TIMEOUT_MS);
    rc = nbd_handshake_go_ex(*t, o, info, &dropped, error);
    if (rc == 0) {
      nbd_transport_set_timeout(*t, 0);
      return 0;
    }
    nbd_transport_free(*t);
    *t = NULL;
    if (attempt > 0 || !may_retry_plain(o, dropped, error, &plain))
      break;
    o = &plain;
  }
  return rc;
}

int
nbd_connect_list(const struct nbd_uri *uri,
                 const struct nbd_handshake_opts *o, size_t max_entries,
                 GPtrArray **out, GError **error)
{
  struct nbd_handshake_opts plain;
  struct nbd_transport *t = NULL;
  bool dropped = false;
  int rc;

  for (int attempt = 0; attempt < 2; attempt++) {
    rc = nbd_transport_connect(uri, &t, error);
    if (rc < 0)
      return rc;

    nbd_transport_set_timeout(t, HANDSHAKE_TIMEOUT_MS);
    rc = nbd_handshake_list_ex(t, o, max_entries, out, &dropped, error);
    nbd_transport_free(t);
    t = NULL;
    if (rc == 0 || attempt > 0 ||
        !may_retry_plain(o, dropped, error, &plain))
      break;
    o = &plain;
  }
  return rc;
}
