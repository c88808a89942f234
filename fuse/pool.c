/* nbdfs: the connections of one export.
 *
 * Several connections only when the server says they see each other's
 * writes (CAN_MULTI_CONN, O7) or the user insists; commands go round
 * the live ones in turn.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <inttypes.h>

#include "nbdfs.h"

#define DEFAULT_MULTI_CONN 4
#define MAX_CONNECTIONS 64

struct pool {
  struct nbd_conn **conns;
  unsigned n;
  unsigned next;            /* round-robin cursor, atomic */
  struct nbd_export_info info;
  char *name;
};

static void
conn_dead(struct nbd_conn *conn, int err, const char *why, void *user)
{
  struct pool *p = user;

  log_error("%s: connection lost: %s", p->name, why);
}

/* O7: a further connection must show the same export as the first. */
static int
check_same(struct pool *p, const struct nbd_export_info *in,
           GError **error)
{
  if (in->size != p->info.size || in->tflags != p->info.tflags ||
      in->min_block != p->info.min_block ||
      in->max_payload != p->info.max_payload)
    return nbd_set_error(error, EPROTO,
                         "connect: %s: connection %u reports a different "
                         "size or flags than the first (O7)",
                         p->name, p->n);
  return 0;
}

int
pool_open(const struct nbd_uri *uri, const struct nbd_handshake_opts *o,
          unsigned n, struct pool **out, GError **error)
{
  struct pool *p = g_new0(struct pool, 1);
  struct nbd_conn *c = NULL;
  int rc;

  p->name = nbd_uri_display(uri);
  rc = nbd_conn_connect(uri, o, &c, error);
  if (rc < 0)
    goto fail;

  p->info = *nbd_conn_info(c);
  p->info.name = g_strdup(p->info.name);
  p->info.description = g_strdup(p->info.description);

  /* O7: without CAN_MULTI_CONN one connection, unless the user asked
   * for more, knowing that caches are then not shared. */
  if (n == 0)
    n = p->info.tflags & NBD_FLAG_CAN_MULTI_CONN ? DEFAULT_MULTI_CONN : 1;
  n = MIN(n, MAX_CONNECTIONS);
  p->conns = g_new0(struct nbd_conn *, n);
  p->conns[p->n++] = c;
  nbd_conn_set_dead_cb(c, conn_dead, p);

  while (p->n < n) {
    rc = nbd_conn_connect(uri, o, &c, error);
    if (rc == 0) {
      rc = check_same(p, nbd_conn_info(c), error);
      if (rc < 0)
        nbd_conn_close(c, 1000);
    }
    if (rc < 0)
      goto fail;
    p->conns[p->n++] = c;
    nbd_conn_set_dead_cb(c, conn_dead, p);
  }

  *out = p;
  return 0;

fail:
  pool_close(p);
  return rc;
}

const struct nbd_export_info *
pool_info(const struct pool *p)
{
  return &p->info;
}

unsigned
pool_size(const struct pool *p)
{
  return p->n;
}

int
pool_submit(struct pool *p, struct nbd_cmd *cmd)
{
  unsigned start = g_atomic_int_add((gint *) &p->next, 1);
  int rc = -ENOTCONN;

  /* Round robin over the connections; a dead one refuses at once and
   * the next one is tried. */
  for (unsigned i = 0; i < p->n; i++) {
    rc = nbd_conn_submit(p->conns[(start + i) % p->n], cmd);
    if (rc != -ENOTCONN)
      return rc;
  }
  return rc == -ENOTCONN ? -EIO : rc;
}

int
pool_submit_on(struct pool *p, unsigned i, struct nbd_cmd *cmd)
{
  return nbd_conn_submit(p->conns[i], cmd);
}

void
pool_close(struct pool *p)
{
  if (p == NULL)
    return;
  for (unsigned i = 0; i < p->n; i++)
    nbd_conn_close(p->conns[i], 10000);
  nbd_export_info_clear(&p->info);
  g_free(p->conns);
  g_free(p->name);
  g_free(p);
}
