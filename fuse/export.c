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

  rc = pool_open(e->file_name, e->uri, &e->opts, e->connections,
                 &e->timeouts, &e->pool, error);
  if (rc < 0)
    goto out;

  nbd_export_info_clear(&e->info); /* from an earlier connect */
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
           "block sizes %" PRIu32 "/%" PRIu32 "/%" PRIu32 ", %s%s%s%s, "
           "flags %s",
           e->file_name, shown, e->info.size, pool_size(e->pool),
           e->info.min_block, e->info.pref_block, e->info.max_payload,
           e->info.tls ? "TLS " : "no TLS",
           e->info.tls && e->info.tls_version ? e->info.tls_version : "",
           e->info.tls ? " " : "",
           e->info.tls && e->info.tls_cipher ? e->info.tls_cipher : "",
           nbd_tflags_string(e->info.tflags, flags, sizeof flags));
out:
  g_mutex_unlock(&e->lock);
  return rc;
}

void
export_release(struct export *e)
{
  int err;

  g_mutex_lock(&e->lock);
  if (e->connected) {
    err = sched_drain(e->sched);
    if (err != 0)
      log_error("close: %s: final flush failed: %s", e->file_name,
                g_strerror(err));
    sched_free(e->sched);
    pool_close(e->pool);
    e->sched = NULL;
    e->pool = NULL;
    e->connected = false;
  }
  g_mutex_unlock(&e->lock);
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
