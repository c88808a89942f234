/* nbdfs: the I/O scheduler of one export.
 *
 * Each FUSE request becomes an op.  An op holds a byte range in the
 * order list from its arrival until its last reply, so that overlapping
 * requests run in the order the kernel issued them (O6): a later op
 * waits while an earlier, overlapping one where either side writes is
 * unfinished.  A FLUSH waits for every earlier write (O2).
 *
 * An op runs in phases: the edge reads of a read-modify-write (S16),
 * then its main commands, split at the maximum payload (S9) and aligned
 * to the minimum block (S7), at most WINDOW of them in flight; then, for
 * a durable write to a server without FUA, a FLUSH.
 *
 * A write the server acknowledged without FUA may still sit in its
 * volatile cache until a FLUSH covers it (O2, O5).  Such writes are kept
 * in the replay log, up to the replay limit, and written again after a
 * reconnect before anything else is sent, so a server that lost its
 * cache gets them back.  A write that had no room in the log makes the
 * next FLUSH after a lost connection fail with EIO instead (D9): an
 * fsync never reports success for writes that may be gone.
 *
 * Replies arrive on the connections' reader threads.  Those threads must
 * never block on sending (the server may be blocked sending to them), so
 * any new command that a reply makes possible is sent from the worker
 * thread instead.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <inttypes.h>
#include <unistd.h>

#include "nbdfs.h"

#define WINDOW 32                     /* commands in flight per op */
#define ZERO_BUF_SIZE (1024 * 1024)   /* zeros for emulated zeroing */
#define MAX_STATUS_LEN (1u << 30)     /* one BLOCK_STATUS asks this much */

enum phase {
  PH_EDGES,       /* read the partial blocks at either end */
  PH_MAIN,
  PH_FLUSH_AFTER, /* make a durable write durable without FUA */
  PH_DONE,
};

struct sched {
  struct pool *pool;
  const struct nbd_export_info *info;
  char *name;
  uint64_t size;            /* rounded down to the minimum block (S8) */
  uint32_t mb;              /* minimum block */
  uint32_t max_io;          /* largest READ or WRITE payload */
  GThreadPool *worker;

  GMutex lock;              /* everything below, and every op's state */
  GCond idle;               /* order list became empty */
  unsigned idle_waiters;    /* threads waiting on idle */
  GQueue order;             /* struct op, in arrival order */
  uint64_t acked;           /* generation: write commands acknowledged */
  uint64_t flushed;         /* the generation a FLUSH last covered */

  GQueue replay;            /* struct replay_entry, oldest first */
  uint64_t replay_bytes;
  uint64_t replay_limit;
  uint64_t unlogged;        /* the newest acknowledged write not logged */
  uint64_t unlogged_off;    /* ... and where it was, for the message */
  bool poisoned;            /* unlogged writes may be lost: fail a FLUSH */
  bool auto_flush;          /* a FLUSH to make room in the log is due */
  struct stats stats;
};

struct replay_entry {
  uint64_t gen;
  uint64_t off;
  uint32_t len;
  uint16_t type;            /* NBD_CMD_WRITE or NBD_CMD_WRITE_ZEROES */
  uint16_t flags;
  GBytes *hold;             /* keeps data alive; NULL for zeros */
  const uint8_t *data;      /* the bytes of a WRITE */
};

static void
replay_entry_free(gpointer p)
{
  struct replay_entry *e = p;

  if (e->hold != NULL)
    g_bytes_unref(e->hold);
  g_free(e);
}

struct op {
  struct sched *s;
  enum op_kind kind;
  uint64_t off, len;        /* as asked, clipped for reads */
  uint64_t lo, hi;          /* held range, aligned */
  const uint8_t *wbuf;
  GBytes *wdata;            /* owns wbuf; the replay log may share it */
  uint8_t *rbuf;            /* reads: the bytes of [lo, hi) */
  struct nbd_sink *sink;    /* reads: where a whole reply may go */
  bool fua;
  int whence;
  op_done_fn done;
  void *user;

  GList link;               /* in s->order */
  bool started;
  bool queued;              /* an advance() is waiting on the worker */

  enum phase phase;
  uint64_t cursor;          /* next byte of the main range */
  uint64_t mid_lo, mid_hi;  /* the aligned middle of a write */
  bool edges_sent;
  unsigned flushes_left;    /* FLUSH copies still to send */
  unsigned inflight;
  int err;
  uint64_t result;
  uint64_t flush_gen;

  uint8_t *head;            /* edge blocks of a read-modify-write */
  uint8_t *tail;
  uint64_t head_off, tail_off;
};

struct piece {
  struct nbd_cmd cmd;
  struct op *op;
  int conn;                 /* a FLUSH for one connection, else -1 */
};

static const uint8_t *zero_buf;

static bool
is_write(enum op_kind k)
{
  return k == OP_WRITE || k == OP_ZERO || k == OP_PUNCH;
}

static uint64_t
align_down(uint64_t v, uint32_t a)
{
  return v - v % a;
}

static uint64_t
align_up(uint64_t v, uint32_t a)
{
  return align_down(v + a - 1, a);
}

static void advance(struct op *op);
static void auto_flush(struct sched *s);

/* The worker runs ops (struct op) and, as a NULL item, the FLUSH that
 * makes room in the replay log. */
static void
worker_main(gpointer data, gpointer user)
{
  if (data == (gpointer) user)
    auto_flush(user);
  else
    advance(data);
}

static int replay(struct nbd_conn *c, void *user);
static void connection_lost(void *user);

struct sched *
sched_new(struct pool *pool, const char *name, uint64_t replay_limit)
{
  struct sched *s = g_new0(struct sched, 1);

  s->pool = pool;
  s->info = pool_info(pool);
  s->name = g_strdup(name);
  s->mb = s->info->min_block;
  s->size = align_down(s->info->size, s->mb);
  s->max_io = align_down(s->info->max_payload, s->mb);
  g_mutex_init(&s->lock);
  g_cond_init(&s->idle);
  g_queue_init(&s->order);
  g_queue_init(&s->replay);
  s->replay_limit = replay_limit;
  s->worker = g_thread_pool_new(worker_main, s, 1, FALSE, NULL);
  pool_set_replay(pool, replay, connection_lost, s);

  if (g_once_init_enter(&zero_buf))
    g_once_init_leave(&zero_buf, g_malloc0(ZERO_BUF_SIZE));
  return s;
}

/* Waits until no op is left.  finish() answers an op before it takes
 * the op out of the list, and touches s no more once it has done so
 * under s->lock and found the list empty. */
static void
wait_idle(struct sched *s)
{
  g_mutex_lock(&s->lock);
  s->idle_waiters++;
  while (s->order.length > 0)
    g_cond_wait(&s->idle, &s->lock);
  s->idle_waiters--;
  g_mutex_unlock(&s->lock);
}

void
sched_free(struct sched *s)
{
  if (s == NULL)
    return;

  /* The FLUSH of sched_drain() has been answered, but its finish() may
   * still be running on a reader thread; and the worker may hold a
   * FLUSH that makes room in the replay log, which it starts as it
   * ends.  Freeing s before both are over was a use after free at
   * unmount. */
  wait_idle(s);
  g_thread_pool_free(s->worker, FALSE, TRUE);
  wait_idle(s);
  g_queue_clear_full(&s->replay, replay_entry_free);
  g_mutex_clear(&s->lock);
  g_cond_clear(&s->idle);
  g_free(s->name);
  g_free(s);
}

uint64_t
sched_size(const struct sched *s)
{
  return s->size;
}

/* Must the later op i wait for the earlier op j (O2, O6)? */
static bool
conflicts(const struct op *j, const struct op *i)
{
  if (i->kind == OP_FLUSH)
    return is_write(j->kind);
  if (j->kind == OP_FLUSH)
    return false;
  if (j->hi <= i->lo || i->hi <= j->lo)
    return false;
  return is_write(j->kind) || is_write(i->kind);
}

/* Called with s->lock held. */
static bool
may_start(struct sched *s, struct op *op)
{
  for (GList *l = s->order.head; l != &op->link; l = l->next)
    if (conflicts(l->data, op))
      return false;
  return true;
}

/* Marks op as running.  A FLUSH covers the writes finished by now: all
 * earlier ones, since it waited for them.  Called with s->lock held. */
static void
op_started(struct op *op)
{
  op->started = true;
  op->flush_gen = op->s->acked;
}

/* ---- pieces: one NBD command each ------------------------------------- */

static void piece_done(struct nbd_cmd *cmd, int err);

static struct piece *
piece_new(struct op *op, uint16_t type, uint16_t flags, uint64_t off,
          uint32_t count, const void *buf)
{
  struct piece *pc = g_new0(struct piece, 1);

  pc->op = op;
  pc->cmd.type = type;
  pc->cmd.flags = flags;
  pc->cmd.offset = off;
  pc->cmd.count = count;
  pc->cmd.buf = (void *) buf;
  pc->cmd.done = piece_done;
  pc->conn = -1;
  op->inflight++;
  return pc;
}

static uint16_t
write_flags(const struct op *op)
{
  const struct nbd_export_info *in = op->s->info;

  return op->fua && (in->tflags & NBD_FLAG_SEND_FUA) ? NBD_CMD_FLAG_FUA : 0;
}

/* Adds the FLUSH copies still to send: one per connection when the
 * server does not share caches between them (O7). */
static void
plan_flushes(struct op *op, GPtrArray *out)
{
  struct sched *s = op->s;
  bool each = !(s->info->tflags & NBD_FLAG_CAN_MULTI_CONN);

  for (; op->flushes_left > 0; op->flushes_left--) {
    struct piece *pc = piece_new(op, NBD_CMD_FLUSH, 0, 0, 0, NULL);

    if (each)
      pc->conn = (op->flushes_left - 1) % pool_size(s->pool);
    g_ptr_array_add(out, pc);
  }
}

/* Adds the next commands of a main phase to out, up to the window.
 * Called with s->lock held.  Returns whether the phase has more. */
static bool
plan_main(struct op *op, GPtrArray *out)
{
  struct sched *s = op->s;
  const struct nbd_export_info *in = s->info;

  if (op->kind == OP_FLUSH) {
    plan_flushes(op, out);
    return false;
  }

  if (op->kind == OP_SEEK) {
    uint64_t n = MIN(op->hi - op->cursor, align_down(MAX_STATUS_LEN, s->mb));

    if (op->inflight == 0 && op->cursor < op->hi)
      g_ptr_array_add(out, piece_new(op, NBD_CMD_BLOCK_STATUS, 0,
                                     op->cursor, n, NULL));
    return false;
  }

  if (is_write(op->kind) && !op->edges_sent) {
    uint16_t f = write_flags(op);

    /* The patched edge blocks go out first, then the middle. */
    op->edges_sent = true;
    if (op->head != NULL)
      g_ptr_array_add(out, piece_new(op, NBD_CMD_WRITE, f, op->head_off,
                                     s->mb, op->head));
    if (op->tail != NULL)
      g_ptr_array_add(out, piece_new(op, NBD_CMD_WRITE, f, op->tail_off,
                                     s->mb, op->tail));
  }

  while (op->inflight < WINDOW && op->cursor < op->mid_hi) {
    uint64_t pos = op->cursor;
    uint64_t left = op->mid_hi - pos;
    struct piece *pc;

    if (op->kind == OP_READ) {
      uint32_t n = MIN(left, s->max_io);

      pc = piece_new(op, NBD_CMD_READ, 0, pos, n, op->rbuf + (pos - op->lo));
      /* A sink takes the reply to exactly the bytes asked for. */
      if (pos == op->off && n == op->len)
        pc->cmd.sink = op->sink;
    } else if (op->kind == OP_WRITE) {
      uint32_t n = MIN(left, s->max_io);

      pc = piece_new(op, NBD_CMD_WRITE, write_flags(op), pos, n,
                     op->wbuf + (pos - op->off));
    } else if (in->tflags & NBD_FLAG_SEND_WRITE_ZEROES) {
      /* PUNCH may leave a hole, ZERO must stay allocated; both read
       * back as zeros (X12b, O8).  TRIM promises no zeros, so it is
       * never used here. */
      uint16_t f = write_flags(op);
      uint32_t n = MIN(left, s->max_io);

      if (op->kind == OP_ZERO)
        f |= NBD_CMD_FLAG_NO_HOLE;
      pc = piece_new(op, NBD_CMD_WRITE_ZEROES, f, pos, n, NULL);
    } else {
      uint32_t n = MIN(left, MIN(s->max_io, align_down(ZERO_BUF_SIZE,
                                                       s->mb)));

      pc = piece_new(op, NBD_CMD_WRITE, write_flags(op), pos, n, zero_buf);
    }
    op->cursor += pc->cmd.count;
    g_ptr_array_add(out, pc);
  }
  return op->cursor < op->mid_hi;
}

/* Adds the FLUSH copies that make a write durable on a server without
 * FUA (O4): one, or one per connection without multi-conn (O7). */
static unsigned
flush_copies(struct sched *s)
{
  if (!(s->info->tflags & NBD_FLAG_SEND_FLUSH))
    return 0; /* O3: such a server is write-through */
  if ((s->info->tflags & NBD_FLAG_CAN_MULTI_CONN) || pool_size(s->pool) == 1)
    return 1;
  return pool_size(s->pool);
}

/* A FLUSH that started when generation op->flush_gen was the newest
 * has succeeded: what it covers leaves the replay log.  After a lost
 * connection with unlogged writes, the first FLUSH reports EIO once, as
 * Linux reports a writeback error.  Called with s->lock held. */
static void
flushed(struct sched *s, struct op *op)
{
  struct replay_entry *e;

  if (s->poisoned && op->err == 0) {
    s->poisoned = false;
    op->err = EIO;
    log_error("%s: fsync: failing once, because writes that the server "
              "acknowledged may have been lost with a connection "
              "(--replay-limit)", s->name);
  }
  s->flushed = MAX(s->flushed, op->flush_gen);
  while ((e = g_queue_peek_head(&s->replay)) != NULL &&
         e->gen <= op->flush_gen) {
    g_queue_pop_head(&s->replay);
    s->replay_bytes -= e->hold != NULL ? e->len : 0;
    replay_entry_free(e);
  }
}

/* Records an acknowledged write of op in the replay log, or notes that
 * it is not there.  The log shares the write's buffer rather than copy
 * it; only the small edge blocks of a read-modify-write are copied.
 * Called with s->lock held. */
static void
log_write(struct sched *s, struct op *op, const struct nbd_cmd *cmd)
{
  bool data = cmd->type == NBD_CMD_WRITE && cmd->buf != zero_buf;
  size_t held = data ? cmd->count : 0;
  struct replay_entry *e;

  s->acked++;
  if (cmd->flags & NBD_CMD_FLAG_FUA)
    return; /* O4: already on stable storage */

  if (s->replay_bytes + held > s->replay_limit) {
    s->unlogged = s->acked;
    s->unlogged_off = cmd->offset;
    if (s->replay_limit > 0 && !s->auto_flush) {
      /* Make room: a FLUSH releases what it covers. */
      s->auto_flush = true;
      g_thread_pool_push(s->worker, s, NULL);
    }
    return;
  }

  e = g_new0(struct replay_entry, 1);
  e->gen = s->acked;
  e->off = cmd->offset;
  e->len = cmd->count;
  e->type = cmd->type;
  e->flags = cmd->flags;
  if (data && op->wdata != NULL && cmd->buf != op->head &&
      cmd->buf != op->tail) {
    e->hold = g_bytes_ref(op->wdata);
    e->data = cmd->buf;
  } else if (data) {
    e->hold = g_bytes_new(cmd->buf, cmd->count);
    e->data = g_bytes_get_data(e->hold, NULL);
  }
  g_queue_push_tail(&s->replay, e);
  s->replay_bytes += held;
}

/* Moves op to its next phase when the current one has nothing more in
 * flight or to send.  Called with s->lock held.  Returns true when the
 * op is finished. */
static bool
next_phase(struct op *op)
{
  struct sched *s = op->s;

  if (op->err != 0)
    return true;

  switch (op->phase) {
    case PH_EDGES:
      /* The edge blocks are read; lay the new bytes over them.  The
       * main phase sends them back. */
      op->edges_sent = false;
      if (op->head != NULL) {
        uint64_t a = MAX(op->off, op->head_off);
        uint64_t b = MIN(op->off + op->len, op->head_off + s->mb);

        if (op->kind == OP_WRITE)
          memcpy(op->head + (a - op->head_off), op->wbuf + (a - op->off),
                 b - a);
        else
          memset(op->head + (a - op->head_off), 0, b - a);
      }
      if (op->tail != NULL) {
        uint64_t a = MAX(op->off, op->tail_off);
        uint64_t b = MIN(op->off + op->len, op->tail_off + s->mb);

        if (op->kind == OP_WRITE)
          memcpy(op->tail + (a - op->tail_off), op->wbuf + (a - op->off),
                 b - a);
        else
          memset(op->tail + (a - op->tail_off), 0, b - a);
      }
      op->phase = PH_MAIN;
      return false;

    case PH_MAIN:
      if (op->kind == OP_SEEK && op->cursor < op->hi)
        return false; /* another BLOCK_STATUS round */
      if (op->fua && is_write(op->kind) && write_flags(op) == 0 &&
          (op->flushes_left = flush_copies(s)) > 0) {
        op->phase = PH_FLUSH_AFTER;
        return false;
      }
      if (op->kind == OP_FLUSH)
        flushed(s, op);
      op->phase = PH_DONE;
      return true;

    case PH_FLUSH_AFTER:
      op->phase = PH_DONE;
      return true;

    default:
      return true;
  }
}

static void finish(struct op *op);

/* Sends what the op's current phase allows.  Runs on the FUSE loop or
 * the worker, never on a reader thread. */
static void
advance(struct op *op)
{
  struct sched *s = op->s;
  g_autoptr(GPtrArray) batch = g_ptr_array_new();
  bool finished = false;

  g_mutex_lock(&s->lock);
  op->queued = false;
  for (;;) {
    if (op->err == 0) {
      if (op->phase == PH_EDGES && op->inflight == 0 && !op->edges_sent) {
        op->edges_sent = true;
        if (op->head != NULL)
          g_ptr_array_add(batch, piece_new(op, NBD_CMD_READ, 0, op->head_off,
                                           s->mb, op->head));
        if (op->tail != NULL)
          g_ptr_array_add(batch, piece_new(op, NBD_CMD_READ, 0, op->tail_off,
                                           s->mb, op->tail));
      } else if (op->phase == PH_MAIN) {
        plan_main(op, batch);
      } else if (op->phase == PH_FLUSH_AFTER) {
        plan_flushes(op, batch);
      }
    }
    if (batch->len > 0 || op->inflight > 0)
      break;

    /* Nothing to send and nothing in flight: this phase is over. */
    if (next_phase(op)) {
      finished = true;
      break;
    }
  }
  g_mutex_unlock(&s->lock);

  /* The op stays alive while any piece of the batch is unsent: each
   * one counts in op->inflight. */
  for (guint i = 0; i < batch->len; i++) {
    struct piece *pc = batch->pdata[i];
    int rc = pc->conn >= 0 ? pool_submit_on(s->pool, pc->conn, &pc->cmd)
                           : pool_submit(s->pool, &pc->cmd);

    if (rc < 0)
      piece_done(&pc->cmd, -rc);
  }
  if (finished)
    finish(op);
}

/* Reads a SEEK answer out of the extents of one BLOCK_STATUS (B13):
 * a hole is a range that reads as zeros; everything else is data. */
static void
seek_scan(struct op *op, const struct nbd_cmd *cmd, int err)
{
  uint64_t end = cmd->offset + cmd->count;

  if (err != 0 || cmd->n_extents == 0) {
    /* B12: without an answer, all of it is data. */
    if (op->whence == SEEK_DATA) {
      op->result = MAX(op->off, cmd->offset);
      op->cursor = op->hi;
      return;
    }
    op->cursor = end;
    return;
  }

  for (size_t i = 0; i < cmd->n_extents; i++) {
    const struct nbd_extent *e = &cmd->extents[i];
    bool hole = (e->flags & NBD_STATE_ZERO) != 0;

    if (hole == (op->whence == SEEK_HOLE) && e->offset + e->length > op->off) {
      op->result = MAX(op->off, e->offset);
      op->cursor = op->hi;
      return;
    }
    end = e->offset + e->length;
  }
  op->cursor = end;
}

/* Has the current phase more to send?  Called with s->lock held. */
static bool
has_more(const struct op *op)
{
  if (op->err != 0)
    return false;
  if (op->phase == PH_FLUSH_AFTER)
    return op->flushes_left > 0;
  if (op->phase != PH_MAIN)
    return false;
  if (op->kind == OP_SEEK)
    return op->cursor < op->hi;
  return op->cursor < op->mid_hi || op->flushes_left > 0;
}

static void
piece_done(struct nbd_cmd *cmd, int err)
{
  struct piece *pc = (struct piece *) cmd;
  struct op *op = pc->op;
  struct sched *s = op->s;
  bool finished = false, more = false;

  if (err != 0 && op->kind != OP_SEEK)
    log_debug("%s: %s at %" PRIu64 "+%" PRIu32 " failed: %s", s->name,
              nbd_cmd_name(cmd->type), cmd->offset, cmd->count,
              g_strerror(err));

  g_mutex_lock(&s->lock);
  stats_record(&s->stats, cmd->type, cmd->count, err,
               g_get_monotonic_time() - cmd->priv.start_us);
  if (err == 0 && cmd->sink != NULL && cmd->sink->filled)
    s->stats.spliced++;
  op->inflight--;
  if (op->kind == OP_SEEK)
    seek_scan(op, cmd, err);
  else if (err != 0 && op->err == 0)
    op->err = err;
  if (err == 0 && (cmd->type == NBD_CMD_WRITE ||
                   cmd->type == NBD_CMD_WRITE_ZEROES) &&
      op->phase != PH_EDGES)
    log_write(s, op, cmd);

  if (op->queued) {
    /* The queued advance() takes it from here. */
  } else if (op->inflight == 0) {
    if (!has_more(op) && next_phase(op))
      finished = true;
    else
      more = op->queued = true;
  } else if (op->phase == PH_MAIN && op->cursor < op->mid_hi &&
             op->inflight == WINDOW / 2) {
    /* Refill the window before it runs dry. */
    more = op->queued = true;
  }
  g_mutex_unlock(&s->lock);

  g_free(cmd->extents);
  g_free(pc);
  if (finished)
    finish(op);
  else if (more)
    g_thread_pool_push(s->worker, op, NULL);
}

static void
op_free(struct op *op)
{
  if (op->wdata != NULL)
    g_bytes_unref(op->wdata);
  g_free(op->rbuf);
  g_free(op->head);
  g_free(op->tail);
  g_free(op);
}

/* Answers the op, takes it out of the order list and starts the ops
 * that were waiting for it. */
static void
finish(struct op *op)
{
  struct sched *s = op->s;
  GPtrArray *ready = g_ptr_array_new();
  const void *data = NULL;
  uint64_t result = op->result;

  if (op->kind == OP_READ) {
    data = op->rbuf + (op->off - op->lo);
    result = op->len;
  } else if (op->kind == OP_SEEK && op->err == 0 && op->result == UINT64_MAX) {
    /* Ran off the end: the end is a hole (lseek(2)), there is no data
     * after it. */
    if (op->whence == SEEK_HOLE)
      result = s->size;
    else
      op->err = ENXIO;
  }
  op->done(op, op->err, data, result, op->user);

  g_mutex_lock(&s->lock);
  g_queue_unlink(&s->order, &op->link);
  for (GList *l = s->order.head; l != NULL; l = l->next) {
    struct op *w = l->data;

    if (!w->started && may_start(s, w)) {
      op_started(w);
      w->queued = true;
      g_ptr_array_add(ready, w);
    }
  }
  /* A broadcast is a system call even with no one waiting. */
  if (s->order.length == 0 && s->idle_waiters > 0)
    g_cond_broadcast(&s->idle);
  g_mutex_unlock(&s->lock);

  for (guint i = 0; i < ready->len; i++)
    g_thread_pool_push(s->worker, ready->pdata[i], NULL);
  g_ptr_array_free(ready, TRUE);
  op_free(op);
}

/* Sets up the ranges and buffers of a new op.  Returns 0 or a positive
 * errno to answer at once. */
static int
prepare(struct sched *s, struct op *op)
{
  uint32_t mb = s->mb;

  switch (op->kind) {
    case OP_READ:
      op->len = MIN(op->len, s->size - MIN(op->off, s->size));
      if (op->len == 0) {
        op->lo = op->hi = op->mid_lo = op->mid_hi = op->cursor = op->off;
        op->rbuf = g_malloc(1);
        op->phase = PH_MAIN;
        return 0;
      }
      op->lo = align_down(op->off, mb);
      op->hi = align_up(op->off + op->len, mb);
      op->mid_lo = op->cursor = op->lo;
      op->mid_hi = op->hi;
      op->rbuf = g_malloc(MAX(op->hi - op->lo, 1));
      op->phase = PH_MAIN;
      return 0;

    case OP_WRITE:
    case OP_ZERO:
    case OP_PUNCH:
      if (s->info->tflags & NBD_FLAG_READ_ONLY)
        return EROFS;
      if (op->off > s->size || op->len > s->size - op->off)
        return ENOSPC;
      if (op->len == 0) {
        op->lo = op->hi = op->mid_lo = op->mid_hi = op->cursor = op->off;
        op->phase = PH_MAIN;
        return 0;
      }
      op->lo = align_down(op->off, mb);
      op->hi = align_up(op->off + op->len, mb);
      op->mid_lo = op->cursor = align_up(op->off, mb);
      op->mid_hi = align_down(op->off + op->len, mb);

      /* S16: a partial block at either end is read, patched and
       * written whole. */
      if (op->off % mb != 0) {
        op->head_off = op->lo;
        op->head = g_malloc(mb);
      }
      if ((op->off + op->len) % mb != 0 &&
          (op->head == NULL || align_down(op->off + op->len, mb) !=
                                 op->head_off)) {
        op->tail_off = align_down(op->off + op->len, mb);
        op->tail = g_malloc(mb);
      }
      if (op->mid_hi < op->mid_lo)
        op->mid_hi = op->mid_lo; /* both ends in one block */
      op->phase = op->head || op->tail ? PH_EDGES : PH_MAIN;
      return 0;

    case OP_FLUSH:
      op->flushes_left = flush_copies(s);
      op->phase = PH_MAIN;
      return 0;

    case OP_SEEK:
      if (op->off >= s->size)
        return ENXIO;
      op->lo = op->off;
      op->hi = s->size;
      op->result = UINT64_MAX;
      if (!s->info->block_status) {
        /* Without block status the whole export is data. */
        op->result = op->whence == SEEK_DATA ? op->off : s->size;
        op->cursor = op->hi;
      } else {
        op->cursor = align_down(op->off, mb);
      }
      op->phase = PH_MAIN;
      return 0;
  }
  return EINVAL;
}

static struct op *
op_new(struct sched *s, enum op_kind kind, uint64_t off, uint64_t len,
       op_done_fn done, void *user)
{
  struct op *op = g_new0(struct op, 1);

  op->s = s;
  op->kind = kind;
  op->off = off;
  op->len = len;
  op->done = done;
  op->user = user;
  op->link.data = op;
  return op;
}

static void
op_submit(struct sched *s, struct op *op)
{
  bool start;
  int err;

  g_mutex_lock(&s->lock);
  err = prepare(s, op);
  if (err != 0) {
    g_mutex_unlock(&s->lock);
    op->done(op, err, NULL, 0, op->user);
    op_free(op);
    return;
  }
  g_queue_push_tail_link(&s->order, &op->link);
  start = may_start(s, op);
  if (start)
    op_started(op);
  g_mutex_unlock(&s->lock);

  if (start)
    advance(op);
}

void
sched_submit(struct sched *s, enum op_kind kind, uint64_t off,
             uint64_t len, GBytes *data, bool fua, int whence,
             op_done_fn done, void *user)
{
  struct op *op = op_new(s, kind, off, len, done, user);

  op->wdata = data;
  op->wbuf = data ? g_bytes_get_data(data, NULL) : NULL;
  op->fua = fua;
  op->whence = whence;
  op_submit(s, op);
}

void
sched_read(struct sched *s, uint64_t off, uint64_t len,
           struct nbd_sink *sink, op_done_fn done, void *user)
{
  struct op *op = op_new(s, OP_READ, off, len, done, user);

  op->sink = sink;
  op_submit(s, op);
}

struct drain_wait {
  GMutex lock;
  GCond cond;
  bool done;
  int err;
};

static void
drain_flushed(struct op *op, int err, const void *data, uint64_t result,
              void *user)
{
  struct drain_wait *w = user;

  g_mutex_lock(&w->lock);
  w->done = true;
  w->err = err;
  g_cond_signal(&w->cond);
  g_mutex_unlock(&w->lock);
}

int
sched_drain(struct sched *s)
{
  struct drain_wait w = { 0 };
  bool dirty;

  nbd_uncork(); /* the waits below need this thread's requests sent */
  g_mutex_lock(&s->lock);
  s->idle_waiters++;
  while (s->order.length > 0)
    g_cond_wait(&s->idle, &s->lock);
  s->idle_waiters--;
  dirty = s->acked != s->flushed;
  g_mutex_unlock(&s->lock);
  if (!dirty)
    return 0;

  g_mutex_init(&w.lock);
  g_cond_init(&w.cond);
  sched_submit(s, OP_FLUSH, 0, 0, NULL, false, 0, drain_flushed, &w);
  nbd_uncork();
  g_mutex_lock(&w.lock);
  while (!w.done)
    g_cond_wait(&w.cond, &w.lock);
  g_mutex_unlock(&w.lock);
  g_mutex_clear(&w.lock);
  g_cond_clear(&w.cond);
  return w.err;
}

static void
auto_flushed(struct op *op, int err, const void *data, uint64_t result,
             void *user)
{
  struct sched *s = user;

  if (err != 0)
    log_warning("%s: flush to make room in the replay log failed: %s",
                s->name, g_strerror(err));
}

static void
auto_flush(struct sched *s)
{
  g_mutex_lock(&s->lock);
  s->auto_flush = false;
  g_mutex_unlock(&s->lock);
  sched_submit(s, OP_FLUSH, 0, 0, NULL, false, 0, auto_flushed, s);
}

static void
closed_flushed(struct op *op, int err, const void *data, uint64_t result,
               void *user)
{
  struct sched *s = user;

  if (err != 0)
    log_warning("%s: flush after close failed: %s; the next fsync will "
                "try again", s->name, g_strerror(err));
}

void
sched_flush_behind(struct sched *s)
{
  bool dirty;

  g_mutex_lock(&s->lock);
  dirty = s->acked != s->flushed || s->order.length > 0;
  g_mutex_unlock(&s->lock);
  if (dirty)
    sched_submit(s, OP_FLUSH, 0, 0, NULL, false, 0, closed_flushed, s);
}

/* The pool lost a connection.  Writes that are acknowledged, not
 * flushed and not in the log may be gone. */
static void
connection_lost(void *user)
{
  struct sched *s = user;

  g_mutex_lock(&s->lock);
  if (s->unlogged > s->flushed && !s->poisoned) {
    s->poisoned = true;
    log_error("%s: a connection was lost while acknowledged writes were "
              "not yet flushed nor kept for replay (the latest at offset "
              "%" PRIu64 "); the next fsync will fail", s->name,
              s->unlogged_off);
  }
  g_mutex_unlock(&s->lock);
}

/* Writes the replay log again on a new connection, oldest first, before
 * the pool lets anything else through.  Nothing else is in flight, so
 * the log does not change meanwhile.  Returns 0 or a negative errno. */
static int
replay(struct nbd_conn *c, void *user)
{
  struct sched *s = user;
  g_autoptr(GPtrArray) entries = g_ptr_array_new();
  uint64_t bytes = 0;

  g_mutex_lock(&s->lock);
  for (GList *l = s->replay.head; l != NULL; l = l->next)
    g_ptr_array_add(entries, l->data);
  g_mutex_unlock(&s->lock);

  for (guint i = 0; i < entries->len; i++) {
    const struct replay_entry *e = entries->pdata[i];
    struct nbd_cmd cmd = {
      .type = e->type,
      .flags = e->flags,
      .offset = e->off,
      .count = e->len,
      .buf = e->hold ? (void *) e->data : (void *) zero_buf,
    };
    int rc = nbd_conn_run(c, &cmd);

    if (rc < 0)
      return rc;
    bytes += e->len;
  }
  if (entries->len > 0)
    log_info("%s: wrote again %u unflushed write(s), %" PRIu64 " bytes",
             s->name, entries->len, bytes);
  return 0;
}

void
sched_stats(struct sched *s, GString *out)
{
  struct stats copy;
  unsigned inflight;

  g_mutex_lock(&s->lock);
  copy = s->stats;
  inflight = s->order.length;
  g_mutex_unlock(&s->lock);
  stats_format(&copy, inflight, pool_reconnects(s->pool), out);
}
