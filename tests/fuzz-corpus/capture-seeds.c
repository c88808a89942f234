/* nbdfs: capture fuzz seeds from real servers.
 *
 *   capture-seeds OUTDIR
 *
 * Starts nbdkit, qemu-nbd and nbd-server (through testlib, so they are
 * always stopped), runs nbdproto against each with a transport that
 * records every byte the server sends, and writes those bytes as seeds:
 * OUTDIR/handshake/NAME for fuzz-handshake and OUTDIR/reply/NAME for
 * fuzz-reply, each behind the one-byte mode prefix the harness reads.
 *
 * For reply seeds the six commands of fuzz-reply go out in its order,
 * so the server's cookies 1..6 name the same commands there.  Where the
 * server offers no structured replies or no base:allocation, only the
 * READ and the WRITE (cookies 1 and 2) go out.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "internal.h"
#include "scripted.h"
#include "testlib.h"

#define EXPORT_SIZE (1 << 20)

/* ---- A transport that records what the server sends -------------------- */

static GByteArray *recording;
static GMutex recording_lock;
static struct nbd_transport_ops recording_ops;
static const struct nbd_transport_ops *plain_ops;

static ssize_t
recording_recv(struct nbd_transport *t, void *buf, size_t len)
{
  ssize_t n = plain_ops->recv(t, buf, len);

  if (n > 0) {
    g_mutex_lock(&recording_lock);
    g_byte_array_append(recording, buf, n);
    g_mutex_unlock(&recording_lock);
  }
  return n;
}

static struct nbd_transport *
connect_recording(const struct tl_server *server)
{
  GError *error = NULL;
  struct nbd_transport *t;
  int fd = tl_server_connect(server, &error);

  if (fd < 0)
    g_error("connect: %s", error->message);
  t = nbd_transport_new_fd(fd, "capture");

  /* Same pair as the plain socket, but recv also keeps a copy. */
  plain_ops = t->ops;
  recording_ops = *t->ops;
  recording_ops.recv = recording_recv;
  t->ops = &recording_ops;
  return t;
}

/* Takes what was recorded so far, leaving an empty recording. */
static GByteArray *
take_recording(void)
{
  GByteArray *b;

  g_mutex_lock(&recording_lock);
  b = recording;
  recording = g_byte_array_new();
  g_mutex_unlock(&recording_lock);
  return b;
}

static void
write_seed(const char *dir, const char *kind, const char *name,
           uint8_t mode, const GByteArray *bytes)
{
  g_autofree char *sub = g_build_filename(dir, kind, NULL);
  g_autofree char *path = g_build_filename(sub, name, NULL);
  g_autoptr(GByteArray) seed = g_byte_array_new();
  GError *error = NULL;

  g_mkdir_with_parents(sub, 0755);
  g_byte_array_append(seed, &mode, 1);
  g_byte_array_append(seed, bytes->data, bytes->len);
  if (!g_file_set_contents(path, (const char *) seed->data, seed->len,
                           &error))
    g_error("%s: %s", path, error->message);
  printf("%-40s %6u bytes\n", path + strlen(dir) + 1, seed->len);
}

/* ---- The exchanges ---------------------------------------------------- */

struct waiter {
  GMutex lock;
  GCond cond;
  unsigned done;
};

static void
cmd_done(struct nbd_cmd *cmd, int err)
{
  struct waiter *w = cmd->user;

  g_mutex_lock(&w->lock);
  w->done++;
  g_cond_signal(&w->cond);
  g_mutex_unlock(&w->lock);
}

/* The in-flight set of fuzz-reply, in cookie order. */
static unsigned
submit_fuzz_commands(struct nbd_conn *c, struct nbd_cmd *cmds,
                     uint8_t *read_buf, uint8_t *write_buf, uint8_t *df_buf,
                     struct waiter *w)
{
  const struct nbd_export_info *in = nbd_conn_info(c);
  bool full = in->structured && in->block_status;
  const struct nbd_cmd plan[6] = {
    { .type = NBD_CMD_READ, .offset = 0, .count = 32768, .buf = read_buf },
    { .type = NBD_CMD_WRITE, .offset = 0, .count = 512, .buf = write_buf },
    { .type = NBD_CMD_BLOCK_STATUS, .flags = NBD_CMD_FLAG_REQ_ONE,
      .offset = 0, .count = 65536 },
    { .type = NBD_CMD_BLOCK_STATUS, .offset = 0, .count = EXPORT_SIZE },
    { .type = NBD_CMD_FLUSH },
    { .type = NBD_CMD_READ, .flags = NBD_CMD_FLAG_DF, .offset = 0,
      .count = 4096, .buf = df_buf },
  };
  unsigned n = full ? 6 : 2;

  for (unsigned i = 0; i < n; i++) {
    int rc;

    cmds[i] = plan[i];
    cmds[i].done = cmd_done;
    cmds[i].user = w;
    rc = nbd_conn_submit(c, &cmds[i]);
    if (rc < 0)
      g_error("submit %s: %s; the cookies would no longer match "
              "fuzz-reply", nbd_cmd_name(plan[i].type), g_strerror(-rc));
  }
  return n;
}

static void
capture_go(const struct tl_server *server, const char *name,
           const char *export_name, uint8_t mode, const char *dir)
{
  struct nbd_handshake_opts o = {
    .export_name = export_name,
    .no_structured = mode & 2,
    .no_block_status = mode & 4,
  };
  struct nbd_export_info info;
  struct nbd_transport *t = connect_recording(server);
  g_autoptr(GByteArray) hs = NULL;
  g_autoptr(GByteArray) rep = NULL;
  g_autofree uint8_t *read_buf = g_malloc(32768);
  g_autofree uint8_t *write_buf = g_malloc0(512);
  g_autofree uint8_t *df_buf = g_malloc(4096);
  struct nbd_cmd cmds[6] = { { 0 } };
  struct waiter w = { 0 };
  GError *error = NULL;
  struct nbd_conn *c;
  unsigned n;
  uint8_t ctx_mode;

  g_mutex_init(&w.lock);
  g_cond_init(&w.cond);
  if (nbd_handshake_go(t, &o, &info, &error) < 0)
    g_error("%s: %s", name, error->message);
  hs = take_recording();
  write_seed(dir, "handshake", name, mode, hs);

  /* fuzz-reply's mode byte: bit 7 for simple replies, else the
   * context id in the low seven bits. */
  g_assert(info.alloc_ctx_id < 0x80);
  ctx_mode = info.structured ? info.alloc_ctx_id : 0x80;

  c = nbd_conn_new(t, &info);
  n = submit_fuzz_commands(c, cmds, read_buf, write_buf, df_buf, &w);
  g_mutex_lock(&w.lock);
  while (w.done < n)
    g_cond_wait(&w.cond, &w.lock);
  g_mutex_unlock(&w.lock);
  nbd_conn_close(c, 5000);
  for (unsigned i = 0; i < n; i++)
    g_free(cmds[i].extents);

  rep = take_recording();
  write_seed(dir, "reply", name, ctx_mode, rep);
  g_mutex_clear(&w.lock);
  g_cond_clear(&w.cond);
}

static void
capture_list(const struct tl_server *server, const char *name,
             const char *dir)
{
  struct nbd_handshake_opts o = { .export_name = "" };
  struct nbd_transport *t = connect_recording(server);
  g_autoptr(GPtrArray) list = NULL;
  g_autoptr(GByteArray) hs = NULL;
  GError *error = NULL;

  if (nbd_handshake_list(t, &o, 1000, &list, &error) < 0)
    g_error("%s: %s", name, error->message);
  nbd_transport_free(t);
  hs = take_recording();
  write_seed(dir, "handshake", name, 1, hs);
}

/* ---- The servers ------------------------------------------------------ */

/* 1 MiB, sparse: data at 0..8K and 20K..24K, the rest holes, so reads
 * and block status show both. */
static char *
make_sparse_image(void)
{
  g_autofree char *path = g_build_filename(tl_tmpdir(), "sparse.img", NULL);
  uint8_t block[8192];
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

  if (fd < 0)
    g_error("%s: %s", path, g_strerror(errno));
  sc_pattern(block, 0, sizeof block);
  if (ftruncate(fd, EXPORT_SIZE) < 0 ||
      pwrite(fd, block, sizeof block, 0) != sizeof block ||
      pwrite(fd, block, 4096, 20480) != 4096)
    g_error("%s: %s", path, g_strerror(errno));
  close(fd);
  return g_steal_pointer(&path);
}

static struct tl_server *
nbdkit(const char *const *args)
{
  GError *error = NULL;
  struct tl_server *s = tl_nbdkit_start(args, &error);

  if (s == NULL)
    g_error("nbdkit: %s", error->message);
  return s;
}

static void
capture_nbdkit(const char *dir)
{
  static const char *const memory[] = { "memory", "1M", NULL };
  static const char *const data[] = {
    "data", "data=1 2 3 4 @8192 5 6 7 8 @20480 9 10 11 12", "size=1M",
    NULL,
  };
  static const char *const pattern[] = {
    "--filter=cow", "pattern", "1M", NULL,
  };
  static const char *const errors[] = {
    "--filter=error", "memory", "1M", "error-pread=EIO",
    "error-pread-rate=1", "error-extents=ENOSPC", "error-extents-rate=1",
    NULL,
  };
  static const char *const no_sr[] = { "--no-sr", "memory", "1M", NULL };
  static const char *const sizes[] = {
    "--filter=blocksize-policy", "memory", "1M", "blocksize-minimum=512",
    "blocksize-preferred=4096", "blocksize-maximum=65536", NULL,
  };
  struct tl_server *s;

  s = nbdkit(memory);
  capture_go(s, "nbdkit-memory", "disk", 0, dir);
  capture_go(s, "nbdkit-memory-simple", "disk", 2, dir);
  capture_go(s, "nbdkit-memory-default-export", "", 8, dir);
  capture_list(s, "nbdkit-memory-list", dir);
  tl_server_stop(s);

  s = nbdkit(data);
  capture_go(s, "nbdkit-data", "disk", 0, dir);
  tl_server_stop(s);

  s = nbdkit(pattern);
  capture_go(s, "nbdkit-pattern", "disk", 0, dir);
  tl_server_stop(s);

  s = nbdkit(errors);
  capture_go(s, "nbdkit-error", "disk", 0, dir);
  tl_server_stop(s);

  s = nbdkit(no_sr);
  capture_go(s, "nbdkit-no-sr", "disk", 0, dir);
  tl_server_stop(s);

  s = nbdkit(sizes);
  capture_go(s, "nbdkit-blocksize-policy", "disk", 0, dir);
  tl_server_stop(s);
}

static void
capture_qemu(const char *dir, const char *image)
{
  GError *error = NULL;
  struct tl_server *s = tl_qemu_nbd_start(image, "raw", "disk", NULL,
                                          &error);

  if (s == NULL)
    g_error("qemu-nbd: %s", error->message);
  capture_go(s, "qemu-nbd-raw", "disk", 0, dir);
  capture_go(s, "qemu-nbd-raw-no-context", "disk", 4, dir);
  capture_list(s, "qemu-nbd-list", dir);
  tl_server_stop(s);
}

static void
capture_nbd_server(const char *dir, const char *image)
{
  const struct tl_export exports[] = {
    { .name = "disk", .path = image },
    { .name = "other", .path = image, .readonly = true },
    { .name = NULL },
  };
  GError *error = NULL;
  struct tl_server *s = tl_nbd_server_start(exports, &error);

  if (s == NULL)
    g_error("nbd-server: %s", error->message);
  capture_go(s, "nbd-server", "disk", 0, dir);
  capture_list(s, "nbd-server-list", dir);
  tl_server_stop(s);
}

int
main(int argc, char **argv)
{
  g_autofree char *image = NULL;

  tl_init(&argc, &argv);
  if (argc != 2) {
    fprintf(stderr, "usage: capture-seeds OUTDIR\n");
    return 2;
  }
  recording = g_byte_array_new();
  image = make_sparse_image();

  capture_nbdkit(argv[1]);
  capture_qemu(argv[1], image);
  capture_nbd_server(argv[1], image);

  g_byte_array_unref(recording);
  return 0;
}
