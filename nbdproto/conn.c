/* nbdfs: one connection in the transmission phase.
 *
 * Submitters write each request (header and payload in one writev) under
 * the send lock and return at once; a reader thread parses replies in
 * whatever order the server sends them and completes each command from
 * there.  The in-flight table maps cookies to commands.
 *
 * A thread that is corked (nbd_cork) queues its requests instead and
 * writes them together when it uncorks: one writev carries a batch, so
 * the server wakes once for it rather than once per request.  A batch
 * that carries a large payload goes to the connection's writer thread
 * instead, so that the thread which uncorked (the FUSE loop) reads the
 * next request while the payload is copied into the socket.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <inttypes.h>
#include <limits.h>

#include "reply.h"

void (*nbd_trace_hook)(const char *line);

struct nbd_conn {
  struct nbd_transport *t;
  struct nbd_export_info info;
  struct nbd_reply_parser parser;
  GThread *reader;

  GMutex send_lock;        /* one request on the wire at a time */
  GThread *writer;         /* writes handed-off batches; started lazily */
  GAsyncQueue *handoffs;   /* struct handoff, for the writer */

  GMutex lock;             /* everything below */
  GCond cond;              /* in-flight drained, reader exited */
  GHashTable *inflight;    /* cookie -> struct nbd_cmd */
  uint64_t next_cookie;
  bool dead;               /* no new commands; reader ends or ended */
  bool closing;            /* NBD_CMD_DISC sent or about to be */
  bool reader_done;
  unsigned corked;         /* queued by corked threads, not yet written */
  unsigned handed;         /* batches handed to the writer, not written */
  char *death;

  nbd_conn_dead_fn dead_fn;
  void *dead_user;
  nbd_conn_orphans_fn orphans_fn;
  void *orphans_user;
};

static struct nbd_cmd *
lookup(void *opaque, uint64_t cookie)
{
  struct nbd_conn *c = opaque;
  struct nbd_cmd *cmd;

  g_mutex_lock(&c->lock);
  cmd = g_hash_table_lookup(c->inflight, &cookie);
  g_mutex_unlock(&c->lock);
  return cmd;
}

static void
trace(struct nbd_conn *c, struct nbd_cmd *cmd, int err)
{
  g_autofree char *line = NULL;
  gint64 us = g_get_monotonic_time() - cmd->priv.start_us;

  line = g_strdup_printf("%s: %s off=%" PRIu64 " len=%" PRIu32
                         " -> %s %" G_GINT64_FORMAT "us",
                         c->t->name, nbd_cmd_name(cmd->type), cmd->offset,
                         cmd->count, err ? g_strerror(err) : "ok", us);
  nbd_trace_hook(line);
}

static void conn_die(struct nbd_conn *c, const char *why);

/* A corked batch with this much payload goes to the writer thread. */
#define HANDOFF_BYTES (128 * 1024)

/* A reply can overtake the writev that sent its request: the server
 * answers as soon as it has read the bytes, before sendmsg() returns
 * here.  Completing then would free the buffer under the writer, so
 * such a command is parked, and the submitter completes it when its
 * write is done.  Returns whether cmd was parked.  Called with c->lock
 * held. */
static bool
park(struct nbd_cmd *cmd, int err, bool orphan)
{
  if (!cmd->priv.sending)
    return false;
  cmd->priv.parked = true;
  cmd->priv.parked_err = err;
  cmd->priv.parked_orphan = orphan;
  return true;
}

/* Removes cmd from the table and completes it. */
static void
retire(void *opaque, struct nbd_cmd *cmd, int err)
{
  struct nbd_conn *c = opaque;

  /* D7: the server is going away.  With someone to take over orphans,
   * the command is not failed: it stays in the table, the connection
   * ends, and the command goes to the orphan handler with the rest. */
  if (err == ESHUTDOWN && c->orphans_fn != NULL) {
    conn_die(c, "the server is shutting down (NBD_ESHUTDOWN)");
    return;
  }

  nbd_reply_cmd_reset(cmd);
  if (nbd_trace_hook != NULL)
    trace(c, cmd, err);

  /* Only nbd_conn_close waits on c->cond, and it sets closing first:
   * a broadcast costs a system call even with no one waiting. */
  g_mutex_lock(&c->lock);
  g_hash_table_remove(c->inflight, &cmd->priv.cookie);
  if (c->closing && g_hash_table_size(c->inflight) == 0)
    g_cond_broadcast(&c->cond);
  if (park(cmd, err, false)) {
    g_mutex_unlock(&c->lock);
    return;
  }
  g_mutex_unlock(&c->lock);
  cmd->done(cmd, err);
}

/* Marks the connection dead with a reason and wakes the reader.  The
 * reader fails what is in flight. */
static void
conn_die(struct nbd_conn *c, const char *why)
{
  g_mutex_lock(&c->lock);
  if (!c->dead) {
    c->dead = true;
    c->death = g_strdup(why);
  }
  g_mutex_unlock(&c->lock);
  nbd_transport_shutdown(c->t);
}

/* Fails every command in flight with EIO (D9), or hands them to the
 * orphan handler.  Runs once, on the reader thread, after the
 * connection died. */
static void
fail_all(struct nbd_conn *c)
{
  GPtrArray *cmds = g_ptr_array_new();
  GHashTableIter it;
  gpointer value;

  g_mutex_lock(&c->lock);
  g_hash_table_iter_init(&it, c->inflight);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    struct nbd_cmd *cmd = value;

    nbd_reply_cmd_reset(cmd);
    g_clear_pointer(&cmd->extents, g_free);
    cmd->n_extents = 0;
    if (!park(cmd, EIO, c->orphans_fn != NULL))
      g_ptr_array_add(cmds, cmd);
  }
  g_hash_table_remove_all(c->inflight);
  g_cond_broadcast(&c->cond);
  g_mutex_unlock(&c->lock);

  for (guint i = 0; i < cmds->len && c->orphans_fn == NULL; i++) {
    struct nbd_cmd *cmd = cmds->pdata[i];

    cmd->done(cmd, EIO);
  }
  if (c->orphans_fn != NULL && cmds->len > 0)
    c->orphans_fn(c, (struct nbd_cmd **) cmds->pdata, cmds->len,
                  c->orphans_user);
  g_ptr_array_free(cmds, TRUE);
}

static gpointer
reader_main(gpointer opaque)
{
  struct nbd_conn *c = opaque;
  GError *error = NULL;
  bool expected;
  int rc;

  do
    rc = nbd_reply_parse_one(&c->parser, &error);
  while (rc == 0);

  /* D6: after NBD_CMD_DISC the server closes; that end is expected. */
  g_mutex_lock(&c->lock);
  expected = c->closing && rc == -ECONNRESET;
  g_mutex_unlock(&c->lock);
  conn_die(c, expected ? "closed" : error->message);
  fail_all(c);

  if (!expected && c->dead_fn != NULL)
    c->dead_fn(c, -rc, c->death, c->dead_user);
  g_clear_error(&error);

  g_mutex_lock(&c->lock);
  c->reader_done = true;
  g_cond_broadcast(&c->cond);
  g_mutex_unlock(&c->lock);
  return NULL;
}

struct nbd_conn *
nbd_conn_new(struct nbd_transport *t, struct nbd_export_info *info)
{
  struct nbd_conn *c = g_new0(struct nbd_conn, 1);

  c->t = t;
  c->info = *info;
  memset(info, 0, sizeof *info); /* the strings move to c */
  g_mutex_init(&c->lock);
  g_mutex_init(&c->send_lock);
  g_cond_init(&c->cond);
  c->inflight = g_hash_table_new(g_int64_hash, g_int64_equal);
  c->next_cookie = 1;
  nbd_reply_parser_init(&c->parser, t, &c->info);
  c->parser.lookup = lookup;
  c->parser.retire = retire;
  c->parser.opaque = c;
  c->reader = g_thread_new("nbd-reader", reader_main, c);
  return c;
}

int
nbd_conn_connect(const struct nbd_uri *uri, const struct nbd_handshake_opts *o,
                 struct nbd_conn **out, GError **error)
{
  struct nbd_transport *t = NULL;
  struct nbd_export_info info;
  int rc;

  /* nbd_connect_go() bounds the handshake in time (HANDSHAKE_TIMEOUT_MS
   * there) and makes the one plaintext retry that --tls=prefer allows
   * a server that hangs up on STARTTLS. */
  rc = nbd_connect_go(uri, o, &t, &info, error);
  if (rc < 0)
    return rc;
  *out = nbd_conn_new(t, &info);
  return 0;
}

void
nbd_conn_set_dead_cb(struct nbd_conn *conn, nbd_conn_dead_fn fn, void *user)
{
  g_mutex_lock(&conn->lock);
  conn->dead_fn = fn;
  conn->dead_user = user;
  g_mutex_unlock(&conn->lock);
}

void
nbd_conn_set_orphans_cb(struct nbd_conn *conn, nbd_conn_orphans_fn fn,
                        void *user)
{
  g_mutex_lock(&conn->lock);
  conn->orphans_fn = fn;
  conn->orphans_user = user;
  g_mutex_unlock(&conn->lock);
}

void
nbd_conn_abort(struct nbd_conn *conn, const char *why)
{
  conn_die(conn, why);
}

gint64
nbd_conn_oldest_us(struct nbd_conn *conn)
{
  GHashTableIter it;
  gpointer value;
  gint64 oldest = 0;

  g_mutex_lock(&conn->lock);
  g_hash_table_iter_init(&it, conn->inflight);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    struct nbd_cmd *cmd = value;

    if (oldest == 0 || cmd->priv.start_us < oldest)
      oldest = cmd->priv.start_us;
  }
  g_mutex_unlock(&conn->lock);
  return oldest;
}

const struct nbd_export_info *
nbd_conn_info(const struct nbd_conn *conn)
{
  return &conn->info;
}

/* Checks cmd against what was negotiated (S7, S9, X7, X11..X13, O9).
 * Returns 0 or a negative errno. */
static int
check_cmd(const struct nbd_export_info *in, const struct nbd_cmd *cmd)
{
  uint16_t f = in->tflags;
  uint16_t allowed = 0;
  bool ranged = true;

  switch (cmd->type) {
    case NBD_CMD_READ:
      if (f & NBD_FLAG_SEND_DF)
        allowed |= NBD_CMD_FLAG_DF;
      if (cmd->count > in->max_payload)
        return -EINVAL;
      break;
    case NBD_CMD_WRITE:
      if (cmd->count > in->max_payload)
        return -EINVAL;
      /* fall through */
    case NBD_CMD_TRIM:
    case NBD_CMD_WRITE_ZEROES:
      if (f & NBD_FLAG_READ_ONLY)
        return -EROFS;
      if (cmd->type == NBD_CMD_TRIM && !(f & NBD_FLAG_SEND_TRIM))
        return -EOPNOTSUPP;
      if (cmd->type == NBD_CMD_WRITE_ZEROES) {
        if (!(f & NBD_FLAG_SEND_WRITE_ZEROES))
          return -EOPNOTSUPP;
        allowed |= NBD_CMD_FLAG_NO_HOLE;
        if (f & NBD_FLAG_SEND_FAST_ZERO)
          allowed |= NBD_CMD_FLAG_FAST_ZERO;
      }
      if (f & NBD_FLAG_SEND_FUA)
        allowed |= NBD_CMD_FLAG_FUA;
      break;
    case NBD_CMD_FLUSH:
      if (!(f & NBD_FLAG_SEND_FLUSH))
        return -EOPNOTSUPP;
      ranged = false;
      break;
    case NBD_CMD_CACHE:
      if (!(f & NBD_FLAG_SEND_CACHE))
        return -EOPNOTSUPP;
      break;
    case NBD_CMD_BLOCK_STATUS:
      if (!in->block_status)
        return -EOPNOTSUPP;
      allowed |= NBD_CMD_FLAG_REQ_ONE;
      break;
    default:
      return -EINVAL; /* X12e; DISC goes through nbd_conn_close */
  }

  if (cmd->flags & ~allowed)
    return -EINVAL;
  if (!ranged)
    return cmd->offset == 0 && cmd->count == 0 ? 0 : -EINVAL;

  /* S7: aligned to the minimum block, inside the export, not empty. */
  if (cmd->count == 0 || cmd->offset % in->min_block != 0 ||
      cmd->count % in->min_block != 0)
    return -EINVAL;
  if (cmd->offset > in->size || cmd->count > in->size - cmd->offset)
    return cmd->type == NBD_CMD_WRITE ? -ENOSPC : -EINVAL;
  return 0;
}

/* One request that a corked thread has queued. */
struct corked {
  struct nbd_conn *c;
  struct nbd_cmd *cmd;
  struct nbd_request req;
};

/* This thread's queue, or NULL when it is not corked. */
static __thread GArray *cork;

void
nbd_cork(void)
{
  if (cork == NULL)
    cork = g_array_new(FALSE, FALSE, sizeof(struct corked));
}

static void
request_encode(struct nbd_request *req, const struct nbd_cmd *cmd)
{
  req->magic = htobe32(NBD_REQUEST_MAGIC);
  req->flags = htobe16(cmd->flags);
  req->type = htobe16(cmd->type);
  req->cookie = htobe64(cmd->priv.cookie);
  req->offset = htobe64(cmd->offset);
  req->count = htobe32(cmd->count);
}

/* The write of cmd is over: from here a reply may complete it.  If one
 * already tried, it was parked (park), and completing is our job. */
static void
sent(struct nbd_conn *c, struct nbd_cmd *cmd)
{
  bool parked;

  g_mutex_lock(&c->lock);
  cmd->priv.sending = false;
  parked = cmd->priv.parked;
  g_mutex_unlock(&c->lock);
  if (parked && cmd->priv.parked_orphan)
    c->orphans_fn(c, &cmd, 1, c->orphans_user);
  else if (parked)
    cmd->done(cmd, cmd->priv.parked_err);
}

/* Writes the queued requests of q[0..n), all for connection c, in as
 * few writevs as IOV_MAX allows. */
static void
write_batch(struct nbd_conn *c, struct corked **q, guint n)
{
  struct iovec iov[MIN(IOV_MAX, 1024)];
  GError *error = NULL;
  guint done = 0;

  while (done < n) {
    int cnt = 0;
    guint end = done;

    while (end < n && cnt + 2 <= (int) G_N_ELEMENTS(iov)) {
      struct corked *k = q[end++];

      iov[cnt].iov_base = &k->req;
      iov[cnt++].iov_len = sizeof k->req;
      if (k->cmd->type == NBD_CMD_WRITE) {
        iov[cnt].iov_base = k->cmd->buf;
        iov[cnt++].iov_len = k->cmd->count;
      }
    }

    /* After a failed write the connection is dead: the reader fails
     * what is in flight, and the rest of the batch goes nowhere. */
    if (error == NULL) {
      g_mutex_lock(&c->send_lock);
      if (nbd_transport_writev(c->t, iov, cnt, &error) < 0)
        conn_die(c, error->message);
      g_mutex_unlock(&c->send_lock);
    }
    for (; done < end; done++)
      sent(c, q[done]->cmd);
  }
  g_clear_error(&error);

  /* The last touch of c: nbd_conn_close waits for this count. */
  g_mutex_lock(&c->lock);
  c->corked -= n;
  if (c->closing && c->corked == 0)
    g_cond_broadcast(&c->cond);
  g_mutex_unlock(&c->lock);
}

/* A batch for the writer thread: its own copy of the queued requests,
 * since the corked thread's queue is freed when it uncorks. */
struct handoff {
  guint n;
  struct corked *ptr[];    /* each points into the array that follows */
};

/* Ends the writer; never a real handoff. */
static struct handoff writer_stop;

static gpointer
writer_main(gpointer opaque)
{
  struct nbd_conn *c = opaque;
  struct handoff *h;

  while ((h = g_async_queue_pop(c->handoffs)) != &writer_stop) {
    write_batch(c, h->ptr, h->n);
    g_free(h);

    /* nbd_conn_close joins this thread before it frees c. */
    g_mutex_lock(&c->lock);
    c->handed--;
    g_mutex_unlock(&c->lock);
  }
  return NULL;
}

/* Whether the batch q[0..n) for c goes to its writer thread: when its
 * payload is large enough that copying it into the socket is worth
 * another thread's time, or when earlier batches went there, which it
 * must not overtake.  Takes the batch when it does. */
static bool
hand_off(struct nbd_conn *c, struct corked **q, guint n)
{
  struct handoff *h;
  struct corked *copies;
  size_t bytes = 0;
  bool handed;

  for (guint i = 0; i < n; i++)
    if (q[i]->cmd->type == NBD_CMD_WRITE)
      bytes += q[i]->cmd->count;

  g_mutex_lock(&c->lock);
  handed = bytes >= HANDOFF_BYTES || c->handed > 0;
  if (handed) {
    c->handed++;
    if (c->writer == NULL) {
      c->handoffs = g_async_queue_new();
      c->writer = g_thread_new("nbd-writer", writer_main, c);
    }
  }
  g_mutex_unlock(&c->lock);
  if (!handed)
    return false;

  h = g_malloc(sizeof *h + n * (sizeof h->ptr[0] + sizeof *copies));
  h->n = n;
  copies = (struct corked *) &h->ptr[n];
  for (guint i = 0; i < n; i++) {
    copies[i] = *q[i];
    h->ptr[i] = &copies[i];
  }
  g_async_queue_push(c->handoffs, h);
  return true;
}

void
nbd_uncork(void)
{
  GArray *q = cork;
  g_autofree struct corked **batch = NULL;

  if (q == NULL)
    return;
  cork = NULL;

  /* One batch per connection, each in the order it was queued. */
  batch = g_new(struct corked *, MAX(q->len, 1));
  for (guint i = 0; i < q->len; i++) {
    struct nbd_conn *c = g_array_index(q, struct corked, i).c;
    guint n = 0;

    if (c == NULL)
      continue;
    for (guint j = i; j < q->len; j++) {
      struct corked *k = &g_array_index(q, struct corked, j);

      if (k->c == c) {
        batch[n++] = k;
        k->c = NULL;
      }
    }
    if (!hand_off(c, batch, n))
      write_batch(c, batch, n);
  }
  g_array_free(q, TRUE);
}

int
nbd_conn_submit(struct nbd_conn *c, struct nbd_cmd *cmd)
{
  struct nbd_request req;
  struct iovec iov[2];
  GError *error = NULL;
  int rc;

  rc = check_cmd(&c->info, cmd);
  if (rc < 0)
    return rc;

  cmd->extents = NULL;
  cmd->n_extents = 0;
  memset(&cmd->priv, 0, sizeof cmd->priv);
  cmd->priv.start_us = g_get_monotonic_time();
  if (cmd->sink != NULL)
    cmd->sink->filled = false; /* a resend after a lost connection */

  /* X1: a fresh cookie per command; enter the table before sending, so
   * the reply can never race ahead of its entry. */
  g_mutex_lock(&c->lock);
  if (c->dead || c->closing) {
    g_mutex_unlock(&c->lock);
    return -ENOTCONN;
  }
  cmd->priv.cookie = c->next_cookie++;
  cmd->priv.sending = true;
  g_hash_table_insert(c->inflight, &cmd->priv.cookie, cmd);
  if (cork != NULL)
    c->corked++;
  g_mutex_unlock(&c->lock);

  if (cork != NULL) {
    struct corked k = { .c = c, .cmd = cmd };

    request_encode(&k.req, cmd);
    g_array_append_val(cork, k);
    return 0;
  }

  request_encode(&req, cmd);
  iov[0].iov_base = &req;
  iov[0].iov_len = sizeof req;
  iov[1].iov_base = cmd->buf;
  iov[1].iov_len = cmd->count;

  g_mutex_lock(&c->send_lock);
  rc = nbd_transport_writev(c->t, iov, cmd->type == NBD_CMD_WRITE ? 2 : 1,
                            &error);
  g_mutex_unlock(&c->send_lock);

  if (rc < 0) {
    conn_die(c, error->message);
    g_error_free(error);
  }
  sent(c, cmd);
  return 0;
}

struct waiter {
  GMutex lock;
  GCond cond;
  bool done;
  int err;
};

static void
waiter_done(struct nbd_cmd *cmd, int err)
{
  struct waiter *w = cmd->user;

  g_mutex_lock(&w->lock);
  w->done = true;
  w->err = err;
  g_cond_signal(&w->cond);
  g_mutex_unlock(&w->lock);
}

int
nbd_conn_run(struct nbd_conn *c, struct nbd_cmd *cmd)
{
  struct waiter w = { 0 };
  int rc;

  g_mutex_init(&w.lock);
  g_cond_init(&w.cond);
  cmd->done = waiter_done;
  cmd->user = &w;

  rc = nbd_conn_submit(c, cmd);
  nbd_uncork(); /* the wait below needs the request on the wire */
  if (rc == 0) {
    g_mutex_lock(&w.lock);
    while (!w.done)
      g_cond_wait(&w.cond, &w.lock);
    g_mutex_unlock(&w.lock);
    rc = -w.err;
  }
  g_mutex_clear(&w.lock);
  g_cond_clear(&w.cond);
  return rc;
}

unsigned
nbd_conn_in_flight(struct nbd_conn *c)
{
  unsigned n;

  g_mutex_lock(&c->lock);
  n = g_hash_table_size(c->inflight);
  g_mutex_unlock(&c->lock);
  return n;
}

bool
nbd_conn_is_dead(struct nbd_conn *c)
{
  bool dead;

  g_mutex_lock(&c->lock);
  dead = c->dead;
  g_mutex_unlock(&c->lock);
  return dead;
}

const char *
nbd_conn_death(struct nbd_conn *c)
{
  const char *why;

  g_mutex_lock(&c->lock);
  why = c->death;
  g_mutex_unlock(&c->lock);
  return why;
}

/* Waits on c->cond until pred holds or the deadline passes; returns
 * whether it holds.  Called with c->lock held. */
static bool
wait_until(struct nbd_conn *c, bool (*pred)(struct nbd_conn *),
           gint64 deadline)
{
  while (!pred(c))
    if (!g_cond_wait_until(&c->cond, &c->lock, deadline))
      return pred(c);
  return true;
}

static bool
drained(struct nbd_conn *c)
{
  return c->dead || g_hash_table_size(c->inflight) == 0;
}

static bool
nothing_corked(struct nbd_conn *c)
{
  return c->corked == 0;
}

static bool
reader_exited(struct nbd_conn *c)
{
  return c->reader_done;
}

void
nbd_conn_close(struct nbd_conn *c, unsigned timeout_ms)
{
  gint64 deadline = g_get_monotonic_time() +
                    timeout_ms * G_TIME_SPAN_MILLISECOND;
  bool send_disc;

  if (c == NULL)
    return;

  /* D5: stop new work and let what is in flight finish.  Requests that
   * corked threads queued go out first: nothing may follow the DISC
   * (D4).  Corked threads do not block, so that wait is short. */
  nbd_uncork();
  g_mutex_lock(&c->lock);
  c->closing = true;
  while (!nothing_corked(c))
    g_cond_wait(&c->cond, &c->lock);
  wait_until(c, drained, deadline);
  send_disc = !c->dead;
  g_mutex_unlock(&c->lock);

  if (send_disc) {
    /* D4: offset 0, length 0, no flags, an unused cookie. */
    struct nbd_request req = {
      .magic = htobe32(NBD_REQUEST_MAGIC),
      .type = htobe16(NBD_CMD_DISC),
      .cookie = htobe64(UINT64_MAX),
    };

    g_mutex_lock(&c->send_lock);
    nbd_transport_write(c->t, &req, sizeof req, NULL);
    g_mutex_unlock(&c->send_lock);
  }

  /* D6: read to end of stream, within the deadline; then make sure. */
  g_mutex_lock(&c->lock);
  if (!wait_until(c, reader_exited, deadline)) {
    g_mutex_unlock(&c->lock);
    nbd_transport_shutdown(c->t);
    g_mutex_lock(&c->lock);
  }
  g_mutex_unlock(&c->lock);
  g_thread_join(c->reader);
  if (c->writer != NULL) {
    /* Nothing is corked, so nothing is handed off any more. */
    g_async_queue_push(c->handoffs, &writer_stop);
    g_thread_join(c->writer);
    g_async_queue_unref(c->handoffs);
  }

  nbd_reply_parser_clear(&c->parser);
  nbd_transport_free(c->t);
  nbd_export_info_clear(&c->info);
  g_hash_table_destroy(c->inflight);
  g_free(c->death);
  g_mutex_clear(&c->lock);
  g_mutex_clear(&c->send_lock);
  g_cond_clear(&c->cond);
  g_free(c);
}
