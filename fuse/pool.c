/* nbdfs: the connections of one export, and their reconnection.
 *
 * Several connections only when the server says they see each other's
 * writes (CAN_MULTI_CONN, O7) or the user insists; commands go round
 * the live ones in turn.
 *
 * A connection that dies hands its commands in flight back here instead
 * of failing them.  They wait, with any new command that finds no live
 * connection, until the keeper thread has connected again (capped
 * exponential backoff, the same TLS policy and credentials) and checked
 * that the export is still the same, and the scheduler has written its
 * unflushed writes again; then they are sent again.  Only when
 * the export stays unreachable longer than the reconnect timeout do they
 * fail with EIO.  The keeper also ends a connection whose oldest command
 * has waited longer than the request timeout, so that no request waits
 * for ever on a stalled server.
 *
 * A server may also accept every reconnection and then break the
 * protocol again on the same command.  So a command that has gone
 * without a good answer for longer than the reconnect timeout since its
 * connection was first lost fails with EIO however often the connection
 * came back, and a connection that dies young is retried after a
 * growing backoff, not at once: such a server costs a few attempts per
 * timeout, not a tight loop of connections and log lines.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <inttypes.h>

#include "nbdfs.h"

#define DEFAULT_MULTI_CONN 4
#define MAX_CONNECTIONS 64
#define SPREAD_MIN (256 * 1024)   /* commands this big rotate */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define TICK_MS 1000
#define STABLE_MS 2000            /* a connection that lived this long
                                   * resets the backoff when it dies */

struct slot {
  struct nbd_conn *conn;    /* NULL while down */
  struct nbd_conn *corpse;  /* a dead connection still to be freed */
  gint64 retry_at;          /* monotonic time of the next attempt */
  unsigned backoff_ms;
  gint64 up_since;          /* when conn was established */
};

struct pool {
  const struct nbd_uri *uri;
  const struct nbd_handshake_opts *opts;
  struct pool_timeouts timeouts;
  struct nbd_export_info info;
  char *name;
  unsigned n;
  unsigned next;            /* round-robin cursor, atomic */

  /* Submitters hold this for reading while they use a connection they
   * took from a slot; the keeper holds it for writing to free one. */
  GRWLock use;

  GMutex lock;              /* everything below */
  GCond wake;               /* for the keeper */
  struct slot *slots;
  GQueue pending;           /* struct nbd_cmd waiting for a connection */
  gint64 down_since;        /* when the last live connection died, or 0 */
  bool broken;              /* the export changed: fail everything */
  bool closing;
  bool replay_due;          /* a connection died since the last replay */
  unsigned reconnects;
  GThread *keeper;

  pool_replay_fn replay_fn;
  pool_lost_fn lost_fn;
  void *replay_user;
};

static void keeper_wake(struct pool *p);

/* O7: a further connection must show the same export as the first; so
 * must a reconnection (D9). */
static bool
same_export(const struct pool *p, const struct nbd_export_info *in)
{
  return in->size == p->info.size &&
         (in->tflags & NBD_FLAG_READ_ONLY) ==
           (p->info.tflags & NBD_FLAG_READ_ONLY) &&
         in->min_block == p->info.min_block &&
         in->max_payload == p->info.max_payload;
}

static unsigned
live_count(const struct pool *p)
{
  unsigned n = 0;

  for (unsigned i = 0; i < p->n; i++)
    n += p->slots[i].conn != NULL;
  return n;
}

/* Hands the commands in flight on a dying connection to the pending
 * queue.  Runs on the reader thread, which must not block on sending,
 * so the keeper sends them again. */
static void
conn_orphans(struct nbd_conn *conn, struct nbd_cmd **cmds, size_t n,
             void *user)
{
  struct pool *p = user;
  gint64 now = g_get_monotonic_time();

  g_mutex_lock(&p->lock);
  for (size_t i = 0; i < n; i++) {
    if (cmds[i]->lost_us == 0)
      cmds[i]->lost_us = now;
    g_queue_push_tail(&p->pending, cmds[i]);
  }
  g_mutex_unlock(&p->lock);
  log_info("%s: %zu request(s) will be sent again after reconnecting",
           p->name, n);
}

static void
conn_dead(struct nbd_conn *conn, int err, const char *why, void *user)
{
  struct pool *p = user;

  g_mutex_lock(&p->lock);
  for (unsigned i = 0; i < p->n; i++) {
    struct slot *s = &p->slots[i];

    if (s->conn == conn) {
      gint64 now = g_get_monotonic_time();

      s->conn = NULL;
      s->corpse = conn;

      /* A connection that served a while earns an immediate retry; one
       * that died young (a server that breaks a rule on every
       * connection) waits, longer each time. */
      if (now - s->up_since >= STABLE_MS * G_TIME_SPAN_MILLISECOND) {
        s->retry_at = now;
        s->backoff_ms = BACKOFF_MIN_MS;
      } else {
        s->backoff_ms = CLAMP(s->backoff_ms, BACKOFF_MIN_MS,
                              BACKOFF_MAX_MS);
        s->retry_at = now + s->backoff_ms * G_TIME_SPAN_MILLISECOND;
        s->backoff_ms = MIN(s->backoff_ms * 2, BACKOFF_MAX_MS);
      }
    }
  }
  if (live_count(p) == 0 && p->down_since == 0)
    p->down_since = g_get_monotonic_time();
  p->replay_due = p->replay_fn != NULL;
  g_mutex_unlock(&p->lock);

  log_error("%s: connection lost: %s; reconnecting", p->name, why);
  if (p->lost_fn != NULL)
    p->lost_fn(p->replay_user);
  keeper_wake(p);
}

static void
adopt(struct pool *p, struct nbd_conn *c)
{
  nbd_conn_set_orphans_cb(c, conn_orphans, p);
  nbd_conn_set_dead_cb(c, conn_dead, p);
}

/* Fails every pending command with EIO.  Called without p->lock.
 * Returns how many there were. */
static unsigned
fail_pending(struct pool *p)
{
  GQueue q = G_QUEUE_INIT;
  struct nbd_cmd *cmd;
  unsigned n;

  g_mutex_lock(&p->lock);
  q = p->pending;
  g_queue_init(&p->pending);
  g_mutex_unlock(&p->lock);

  n = q.length;
  while ((cmd = g_queue_pop_head(&q)) != NULL)
    cmd->done(cmd, EIO);
  return n;
}

/* Fails with EIO the pending commands that lost a connection longer
 * than the reconnect timeout ago: whatever the connections do, those
 * have waited long enough (D9).  Called without p->lock. */
static void
fail_expired(struct pool *p)
{
  gint64 limit = (gint64) p->timeouts.reconnect_ms * 1000;
  gint64 now = g_get_monotonic_time();
  GQueue q = G_QUEUE_INIT;
  struct nbd_cmd *cmd;
  GList *l, *next;

  g_mutex_lock(&p->lock);
  for (l = p->pending.head; l != NULL; l = next) {
    next = l->next;
    cmd = l->data;
    if (cmd->lost_us != 0 && now - cmd->lost_us > limit) {
      g_queue_unlink(&p->pending, l);
      g_queue_push_tail_link(&q, l);
    }
  }
  g_mutex_unlock(&p->lock);

  if (q.length > 0)
    log_error("%s: %u request(s) got no valid reply within %u s of "
              "losing their connection (--reconnect-timeout); failing "
              "them", p->name, q.length, p->timeouts.reconnect_ms / 1000);
  while ((cmd = g_queue_pop_head(&q)) != NULL)
    cmd->done(cmd, EIO);
}

/* Sends cmd on a live connection.  Returns 0 when sent, or -ENOTCONN
 * when no connection took it.
 *
 * Small commands all go to the first live connection: the loop's batch
 * then leaves in one write and its replies come back to one reader
 * thread, which on 2 cores gave a third more 4 KiB reads per second
 * than rotating over four.  Large ones rotate, so that the reader
 * threads copy their payloads in parallel. */
static int
send_any(struct pool *p, struct nbd_cmd *cmd)
{
  unsigned start = cmd->count >= SPREAD_MIN
                     ? (unsigned) g_atomic_int_add((gint *) &p->next, 1)
                     : 0;
  int rc = -ENOTCONN;

  g_rw_lock_reader_lock(&p->use);
  for (unsigned i = 0; i < p->n && rc == -ENOTCONN; i++) {
    struct nbd_conn *c;

    g_mutex_lock(&p->lock);
    c = p->slots[(start + i) % p->n].conn;
    g_mutex_unlock(&p->lock);
    if (c != NULL)
      rc = nbd_conn_submit(c, cmd);
  }
  g_rw_lock_reader_unlock(&p->use);
  return rc;
}

/* Sends the pending commands again on the live connections, save those
 * that have waited too long. */
static void
resend_pending(struct pool *p)
{
  fail_expired(p);
  for (;;) {
    struct nbd_cmd *cmd;
    int rc;

    g_mutex_lock(&p->lock);
    cmd = live_count(p) > 0 ? g_queue_pop_head(&p->pending) : NULL;
    g_mutex_unlock(&p->lock);
    if (cmd == NULL)
      return;

    rc = send_any(p, cmd);
    if (rc == -ENOTCONN) {
      g_mutex_lock(&p->lock);
      g_queue_push_head(&p->pending, cmd);
      g_mutex_unlock(&p->lock);
      return;
    }
    if (rc < 0)
      cmd->done(cmd, -rc);
  }
}

/* One attempt to bring slot i back.  Called without p->lock. */
static void
reconnect(struct pool *p, unsigned i)
{
  g_autoptr(GError) error = NULL;
  struct slot *s = &p->slots[i];
  struct nbd_conn *c = NULL;
  bool replay_due;

  if (nbd_conn_connect(p->uri, p->opts, &c, &error) < 0) {
    bool first;

    g_mutex_lock(&p->lock);
    first = s->backoff_ms == BACKOFF_MIN_MS;
    s->retry_at = g_get_monotonic_time() + s->backoff_ms * 1000;
    s->backoff_ms = MIN(s->backoff_ms * 2, BACKOFF_MAX_MS);
    g_mutex_unlock(&p->lock);

    /* One line per outage with -v; every attempt with -d. */
    if (first)
      log_info("%s: reconnect failed: %s; retrying", p->name,
               error->message);
    else
      log_debug("%s: reconnect failed: %s", p->name, error->message);
    return;
  }

  if (!same_export(p, nbd_conn_info(c))) {
    log_error("%s: the export changed while reconnecting (size %" PRIu64
              " is now %" PRIu64 ", or its flags or block sizes "
              "differ); failing its I/O", p->name, p->info.size,
              nbd_conn_info(c)->size);
    nbd_conn_close(c, 1000);
    g_mutex_lock(&p->lock);
    p->broken = true;
    g_mutex_unlock(&p->lock);
    fail_pending(p);
    return;
  }

  /* The first connection back writes the unflushed writes again before
   * it is installed, so nothing else can overtake them. */
  g_mutex_lock(&p->lock);
  replay_due = p->replay_due;
  g_mutex_unlock(&p->lock);
  if (replay_due) {
    int rc = p->replay_fn(c, p->replay_user);

    if (rc < 0) {
      log_info("%s: writing unflushed data again failed: %s; retrying",
               p->name, g_strerror(-rc));
      nbd_conn_close(c, 1000);
      return;
    }
  }

  adopt(p, c);
  g_mutex_lock(&p->lock);
  s->conn = c;
  s->up_since = g_get_monotonic_time();
  p->down_since = 0;
  if (replay_due)
    p->replay_due = false;
  p->reconnects++;
  g_mutex_unlock(&p->lock);
  log_info("%s: reconnected (connection %u)", p->name, i + 1);
  resend_pending(p);
}

/* A connection whose oldest command is older than the request timeout
 * is treated as dead: it is ended, and its commands go elsewhere. */
static void
watch_requests(struct pool *p)
{
  gint64 now = g_get_monotonic_time();
  gint64 limit = (gint64) p->timeouts.request_ms * 1000;

  if (limit == 0)
    return;
  g_mutex_lock(&p->lock);
  for (unsigned i = 0; i < p->n; i++) {
    struct nbd_conn *c = p->slots[i].conn;
    gint64 oldest = c ? nbd_conn_oldest_us(c) : 0;

    if (oldest != 0 && now - oldest > limit) {
      g_autofree char *why = g_strdup_printf(
        "no reply within %u s (--request-timeout)",
        p->timeouts.request_ms / 1000);

      nbd_conn_abort(c, why);
    }
  }
  g_mutex_unlock(&p->lock);
}

static gpointer
keeper_main(gpointer opaque)
{
  struct pool *p = opaque;

  g_mutex_lock(&p->lock);
  while (!p->closing) {
    gint64 now = g_get_monotonic_time();
    gint64 wake_at = now + TICK_MS * 1000;
    bool give_up;

    for (unsigned i = 0; i < p->n && !p->closing; i++) {
      struct slot *s = &p->slots[i];
      struct nbd_conn *corpse = s->corpse;

      s->corpse = NULL;
      if (corpse != NULL) {
        /* Its reader thread is ending; free it once no submitter still
         * holds it.  The other connections go down too when there is a
         * log to replay: the replay must run with nothing in flight. */
        g_mutex_unlock(&p->lock);
        g_rw_lock_writer_lock(&p->use);
        nbd_conn_close(corpse, 0);
        g_rw_lock_writer_unlock(&p->use);
        g_mutex_lock(&p->lock);
        if (p->replay_due)
          for (unsigned j = 0; j < p->n; j++)
            if (p->slots[j].conn != NULL)
              nbd_conn_abort(p->slots[j].conn,
                             "another connection was lost; starting "
                             "over to replay unflushed writes");
      }
      if (s->conn != NULL || p->broken)
        continue;
      if (s->retry_at > now) {
        wake_at = MIN(wake_at, s->retry_at);
        continue;
      }
      g_mutex_unlock(&p->lock);
      reconnect(p, i);
      g_mutex_lock(&p->lock);
    }

    /* Past the reconnect timeout the waiting commands fail; new ones
     * fail at once in pool_submit until a connection is back. */
    give_up = p->broken ||
              (p->down_since != 0 &&
               g_get_monotonic_time() - p->down_since >
                 (gint64) p->timeouts.reconnect_ms * 1000);
    g_mutex_unlock(&p->lock);
    if (give_up) {
      unsigned n = fail_pending(p);

      if (n > 0 && !p->broken)
        log_error("%s: %u request(s) failed: no connection for %u s "
                  "(--reconnect-timeout)", p->name, n,
                  p->timeouts.reconnect_ms / 1000);
    } else {
      resend_pending(p);
    }
    watch_requests(p);
    g_mutex_lock(&p->lock);

    if (!p->closing)
      g_cond_wait_until(&p->wake, &p->lock, wake_at);
  }
  g_mutex_unlock(&p->lock);
  return NULL;
}

static void
keeper_wake(struct pool *p)
{
  g_mutex_lock(&p->lock);
  g_cond_signal(&p->wake);
  g_mutex_unlock(&p->lock);
}

int
pool_open(const char *name, const struct nbd_uri *uri,
          const struct nbd_handshake_opts *o, unsigned n,
          const struct pool_timeouts *t, struct pool **out, GError **error)
{
  struct pool *p = g_new0(struct pool, 1);
  struct nbd_conn *c = NULL;
  int rc;

  p->uri = uri;
  p->opts = o;
  p->timeouts = *t;
  p->name = g_strdup(name);
  g_rw_lock_init(&p->use);
  g_mutex_init(&p->lock);
  g_cond_init(&p->wake);
  g_queue_init(&p->pending);

  rc = nbd_conn_connect(uri, o, &c, error);
  if (rc < 0)
    goto fail;
  p->info = *nbd_conn_info(c);
  p->info.name = g_strdup(p->info.name);
  p->info.description = g_strdup(p->info.description);
  p->info.tls_version = g_strdup(p->info.tls_version);
  p->info.tls_cipher = g_strdup(p->info.tls_cipher);
  p->info.tls_peer = g_strdup(p->info.tls_peer);

  /* O7: without CAN_MULTI_CONN one connection, unless the user asked
   * for more, knowing that caches are then not shared. */
  if (n == 0)
    n = p->info.tflags & NBD_FLAG_CAN_MULTI_CONN ? DEFAULT_MULTI_CONN : 1;
  n = MIN(n, MAX_CONNECTIONS);
  p->slots = g_new0(struct slot, n);
  p->slots[p->n].up_since = g_get_monotonic_time();
  p->slots[p->n++].conn = c;
  adopt(p, c);

  while (p->n < n) {
    rc = nbd_conn_connect(uri, o, &c, error);
    if (rc == 0 && !same_export(p, nbd_conn_info(c))) {
      rc = nbd_set_error(error, EPROTO,
                         "connect: %s: connection %u reports a different "
                         "size or flags than the first (O7)",
                         p->name, p->n + 1);
      nbd_conn_close(c, 1000);
    }
    if (rc < 0)
      goto fail;
    p->slots[p->n].up_since = g_get_monotonic_time();
    p->slots[p->n++].conn = c;
    adopt(p, c);
  }

  p->keeper = g_thread_new("nbd-keeper", keeper_main, p);
  *out = p;
  return 0;

fail:
  pool_close(p);
  return rc;
}

void
pool_set_replay(struct pool *p, pool_replay_fn replay, pool_lost_fn lost,
                void *user)
{
  g_mutex_lock(&p->lock);
  p->replay_fn = replay;
  p->lost_fn = lost;
  p->replay_user = user;
  g_mutex_unlock(&p->lock);
}

const struct nbd_export_info *
pool_info(const struct pool *p)
{
  return &p->info;
}

unsigned
pool_reconnects(struct pool *p)
{
  unsigned n;

  g_mutex_lock(&p->lock);
  n = p->reconnects;
  g_mutex_unlock(&p->lock);
  return n;
}

unsigned
pool_size(const struct pool *p)
{
  return p->n;
}

/* Queues cmd for the keeper when no connection is live but the export
 * may come back.  Returns 0 when queued, -EIO when it will not. */
static int
wait_for_connection(struct pool *p, struct nbd_cmd *cmd)
{
  bool queued = false;

  g_mutex_lock(&p->lock);
  if (!p->broken && !p->closing &&
      (p->down_since == 0 ||
       g_get_monotonic_time() - p->down_since <=
         (gint64) p->timeouts.reconnect_ms * 1000)) {
    g_queue_push_tail(&p->pending, cmd);
    queued = true;
  }
  g_mutex_unlock(&p->lock);
  return queued ? 0 : -EIO;
}

int
pool_submit(struct pool *p, struct nbd_cmd *cmd)
{
  int rc = send_any(p, cmd);

  if (rc == -ENOTCONN)
    rc = wait_for_connection(p, cmd);
  return rc;
}

int
pool_submit_on(struct pool *p, unsigned i, struct nbd_cmd *cmd)
{
  struct nbd_conn *c;
  int rc = -ENOTCONN;

  g_rw_lock_reader_lock(&p->use);
  g_mutex_lock(&p->lock);
  c = p->slots[i].conn;
  g_mutex_unlock(&p->lock);
  if (c != NULL)
    rc = nbd_conn_submit(c, cmd);
  g_rw_lock_reader_unlock(&p->use);

  /* A FLUSH meant for a connection that died covers nothing there any
   * more; any live connection will do for the writes that remain. */
  return rc == -ENOTCONN ? pool_submit(p, cmd) : rc;
}

void
pool_close(struct pool *p)
{
  if (p == NULL)
    return;

  g_mutex_lock(&p->lock);
  p->closing = true;
  g_cond_signal(&p->wake);
  g_mutex_unlock(&p->lock);
  if (p->keeper != NULL)
    g_thread_join(p->keeper);
  fail_pending(p);

  for (unsigned i = 0; i < p->n; i++) {
    /* Closing fails nothing: the scheduler has drained. */
    if (p->slots[i].conn != NULL)
      nbd_conn_set_orphans_cb(p->slots[i].conn, NULL, NULL);
    nbd_conn_close(p->slots[i].conn, 10000);
    nbd_conn_close(p->slots[i].corpse, 0);
  }
  nbd_export_info_clear(&p->info);
  g_free(p->slots);
  g_free(p->name);
  g_rw_lock_clear(&p->use);
  g_mutex_clear(&p->lock);
  g_cond_clear(&p->wake);
  g_free(p);
}
