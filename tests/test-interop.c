/* Interop: nbdproto against the three servers people run, nbdkit,
 * nbd-server and qemu-nbd, each started by the test on a Unix socket or a
 * free loopback port and always stopped (testlib.h).
 *
 * Every check compares concrete bytes or values with an independent
 * source: the server's backing file, read directly or through
 * `qemu-img convert`; the output of libnbd's `nbdcopy`, a reader that
 * shares no code with nbdfs; or a pattern whose every byte is known.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "nbdproto.h"
#include "testlib.h"

#define KiB ((uint64_t) 1024)
#define MiB (1024 * KiB)

/* A server that stops answering fails the test within this time rather
 * than hanging it until meson's timeout. */
#define IO_TIMEOUT_US (30 * G_USEC_PER_SEC)
#define CLOSE_TIMEOUT_MS 5000

/* The size of every export that the write tests use: room for the 8 MiB
 * write and the small ones around it. */
#define WRITE_EXPORT_SIZE (16 * MiB)

/* ---- Commands in flight ------------------------------------------------ */

/* A group of commands submitted together; their completions count down
 * `pending` from the connection's reader thread. */
struct batch {
  GMutex lock;
  GCond cond;
  unsigned pending;
  unsigned completed;
};

struct op {
  struct nbd_cmd cmd;
  struct batch *batch;
  int err;          /* the positive errno given to done, -1 before */
  int seq;          /* the order in which done ran, -1 before */
};

static void
batch_init(struct batch *b)
{
  memset(b, 0, sizeof *b);
  g_mutex_init(&b->lock);
  g_cond_init(&b->cond);
}

static void
batch_clear(struct batch *b)
{
  g_mutex_clear(&b->lock);
  g_cond_clear(&b->cond);
}

static void
op_done(struct nbd_cmd *cmd, int err)
{
  struct op *op = cmd->user;
  struct batch *b = op->batch;

  g_mutex_lock(&b->lock);
  op->err = err;
  op->seq = b->completed++;
  b->pending--;
  g_cond_broadcast(&b->cond);
  g_mutex_unlock(&b->lock);
}

/* Submits op as part of b.  Returns what nbd_conn_submit() returned; a
 * command refused before sending is not counted as pending. */
static int
op_submit(struct nbd_conn *conn, struct batch *b, struct op *op)
{
  int rc;

  op->batch = b;
  op->err = -1;
  op->seq = -1;
  op->cmd.done = op_done;
  op->cmd.user = op;

  /* Counted first: the reply may complete op before submit returns. */
  g_mutex_lock(&b->lock);
  b->pending++;
  g_mutex_unlock(&b->lock);

  rc = nbd_conn_submit(conn, &op->cmd);
  if (rc < 0) {
    g_mutex_lock(&b->lock);
    b->pending--;
    g_mutex_unlock(&b->lock);
  }
  return rc;
}

static void
batch_wait(struct batch *b)
{
  gint64 deadline = g_get_monotonic_time() + IO_TIMEOUT_US;

  g_mutex_lock(&b->lock);
  while (b->pending > 0)
    if (!g_cond_wait_until(&b->cond, &b->lock, deadline))
      break;
  if (b->pending > 0)
    g_error("%u commands still unanswered after %d s", b->pending,
            (int) (IO_TIMEOUT_US / G_USEC_PER_SEC));
  g_mutex_unlock(&b->lock);
}

static void
op_set(struct op *op, uint16_t type, uint16_t flags, uint64_t offset,
       uint32_t count, void *buf)
{
  memset(op, 0, sizeof *op);
  op->cmd.type = type;
  op->cmd.flags = flags;
  op->cmd.offset = offset;
  op->cmd.count = count;
  op->cmd.buf = buf;
}

/* Runs op alone.  Returns the negative errno of a local refusal or of
 * the server's reply, or 0. */
static int
op_run(struct nbd_conn *conn, struct op *op)
{
  struct batch b;
  int rc;

  batch_init(&b);
  rc = op_submit(conn, &b, op);
  if (rc == 0) {
    batch_wait(&b);
    rc = -op->err;
  }
  batch_clear(&b);
  return rc;
}

/* One command, no extents kept.  Returns as op_run() does. */
static int
io(struct nbd_conn *conn, uint16_t type, uint16_t flags, uint64_t offset,
   uint32_t count, void *buf)
{
  struct op op;
  int rc;

  op_set(&op, type, flags, offset, count, buf);
  rc = op_run(conn, &op);
  g_free(op.cmd.extents);
  return rc;
}

/* Writes buf to [offset, +len) in pieces of the maximum payload (S9),
 * all in flight at once; each must succeed. */
static void
write_range(struct nbd_conn *conn, const void *buf, uint64_t offset,
            uint64_t len, uint16_t flags)
{
  uint32_t piece = nbd_conn_info(conn)->max_payload;
  size_t n = (len + piece - 1) / piece;
  g_autofree struct op *ops = g_new0(struct op, n);
  struct batch b;

  batch_init(&b);
  for (size_t i = 0; i < n; i++) {
    uint64_t at = i * (uint64_t) piece;

    op_set(&ops[i], NBD_CMD_WRITE, flags, offset + at, MIN(piece, len - at),
           (char *) buf + at);
    g_assert_cmpint(op_submit(conn, &b, &ops[i]), ==, 0);
  }
  batch_wait(&b);
  for (size_t i = 0; i < n; i++)
    g_assert_cmpint(ops[i].err, ==, 0);
  batch_clear(&b);
}

/* Reads [offset, +len) into buf in pieces of `piece` bytes, with up to
 * `depth` READs in flight at once; each must succeed. */
static void
read_range(struct nbd_conn *conn, void *buf, uint64_t offset, uint64_t len,
           uint32_t piece, unsigned depth)
{
  g_autofree struct op *ops = g_new0(struct op, depth);
  uint64_t done = 0;

  /* Not zeros: a hole the parser forgot to fill must show (X17). */
  memset(buf, 0xa5, len);
  piece = MIN(piece, nbd_conn_info(conn)->max_payload);
  while (done < len) {
    struct batch b;
    unsigned n = 0;

    batch_init(&b);
    for (; n < depth && done < len; n++) {
      uint32_t count = MIN(piece, len - done);

      op_set(&ops[n], NBD_CMD_READ, 0, offset + done, count,
             (char *) buf + done);
      g_assert_cmpint(op_submit(conn, &b, &ops[n]), ==, 0);
      done += count;
    }
    batch_wait(&b);
    for (unsigned i = 0; i < n; i++)
      g_assert_cmpint(ops[i].err, ==, 0);
    batch_clear(&b);
  }
}

static void
flush(struct nbd_conn *conn)
{
  const struct nbd_export_info *info = nbd_conn_info(conn);

  /* O3: without SEND_FLUSH the server is write-through and a FLUSH must
   * not be sent at all (X11). */
  if (info->tflags & NBD_FLAG_SEND_FLUSH)
    g_assert_cmpint(io(conn, NBD_CMD_FLUSH, 0, 0, 0, NULL), ==, 0);
  else
    g_assert_cmpint(io(conn, NBD_CMD_FLUSH, 0, 0, 0, NULL), ==,
                    -EOPNOTSUPP);
}

/* Fails with the first differing offset, so that a mismatch in 16 MiB
 * says where rather than only that. */
static void
assert_bytes(const char *what, const guint8 *got, const guint8 *want,
             size_t len)
{
  size_t i;

  if (memcmp(got, want, len) == 0)
    return;
  for (i = 0; got[i] == want[i]; i++)
    ;
  g_test_message("%s: first difference at byte %zu of %zu", what, i, len);
  g_assert_cmpmem(got + i, MIN(16, len - i), want + i, MIN(16, len - i));
}

static bool
all_zero(const guint8 *p, size_t len)
{
  return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}

/* ---- Block status ------------------------------------------------------ */

/* Asks BLOCK_STATUS for [offset, +len) and appends the extents to out,
 * after checking the rules a reply must obey once parsed: contiguous
 * from the request offset, none empty, none past the request (B6, B7),
 * equal neighbours merged (B8).  Returns the end of the last extent,
 * which a short answer leaves below offset + len (B7). */
static uint64_t
status_once(struct nbd_conn *conn, uint64_t offset, uint32_t len,
            uint16_t flags, GArray *out)
{
  struct op op;
  uint64_t pos = offset;

  op_set(&op, NBD_CMD_BLOCK_STATUS, flags, offset, len, NULL);
  g_assert_cmpint(op_run(conn, &op), ==, 0);
  g_assert_cmpuint(op.cmd.n_extents, >, 0);
  g_assert_nonnull(op.cmd.extents);

  for (size_t i = 0; i < op.cmd.n_extents; i++) {
    const struct nbd_extent *e = &op.cmd.extents[i];

    g_assert_cmpuint(e->offset, ==, pos);
    g_assert_cmpuint(e->length, >, 0);
    g_assert_cmpuint(e->flags & ~(NBD_STATE_HOLE | NBD_STATE_ZERO), ==, 0);
    if (i > 0)
      g_assert_cmpuint(e->flags, !=, op.cmd.extents[i - 1].flags);
    pos += e->length;
    g_array_append_val(out, *e);
  }
  g_assert_cmpuint(pos, <=, offset + len);
  g_free(op.cmd.extents);
  return pos;
}

/* The extents of [offset, +len), asking again from the first offset not
 * yet covered until all is (B7: every extent is nonzero, so this ends). */
static GArray *
collect_extents(struct nbd_conn *conn, uint64_t offset, uint64_t len)
{
  GArray *out = g_array_new(FALSE, FALSE, sizeof(struct nbd_extent));
  uint64_t end = offset + len;
  uint64_t pos = offset;

  while (pos < end) {
    uint32_t ask = MIN(end - pos, 1u << 30);

    pos = status_once(conn, pos, ask, 0, out);
  }
  g_assert_cmpuint(pos, ==, end);
  return out;
}

/* The union of the flags of every extent that meets [offset, +len). */
static uint32_t
flags_over(GArray *ext, uint64_t offset, uint64_t len, bool *all_data)
{
  uint32_t any = 0;

  *all_data = true;
  for (guint i = 0; i < ext->len; i++) {
    const struct nbd_extent *e = &g_array_index(ext, struct nbd_extent, i);

    if (e->offset >= offset + len || e->offset + e->length <= offset)
      continue;
    any |= e->flags;
    if (e->flags & NBD_STATE_ZERO)
      *all_data = false;
  }
  return any;
}

struct span {
  uint64_t offset;
  uint64_t length;
};

/* The layout of the sparse exports: data where written, nothing else.
 * Aligned to 64 KiB so that every server's allocation unit (a qcow2
 * cluster, a file system block, nbdkit's pages) is either wholly data
 * or wholly a hole. */
static const struct span sparse_data[] = {
  { 1 * MiB, 64 * KiB },
  { 4 * MiB + 128 * KiB, 192 * KiB },
  { 7 * MiB, 64 * KiB },
};
static const struct span sparse_holes[] = {
  { 0, 512 * KiB },
  { 2 * MiB, 1 * MiB },
  { 5 * MiB, 1 * MiB },
};
#define SPARSE_EXPORT_SIZE (8 * MiB)

/* Writes the data spans of a sparse export through conn. */
static void
write_sparse_spans(struct nbd_conn *conn)
{
  for (size_t i = 0; i < G_N_ELEMENTS(sparse_data); i++) {
    const struct span *s = &sparse_data[i];
    g_autofree guint8 *buf = g_malloc(s->length);

    tl_fill_random(buf, s->length, 40 + i, s->offset);
    write_range(conn, buf, s->offset, s->length, 0);
  }
  flush(conn);
}

/* Block status on an export laid out as sparse_data / sparse_holes:
 * data where written; HOLE|ZERO where never written, since all the
 * backends here are sparse.  A server without base:allocation must
 * have the command refused locally (X12c, B1). */
static void
check_sparse_status(struct nbd_conn *conn)
{
  const struct nbd_export_info *info = nbd_conn_info(conn);
  g_autoptr(GArray) ext = NULL;
  g_autoptr(GArray) part = NULL;
  const struct span *d = &sparse_data[1];
  struct op op;
  uint64_t end;

  if (!info->block_status) {
    g_test_message("no base:allocation: BLOCK_STATUS must be refused");
    g_assert_cmpint(io(conn, NBD_CMD_BLOCK_STATUS, 0, 0, 64 * KiB, NULL),
                    ==, -EOPNOTSUPP);
    return;
  }
  g_assert_true(info->structured);

  ext = collect_extents(conn, 0, info->size);
  for (guint i = 0; i < ext->len; i++) {
    const struct nbd_extent *e = &g_array_index(ext, struct nbd_extent, i);

    g_test_message("extent %" PRIu64 " +%" PRIu64 " flags %u", e->offset,
                   e->length, e->flags);
  }
  for (size_t i = 0; i < G_N_ELEMENTS(sparse_data); i++) {
    bool all_data;

    flags_over(ext, sparse_data[i].offset, sparse_data[i].length,
               &all_data);
    g_assert_true(all_data);
  }
  for (size_t i = 0; i < G_N_ELEMENTS(sparse_holes); i++) {
    bool all_data;
    uint32_t f = flags_over(ext, sparse_holes[i].offset,
                            sparse_holes[i].length, &all_data);

    g_assert_cmpuint(f, ==, NBD_STATE_HOLE | NBD_STATE_ZERO);
  }

  /* A request from the middle of a data span into the hole after it:
   * the first extent starts at the request, not at the span (B6), and
   * the hole is clipped to the request (B7).  These servers answer the
   * whole request at once, though B7 would let them stop short. */
  part = g_array_new(FALSE, FALSE, sizeof(struct nbd_extent));
  end = status_once(conn, d->offset + d->length / 2, d->length, 0, part);
  g_assert_cmpuint(end, ==, d->offset + d->length / 2 + d->length);
  g_assert_cmpuint(part->len, ==, 2);
  g_assert_cmpuint(g_array_index(part, struct nbd_extent, 0).offset, ==,
                   d->offset + d->length / 2);
  g_assert_cmpuint(g_array_index(part, struct nbd_extent, 0).flags, ==, 0);
  g_assert_cmpuint(g_array_index(part, struct nbd_extent, 0).length, ==,
                   d->length / 2);
  g_assert_cmpuint(g_array_index(part, struct nbd_extent, 1).flags, ==,
                   NBD_STATE_HOLE | NBD_STATE_ZERO);

  /* REQ_ONE over the same data-then-hole range: only the first
   * extent, the data up to the hole (B7). */
  op_set(&op, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE,
         d->offset + d->length / 2, d->length, NULL);
  g_assert_cmpint(op_run(conn, &op), ==, 0);
  g_assert_cmpuint(op.cmd.n_extents, ==, 1);
  g_assert_cmpuint(op.cmd.extents[0].offset, ==, d->offset + d->length / 2);
  g_assert_cmpuint(op.cmd.extents[0].length, ==, d->length / 2);
  g_assert_cmpuint(op.cmd.extents[0].flags, ==, 0);
  g_free(op.cmd.extents);
}

/* ---- Independent references -------------------------------------------- */

/* What `nbdcopy URI -` writes to its standard output: libnbd reading
 * the same export, never linked into nbdfs. */
static GBytes *
nbdcopy_read(const char *uri)
{
  const char *argv[] = { "timeout", "60", "nbdcopy", uri, "-", NULL };
  g_autoptr(GError) error = NULL;
  GByteArray *out = g_byte_array_new();
  guint8 buf[64 * 1024];
  GPid pid;
  int fd, status;
  ssize_t n;

  g_test_message("run: nbdcopy %s -", uri);
  g_spawn_async_with_pipes(NULL, (char **) argv, NULL,
                           G_SPAWN_SEARCH_PATH | G_SPAWN_DO_NOT_REAP_CHILD,
                           NULL, NULL, &pid, NULL, &fd, NULL, &error);
  g_assert_no_error(error);

  while ((n = read(fd, buf, sizeof buf)) != 0) {
    if (n < 0 && errno == EINTR)
      continue;
    g_assert_cmpint(n, >, 0);
    g_byte_array_append(out, buf, n);
  }
  close(fd);
  g_assert_cmpint(waitpid(pid, &status, 0), ==, pid);
  g_spawn_close_pid(pid);
  g_assert_true(WIFEXITED(status));
  g_assert_cmpint(WEXITSTATUS(status), ==, 0);
  return g_byte_array_free_to_bytes(out);
}

/* Runs a helper program to completion; it must succeed. */
static void
run_program(const char *const *argv)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *cmd = g_strjoinv(" ", (char **) argv);
  g_autofree char *err_out = NULL;
  int status;

  g_test_message("run: %s", cmd);
  g_spawn_sync(NULL, (char **) argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL,
               NULL, &err_out, &status, &error);
  g_assert_no_error(error);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    g_error("%s: failed: %s", cmd, err_out);
}

static guint8 *
read_whole_file(const char *path, size_t want_len)
{
  g_autoptr(GError) error = NULL;
  char *data = NULL;
  gsize len;

  g_file_get_contents(path, &data, &len, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(len, ==, want_len);
  return (guint8 *) data;
}

/* A file name that no other test of this run uses. */
static char *
temp_name(const char *stem)
{
  static int counter;

  return g_strdup_printf("%s-%d", stem, ++counter);
}

/* The same name inside tl_tmpdir(). */
static char *
temp_path(const char *stem)
{
  g_autofree char *name = temp_name(stem);

  return g_build_filename(tl_tmpdir(), name, NULL);
}

/* A file of SEED's stream (tl_make_file()) under a fresh name. */
static char *
make_random_file(const char *stem, uint64_t size, unsigned seed)
{
  g_autofree char *name = temp_name(stem);

  return tl_make_file(name, size, seed);
}

/* A sparse file of `size` bytes with SEED's stream at each span and
 * holes elsewhere; returns its path. */
static char *
make_sparse_file(const char *stem, uint64_t size, const struct span *spans,
                 size_t n, unsigned seed)
{
  char *path = temp_path(stem);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(ftruncate(fd, size), ==, 0);
  for (size_t i = 0; i < n; i++) {
    g_autofree guint8 *buf = g_malloc(spans[i].length);

    tl_fill_random(buf, spans[i].length, seed, spans[i].offset);
    g_assert_cmpint(pwrite(fd, buf, spans[i].length, spans[i].offset), ==,
                    (ssize_t) spans[i].length);
  }
  g_assert_cmpint(close(fd), ==, 0);
  return path;
}

/* ---- Connections -------------------------------------------------------- */

static struct nbd_conn *
open_with(const struct tl_server *server, const char *name,
          const struct nbd_handshake_opts *opts)
{
  g_autofree char *text = tl_server_uri(server, name);
  g_autoptr(nbd_uri) uri = NULL;
  g_autoptr(GError) error = NULL;
  struct nbd_handshake_opts o = { 0 };
  struct nbd_conn *conn = NULL;

  g_assert_cmpint(nbd_uri_parse(text, &uri, &error), ==, 0);
  g_assert_no_error(error);
  if (opts != NULL)
    o = *opts;
  o.export_name = uri->export_name;

  g_assert_cmpint(nbd_conn_connect(uri, &o, &conn, &error), ==, 0);
  g_assert_no_error(error);
  g_assert_nonnull(conn);
  return conn;
}

static struct nbd_conn *
open_export(const struct tl_server *server, const char *name)
{
  struct nbd_conn *conn = open_with(server, name, NULL);
  const struct nbd_export_info *info = nbd_conn_info(conn);
  char flags[256];

  g_test_message("%s '%s': size %" PRIu64 ", flags %s, block %u/%u/%u%s, "
                 "structured %d, block status %d", server->program, name,
                 info->size,
                 nbd_tflags_string(info->tflags, flags, sizeof flags),
                 info->min_block, info->pref_block, info->max_payload,
                 info->block_size_advertised ? "" : " (defaults)",
                 info->structured, info->block_status);
  return conn;
}

/* GO for a name the server does not have: ENOENT, with a message that
 * names the export (nbd-client-checklist H13, H30); and the server,
 * left softly (D1), still serves the next client. */
static void
assert_missing_export(const struct tl_server *server, const char *name,
                      const char *good_name)
{
  g_autofree char *text = tl_server_uri(server, name);
  g_autofree char *quoted = g_strdup_printf("'%s'", name);
  g_autoptr(nbd_uri) uri = NULL;
  g_autoptr(GError) error = NULL;
  struct nbd_handshake_opts o = { 0 };
  struct nbd_conn *conn = NULL;

  g_assert_cmpint(nbd_uri_parse(text, &uri, &error), ==, 0);
  o.export_name = uri->export_name;
  g_assert_cmpint(nbd_conn_connect(uri, &o, &conn, &error), ==, -ENOENT);
  g_assert_error(error, NBDPROTO_ERROR, ENOENT);
  g_test_message("missing export: %s", error->message);
  g_assert_nonnull(strstr(error->message, quoted));
  g_assert_null(conn);

  conn = open_export(server, good_name);
  g_assert_false(nbd_conn_is_dead(conn));
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);
}

/* g_ptr_array_sort() hands over pointers to the elements. */
static int
compare_names(const void *a, const void *b)
{
  return g_strcmp0(*(char *const *) a, *(char *const *) b);
}

/* The export names that NBD_OPT_LIST returns, sorted and joined with
 * commas ("" for the default export appears as an empty field). */
static char *
list_exports(const struct tl_server *server)
{
  g_autofree char *text = tl_server_uri(server, "");
  g_autoptr(nbd_uri) uri = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) list = NULL;
  g_autoptr(GPtrArray) names = g_ptr_array_new();
  struct nbd_handshake_opts o = { .export_name = "" };
  struct nbd_transport *t = NULL;

  g_assert_cmpint(nbd_uri_parse(text, &uri, &error), ==, 0);
  g_assert_cmpint(nbd_transport_connect(uri, &t, &error), ==, 0);
  g_assert_no_error(error);
  g_assert_cmpint(nbd_handshake_list(t, &o, 1000, &list, &error), ==, 0);
  g_assert_no_error(error);
  nbd_transport_free(t);

  for (guint i = 0; i < list->len; i++) {
    struct nbd_export_entry *e = list->pdata[i];

    g_test_message("listed: '%s' '%s'", e->name, e->description);
    g_ptr_array_add(names, e->name);
  }
  g_ptr_array_sort(names, compare_names);
  g_ptr_array_add(names, NULL);
  return g_strjoinv(",", (char **) names->pdata);
}

static struct tl_server *
start_nbdkit(const char *const *args)
{
  g_autoptr(GError) error = NULL;
  struct tl_server *server = tl_nbdkit_start(args, &error);

  g_assert_no_error(error);
  g_assert_nonnull(server);
  return server;
}

static struct tl_server *
start_qemu_nbd(const char *file, const char *format)
{
  g_autoptr(GError) error = NULL;
  struct tl_server *server = tl_qemu_nbd_start(file, format, "vol", NULL,
                                               &error);

  g_assert_no_error(error);
  g_assert_nonnull(server);
  return server;
}

/* ---- Bodies shared by the servers -------------------------------------- */

/* The writes of write_plan(): unaligned where the minimum block allows
 * it, one of 8 MiB that write_range() splits at the maximum payload,
 * one of a single byte, and one that ends at the end of the export. */
static const struct {
  uint64_t offset;
  uint64_t length;
} plan[] = {
  { 0, 4096 },
  { 4096 + 1, 3000 },
  { 64 * KiB - 7, 70000 },
  { 1 * MiB + 13, 511 },
  { 2 * MiB, 8 * MiB },
  { 12 * MiB + 512, 1 },
  { WRITE_EXPORT_SIZE - 777, 777 },
};

/* Writes the plan through conn (every third write with FUA where
 * advertised, O4), keeping mirror, the export's expected content, in
 * step; flushes (O2), reads everything back through the same
 * connection, and closes it.  The caller then checks the backing
 * store against mirror. */
static void
write_plan(struct nbd_conn *conn, guint8 *mirror)
{
  const struct nbd_export_info *info = nbd_conn_info(conn);
  uint64_t mb = info->min_block;
  g_autofree guint8 *back = g_malloc(info->size);

  g_assert_cmpuint(info->size, ==, WRITE_EXPORT_SIZE);
  for (size_t i = 0; i < G_N_ELEMENTS(plan); i++) {
    /* S7: widen each write to the minimum block. */
    uint64_t start = plan[i].offset / mb * mb;
    uint64_t end = (plan[i].offset + plan[i].length + mb - 1) / mb * mb;
    uint16_t flags = 0;

    if (i % 3 == 0 && (info->tflags & NBD_FLAG_SEND_FUA))
      flags = NBD_CMD_FLAG_FUA;
    tl_fill_random(mirror + start, end - start, 100 + i, start);
    write_range(conn, mirror + start, start, end - start, flags);
  }
  flush(conn);

  read_range(conn, back, 0, info->size, 256 * KiB, 16);
  assert_bytes("read back", back, mirror, info->size);
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);
}

/* Reads the whole export through nbdproto, 64 READs of 64 KiB in flight
 * at once, and checks it against want and against nbdcopy's output. */
static void
check_read(struct nbd_conn *conn, const char *uri, const guint8 *want)
{
  uint64_t size = nbd_conn_info(conn)->size;
  g_autofree guint8 *got = g_malloc(size);
  g_autoptr(GBytes) ref = NULL;
  gsize ref_len;
  const guint8 *ref_data;

  read_range(conn, got, 0, size, 64 * KiB, 64);
  assert_bytes("nbdproto vs expected", got, want, size);

  ref = nbdcopy_read(uri);
  ref_data = g_bytes_get_data(ref, &ref_len);
  g_assert_cmpuint(ref_len, ==, size);
  assert_bytes("nbdproto vs nbdcopy", got, ref_data, size);
}

/* WRITE_ZEROES of [offset, +len) with flags; the range must read back
 * as zeros (X12b, O8). */
static void
zero_range(struct nbd_conn *conn, guint8 *mirror, uint64_t base,
           uint64_t offset, uint32_t len, uint16_t flags)
{
  g_assert_cmpint(io(conn, NBD_CMD_WRITE_ZEROES, flags, base + offset, len,
                     NULL), ==, 0);
  memset(mirror + offset, 0, len);
}

/* WRITE_ZEROES (plain, NO_HOLE, FAST_ZERO, FUA), TRIM, CACHE and FUA
 * writes on the 1 MiB at base, each used only where advertised and
 * refused locally where not (X7, X13); then the data is checked. */
static void
check_zero_trim_cache_fua(struct nbd_conn *conn, uint64_t base)
{
  const struct nbd_export_info *info = nbd_conn_info(conn);
  uint16_t f = info->tflags;
  uint16_t fua = (f & NBD_FLAG_SEND_FUA) ? NBD_CMD_FLAG_FUA : 0;
  uint64_t mb = info->min_block;
  g_autofree guint8 *mirror = g_malloc(MiB);
  g_autofree guint8 *got = g_malloc(MiB);
  uint64_t uoff = 700 * KiB + (mb == 1 ? 3 : 0);
  uint32_t ulen = mb == 1 ? 1001 : MAX(mb, 4096);
  int rc;

  /* A known start: data everywhere. */
  tl_fill_random(mirror, MiB, 7, base);
  write_range(conn, mirror, base, MiB, fua);
  if (!fua)
    g_assert_cmpint(io(conn, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, base, 4096,
                       mirror), ==, -EINVAL);

  if (f & NBD_FLAG_SEND_WRITE_ZEROES) {
    zero_range(conn, mirror, base, 64 * KiB, 64 * KiB, 0);
    zero_range(conn, mirror, base, 192 * KiB, 32 * KiB,
               NBD_CMD_FLAG_NO_HOLE);
    zero_range(conn, mirror, base, 320 * KiB, 16 * KiB,
               NBD_CMD_FLAG_NO_HOLE | fua);
  } else {
    g_assert_cmpint(io(conn, NBD_CMD_WRITE_ZEROES, 0, base, 4096, NULL),
                    ==, -EOPNOTSUPP);
  }

  /* X12b: FAST_ZERO either zeroes or fails at once with ENOTSUP
   * (EOPNOTSUPP after X22a) leaving the data alone. */
  rc = io(conn, NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_FAST_ZERO,
          base + 256 * KiB, 64 * KiB, NULL);
  if (f & NBD_FLAG_SEND_FAST_ZERO) {
    g_assert_true(rc == 0 || rc == -EOPNOTSUPP);
    if (rc == 0)
      memset(mirror + 256 * KiB, 0, 64 * KiB);
  } else {
    g_assert_cmpint(rc, ==, (f & NBD_FLAG_SEND_WRITE_ZEROES) ? -EINVAL
                                                             : -EOPNOTSUPP);
  }

  /* X12, O8: a trimmed range is undefined until written again, so the
   * rest is checked now and the range rewritten. */
  if (f & NBD_FLAG_SEND_TRIM) {
    g_assert_cmpint(io(conn, NBD_CMD_TRIM, 0, base + 512 * KiB, 64 * KiB,
                       NULL), ==, 0);
    read_range(conn, got, base, MiB, 64 * KiB, 16);
    assert_bytes("before trim", got, mirror, 512 * KiB);
    assert_bytes("after trim", got + 576 * KiB, mirror + 576 * KiB,
                 MiB - 576 * KiB);
    tl_fill_random(mirror + 512 * KiB, 64 * KiB, 8, base + 512 * KiB);
    write_range(conn, mirror + 512 * KiB, base + 512 * KiB, 64 * KiB, 0);
  } else {
    g_assert_cmpint(io(conn, NBD_CMD_TRIM, 0, base, 4096, NULL), ==,
                    -EOPNOTSUPP);
  }

  /* X12a: CACHE is advisory and changes no byte. */
  rc = io(conn, NBD_CMD_CACHE, 0, base, 128 * KiB, NULL);
  g_assert_cmpint(rc, ==, (f & NBD_FLAG_SEND_CACHE) ? 0 : -EOPNOTSUPP);

  /* A write that is unaligned where the minimum block allows. */
  tl_fill_random(mirror + uoff, ulen, 9, base + uoff);
  g_assert_cmpint(io(conn, NBD_CMD_WRITE, fua, base + uoff, ulen,
                     mirror + uoff), ==, 0);

  flush(conn);
  read_range(conn, got, base, MiB, 64 * KiB, 16);
  assert_bytes("after zero, trim, cache and FUA", got, mirror, MiB);
}

/* ---- nbdkit -------------------------------------------------------------- */

static void
test_nbdkit_memory_handshake(void)
{
  const char *args[] = { "memory", "1M", NULL };
  const uint16_t want = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
                        NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |
                        NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_DF |
                        NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE |
                        NBD_FLAG_SEND_FAST_ZERO;
  const struct nbd_export_info *info;
  struct tl_server *server;
  struct nbd_conn *conn;
  g_autofree char *names = NULL;

  if (!tl_require("nbdkit"))
    return;
  server = start_nbdkit(args);

  conn = open_export(server, "");
  info = nbd_conn_info(conn);
  g_assert_cmpuint(info->size, ==, MiB);
  g_assert_cmphex(info->tflags, ==, want);
  g_assert_cmphex(info->gflags, ==,
                  NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  g_assert_true(info->structured);
  g_assert_true(info->block_status);
  g_assert_false(info->export_name_fallback);

  /* S4: no BLOCK_SIZE info, so the defaults a server must accept. */
  g_assert_false(info->block_size_advertised);
  g_assert_cmpuint(info->min_block, ==, 1);
  g_assert_cmpuint(info->pref_block, ==, 4096);
  g_assert_cmpuint(info->max_payload, ==, 32 * MiB);
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);

  /* nbdkit lists only its default export, whose name is "". */
  names = list_exports(server);
  g_assert_cmpstr(names, ==, "");

  /* H19, H22: INFO tells the same size and flags without transmission;
   * the server then still serves the next client. */
  {
    g_autoptr(GError) error = NULL;
    struct nbd_handshake_opts o = { .export_name = "" };
    struct nbd_export_info ii;
    struct nbd_transport *t = NULL;
    g_autofree char *uri_text = tl_server_uri(server, "");
    g_autoptr(nbd_uri) uri = NULL;

    g_assert_cmpint(nbd_uri_parse(uri_text, &uri, &error), ==, 0);
    g_assert_cmpint(nbd_transport_connect(uri, &t, &error), ==, 0);
    g_assert_cmpint(nbd_handshake_info(t, &o, &ii, &error), ==, 0);
    g_assert_no_error(error);
    g_assert_cmpuint(ii.size, ==, MiB);
    /* V9: without structured replies (INFO negotiates none) DF is
     * meaningless and dropped. */
    g_assert_cmphex(ii.tflags, ==, want & ~NBD_FLAG_SEND_DF);
    nbd_export_info_clear(&ii);
    nbd_transport_free(t);
    conn = open_export(server, "");
    nbd_conn_close(conn, CLOSE_TIMEOUT_MS);
  }
  tl_server_stop(server);
}

/* Names, descriptions and a refused name, with the exportname filter
 * making nbdkit strict about which exports exist. */
static void
test_nbdkit_exportname_handshake(void)
{
  const char *args[] = {
    "--filter=exportname", "memory", "2M", "exportname=alpha",
    "exportname=beta", "exportname-list=explicit", "exportname-strict=true",
    "exportdesc=fixed:nbdfs test disk", NULL,
  };
  const struct nbd_export_info *info;
  struct tl_server *server;
  struct nbd_conn *conn;
  g_autofree char *names = NULL;

  if (!tl_require("nbdkit"))
    return;
  server = start_nbdkit(args);

  names = list_exports(server);
  g_assert_cmpstr(names, ==, "alpha,beta");

  /* H19: the NAME and DESCRIPTION infos that GO asked for. */
  conn = open_export(server, "beta");
  info = nbd_conn_info(conn);
  g_assert_cmpuint(info->size, ==, 2 * MiB);
  g_assert_cmpstr(info->name, ==, "beta");
  g_assert_cmpstr(info->description, ==, "nbdfs test disk");
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);

  assert_missing_export(server, "nope", "alpha");
  tl_server_stop(server);
}

/* The file plugin over a temporary file, which is then read directly. */
static void
test_nbdkit_file_write_read(void)
{
  g_autofree char *path = make_random_file("nbdkit-file",
                                           WRITE_EXPORT_SIZE, 10);
  g_autofree char *file_arg = g_strdup_printf("file=%s", path);
  const char *args[] = { "file", file_arg, NULL };
  g_autofree guint8 *mirror = read_whole_file(path, WRITE_EXPORT_SIZE);
  g_autofree guint8 *disk = NULL;
  struct tl_server *server;

  if (!tl_require("nbdkit"))
    return;
  server = start_nbdkit(args);

  write_plan(open_export(server, ""), mirror);
  tl_server_stop(server);

  disk = read_whole_file(path, WRITE_EXPORT_SIZE);
  assert_bytes("backing file", disk, mirror, WRITE_EXPORT_SIZE);
}

/* The pattern plugin: each 8-byte big-endian word holds its own offset,
 * so every byte is known without the server's help.  Besides the whole
 * export in 64 KiB pieces, one READ of the full 32 MiB payload at an
 * odd offset: its reply is a chunk of 2^25 + 8 bytes (S12, S13). */
static void
test_nbdkit_pattern_read(void)
{
  const char *args[] = { "pattern", "40M", NULL };
  const uint64_t size = 40 * MiB;
  const uint64_t big_at = 3 * MiB + 5;
  g_autofree guint8 *want = g_malloc(size);
  g_autofree guint8 *big = g_malloc(32 * MiB);
  g_autofree char *uri = NULL;
  struct tl_server *server;
  struct nbd_conn *conn;

  if (!tl_require("nbdkit") || !tl_require("nbdcopy"))
    return;
  for (uint64_t off = 0; off < size; off += 8) {
    uint64_t be = GUINT64_TO_BE(off);

    memcpy(want + off, &be, 8);
  }
  server = start_nbdkit(args);
  uri = tl_server_uri(server, "");

  conn = open_export(server, "");
  check_read(conn, uri, want);

  g_assert_cmpuint(nbd_conn_info(conn)->max_payload, ==, 32 * MiB);
  read_range(conn, big, big_at, 32 * MiB, 32 * MiB, 1);
  assert_bytes("one 32 MiB READ", big, want + big_at, 32 * MiB);
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);
  tl_server_stop(server);
}

static void
test_nbdkit_memory_block_status(void)
{
  const char *args[] = { "memory", "8M", NULL };
  struct tl_server *server;
  struct nbd_conn *conn;

  if (!tl_require("nbdkit"))
    return;
  server = start_nbdkit(args);

  conn = open_export(server, "");
  g_assert_true(nbd_conn_info(conn)->block_status);
  write_sparse_spans(conn);
  check_sparse_status(conn);
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);
  tl_server_stop(server);
}

/* sparse-random: data and holes chosen by nbdkit.  Every extent that
 * block status calls ZERO must read as zeros, and the whole export must
 * match nbdcopy's reading of it. */
static void
test_nbdkit_sparse_random(void)
{
  const char *args[] = {
    "sparse-random", "16M", "seed=4242", "percent=30", "runlength=262144",
    "random-content=true", NULL,
  };
  g_autoptr(GArray) ext = NULL;
  g_autofree guint8 *data = g_malloc(16 * MiB);
  g_autofree char *uri = NULL;
  g_autoptr(GBytes) ref = NULL;
  struct tl_server *server;
  struct nbd_conn *conn;
  unsigned holes = 0, datas = 0;

  if (!tl_require("nbdkit") || !tl_require("nbdcopy"))
    return;
  server = start_nbdkit(args);
  uri = tl_server_uri(server, "");

  conn = open_export(server, "");
  ext = collect_extents(conn, 0, 16 * MiB);
  read_range(conn, data, 0, 16 * MiB, 64 * KiB, 64);
  for (guint i = 0; i < ext->len; i++) {
    const struct nbd_extent *e = &g_array_index(ext, struct nbd_extent, i);

    if (e->flags & NBD_STATE_ZERO) {
      g_assert_true(all_zero(data + e->offset, e->length));
      holes++;
    } else {
      g_assert_false(all_zero(data + e->offset, e->length));
      datas++;
    }
  }
  g_assert_cmpuint(holes, >, 0);
  g_assert_cmpuint(datas, >, 0);

  ref = nbdcopy_read(uri);
  g_assert_cmpuint(g_bytes_get_size(ref), ==, 16 * MiB);
  assert_bytes("nbdproto vs nbdcopy", data, g_bytes_get_data(ref, NULL),
               16 * MiB);
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);
  tl_server_stop(server);
}

static void
test_nbdkit_memory_zero_trim(void)
{
  const char *args[] = { "memory", "4M", NULL };
  struct tl_server *server;
  struct nbd_conn *conn;

  if (!tl_require("nbdkit"))
    return;
  server = start_nbdkit(args);

  conn = open_export(server, "");
  check_zero_trim_cache_fua(conn, 1 * MiB);
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);
  tl_server_stop(server);
}

/* What nbdkit's log filter (outermost, so it sees every request as it
 * arrived) recorded for connection conn_id: the range of each request
 * that has one, appended to spans, and the number of requests. */
static unsigned
nbdkit_logged(const char *log_path, int conn_id, GArray *spans)
{
  g_autofree char *text = NULL;
  g_autofree char *prefix = g_strdup_printf(" connection=%d ", conn_id);
  g_autoptr(GError) error = NULL;
  g_auto(GStrv) lines = NULL;
  int transactions = -1;

  g_file_get_contents(log_path, &text, NULL, &error);
  g_assert_no_error(error);
  lines = g_strsplit(text, "\n", -1);

  for (size_t i = 0; lines[i] != NULL; i++) {
    const char *p = strstr(lines[i], prefix);
    const char *off, *count;
    struct span sp;

    /* Replies start with "...", requests with their name. */
    if (p == NULL || g_str_has_prefix(p + strlen(prefix), "..."))
      continue;
    p += strlen(prefix);
    if (g_str_has_prefix(p, "Disconnect transactions=")) {
      transactions = atoi(p + strlen("Disconnect transactions="));
      continue;
    }
    off = strstr(p, " offset=0x");
    count = strstr(p, " count=0x");
    if (off == NULL || count == NULL)
      continue;
    sp.offset = g_ascii_strtoull(off + strlen(" offset=0x"), NULL, 16);
    sp.length = g_ascii_strtoull(count + strlen(" count=0x"), NULL, 16);
    g_array_append_val(spans, sp);
  }
  g_assert_cmpint(transactions, >=, 0);
  return transactions;
}

/* S2, S3, S7, S9: advertised limits are obeyed, and a request that
 * breaks them is refused by nbdproto before it reaches the server: the
 * log filter, outside the policy filter, counts only the good ones. */
static void
test_nbdkit_blocksize_policy(void)
{
  g_autofree char *log_path = temp_path("blocksize.log");
  g_autofree char *log_arg = g_strdup_printf("logfile=%s", log_path);
  const char *args[] = {
    "--filter=log", "--filter=blocksize-policy", "memory", "1M",
    "blocksize-minimum=4096", "blocksize-maximum=65536",
    "blocksize-error-policy=error", log_arg, NULL,
  };
  static const struct {
    uint16_t type;
    uint64_t offset;
    uint32_t count;
  } bad[] = {
    { NBD_CMD_READ, 512, 4096 },          /* offset not aligned */
    { NBD_CMD_READ, 0, 512 },             /* count not aligned */
    { NBD_CMD_READ, 0, 128 * 1024 },      /* over the maximum */
    { NBD_CMD_WRITE, 4096, 4095 },
    { NBD_CMD_WRITE, 0, 128 * 1024 },     /* S9 */
    { NBD_CMD_TRIM, 4096, 100 },
    { NBD_CMD_WRITE_ZEROES, 1, 4096 },
    { NBD_CMD_CACHE, 2048, 4096 },
    { NBD_CMD_BLOCK_STATUS, 4096, 1000 },
    { NBD_CMD_READ, MiB - 4096, 8192 },   /* past the end */
  };
  g_autofree guint8 *buf = g_malloc0(128 * KiB);
  g_autofree guint8 *data = g_malloc(MiB);
  g_autofree guint8 *back = g_malloc(MiB);
  g_autoptr(GArray) spans = NULL;
  const struct nbd_export_info *info;
  struct tl_server *server;
  struct nbd_conn *conn;

  if (!tl_require("nbdkit"))
    return;
  server = start_nbdkit(args);

  conn = open_export(server, "");
  info = nbd_conn_info(conn);
  g_assert_true(info->block_size_advertised);
  g_assert_cmpuint(info->min_block, ==, 4096);
  g_assert_cmpuint(info->pref_block, ==, 4096);
  g_assert_cmpuint(info->max_payload, ==, 65536);

  for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_assert_cmpint(io(conn, bad[i].type, 0, bad[i].offset, bad[i].count,
                       buf), ==, -EINVAL);
    g_assert_cmpuint(nbd_conn_in_flight(conn), ==, 0);
  }
  g_assert_false(nbd_conn_is_dead(conn));

  /* 1 MiB goes out as 16 WRITEs of the 64 KiB maximum, and comes back
   * as 16 READs: 33 commands with the FLUSH. */
  tl_fill_random(data, MiB, 11, 0);
  write_range(conn, data, 0, MiB, 0);
  g_assert_cmpint(io(conn, NBD_CMD_FLUSH, 0, 0, 0, NULL), ==, 0);
  read_range(conn, back, 0, MiB, 64 * KiB, 16);
  assert_bytes("read back", back, data, MiB);
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);
  tl_server_stop(server);

  /* Exactly the good commands reached the server, each aligned. */
  spans = g_array_new(FALSE, FALSE, sizeof(struct span));
  g_assert_cmpuint(nbdkit_logged(log_path, 1, spans), ==, 33);
  g_assert_cmpuint(spans->len, ==, 32);
  for (guint i = 0; i < spans->len; i++) {
    const struct span *sp = &g_array_index(spans, struct span, i);

    g_assert_cmpuint(sp->offset % 4096, ==, 0);
    g_assert_cmpuint(sp->length, ==, 65536);
  }
}

/* X21, X22: an error reply fails only its command; the connection
 * stays and serves the next one.  Both reply styles: a structured
 * ERROR chunk and a simple reply with an error. */
static void
test_nbdkit_error_filter(void)
{
  g_autofree char *read_trigger = temp_path("error-pread");
  g_autofree char *write_trigger = temp_path("error-pwrite");
  g_autofree char *rt_arg = g_strdup_printf("error-pread-file=%s",
                                            read_trigger);
  g_autofree char *wt_arg = g_strdup_printf("error-pwrite-file=%s",
                                            write_trigger);
  const char *args[] = {
    "--filter=error", "memory", "1M", "error-pread=EIO",
    "error-pread-rate=1", rt_arg, "error-pwrite=ENOSPC",
    "error-pwrite-rate=1", wt_arg, NULL,
  };
  g_autofree guint8 *data = g_malloc(64 * KiB);
  g_autofree guint8 *back = g_malloc(64 * KiB);
  struct tl_server *server;

  if (!tl_require("nbdkit"))
    return;
  server = start_nbdkit(args);
  tl_fill_random(data, 64 * KiB, 12, 0);

  for (int simple = 0; simple <= 1; simple++) {
    struct nbd_handshake_opts o = { .no_structured = simple };
    struct nbd_conn *conn = open_with(server, "", &o);
    struct op ops[16];
    struct batch b;

    g_assert_cmpint(nbd_conn_info(conn)->structured, ==, !simple);
    write_range(conn, data, 0, 64 * KiB, 0);

    /* Every READ fails with EIO, sixteen of them in flight at once. */
    g_assert_true(g_file_set_contents(read_trigger, "", 0, NULL));
    batch_init(&b);
    for (int i = 0; i < 16; i++) {
      op_set(&ops[i], NBD_CMD_READ, 0, i * 4096, 4096, back + i * 4096);
      g_assert_cmpint(op_submit(conn, &b, &ops[i]), ==, 0);
    }
    batch_wait(&b);
    batch_clear(&b);
    for (int i = 0; i < 16; i++)
      g_assert_cmpint(ops[i].err, ==, EIO);
    g_assert_false(nbd_conn_is_dead(conn));

    /* The connection still works: a write that fails with its own
     * error, then a flush that succeeds. */
    g_assert_true(g_file_set_contents(write_trigger, "", 0, NULL));
    g_assert_cmpint(io(conn, NBD_CMD_WRITE, 0, 0, 4096, data), ==,
                    -ENOSPC);
    g_assert_cmpint(io(conn, NBD_CMD_FLUSH, 0, 0, 0, NULL), ==, 0);
    g_assert_false(nbd_conn_is_dead(conn));

    /* Errors off: the data written before them reads back. */
    g_assert_cmpint(g_unlink(read_trigger), ==, 0);
    g_assert_cmpint(g_unlink(write_trigger), ==, 0);
    memset(back, 0, 64 * KiB);
    read_range(conn, back, 0, 64 * KiB, 16 * KiB, 4);
    assert_bytes("after errors", back, data, 64 * KiB);
    nbd_conn_close(conn, CLOSE_TIMEOUT_MS);
  }
  tl_server_stop(server);
}

/* O1: 128 commands in flight on one connection, READs held back by the
 * delay filter and WRITEs not, so replies come in another order than
 * the requests went out; each command gets its own reply.  The WRITEs
 * are small so that all requests fit in the socket buffers while
 * nbdkit's workers sleep, and none of them waits to be sent. */
static void
test_nbdkit_delay_out_of_order(void)
{
  const char *args[] = {
    "--filter=delay", "memory", "16M", "delay-read=200ms", NULL,
  };
  enum { N = 64, RPIECE = 64 * 1024, WPIECE = 2048 };
  g_autofree guint8 *a_data = g_malloc(N * RPIECE);
  g_autofree guint8 *a_back = g_malloc0(N * RPIECE);
  g_autofree guint8 *b_data = g_malloc(N * WPIECE);
  g_autofree guint8 *b_back = g_malloc(N * WPIECE);
  g_autofree struct op *ops = g_new0(struct op, 2 * N);
  const uint64_t b_base = 8 * MiB;
  struct tl_server *server;
  struct nbd_conn *conn;
  struct batch b;
  unsigned inversions = 0;
  int last_seq = -1;

  if (!tl_require("nbdkit"))
    return;
  server = start_nbdkit(args);
  conn = open_export(server, "");

  tl_fill_random(a_data, N * RPIECE, 13, 0);
  tl_fill_random(b_data, N * WPIECE, 14, b_base);
  write_range(conn, a_data, 0, N * RPIECE, 0);

  /* READ of region A, WRITE of region B, alternating. */
  batch_init(&b);
  for (int i = 0; i < N; i++) {
    op_set(&ops[2 * i], NBD_CMD_READ, 0, i * RPIECE, RPIECE,
           a_back + i * RPIECE);
    op_set(&ops[2 * i + 1], NBD_CMD_WRITE, 0, b_base + i * WPIECE, WPIECE,
           b_data + i * WPIECE);
    g_assert_cmpint(op_submit(conn, &b, &ops[2 * i]), ==, 0);
    g_assert_cmpint(op_submit(conn, &b, &ops[2 * i + 1]), ==, 0);
  }

  /* Sending 128 requests takes far less than one delayed READ, so every
   * READ is still unanswered here. */
  g_assert_cmpuint(nbd_conn_in_flight(conn), >=, N);
  batch_wait(&b);
  batch_clear(&b);

  for (int i = 0; i < 2 * N; i++) {
    g_assert_cmpint(ops[i].err, ==, 0);
    if (ops[i].seq < last_seq)
      inversions++;
    last_seq = ops[i].seq;
  }
  g_test_message("%u completions out of submission order", inversions);
  g_assert_cmpint(ops[1].seq, <, ops[0].seq);
  g_assert_cmpuint(inversions, >, 0);

  assert_bytes("delayed reads", a_back, a_data, N * RPIECE);
  read_range(conn, b_back, b_base, N * WPIECE, N * WPIECE, 1);
  assert_bytes("writes among delayed reads", b_back, b_data, N * WPIECE);
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);
  tl_server_stop(server);
}

/* S7, S8: an export of 1,000,000 bytes (not a multiple of 512) is used
 * to its last byte; one byte further is refused locally. */
static void
test_nbdkit_odd_size(void)
{
  g_autofree char *log_path = temp_path("odd-size.log");
  g_autofree char *log_arg = g_strdup_printf("logfile=%s", log_path);
  const char *args[] = { "--filter=log", "memory", "1000000", log_arg,
                         NULL };
  const uint64_t size = 1000000;
  g_autoptr(GArray) spans = g_array_new(FALSE, FALSE, sizeof(struct span));
  g_autofree guint8 *want = g_malloc0(size);
  g_autofree char *uri = NULL;
  g_autoptr(GArray) ext = NULL;
  const struct nbd_extent *last;
  guint8 byte[4];
  struct tl_server *server;
  struct nbd_conn *conn;

  if (!tl_require("nbdkit") || !tl_require("nbdcopy"))
    return;
  server = start_nbdkit(args);
  uri = tl_server_uri(server, "");
  conn = open_export(server, "");
  g_assert_cmpuint(nbd_conn_info(conn)->size, ==, size);

  tl_fill_random(want + size - 1000, 1000, 15, size - 1000);
  write_range(conn, want + size - 1000, size - 1000, 1000, 0);
  check_read(conn, uri, want);

  /* The last extent ends exactly at the end of the export (B7). */
  ext = collect_extents(conn, 0, size);
  last = &g_array_index(ext, struct nbd_extent, ext->len - 1);
  g_assert_cmpuint(last->offset + last->length, ==, size);
  g_assert_cmpuint(last->flags, ==, 0);
  g_assert_cmpuint(g_array_index(ext, struct nbd_extent, 0).flags, ==,
                   NBD_STATE_HOLE | NBD_STATE_ZERO);

  /* S7: nothing past the end leaves the client; a WRITE reports ENOSPC
   * as a server would (S15), the rest EINVAL. */
  g_assert_cmpint(io(conn, NBD_CMD_READ, 0, size - 1, 2, byte), ==,
                  -EINVAL);
  g_assert_cmpint(io(conn, NBD_CMD_READ, 0, size, 1, byte), ==, -EINVAL);
  g_assert_cmpint(io(conn, NBD_CMD_WRITE, 0, size - 1, 2, byte), ==,
                  -ENOSPC);
  g_assert_cmpint(io(conn, NBD_CMD_WRITE_ZEROES, 0, 0, size + 1, NULL), ==,
                  -EINVAL);
  g_assert_cmpint(io(conn, NBD_CMD_BLOCK_STATUS, 0, size, 1, NULL), ==,
                  -EINVAL);
  g_assert_cmpint(io(conn, NBD_CMD_READ, 0, UINT64_MAX - 1, 4, byte), ==,
                  -EINVAL);
  g_assert_cmpint(io(conn, NBD_CMD_READ, 0, 0, 0, byte), ==, -EINVAL);
  g_assert_cmpuint(nbd_conn_in_flight(conn), ==, 0);

  /* The last byte itself is fine. */
  g_assert_cmpint(io(conn, NBD_CMD_READ, 0, size - 1, 1, byte), ==, 0);
  g_assert_cmpuint(byte[0], ==, want[size - 1]);
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);
  tl_server_stop(server);

  /* Nothing empty or past the end reached the server (connection 1 is
   * ours; nbdcopy's came after). */
  g_assert_cmpuint(nbdkit_logged(log_path, 1, spans), >, 16);
  for (guint i = 0; i < spans->len; i++) {
    const struct span *sp = &g_array_index(spans, struct span, i);

    g_assert_cmpuint(sp->length, >, 0);
    g_assert_cmpuint(sp->offset + sp->length, <=, size);
  }
}

/* ---- nbd-server ---------------------------------------------------------- */

/* Three exports: alpha (16 MiB of seed 20, writable), beta (1 MiB of
 * seed 21, read-only), gamma (8 MiB, sparse, writable). */
struct nbd_server_setup {
  struct tl_server *server;
  char *alpha, *beta, *gamma;
};

static bool
nbd_server_setup(struct nbd_server_setup *s)
{
  g_autoptr(GError) error = NULL;

  memset(s, 0, sizeof *s);
  if (!tl_require("nbd-server"))
    return false;

  s->alpha = make_random_file("alpha", WRITE_EXPORT_SIZE, 20);
  s->beta = make_random_file("beta", MiB, 21);
  s->gamma = make_sparse_file("gamma", SPARSE_EXPORT_SIZE, NULL, 0, 0);
  s->server = tl_nbd_server_start((const struct tl_export[]) {
                                    { "alpha", s->alpha, false },
                                    { "beta", s->beta, true },
                                    { "gamma", s->gamma, false },
                                    { NULL },
                                  }, &error);
  g_assert_no_error(error);
  g_assert_nonnull(s->server);
  return true;
}

static void
nbd_server_teardown(struct nbd_server_setup *s)
{
  tl_server_stop(s->server);
  g_free(s->alpha);
  g_free(s->beta);
  g_free(s->gamma);
}

static void
test_nbd_server_handshake(void)
{
  struct nbd_server_setup s;
  const struct nbd_export_info *info;
  struct nbd_conn *conn;
  g_autofree char *names = NULL;
  g_autofree guint8 *want = NULL;
  g_autofree guint8 *got = g_malloc(MiB);
  guint8 byte = 0;

  if (!nbd_server_setup(&s))
    return;

  names = list_exports(s.server);
  g_assert_cmpstr(names, ==, "alpha,beta,gamma");

  /* GO carries the right size, unlike nbd-server's INFO. */
  conn = open_export(s.server, "alpha");
  info = nbd_conn_info(conn);
  g_assert_cmpuint(info->size, ==, WRITE_EXPORT_SIZE);
  g_assert_true(info->tflags & NBD_FLAG_HAS_FLAGS);
  g_assert_false(info->tflags & NBD_FLAG_READ_ONLY);
  g_assert_cmpstr(info->name, ==, "alpha");
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);

  /* O9: a read-only export reads, and every write is refused locally
   * with EROFS. */
  conn = open_export(s.server, "beta");
  info = nbd_conn_info(conn);
  g_assert_cmpuint(info->size, ==, MiB);
  g_assert_true(info->tflags & NBD_FLAG_READ_ONLY);
  g_assert_cmpint(io(conn, NBD_CMD_WRITE, 0, 0, 1, &byte), ==, -EROFS);
  g_assert_cmpint(io(conn, NBD_CMD_WRITE_ZEROES, 0, 0, 512, NULL), ==,
                  -EROFS);
  g_assert_cmpint(io(conn, NBD_CMD_TRIM, 0, 0, 512, NULL), ==, -EROFS);
  want = read_whole_file(s.beta, MiB);
  read_range(conn, got, 0, MiB, 64 * KiB, 16);
  assert_bytes("read-only export", got, want, MiB);
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);

  conn = open_export(s.server, "gamma");
  g_assert_cmpuint(nbd_conn_info(conn)->size, ==, SPARSE_EXPORT_SIZE);
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);

  assert_missing_export(s.server, "nope", "gamma");
  nbd_server_teardown(&s);
}

static void
test_nbd_server_write_read(void)
{
  struct nbd_server_setup s;
  g_autofree guint8 *mirror = NULL;
  g_autofree guint8 *disk = NULL;

  if (!nbd_server_setup(&s))
    return;

  mirror = read_whole_file(s.alpha, WRITE_EXPORT_SIZE);
  write_plan(open_export(s.server, "alpha"), mirror);
  disk = read_whole_file(s.alpha, WRITE_EXPORT_SIZE);
  assert_bytes("backing file", disk, mirror, WRITE_EXPORT_SIZE);
  nbd_server_teardown(&s);
}

static void
test_nbd_server_read(void)
{
  struct nbd_server_setup s;
  g_autofree guint8 *want = NULL;
  g_autofree char *uri = NULL;
  struct nbd_conn *conn;

  if (!tl_require("nbdcopy") || !nbd_server_setup(&s))
    return;

  want = read_whole_file(s.alpha, WRITE_EXPORT_SIZE);
  uri = tl_server_uri(s.server, "alpha");
  conn = open_export(s.server, "alpha");
  check_read(conn, uri, want);
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);
  nbd_server_teardown(&s);
}

static void
test_nbd_server_block_status(void)
{
  struct nbd_server_setup s;
  struct nbd_conn *conn;

  if (!nbd_server_setup(&s))
    return;

  conn = open_export(s.server, "gamma");
  write_sparse_spans(conn);
  check_sparse_status(conn);
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);
  nbd_server_teardown(&s);
}

static void
test_nbd_server_zero_trim(void)
{
  struct nbd_server_setup s;
  g_autofree guint8 *back = g_malloc(MiB);
  g_autofree guint8 *disk = NULL;
  struct nbd_conn *conn;

  if (!nbd_server_setup(&s))
    return;

  conn = open_export(s.server, "gamma");
  check_zero_trim_cache_fua(conn, 2 * MiB);
  read_range(conn, back, 2 * MiB, MiB, 64 * KiB, 16);
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);

  /* What the server acknowledged is in its file. */
  disk = read_whole_file(s.gamma, SPARSE_EXPORT_SIZE);
  assert_bytes("backing file", disk + 2 * MiB, back, MiB);
  nbd_server_teardown(&s);
}

/* ---- qemu-nbd ------------------------------------------------------------ */

static char *
make_qcow2(uint64_t size)
{
  char *path = temp_path("disk.qcow2");
  g_autofree char *size_arg = g_strdup_printf("%" PRIu64, size);
  const char *argv[] = {
    "qemu-img", "create", "-q", "-f", "qcow2", path, size_arg, NULL,
  };

  run_program(argv);
  return path;
}

/* The guest-visible bytes of a qcow2 image, by qemu-img, after the
 * server that wrote it has stopped. */
static guint8 *
qcow2_contents(const char *qcow2, uint64_t size)
{
  g_autofree char *raw = temp_path("converted.raw");
  const char *argv[] = {
    "qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow2, raw, NULL,
  };

  run_program(argv);
  return read_whole_file(raw, size);
}

static void
test_qemu_nbd_qcow2_handshake(void)
{
  g_autofree char *qcow2 = NULL;
  const struct nbd_export_info *info;
  g_autofree char *names = NULL;
  struct tl_server *server;
  struct nbd_conn *conn;
  struct stat st;

  if (!tl_require("qemu-nbd") || !tl_require("qemu-img"))
    return;
  qcow2 = make_qcow2(16 * MiB);
  server = start_qemu_nbd(qcow2, "qcow2");

  /* The export is the virtual disk, not the small file holding it. */
  conn = open_export(server, "vol");
  info = nbd_conn_info(conn);
  g_assert_cmpint(g_stat(qcow2, &st), ==, 0);
  g_assert_cmpint(st.st_size, <, MiB);
  g_assert_cmpuint(info->size, ==, 16 * MiB);
  g_assert_cmphex(info->tflags & ~NBD_FLAG_CAN_MULTI_CONN, ==,
                  NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
                  NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |
                  NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_DF |
                  NBD_FLAG_SEND_CACHE | NBD_FLAG_SEND_FAST_ZERO);
  g_assert_true(info->structured);
  g_assert_true(info->block_status);
  g_assert_true(info->block_size_advertised);
  g_assert_cmpuint(info->min_block, ==, 1);
  g_assert_cmpuint(info->pref_block, ==, 4096);
  g_assert_cmpuint(info->max_payload, ==, 32 * MiB);
  g_assert_cmpstr(info->name, ==, "vol");
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);

  names = list_exports(server);
  g_assert_cmpstr(names, ==, "vol");
  assert_missing_export(server, "nope", "vol");
  tl_server_stop(server);
}

static void
test_qemu_nbd_raw_write_read(void)
{
  g_autofree char *path = NULL;
  g_autofree guint8 *mirror = NULL;
  g_autofree guint8 *disk = NULL;
  struct tl_server *server;

  if (!tl_require("qemu-nbd"))
    return;
  path = make_random_file("qemu-raw", WRITE_EXPORT_SIZE, 30);
  mirror = read_whole_file(path, WRITE_EXPORT_SIZE);
  server = start_qemu_nbd(path, "raw");

  write_plan(open_export(server, "vol"), mirror);
  disk = read_whole_file(path, WRITE_EXPORT_SIZE);
  assert_bytes("backing file", disk, mirror, WRITE_EXPORT_SIZE);
  tl_server_stop(server);
}

static void
test_qemu_nbd_qcow2_write_read(void)
{
  g_autofree char *qcow2 = NULL;
  g_autofree guint8 *mirror = g_malloc0(WRITE_EXPORT_SIZE);
  g_autofree guint8 *disk = NULL;
  struct tl_server *server;

  if (!tl_require("qemu-nbd") || !tl_require("qemu-img"))
    return;
  qcow2 = make_qcow2(WRITE_EXPORT_SIZE);
  server = start_qemu_nbd(qcow2, "qcow2");

  write_plan(open_export(server, "vol"), mirror);
  tl_server_stop(server);

  disk = qcow2_contents(qcow2, WRITE_EXPORT_SIZE);
  assert_bytes("qcow2 contents", disk, mirror, WRITE_EXPORT_SIZE);
}

/* Data at unaligned places among holes, so that qemu-nbd answers many
 * READs with several chunks, OFFSET_HOLE among OFFSET_DATA (X17). */
static const struct span scattered[] = {
  { 8 * KiB + 100, 20000 },
  { 1 * MiB - 3000, 70000 },
  { 3 * MiB + 4 * KiB, 4 * KiB },
  { 5 * MiB + 12345, 1 * MiB + 777 },
  { 15 * MiB + 60 * KiB, 1 * MiB - 60 * KiB },
};

/* Reads a raw or qcow2 image of the scattered layout. */
static void
check_qemu_read(const char *format)
{
  g_autofree char *raw = make_sparse_file("scattered.raw", 16 * MiB,
                                          scattered,
                                          G_N_ELEMENTS(scattered), 31);
  g_autofree guint8 *want = read_whole_file(raw, 16 * MiB);
  g_autofree char *qcow2 = temp_path("scattered.qcow2");
  const char *argv[] = {
    "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o",
    "cluster_size=4096", raw, qcow2, NULL,
  };
  const char *image = raw;
  g_autofree char *uri = NULL;
  struct tl_server *server;
  struct nbd_conn *conn;

  /* Small clusters keep the holes between the data spans. */
  if (strcmp(format, "qcow2") == 0) {
    run_program(argv);
    image = qcow2;
  }

  server = start_qemu_nbd(image, format);
  uri = tl_server_uri(server, "vol");
  conn = open_export(server, "vol");
  check_read(conn, uri, want);

  /* X19: with DF the same bytes come in one chunk, holes included; the
   * parser refuses a second chunk, so success proves there was one. */
  g_assert_true(nbd_conn_info(conn)->tflags & NBD_FLAG_SEND_DF);
  for (size_t i = 0; i < G_N_ELEMENTS(scattered); i++) {
    uint64_t at = scattered[i].offset - 5000;
    guint8 got[64 * 1024];

    memset(got, 0xa5, sizeof got);
    g_assert_cmpint(io(conn, NBD_CMD_READ, NBD_CMD_FLAG_DF, at, sizeof got,
                       got), ==, 0);
    assert_bytes("DF read", got, want + at, sizeof got);
  }
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);
  tl_server_stop(server);
}

static void
test_qemu_nbd_raw_read(void)
{
  if (!tl_require("qemu-nbd") || !tl_require("nbdcopy"))
    return;
  check_qemu_read("raw");
}

static void
test_qemu_nbd_qcow2_read(void)
{
  if (!tl_require("qemu-nbd") || !tl_require("qemu-img") ||
      !tl_require("nbdcopy"))
    return;
  check_qemu_read("qcow2");
}

static void
check_qemu_block_status(const char *format)
{
  g_autofree char *image = NULL;
  struct tl_server *server;
  struct nbd_conn *conn;

  if (strcmp(format, "qcow2") == 0)
    image = make_qcow2(SPARSE_EXPORT_SIZE);
  else
    image = make_sparse_file("sparse.raw", SPARSE_EXPORT_SIZE, NULL, 0, 0);

  server = start_qemu_nbd(image, format);
  conn = open_export(server, "vol");
  g_assert_true(nbd_conn_info(conn)->block_status);
  write_sparse_spans(conn);
  check_sparse_status(conn);
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);
  tl_server_stop(server);
}

static void
test_qemu_nbd_raw_block_status(void)
{
  if (!tl_require("qemu-nbd"))
    return;
  check_qemu_block_status("raw");
}

static void
test_qemu_nbd_qcow2_block_status(void)
{
  if (!tl_require("qemu-nbd") || !tl_require("qemu-img"))
    return;
  check_qemu_block_status("qcow2");
}

static void
test_qemu_nbd_raw_zero_trim(void)
{
  g_autofree char *path = NULL;
  g_autofree guint8 *back = g_malloc(MiB);
  g_autofree guint8 *disk = NULL;
  struct tl_server *server;
  struct nbd_conn *conn;

  if (!tl_require("qemu-nbd"))
    return;
  path = make_random_file("qemu-zero", 4 * MiB, 32);
  server = start_qemu_nbd(path, "raw");

  conn = open_export(server, "vol");
  check_zero_trim_cache_fua(conn, 1 * MiB);
  read_range(conn, back, 1 * MiB, MiB, 64 * KiB, 16);
  nbd_conn_close(conn, CLOSE_TIMEOUT_MS);

  disk = read_whole_file(path, 4 * MiB);
  assert_bytes("backing file", disk + 1 * MiB, back, MiB);
  tl_server_stop(server);
}

int
main(int argc, char **argv)
{
  tl_init(&argc, &argv);

  g_test_add_func("/interop/nbdkit/memory/handshake",
                  test_nbdkit_memory_handshake);
  g_test_add_func("/interop/nbdkit/exportname/list-go-missing",
                  test_nbdkit_exportname_handshake);
  g_test_add_func("/interop/nbdkit/file/write-read",
                  test_nbdkit_file_write_read);
  g_test_add_func("/interop/nbdkit/pattern/read-vs-nbdcopy",
                  test_nbdkit_pattern_read);
  g_test_add_func("/interop/nbdkit/memory/block-status",
                  test_nbdkit_memory_block_status);
  g_test_add_func("/interop/nbdkit/sparse-random/status-and-read",
                  test_nbdkit_sparse_random);
  g_test_add_func("/interop/nbdkit/memory/zero-trim-cache-fua",
                  test_nbdkit_memory_zero_trim);
  g_test_add_func("/interop/nbdkit/blocksize-policy/limits-refused-locally",
                  test_nbdkit_blocksize_policy);
  g_test_add_func("/interop/nbdkit/error/eio-connection-survives",
                  test_nbdkit_error_filter);
  g_test_add_func("/interop/nbdkit/delay/128-in-flight-out-of-order",
                  test_nbdkit_delay_out_of_order);
  g_test_add_func("/interop/nbdkit/memory/odd-size",
                  test_nbdkit_odd_size);

  g_test_add_func("/interop/nbd-server/handshake",
                  test_nbd_server_handshake);
  g_test_add_func("/interop/nbd-server/write-read",
                  test_nbd_server_write_read);
  g_test_add_func("/interop/nbd-server/read-vs-nbdcopy",
                  test_nbd_server_read);
  g_test_add_func("/interop/nbd-server/block-status",
                  test_nbd_server_block_status);
  g_test_add_func("/interop/nbd-server/zero-trim-cache-fua",
                  test_nbd_server_zero_trim);

  g_test_add_func("/interop/qemu-nbd/qcow2/handshake",
                  test_qemu_nbd_qcow2_handshake);
  g_test_add_func("/interop/qemu-nbd/raw/write-read",
                  test_qemu_nbd_raw_write_read);
  g_test_add_func("/interop/qemu-nbd/qcow2/write-read",
                  test_qemu_nbd_qcow2_write_read);
  g_test_add_func("/interop/qemu-nbd/raw/read-vs-nbdcopy",
                  test_qemu_nbd_raw_read);
  g_test_add_func("/interop/qemu-nbd/qcow2/read-vs-nbdcopy",
                  test_qemu_nbd_qcow2_read);
  g_test_add_func("/interop/qemu-nbd/raw/block-status",
                  test_qemu_nbd_raw_block_status);
  g_test_add_func("/interop/qemu-nbd/qcow2/block-status",
                  test_qemu_nbd_qcow2_block_status);
  g_test_add_func("/interop/qemu-nbd/raw/zero-trim-cache-fua",
                  test_qemu_nbd_raw_zero_trim);

  return g_test_run();
}
