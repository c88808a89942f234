/* nbdfs unit tests: one connection in transmission against a scripted
 * server, after a canned handshake.
 *
 * These prove the parts above the reply parser: the in-flight table and
 * its cookies (X1, X6), what nbd_conn_submit refuses before anything is
 * sent (S7, X7, X13, O9), how a violation takes down every command in
 * flight (D9), corked batches (nbd_cork), and the disconnect (D4, D5,
 * D6).
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <string.h>

#include "internal.h"
#include "scripted.h"

#define SIZE   (UINT64_C(1) << 20)
#define CTX    9
#define WAIT_S 10

/* ---- The canned handshake ---------------------------------------------- */

struct export {
  uint16_t tflags;
  uint32_t min_block;        /* 0: no NBD_INFO_BLOCK_SIZE */
  bool structured;
  bool context;              /* base:allocation is selected */
};

static void
script_handshake(struct scripted *sc, const struct export *e)
{
  uint32_t cflags = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

  sc_greeting(scripted_out(sc), NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  scripted_expect_flags(sc, cflags);
  scripted_expect_option(sc, NBD_OPT_STRUCTURED_REPLY);
  if (!e->structured) {
    sc_opt_error(scripted_out(sc), NBD_OPT_STRUCTURED_REPLY,
                 NBD_REP_ERR_UNSUP, NULL);
  } else {
    sc_opt_reply(scripted_out(sc), NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK,
                 NULL, 0);
    scripted_expect_option(sc, NBD_OPT_SET_META_CONTEXT);
    if (e->context)
      sc_meta_context(scripted_out(sc), NBD_OPT_SET_META_CONTEXT, CTX,
                      "base:allocation");
    sc_opt_reply(scripted_out(sc), NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK,
                 NULL, 0);
  }
  scripted_expect_option(sc, NBD_OPT_GO);
  sc_info_export(scripted_out(sc), NBD_OPT_GO, SIZE, e->tflags);
  if (e->min_block > 0)
    sc_info_block_size(scripted_out(sc), NBD_OPT_GO, e->min_block,
                       MAX(e->min_block, 4096), 1 << 20);
  sc_opt_reply(scripted_out(sc), NBD_OPT_GO, NBD_REP_ACK, NULL, 0);
}

/* Starts the script and runs the client's handshake on it. */
static struct nbd_conn *
start_conn(struct scripted *sc)
{
  struct nbd_handshake_opts o = { .export_name = "disk" };
  struct nbd_export_info info;
  struct nbd_transport *t = scripted_start(sc);
  GError *error = NULL;

  g_assert_cmpint(nbd_handshake_go(t, &o, &info, &error), ==, 0);
  g_assert_no_error(error);
  return nbd_conn_new(t, &info);
}

/* ---- Completions, from the reader thread -------------------------------- */

struct track {
  GMutex lock;
  GCond cond;
  unsigned done;
  unsigned dead_calls;
  int dead_err;
  char *dead_why;
};

struct slot {
  struct nbd_cmd cmd;        /* first: done() gets &slot->cmd */
  struct track *tr;
  unsigned calls;
  int err;
};

static void
track_init(struct track *tr)
{
  memset(tr, 0, sizeof *tr);
  g_mutex_init(&tr->lock);
  g_cond_init(&tr->cond);
}

static void
track_clear(struct track *tr)
{
  g_free(tr->dead_why);
  g_mutex_clear(&tr->lock);
  g_cond_clear(&tr->cond);
}

static void
slot_done(struct nbd_cmd *cmd, int err)
{
  struct slot *s = (struct slot *) cmd;

  g_mutex_lock(&s->tr->lock);
  s->calls++;
  s->err = err;
  s->tr->done++;
  g_cond_broadcast(&s->tr->cond);
  g_mutex_unlock(&s->tr->lock);
}

static void
on_dead(struct nbd_conn *conn, int err, const char *why, void *user)
{
  struct track *tr = user;

  g_mutex_lock(&tr->lock);
  tr->dead_calls++;
  tr->dead_err = err;
  g_free(tr->dead_why);
  tr->dead_why = g_strdup(why);
  g_cond_broadcast(&tr->cond);
  g_mutex_unlock(&tr->lock);
}

/* Waits until *counter reaches n; false after WAIT_S seconds. */
static bool
track_wait(struct track *tr, const unsigned *counter, unsigned n)
{
  gint64 deadline = g_get_monotonic_time() + WAIT_S * G_TIME_SPAN_SECOND;
  bool ok = true;

  g_mutex_lock(&tr->lock);
  while (*counter < n && ok)
    ok = g_cond_wait_until(&tr->cond, &tr->lock, deadline);
  ok = *counter >= n;
  g_mutex_unlock(&tr->lock);
  return ok;
}

static void
slot_set(struct slot *s, struct track *tr, uint16_t type, uint16_t flags,
         uint64_t offset, uint32_t count)
{
  memset(s, 0, sizeof *s);
  s->tr = tr;
  s->cmd.type = type;
  s->cmd.flags = flags;
  s->cmd.offset = offset;
  s->cmd.count = count;
  s->cmd.done = slot_done;
  if (type == NBD_CMD_READ || type == NBD_CMD_WRITE) {
    s->cmd.buf = g_malloc(count ? count : 1);
    if (type == NBD_CMD_WRITE)
      sc_pattern(s->cmd.buf, offset, count);
    else
      memset(s->cmd.buf, 0xaa, count);
  }
}

static void
slot_clear(struct slot *s)
{
  g_free(s->cmd.buf);
  g_free(s->cmd.extents);
}

/* Frees the n slots of a test, its tracker and its scripted server. */
static void
batch_free(struct scripted *sc, struct track *tr, struct slot *slots,
           unsigned n)
{
  for (unsigned i = 0; i < n; i++)
    slot_clear(&slots[i]);
  track_clear(tr);
  scripted_free(sc);
}

/* ---- The server's side of transmission --------------------------------- */

struct req {
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint32_t count;
};

/* Reads one request (X2); a WRITE's payload must be the pattern of its
 * range, sent straight after the header. */
static bool
read_request(struct scripted *sc, struct req *r)
{
  uint8_t hdr[28];

  if (!scripted_read(sc, hdr, sizeof hdr))
    return false;
  if (nbd_get32(hdr) != NBD_REQUEST_MAGIC) {
    scripted_fail(sc, "request magic 0x%08x", nbd_get32(hdr));
    return false;
  }
  r->flags = nbd_get16(hdr + 4);
  r->type = nbd_get16(hdr + 6);
  r->cookie = nbd_get64(hdr + 8);
  r->offset = nbd_get64(hdr + 16);
  r->count = nbd_get32(hdr + 24);

  if (r->type == NBD_CMD_WRITE) {
    g_autofree uint8_t *got = g_malloc(r->count);
    g_autofree uint8_t *want = g_malloc(r->count);

    if (!scripted_read(sc, got, r->count))
      return false;
    sc_pattern(want, r->offset, r->count);
    if (memcmp(got, want, r->count) != 0) {
      scripted_fail(sc, "WRITE payload at %" G_GUINT64_FORMAT " is wrong",
                    r->offset);
      return false;
    }
  }
  return true;
}

/* The read data of cmd, chunked as the index asks: whole, or halves in
 * reverse order, or a data half and a hole half. */
#define SHAPE_WHOLE 0
#define SHAPE_HALVES 1
#define SHAPE_HOLE 2

struct serve {
  unsigned n;                /* requests to read before answering */
  struct req reqs[64];
  size_t received_after;     /* bytes the client had sent by then */
};

static void
data_chunk(GByteArray *b, uint16_t flags, uint64_t cookie, uint64_t off,
           uint32_t len)
{
  g_autofree uint8_t *p = g_malloc(len);

  sc_pattern(p, off, len);
  sc_chunk_data(b, flags, cookie, off, p, len);
}

static bool
serve_out_of_order(struct scripted *sc, void *user)
{
  struct serve *s = user;
  g_autoptr(GByteArray) b = g_byte_array_new();
  g_autoptr(GHashTable) seen = g_hash_table_new(g_int64_hash,
                                                g_int64_equal);

  for (unsigned i = 0; i < s->n; i++) {
    if (!read_request(sc, &s->reqs[i]))
      return false;

    /* X1: no two commands in flight share a cookie. */
    if (!g_hash_table_add(seen, &s->reqs[i].cookie)) {
      scripted_fail(sc, "cookie %" G_GUINT64_FORMAT " used twice",
                    s->reqs[i].cookie);
      return false;
    }
  }

  /* X6: first, in reverse order, the writes' replies and the second
   * halves of the reads; then the first halves, in order. */
  for (unsigned i = s->n; i-- > 0;) {
    const struct req *r = &s->reqs[i];
    uint32_t half = r->count / 2;

    if (r->type == NBD_CMD_WRITE)
      sc_simple(b, r->cookie, 0);
    else if (i % 3 == SHAPE_WHOLE)
      data_chunk(b, NBD_REPLY_FLAG_DONE, r->cookie, r->offset, r->count);
    else if (i % 3 == SHAPE_HALVES)
      data_chunk(b, 0, r->cookie, r->offset + half, half);
    else
      sc_chunk_hole(b, 0, r->cookie, r->offset + half, half);
  }
  for (unsigned i = 0; i < s->n; i++) {
    const struct req *r = &s->reqs[i];

    if (r->type == NBD_CMD_READ && i % 3 != SHAPE_WHOLE)
      data_chunk(b, NBD_REPLY_FLAG_DONE, r->cookie, r->offset,
                 r->count / 2);
  }
  return scripted_write(sc, b->data, b->len);
}

/* Reads s->n requests and answers none. */
static bool
swallow(struct scripted *sc, void *user)
{
  struct serve *s = user;

  for (unsigned i = 0; i < s->n; i++)
    if (!read_request(sc, &s->reqs[i]))
      return false;
  s->received_after = scripted_received(sc)->len;
  return true;
}

static bool
send_bad_magic(struct scripted *sc, void *user)
{
  static const uint8_t bad[16] = { 0x12, 0x34, 0x56, 0x78 };

  return scripted_write(sc, bad, sizeof bad);
}

/* Answers every request read by swallow() with a simple success; reads
 * get a single data chunk. */
static bool
answer_all(struct scripted *sc, void *user)
{
  struct serve *s = user;
  g_autoptr(GByteArray) b = g_byte_array_new();

  for (unsigned i = 0; i < s->n; i++) {
    const struct req *r = &s->reqs[i];

    if (r->type == NBD_CMD_READ)
      data_chunk(b, NBD_REPLY_FLAG_DONE, r->cookie, r->offset, r->count);
    else
      sc_simple(b, r->cookie, 0);
  }
  return scripted_write(sc, b->data, b->len);
}

/* D4: the DISC request is all zeroes but magic and type, with a cookie
 * that names no command in flight. */
static bool
is_disc(const uint8_t *got, size_t len, void *user, GString *why)
{
  const struct serve *s = user;
  uint64_t cookie = nbd_get64(got + 8);

  if (nbd_get32(got) != NBD_REQUEST_MAGIC || nbd_get16(got + 4) != 0 ||
      nbd_get16(got + 6) != NBD_CMD_DISC || nbd_get64(got + 16) != 0 ||
      nbd_get32(got + 24) != 0) {
    g_string_append_printf(why, "not a clean NBD_CMD_DISC: type %s "
                           "flags 0x%x offset %" G_GUINT64_FORMAT
                           " length %u", nbd_cmd_name(nbd_get16(got + 6)),
                           nbd_get16(got + 4), nbd_get64(got + 16),
                           nbd_get32(got + 24));
    return false;
  }
  for (unsigned i = 0; s != NULL && i < s->n; i++) {
    if (s->reqs[i].cookie == cookie) {
      g_string_append(why, "DISC reuses a cookie in flight");
      return false;
    }
  }
  return true;
}

/* ---- X6: many commands, answered out of order --------------------------- */

#define N_READS  32
#define N_WRITES 8

static void
test_out_of_order(void)
{
  static const struct export e = {
    NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH, 512, true, true,
  };
  struct scripted *sc = scripted_new();
  struct serve serve = { .n = N_READS + N_WRITES };
  struct slot slots[N_READS + N_WRITES];
  struct track tr;
  struct nbd_conn *c;

  script_handshake(sc, &e);
  scripted_call(sc, serve_out_of_order, &serve);
  scripted_expect_pred(sc, 28, is_disc, NULL, "NBD_CMD_DISC");
  scripted_close(sc);

  track_init(&tr);
  c = start_conn(sc);
  nbd_conn_set_dead_cb(c, on_dead, &tr);

  /* Reads of 4096 bytes every 8 KiB, writes of 2048 in the gaps. */
  for (unsigned i = 0; i < N_READS; i++)
    slot_set(&slots[i], &tr, NBD_CMD_READ, 0, i * 8192, 4096);
  for (unsigned i = 0; i < N_WRITES; i++)
    slot_set(&slots[N_READS + i], &tr, NBD_CMD_WRITE, 0,
             i * 8192 + 4096, 2048);
  for (unsigned i = 0; i < G_N_ELEMENTS(slots); i++)
    g_assert_cmpint(nbd_conn_submit(c, &slots[i].cmd), ==, 0);

  g_assert_true(track_wait(&tr, &tr.done, G_N_ELEMENTS(slots)));
  g_assert_cmpuint(nbd_conn_in_flight(c), ==, 0);
  nbd_conn_close(c, 5000);
  scripted_finish(sc);
  scripted_assert_clean(sc);

  for (unsigned i = 0; i < G_N_ELEMENTS(slots); i++) {
    g_assert_cmpuint(slots[i].calls, ==, 1);
    g_assert_cmpint(slots[i].err, ==, 0);
  }
  for (unsigned i = 0; i < N_READS; i++) {
    const uint8_t *p = slots[i].cmd.buf;
    uint8_t want[4096];

    /* X17: the hole half of every third read reads as zeroes. */
    sc_pattern(want, i * 8192, 4096);
    if (i % 3 == SHAPE_HOLE)
      memset(want + 2048, 0, 2048);
    g_assert_cmpmem(p, 4096, want, 4096);
  }
  g_assert_cmpuint(tr.dead_calls, ==, 0);

  for (unsigned i = 0; i < G_N_ELEMENTS(slots); i++)
    slot_clear(&slots[i]);
  track_clear(&tr);
  scripted_free(sc);
}

/* ---- D9: a violation fails everything, once ---------------------------- */

static void
test_violation_fails_all(void)
{
  static const struct export e = { NBD_FLAG_HAS_FLAGS, 0, true, true };
  struct scripted *sc = scripted_new();
  struct serve serve = { .n = 3 };
  struct slot slots[3], late;
  struct track tr;
  struct nbd_conn *c;

  script_handshake(sc, &e);
  scripted_call(sc, swallow, &serve);
  scripted_call(sc, send_bad_magic, NULL);

  track_init(&tr);
  c = start_conn(sc);
  nbd_conn_set_dead_cb(c, on_dead, &tr);
  slot_set(&slots[0], &tr, NBD_CMD_READ, 0, 0, 4096);
  slot_set(&slots[1], &tr, NBD_CMD_READ, 0, 65536, 512);
  slot_set(&slots[2], &tr, NBD_CMD_BLOCK_STATUS, 0, 0, 65536);
  for (unsigned i = 0; i < 3; i++)
    g_assert_cmpint(nbd_conn_submit(c, &slots[i].cmd), ==, 0);

  g_assert_true(track_wait(&tr, &tr.done, 3));
  g_assert_true(track_wait(&tr, &tr.dead_calls, 1));
  for (unsigned i = 0; i < 3; i++) {
    g_assert_cmpuint(slots[i].calls, ==, 1);
    g_assert_cmpint(slots[i].err, ==, EIO);
  }
  g_assert_true(nbd_conn_is_dead(c));
  g_assert_nonnull(strstr(nbd_conn_death(c), "V20"));

  /* Dead is dead: nothing more is sent, and done is never called. */
  slot_set(&late, &tr, NBD_CMD_READ, 0, 0, 512);
  g_assert_cmpint(nbd_conn_submit(c, &late.cmd), ==, -ENOTCONN);
  nbd_conn_close(c, 5000);
  scripted_finish(sc);
  scripted_assert_clean(sc);

  g_assert_cmpuint(late.calls, ==, 0);
  g_assert_cmpuint(tr.dead_calls, ==, 1);
  g_assert_cmpint(tr.dead_err, ==, EPROTO);
  g_assert_nonnull(strstr(tr.dead_why, "V20"));

  /* D2: after a violation the client hangs up without a DISC. */
  g_assert_cmpuint(scripted_received(sc)->len, ==, serve.received_after);

  for (unsigned i = 0; i < 3; i++)
    slot_clear(&slots[i]);
  slot_clear(&late);
  track_clear(&tr);
  scripted_free(sc);
}

static void
test_eof_fails_all(void)
{
  static const struct export e = { NBD_FLAG_HAS_FLAGS, 0, false, false };
  struct scripted *sc = scripted_new();
  struct serve serve = { .n = 2 };
  struct slot slots[2];
  struct track tr;
  struct nbd_conn *c;

  /* D9, X16: the server dies in the middle of a read's payload. */
  script_handshake(sc, &e);
  scripted_call(sc, swallow, &serve);
  sc_simple(scripted_out(sc), 1, 0);
  for (int i = 0; i < 100; i++)
    sc_be16(scripted_out(sc), 0);
  scripted_close(sc);

  track_init(&tr);
  c = start_conn(sc);
  nbd_conn_set_dead_cb(c, on_dead, &tr);
  slot_set(&slots[0], &tr, NBD_CMD_READ, 0, 0, 4096);
  slot_set(&slots[1], &tr, NBD_CMD_WRITE, 0, 4096, 4096);
  for (unsigned i = 0; i < 2; i++)
    g_assert_cmpint(nbd_conn_submit(c, &slots[i].cmd), ==, 0);

  g_assert_true(track_wait(&tr, &tr.done, 2));
  g_assert_true(track_wait(&tr, &tr.dead_calls, 1));
  nbd_conn_close(c, 5000);
  scripted_finish(sc);
  scripted_assert_clean(sc);

  g_assert_cmpint(slots[0].err, ==, EIO);
  g_assert_cmpint(slots[1].err, ==, EIO);
  g_assert_cmpuint(tr.dead_calls, ==, 1);
  g_assert_cmpint(tr.dead_err, ==, ECONNRESET);
  g_assert_nonnull(strstr(tr.dead_why, "closed"));

  batch_free(sc, &tr, slots, 2);
}

/* ---- Synchronous use and block status ----------------------------------- */

static void
test_run_simple_and_status(void)
{
  static const struct export e = { NBD_FLAG_HAS_FLAGS, 0, true, true };
  static const uint32_t ext[] = { 4096, 0, 8192, 3, 65536, 3 };
  struct scripted *sc = scripted_new();
  struct serve one = { .n = 1 };
  struct slot r, bs;
  struct track tr;
  struct nbd_conn *c;
  uint8_t want[1024];

  script_handshake(sc, &e);
  scripted_call(sc, swallow, &one);
  scripted_call(sc, answer_all, &one);
  scripted_expect_request(sc, NBD_CMD_BLOCK_STATUS);
  sc_chunk_status(scripted_out(sc), NBD_REPLY_FLAG_DONE, 2, CTX, ext, 3);
  scripted_expect_pred(sc, 28, is_disc, NULL, "NBD_CMD_DISC");
  scripted_close(sc);

  track_init(&tr);
  c = start_conn(sc);
  g_assert_true(nbd_conn_info(c)->block_status);
  g_assert_cmpuint(nbd_conn_info(c)->alloc_ctx_id, ==, CTX);

  slot_set(&r, &tr, NBD_CMD_READ, 0, 3072, 1024);
  g_assert_cmpint(nbd_conn_run(c, &r.cmd), ==, 0);
  sc_pattern(want, 3072, sizeof want);
  g_assert_cmpmem(r.cmd.buf, 1024, want, sizeof want);

  /* B7, B8: clipped to [0, 16384), the two ZERO|HOLE extents merged. */
  slot_set(&bs, &tr, NBD_CMD_BLOCK_STATUS, 0, 0, 16384);
  g_assert_cmpint(nbd_conn_run(c, &bs.cmd), ==, 0);
  g_assert_cmpuint(bs.cmd.n_extents, ==, 2);
  g_assert_cmpuint(bs.cmd.extents[0].offset, ==, 0);
  g_assert_cmpuint(bs.cmd.extents[0].length, ==, 4096);
  g_assert_cmpuint(bs.cmd.extents[0].flags, ==, 0);
  g_assert_cmpuint(bs.cmd.extents[1].offset, ==, 4096);
  g_assert_cmpuint(bs.cmd.extents[1].length, ==, 12288);
  g_assert_cmpuint(bs.cmd.extents[1].flags, ==, 3);

  nbd_conn_close(c, 5000);
  scripted_finish(sc);
  scripted_assert_clean(sc);
  slot_clear(&r);
  slot_clear(&bs);
  track_clear(&tr);
  scripted_free(sc);
}

/* ---- S7, X7, X13, O9: refused before sending ---------------------------- */

struct refusal {
  uint16_t type;
  uint16_t flags;
  uint64_t offset;
  uint32_t count;
  int rc;
  const char *why;
};

static void
submit_refusals(const struct export *e, const struct refusal *list,
                size_t n)
{
  struct scripted *sc = scripted_new();
  struct track tr;
  struct nbd_conn *c;

  /* After the handshake the first thing on the wire must be the DISC:
   * a refused command that went out anyway shows up here. */
  script_handshake(sc, e);
  scripted_expect_pred(sc, 28, is_disc, NULL, "NBD_CMD_DISC");
  scripted_close(sc);

  track_init(&tr);
  c = start_conn(sc);
  for (size_t i = 0; i < n; i++) {
    struct slot s;
    int rc;

    slot_set(&s, &tr, list[i].type, list[i].flags, list[i].offset,
             list[i].count);
    rc = nbd_conn_submit(c, &s.cmd);
    if (rc != list[i].rc)
      g_error("%s: submit returned %d, expected %d", list[i].why, rc,
              list[i].rc);
    slot_clear(&s);
  }
  g_assert_cmpuint(nbd_conn_in_flight(c), ==, 0);
  nbd_conn_close(c, 5000);
  scripted_finish(sc);
  scripted_assert_clean(sc);
  g_assert_cmpuint(tr.done, ==, 0);
  track_clear(&tr);
  scripted_free(sc);
}

static void
test_refusals(void)
{
  /* min_block 4096, FLUSH and FUA but no TRIM, WRITE_ZEROES, CACHE or
   * DF; structured replies without a context. */
  static const struct export e = {
    NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA,
    4096, true, false,
  };
  static const struct refusal list[] = {
    { NBD_CMD_READ, 0, 512, 4096, -EINVAL, "S7 misaligned offset" },
    { NBD_CMD_READ, 0, 0, 4096 + 512, -EINVAL, "S7 misaligned length" },
    { NBD_CMD_WRITE, 0, 4096, 1, -EINVAL, "S7 misaligned write" },
    { NBD_CMD_READ, 0, 0, 0, -EINVAL, "X8 empty read" },
    { NBD_CMD_READ, 0, SIZE - 4096, 8192, -EINVAL, "S7 read past end" },
    { NBD_CMD_READ, 0, SIZE, 4096, -EINVAL, "S7 read at end" },
    { NBD_CMD_READ, 0, UINT64_MAX - 4095, 4096, -EINVAL,
      "S7 read with wrapping end" },
    { NBD_CMD_WRITE, 0, SIZE - 4096, 8192, -ENOSPC, "S15 write past end" },
    { NBD_CMD_WRITE, 0, UINT64_MAX - 4095, 4096, -ENOSPC,
      "S15 write with wrapping end" },
    { NBD_CMD_READ, 0, 0, (1 << 20) + 4096, -EINVAL,
      "S9 read over max payload" },
    { NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 4096, -EINVAL,
      "X13 DF without SEND_DF" },
    { NBD_CMD_READ, NBD_CMD_FLAG_FUA, 0, 4096, -EINVAL,
      "X13 FUA on a read" },
    { NBD_CMD_READ, NBD_CMD_FLAG_REQ_ONE, 0, 4096, -EINVAL,
      "X13 REQ_ONE on a read" },
    { NBD_CMD_WRITE, 0x8000, 0, 4096, -EINVAL, "X13 unknown flag" },
    { NBD_CMD_FLUSH, 0, 4096, 0, -EINVAL, "X11 flush with offset" },
    { NBD_CMD_FLUSH, 0, 0, 4096, -EINVAL, "X11 flush with length" },
    { NBD_CMD_FLUSH, NBD_CMD_FLAG_FUA, 0, 0, -EINVAL, "O4 FUA on flush" },
    { NBD_CMD_TRIM, 0, 0, 4096, -EOPNOTSUPP, "X12 TRIM without SEND_TRIM" },
    { NBD_CMD_WRITE_ZEROES, 0, 0, 4096, -EOPNOTSUPP,
      "X12b WRITE_ZEROES without SEND_WRITE_ZEROES" },
    { NBD_CMD_CACHE, 0, 0, 4096, -EOPNOTSUPP,
      "X12a CACHE without SEND_CACHE" },
    { NBD_CMD_BLOCK_STATUS, 0, 0, 4096, -EOPNOTSUPP,
      "X12c BLOCK_STATUS without a context" },
    { NBD_CMD_DISC, 0, 0, 0, -EINVAL, "D4 DISC only from close" },
    { 9, 0, 0, 4096, -EINVAL, "X12e undocumented command" },
  };

  submit_refusals(&e, list, G_N_ELEMENTS(list));
}

static void
test_refusals_no_fua(void)
{
  static const struct export e = {
    NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_TRIM |
    NBD_FLAG_SEND_WRITE_ZEROES, 512, false, false,
  };
  static const struct refusal list[] = {
    { NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 0, 4096, -EINVAL,
      "O4 FUA without SEND_FUA" },
    { NBD_CMD_TRIM, NBD_CMD_FLAG_FUA, 0, 4096, -EINVAL,
      "O4 FUA on TRIM without SEND_FUA" },
    { NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_FAST_ZERO, 0, 4096, -EINVAL,
      "X13 FAST_ZERO without SEND_FAST_ZERO" },
    { NBD_CMD_FLUSH, 0, 0, 0, -EOPNOTSUPP, "X11 FLUSH without SEND_FLUSH" },
    { NBD_CMD_BLOCK_STATUS, 0, 0, 4096, -EOPNOTSUPP,
      "B1 BLOCK_STATUS without structured replies" },
  };

  submit_refusals(&e, list, G_N_ELEMENTS(list));
}

static void
test_refusals_read_only(void)
{
  static const struct export e = {
    NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_TRIM |
    NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FUA, 512, true, true,
  };
  static const struct refusal list[] = {
    { NBD_CMD_WRITE, 0, 0, 4096, -EROFS, "O9 write" },
    { NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 0, 4096, -EROFS, "O9 FUA write" },
    { NBD_CMD_TRIM, 0, 0, 4096, -EROFS, "O9 trim" },
    { NBD_CMD_WRITE_ZEROES, 0, 0, 4096, -EROFS, "O9 write zeroes" },
  };

  submit_refusals(&e, list, G_N_ELEMENTS(list));
}

/* ---- Corking: a batch of requests in one write ------------------------- */

/* The server's side of a batch: after the handshake it reads
 * serve->n requests, answers them all, then expects the DISC. */
static void
script_batch(struct scripted *sc, const struct export *e,
             struct serve *serve)
{
  script_handshake(sc, e);
  scripted_call(sc, swallow, serve);
  scripted_call(sc, answer_all, serve);
  scripted_expect_pred(sc, 28, is_disc, serve, "NBD_CMD_DISC");
  scripted_close(sc);
}

/* Each of the n slots was answered once, without error, and reached
 * the server in its place (X2). */
static void
check_batch(const struct slot *slots, const struct serve *serve,
            unsigned n)
{
  for (unsigned i = 0; i < n; i++) {
    g_assert_cmpuint(slots[i].calls, ==, 1);
    g_assert_cmpint(slots[i].err, ==, 0);
    g_assert_cmpuint(serve->reqs[i].type, ==, slots[i].cmd.type);
    g_assert_cmpuint(serve->reqs[i].offset, ==, slots[i].cmd.offset);
  }
}

/* How many of this process's threads are connection writers, by the
 * name conn.c gives them. */
static unsigned
writer_threads(void)
{
  g_autoptr(GDir) dir = g_dir_open("/proc/self/task", 0, NULL);
  const char *tid;
  unsigned n = 0;

  g_assert_nonnull(dir);
  while ((tid = g_dir_read_name(dir)) != NULL) {
    g_autofree char *path = g_strdup_printf("/proc/self/task/%s/comm", tid);
    g_autofree char *comm = NULL;

    if (g_file_get_contents(path, &comm, NULL, NULL) &&
        strcmp(g_strchomp(comm), "nbd-writer") == 0)
      n++;
  }
  return n;
}

/* A new thread names itself as it starts: allow it a moment. */
static bool
wait_writer_threads(unsigned n)
{
  gint64 deadline = g_get_monotonic_time() + WAIT_S * G_TIME_SPAN_SECOND;

  while (writer_threads() != n) {
    if (g_get_monotonic_time() > deadline)
      return false;
    g_usleep(10 * G_TIME_SPAN_MILLISECOND);
  }
  return true;
}

static void
check_read_pattern(const struct slot *s)
{
  g_autofree uint8_t *want = g_malloc(s->cmd.count);

  sc_pattern(want, s->cmd.offset, s->cmd.count);
  g_assert_cmpmem(s->cmd.buf, s->cmd.count, want, s->cmd.count);
}

static void
test_cork_holds_until_uncork(void)
{
  static const struct export e = { NBD_FLAG_HAS_FLAGS, 0, true, true };
  struct scripted *sc = scripted_new();
  struct serve serve = { .n = 3 };
  struct slot slots[3];
  struct track tr;
  struct nbd_conn *c;

  /* While corked nothing reaches the server; uncorking sends the three
   * requests whole and in order (X2), and each is answered once. */
  script_handshake(sc, &e);
  scripted_expect_silence(sc, 300);
  scripted_call(sc, swallow, &serve);
  scripted_call(sc, answer_all, &serve);
  scripted_expect_pred(sc, 28, is_disc, &serve, "NBD_CMD_DISC");
  scripted_close(sc);

  track_init(&tr);
  c = start_conn(sc);
  slot_set(&slots[0], &tr, NBD_CMD_READ, 0, 0, 4096);
  slot_set(&slots[1], &tr, NBD_CMD_WRITE, 0, 65536, 8192);
  slot_set(&slots[2], &tr, NBD_CMD_READ, 0, 16384, 4096);
  nbd_cork();
  for (unsigned i = 0; i < 3; i++)
    g_assert_cmpint(nbd_conn_submit(c, &slots[i].cmd), ==, 0);
  g_usleep(500 * G_TIME_SPAN_MILLISECOND);
  g_assert_cmpuint(tr.done, ==, 0);
  nbd_uncork();
  g_assert_true(track_wait(&tr, &tr.done, 3));

  check_batch(slots, &serve, 3);
  check_read_pattern(&slots[0]);
  check_read_pattern(&slots[2]);

  nbd_conn_close(c, 5000);
  scripted_finish(sc);
  scripted_assert_clean(sc);
  batch_free(sc, &tr, slots, 3);
}

static void
test_cork_close_sends_first(void)
{
  static const struct export e = { NBD_FLAG_HAS_FLAGS, 0, true, true };
  struct scripted *sc = scripted_new();
  struct serve serve = { .n = 2 };
  struct slot slots[2];
  struct track tr;
  struct nbd_conn *c;

  /* D4: closing while corked writes the queued requests before the
   * DISC, never after it, and waits for their replies (D5). */
  script_batch(sc, &e, &serve);

  track_init(&tr);
  c = start_conn(sc);
  slot_set(&slots[0], &tr, NBD_CMD_READ, 0, 0, 4096);
  slot_set(&slots[1], &tr, NBD_CMD_WRITE, 0, 8192, 4096);
  nbd_cork();
  for (unsigned i = 0; i < 2; i++)
    g_assert_cmpint(nbd_conn_submit(c, &slots[i].cmd), ==, 0);
  nbd_conn_close(c, 5000);
  scripted_finish(sc);
  scripted_assert_clean(sc);

  for (unsigned i = 0; i < 2; i++) {
    g_assert_cmpuint(slots[i].calls, ==, 1);
    g_assert_cmpint(slots[i].err, ==, 0);
  }
  check_read_pattern(&slots[0]);
  nbd_uncork(); /* nothing is left to send: a no-op */

  batch_free(sc, &tr, slots, 2);
}

static void
test_cork_large_in_order(void)
{
  static const struct export e = { NBD_FLAG_HAS_FLAGS, 0, true, true };
  struct scripted *sc = scripted_new();
  struct serve serve = { .n = 3 };
  struct slot slots[3];
  struct track tr;
  struct nbd_conn *c;

  /* A batch with a large payload is written by the connection's writer
   * thread.  The batches after it keep their place on the wire (X2),
   * and a close still sends all of them before the DISC (D4). */
  script_batch(sc, &e, &serve);

  track_init(&tr);
  c = start_conn(sc);
  slot_set(&slots[0], &tr, NBD_CMD_WRITE, 0, 0, 512 * 1024);
  slot_set(&slots[1], &tr, NBD_CMD_READ, 0, 512 * 1024, 4096);
  slot_set(&slots[2], &tr, NBD_CMD_READ, 0, 768 * 1024, 4096);
  nbd_cork();
  g_assert_cmpint(nbd_conn_submit(c, &slots[0].cmd), ==, 0);
  nbd_uncork();
  g_assert_true(wait_writer_threads(1));
  nbd_cork();
  g_assert_cmpint(nbd_conn_submit(c, &slots[1].cmd), ==, 0);
  nbd_uncork();
  nbd_cork();
  g_assert_cmpint(nbd_conn_submit(c, &slots[2].cmd), ==, 0);
  nbd_conn_close(c, 5000);
  scripted_finish(sc);
  scripted_assert_clean(sc);

  check_batch(slots, &serve, 3);
  check_read_pattern(&slots[1]);
  check_read_pattern(&slots[2]);
  g_assert_cmpuint(writer_threads(), ==, 0); /* joined by the close */

  batch_free(sc, &tr, slots, 3);
}

/* ---- D4, D5, D6: closing --------------------------------------------- */

static void
test_close_drains_then_disc(void)
{
  static const struct export e = { NBD_FLAG_HAS_FLAGS, 0, true, true };
  struct scripted *sc = scripted_new();
  struct serve serve = { .n = 2 };
  struct slot slots[2];
  struct track tr;
  struct nbd_conn *c;

  /* D5: with two reads unanswered the client must not send DISC; once
   * they are answered it must (D4), and then the server closes (D6). */
  script_handshake(sc, &e);
  scripted_call(sc, swallow, &serve);
  scripted_expect_silence(sc, 300);
  scripted_call(sc, answer_all, &serve);
  scripted_expect_pred(sc, 28, is_disc, &serve, "NBD_CMD_DISC");
  scripted_close(sc);

  track_init(&tr);
  c = start_conn(sc);
  nbd_conn_set_dead_cb(c, on_dead, &tr);
  slot_set(&slots[0], &tr, NBD_CMD_READ, 0, 0, 4096);
  slot_set(&slots[1], &tr, NBD_CMD_READ, 0, 8192, 4096);
  for (unsigned i = 0; i < 2; i++)
    g_assert_cmpint(nbd_conn_submit(c, &slots[i].cmd), ==, 0);
  nbd_conn_close(c, 5000);
  scripted_finish(sc);
  scripted_assert_clean(sc);

  for (unsigned i = 0; i < 2; i++) {
    g_assert_cmpuint(slots[i].calls, ==, 1);
    g_assert_cmpint(slots[i].err, ==, 0);
  }
  /* The server's close after DISC is the expected end, not a death. */
  g_assert_cmpuint(tr.dead_calls, ==, 0);

  batch_free(sc, &tr, slots, 2);
}

static void
test_close_server_never_closes(void)
{
  static const struct export e = { NBD_FLAG_HAS_FLAGS, 0, true, true };
  struct scripted *sc = scripted_new();
  struct nbd_conn *c;
  gint64 start, ms;

  /* D6: the server takes the DISC and keeps the socket open. */
  script_handshake(sc, &e);
  scripted_expect_pred(sc, 28, is_disc, NULL, "NBD_CMD_DISC");
  scripted_expect_eof(sc);

  c = start_conn(sc);
  start = g_get_monotonic_time();
  nbd_conn_close(c, 300);
  ms = (g_get_monotonic_time() - start) / 1000;
  scripted_finish(sc);
  scripted_assert_clean(sc);

  g_assert_cmpint(ms, >=, 250);
  g_assert_cmpint(ms, <, 3000);
  scripted_free(sc);
}

static void
test_close_with_unanswered(void)
{
  static const struct export e = { NBD_FLAG_HAS_FLAGS, 0, true, true };
  struct scripted *sc = scripted_new();
  struct serve serve = { .n = 1 };
  struct slot s;
  struct track tr;
  struct nbd_conn *c;
  gint64 start, ms;

  /* D5, D6: a read that is never answered holds the close only until
   * its timeout; then the read fails with EIO. */
  script_handshake(sc, &e);
  scripted_call(sc, swallow, &serve);
  scripted_expect_eof(sc);

  track_init(&tr);
  c = start_conn(sc);
  slot_set(&s, &tr, NBD_CMD_READ, 0, 0, 4096);
  g_assert_cmpint(nbd_conn_submit(c, &s.cmd), ==, 0);
  start = g_get_monotonic_time();
  nbd_conn_close(c, 300);
  ms = (g_get_monotonic_time() - start) / 1000;
  scripted_finish(sc);
  scripted_assert_clean(sc);

  g_assert_cmpint(ms, >=, 250);
  g_assert_cmpint(ms, <, 3000);
  g_assert_cmpuint(s.calls, ==, 1);
  g_assert_cmpint(s.err, ==, EIO);

  slot_clear(&s);
  track_clear(&tr);
  scripted_free(sc);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);

  g_test_add_func("/nbdproto/conn/X6/out-of-order-replies",
                  test_out_of_order);
  g_test_add_func("/nbdproto/conn/D9/violation-fails-all-once",
                  test_violation_fails_all);
  g_test_add_func("/nbdproto/conn/D9/eof-mid-payload-fails-all",
                  test_eof_fails_all);
  g_test_add_func("/nbdproto/conn/B7/run-read-and-block-status",
                  test_run_simple_and_status);
  g_test_add_func("/nbdproto/conn/S7/submit-refusals", test_refusals);
  g_test_add_func("/nbdproto/conn/O4/submit-refusals-without-fua",
                  test_refusals_no_fua);
  g_test_add_func("/nbdproto/conn/O9/submit-refusals-read-only",
                  test_refusals_read_only);
  g_test_add_func("/nbdproto/conn/X2/cork-holds-until-uncork",
                  test_cork_holds_until_uncork);
  g_test_add_func("/nbdproto/conn/D4/cork-close-sends-first",
                  test_cork_close_sends_first);
  g_test_add_func("/nbdproto/conn/X2/cork-large-in-order",
                  test_cork_large_in_order);
  g_test_add_func("/nbdproto/conn/D5/close-drains-then-disc",
                  test_close_drains_then_disc);
  g_test_add_func("/nbdproto/conn/D6/close-when-server-never-closes",
                  test_close_server_never_closes);
  g_test_add_func("/nbdproto/conn/D6/close-with-unanswered-command",
                  test_close_with_unanswered);
  return g_test_run();
}
