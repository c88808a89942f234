/* nbdfs: one export shown as one file: its pool and scheduler.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <inttypes.h>

#include "nbdfs.h"

int
export_connect(struct export *e, GError **error)
{
  g_autofree char *shown = NULL;
  char flags[256];
  int rc = 0;

  g_mutex_lock(&e->lock);
  if (e->connected)
    goto out;

  rc = pool_open(e->uri, &e->opts, e->connections, &e->timeouts, &e->pool,
                 error);
  if (rc < 0)
    goto out;

  e->info = *pool_info(e->pool);
  e->info.name = g_strdup(e->info.name);
  e->info.description = g_strdup(e->info.description);
  e->info.tls_version = g_strdup(e->info.tls_version);
  e->info.tls_cipher = g_strdup(e->info.tls_cipher);
  e->info.tls_peer = g_strdup(e->info.tls_peer);
  if (e->info.tflags & NBD_FLAG_READ_ONLY)
    e->readonly = true;
  shown = nbd_uri_display(e->uri);
  e->sched = sched_new(e->pool, e->file_name, e->replay_limit);
  e->connected = true;

  log_info("%s: connected to %s: %" PRIu64 " bytes, %u connection(s), "
           "block sizes %" PRIu32 "/%" PRIu32 "/%" PRIu32 ", flags %s",
           e->file_name, shown, e->info.size, pool_size(e->pool),
           e->info.min_block, e->info.pref_block, e->info.max_payload,
           nbd_tflags_string(e->info.tflags, flags, sizeof flags));
out:
  g_mutex_unlock(&e->lock);
  return rc;
}

void
export_free(struct export *e)
{
  if (e == NULL)
    return;
  sched_free(e->sched);
  pool_close(e->pool);
  nbd_export_info_clear(&e->info);
  nbd_tls_config_free(e->opts.tls_config);
  nbd_uri_free(e->uri);
  g_free(e->file_name);
  g_free(e->list_description);
  g_mutex_clear(&e->lock);
  g_free(e);
}
