/* nbdfs end to end: random operations from several threads, checked
 * byte for byte against a copy kept in memory.
 *
 * Each thread owns stripes of the export (one large region, or many
 * small interleaved ones) and runs a random mix of reads, writes, fsync,
 * PUNCH_HOLE, ZERO_RANGE, SEEK_DATA/SEEK_HOLE and batches of concurrent
 * O_DIRECT writes at random offsets and sizes (1 byte to 1 MiB, any
 * alignment) on its own file descriptors, keeping the shadow copy of
 * its stripes up to date.  Stripe boundaries are not block aligned, so
 * threads share blocks, and the concurrent writes of a batch share
 * blocks too: with a 4 KiB minimum block their read-modify-write cycles
 * overlap, and only the scheduler's ordering (O6, S16) keeps one from
 * undoing another.  At the end the server's backing file must equal the
 * shadow copy, including a tail that no thread owns.
 *
 * A failure names the GLib seed (rerun with --seed=R02S... as printed at
 * the start, and -p for one variant), the thread, the operation and the
 * first offset that differs.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/aio_abi.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <glib.h>

#include "fusemount.h"
#include "testlib.h"

#define KiB ((uint64_t)1024)
#define MiB (1024 * KiB)

#define THREADS      4
#define REGION       (6 * MiB + 4099)   /* not a multiple of any block */
#define TAIL         (1 * MiB + 4096)   /* never touched by a thread */
#define MAX_IO       (1 * MiB)
#define TIME_LIMIT_S 20                 /* per thread, then it stops */
#define AIO_MAX      16                 /* writes in one io_submit */
#define AIO_MAX_LEN  (256 * KiB)
#define WATCHDOG_S   120

enum op {
  OP_READ,
  OP_WRITE,
  OP_FSYNC,
  OP_PUNCH,
  OP_ZERO,
  OP_SEEK_DATA,
  OP_SEEK_HOLE,
  OP_AIO_WRITES,
  N_OPS,
};

static const char *const op_names[] = {
  "read", "write", "fsync", "punch", "zero", "seek-data", "seek-hole",
  "aio-writes",
};

/* Relative frequencies of the operations. */
static const unsigned op_weights[] = { 25, 25, 6, 10, 10, 10, 9, 10 };

struct worker {
  int id;
  const char *file;
  uint64_t size;        /* of the export */
  uint64_t stripe;      /* the thread owns stripes id, id + THREADS, ... */
  unsigned nstripes;    /* of this size: nstripes of them */
  unsigned ops;
  unsigned op_index;    /* of the current operation, for messages */
  enum op op;
  uint64_t lo, hi;      /* the stripe the current operation is in */
  guint8 *shadow;       /* the whole export; only our stripes are ours */
  guint32 seed;
  bool sync_before_seek;
  bool aio;             /* may use O_DIRECT io_submit (cache=none only) */
  char *failure;        /* the first thing that went wrong */
  unsigned counts[N_OPS];
};

/* Counts the threads that have finished, for the watchdog. */
static GMutex finished_lock;
static GCond finished_cond;
static int finished;

struct variant {
  const char *name;
  const char *cache;
  uint64_t stripe;
  unsigned nstripes;
  unsigned ops;
  bool sync_before_seek;
  struct tl_server *(*start)(const char *img);
};

/* O_DIRECT writes mix badly with the page cache when another thread
 * caches the same page: Linux may keep or write back a stale copy of
 * the bytes around a direct write.  That is the kernel's rule for any
 * file, so io_submit is used only where nbdfs runs without a page cache.
 */
static bool
uses_aio(const struct variant *v)
{
  return strcmp(v->cache, "none") == 0;
}

static bool G_GNUC_PRINTF(2, 3)
fail(struct worker *w, const char *fmt, ...)
{
  va_list ap;

  if (w->failure == NULL) {
    g_autofree char *msg = NULL;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    w->failure = g_strdup_printf("thread %d, operation %u (%s), stripe %"
                                 G_GUINT64_FORMAT "..%" G_GUINT64_FORMAT
                                 ": %s", w->id, w->op_index,
                                 op_names[w->op], w->lo, w->hi, msg);
  }
  return false;
}

/* The first offset in [off, off + len) where GOT and the shadow differ,
 * or UINT64_MAX.
 */
static uint64_t
first_difference(const struct worker *w, const guint8 *got, uint64_t off,
                 size_t len)
{
  if (memcmp(got, w->shadow + off, len) == 0)
    return UINT64_MAX;
  for (size_t i = 0; i < len; i++)
    if (got[i] != w->shadow[off + i])
      return off + i;
  return UINT64_MAX;
}

/* The first nonzero shadow byte in [from, to), or UINT64_MAX. */
static uint64_t
first_nonzero(const struct worker *w, uint64_t from, uint64_t to)
{
  for (uint64_t i = from; i < to; i++)
    if (w->shadow[i] != 0)
      return i;
  return UINT64_MAX;
}

/* ---- Random choices ---- */

static enum op
pick_op(const struct worker *w, GRand *rng)
{
  unsigned total = 0, r;

  for (int i = 0; i < N_OPS; i++)
    total += op_weights[i];
  r = g_rand_int_range(rng, 0, total);
  for (int i = 0; i < N_OPS; i++) {
    if (r < op_weights[i])
      return i == OP_AIO_WRITES && !w->aio ? OP_WRITE : (enum op)i;
    r -= op_weights[i];
  }
  return OP_READ;
}

/* An offset in the region: often close to one of its ends, where the
 * blocks are shared with the neighbours; now and then a block-aligned
 * one.
 */
static uint64_t
pick_offset(struct worker *w, GRand *rng)
{
  uint64_t edge = MIN(8192, w->hi - w->lo), off;

  switch (g_rand_int_range(rng, 0, 8)) {
    case 0:
    case 1:
      return w->lo + g_rand_int_range(rng, 0, edge);
    case 2:
    case 3:
      return w->hi - g_rand_int_range(rng, 1, edge + 1);
    default:
      off = w->lo + g_rand_int_range(rng, 0, w->hi - w->lo);
      if (g_rand_int_range(rng, 0, 4) == 0 && off - off % 4096 >= w->lo)
        off -= off % 4096;
      return off;
  }
}

/* A length from OFF that stays in the region: small ones, large ones up
 * to 1 MiB, and block multiples.
 */
static size_t
pick_length(struct worker *w, GRand *rng, uint64_t off)
{
  size_t len;

  switch (g_rand_int_range(rng, 0, 6)) {
    case 0:
    case 1:
    case 2:
      len = g_rand_int_range(rng, 1, 8193);
      break;
    case 3:
    case 4:
      len = g_rand_int_range(rng, 1, MAX_IO + 1);
      break;
    default:
      len = 4096 * g_rand_int_range(rng, 1, 257);
      break;
  }
  return MIN(len, w->hi - off);
}

static void
fill_random(GRand *rng, guint8 *buf, size_t len)
{
  size_t i = 0;

  for (; i + 4 <= len; i += 4) {
    guint32 v = g_rand_int(rng);

    memcpy(buf + i, &v, 4);
  }
  for (; i < len; i++)
    buf[i] = (guint8)g_rand_int(rng);
}

/* ---- One operation each ---- */

static bool
do_read(struct worker *w, int fd, guint8 *buf, uint64_t off, size_t len)
{
  ssize_t n = pread(fd, buf, len, off);
  uint64_t bad;

  if (n != (ssize_t)len)
    return fail(w, "read %zu at %" G_GUINT64_FORMAT ": returned %zd (%s)",
                len, off, n, n < 0 ? g_strerror(errno) : "short");
  bad = first_difference(w, buf, off, len);
  if (bad != UINT64_MAX)
    return fail(w, "read %zu at %" G_GUINT64_FORMAT ": byte %"
                G_GUINT64_FORMAT " is 0x%02x, want 0x%02x", len, off, bad,
                buf[bad - off], w->shadow[bad]);
  return true;
}

static bool
do_write(struct worker *w, int fd, GRand *rng, guint8 *buf, uint64_t off,
         size_t len)
{
  ssize_t n;

  fill_random(rng, buf, len);
  n = pwrite(fd, buf, len, off);
  if (n != (ssize_t)len)
    return fail(w, "write %zu at %" G_GUINT64_FORMAT ": returned %zd (%s)",
                len, off, n, n < 0 ? g_strerror(errno) : "short");
  memcpy(w->shadow + off, buf, len);
  return true;
}

static bool
do_zero(struct worker *w, int fd, enum op op, uint64_t off, size_t len)
{
  int mode = op == OP_PUNCH ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                            : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;

  /* O8: both must read back as zeros, whatever the server does with the
   * allocation.
   */
  if (fallocate(fd, mode, off, len) < 0)
    return fail(w, "%s %zu at %" G_GUINT64_FORMAT ": %s", op_names[op],
                len, off, g_strerror(errno));
  memset(w->shadow + off, 0, len);
  return true;
}

/* B13: a hole is a range that reads as zeros.  So SEEK_DATA may stop
 * early (zeros reported as data are harmless) but must not skip a
 * nonzero byte, and SEEK_HOLE must land on a zero byte or the end.
 * Only our own region is known; answers beyond it are not checked.
 */
static bool
do_seek(struct worker *w, int fd, enum op op, uint64_t off)
{
  int whence = op == OP_SEEK_DATA ? SEEK_DATA : SEEK_HOLE;
  off_t r;
  uint64_t bad;

  /* In writeback mode the kernel does not write dirty pages back before
   * FUSE_LSEEK, so the server cannot know about them yet.
   */
  if (w->sync_before_seek && fsync(fd) < 0)
    return fail(w, "fsync before %s: %s", op_names[op], g_strerror(errno));

  errno = 0;
  r = lseek(fd, off, whence);
  if (r < 0 && !(whence == SEEK_DATA && errno == ENXIO))
    return fail(w, "%s from %" G_GUINT64_FORMAT ": %s", op_names[op], off,
                g_strerror(errno));
  if (r >= 0 && (uint64_t)r < off)
    return fail(w, "%s from %" G_GUINT64_FORMAT ": went back to %jd",
                op_names[op], off, (intmax_t)r);

  if (whence == SEEK_DATA) {
    uint64_t end = r < 0 ? w->hi : MIN((uint64_t)r, w->hi);

    bad = first_nonzero(w, off, end);
    if (bad != UINT64_MAX)
      return fail(w, "seek-data from %" G_GUINT64_FORMAT " gave %jd but "
                  "byte %" G_GUINT64_FORMAT " is 0x%02x", off, (intmax_t)r,
                  bad, w->shadow[bad]);
    return true;
  }

  if ((uint64_t)r < w->hi && w->shadow[r] != 0)
    return fail(w, "seek-hole from %" G_GUINT64_FORMAT " gave %jd, where "
                "the byte is 0x%02x", off, (intmax_t)r, w->shadow[r]);
  if ((uint64_t)r > w->size)
    return fail(w, "seek-hole from %" G_GUINT64_FORMAT " gave %jd, past "
                "the end", off, (intmax_t)r);
  return true;
}

/* Makes stripe J of the thread the current one. */
static void
set_stripe(struct worker *w, unsigned j)
{
  w->lo = ((uint64_t)j * THREADS + w->id) * w->stripe;
  w->hi = w->lo + w->stripe;
}

/* Several writes to disjoint ranges in flight at once: io_submit on an
 * O_DIRECT descriptor is the one way to have the kernel send concurrent
 * FUSE writes for one file (it serialises the others on the inode
 * lock).  Neighbouring ranges share blocks, so with a minimum block
 * larger than a byte the daemon's read-modify-write cycles race unless
 * it orders them (O6, S16).  The ranges are K distinct stripes, or K
 * slices of a single stripe.
 */
static bool
do_aio_writes(struct worker *w, int dfd, int fd, GRand *rng,
              aio_context_t aio)
{
  struct iocb cbs[AIO_MAX], *cbp[AIO_MAX];
  struct io_event events[AIO_MAX];
  struct timespec timeout = { 30, 0 };
  g_autofree guint8 *bufs = g_malloc(AIO_MAX * AIO_MAX_LEN);
  unsigned k = g_rand_int_range(rng, 2, AIO_MAX + 1);
  unsigned stripes[AIO_MAX];
  uint64_t slice;
  int done = 0;

  k = MIN(k, w->nstripes > 1 ? w->nstripes : k);
  for (unsigned i = 0; i < k; i++) {
    bool again;

    do {
      stripes[i] = g_rand_int_range(rng, 0, w->nstripes);
      again = false;
      for (unsigned j = 0; j < i && w->nstripes > 1; j++)
        again |= stripes[j] == stripes[i];
    } while (again);
  }

  for (unsigned i = 0; i < k; i++) {
    uint64_t a, b, off, len;
    guint8 *buf = bufs + (size_t)i * AIO_MAX_LEN;

    set_stripe(w, stripes[i]);
    slice = (w->hi - w->lo) / k;
    a = w->nstripes > 1 ? w->lo : w->lo + i * slice;
    b = w->nstripes > 1 ? w->hi : a + slice;
    off = a + g_rand_int_range(rng, 0, b - a);
    len = g_rand_int_range(rng, 1, AIO_MAX_LEN + 1);
    len = MIN(len, b - off);
    fill_random(rng, buf, len);
    cbs[i] = (struct iocb){
      .aio_data = i,
      .aio_lio_opcode = IOCB_CMD_PWRITE,
      .aio_fildes = dfd,
      .aio_buf = (uintptr_t)buf,
      .aio_nbytes = len,
      .aio_offset = off,
    };
    cbp[i] = &cbs[i];
  }

  if (syscall(SYS_io_submit, aio, (long)k, cbp) != (long)k)
    return fail(w, "io_submit of %u writes: %s", k, g_strerror(errno));
  while (done < (int)k) {
    long n = syscall(SYS_io_getevents, aio, 1L, (long)(k - done),
                     events + done, &timeout);

    /* Buffers still in the kernel's hands cannot be freed: a hang here
     * ends the program.
     */
    if (n <= 0)
      g_error("thread %d: io_getevents: %s", w->id,
              n == 0 ? "no completion in 30 s" : g_strerror(errno));
    done += n;
  }

  for (unsigned i = 0; i < k; i++) {
    const struct iocb *cb = &cbs[events[i].data];

    if (events[i].res != (int64_t)cb->aio_nbytes)
      return fail(w, "aio write %llu at %lld: result %lld",
                  (unsigned long long)cb->aio_nbytes,
                  (long long)cb->aio_offset, (long long)events[i].res);
    memcpy(w->shadow + cb->aio_offset, (const void *)(uintptr_t)cb->aio_buf,
           cb->aio_nbytes);
  }

  /* Read each range back at once, through the ordinary descriptor. */
  for (unsigned i = 0; i < k; i++) {
    g_autofree guint8 *got = g_malloc(cbs[i].aio_nbytes);

    set_stripe(w, stripes[i]);
    if (!do_read(w, fd, got, cbs[i].aio_offset, cbs[i].aio_nbytes))
      return false;
  }
  return true;
}

/* Reads every stripe of the thread back in pieces. */
static bool
verify_stripes(struct worker *w, int fd, guint8 *buf)
{
  for (unsigned j = 0; j < w->nstripes; j++) {
    set_stripe(w, j);
    for (uint64_t off = w->lo; off < w->hi; off += MAX_IO)
      if (!do_read(w, fd, buf, off, MIN(MAX_IO, w->hi - off)))
        return false;
  }
  return true;
}

static gpointer
worker_main(gpointer data)
{
  struct worker *w = data;
  g_autoptr(GRand) rng = g_rand_new_with_seed(w->seed);
  g_autofree guint8 *buf = g_malloc(MAX_IO);
  gint64 deadline = g_get_monotonic_time() + TIME_LIMIT_S * G_USEC_PER_SEC;
  aio_context_t aio = 0;
  bool ok = true;
  int fd, dfd;

  fd = open(w->file, O_RDWR | O_CLOEXEC);
  dfd = w->aio ? open(w->file, O_RDWR | O_DIRECT | O_CLOEXEC) : -1;
  if (fd < 0 || (w->aio && dfd < 0))
    ok = fail(w, "open %s: %s", w->file, g_strerror(errno));
  if (ok && w->aio && syscall(SYS_io_setup, AIO_MAX, &aio) < 0)
    ok = fail(w, "io_setup: %s", g_strerror(errno));

  for (unsigned i = 0; ok && i < w->ops && g_get_monotonic_time() < deadline;
       i++) {
    enum op op;
    uint64_t off;
    size_t len;

    set_stripe(w, g_rand_int_range(rng, 0, w->nstripes));
    op = pick_op(w, rng);
    w->op = op;
    w->op_index = i;
    off = pick_offset(w, rng);
    len = pick_length(w, rng, off);

    w->counts[op]++;
    switch (op) {
      case OP_READ:
        ok = do_read(w, fd, buf, off, len);
        break;
      case OP_WRITE:
        ok = do_write(w, fd, rng, buf, off, len);
        break;
      case OP_FSYNC:
        ok = (i % 2 ? fsync(fd) : fdatasync(fd)) == 0 ||
             fail(w, "fsync: %s", g_strerror(errno));
        break;
      case OP_PUNCH:
      case OP_ZERO:
        ok = do_zero(w, fd, op, off, len);
        break;
      case OP_SEEK_DATA:
      case OP_SEEK_HOLE:
        ok = do_seek(w, fd, op, off);
        break;
      case OP_AIO_WRITES:
        ok = do_aio_writes(w, dfd, fd, rng, aio);
        break;
      default:
        g_assert_not_reached();
    }
  }

  if (ok)
    ok = verify_stripes(w, fd, buf);
  if (ok && fsync(fd) < 0)
    fail(w, "final fsync: %s", g_strerror(errno));
  if (fd >= 0)
    close(fd);
  if (dfd >= 0)
    close(dfd);
  if (aio != 0)
    syscall(SYS_io_destroy, aio);

  g_mutex_lock(&finished_lock);
  finished++;
  g_cond_signal(&finished_cond);
  g_mutex_unlock(&finished_lock);
  return NULL;
}

/* ---- Servers ---- */

static struct tl_server *
start_nbdkit_file(const char *img)
{
  g_autoptr(GError) error = NULL;
  struct tl_server *s;

  s = tl_nbdkit_start((const char *const[]){ "file", img, NULL }, &error);
  g_assert_no_error(error);
  return s;
}

/* S7, S9, S16: a 4 KiB minimum and a 64 KiB maximum, enforced. */
static struct tl_server *
start_nbdkit_blocksize(const char *img)
{
  g_autoptr(GError) error = NULL;
  struct tl_server *s;

  s = tl_nbdkit_start((const char *const[]){
                          "--filter=blocksize-policy", "file", img,
                          "blocksize-minimum=4096",
                          "blocksize-maximum=65536",
                          "blocksize-error-policy=error", NULL },
                      &error);
  g_assert_no_error(error);
  return s;
}

static struct tl_server *
start_qemu_nbd(const char *img)
{
  g_autoptr(GError) error = NULL;
  struct tl_server *s;

  /* Unmap, so that punched holes become real holes for SEEK_HOLE. */
  s = tl_qemu_nbd_start(img, "raw", "",
                        (const char *const[]){ "--discard=unmap", NULL },
                        &error);
  g_assert_no_error(error);
  return s;
}

/* ---- The test ---- */

static void
test_random(gconstpointer data)
{
  const struct variant *v = data;
  g_autofree char *name = g_strdup_printf("random-%s.img", v->name);
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autofree char *opt = g_strdup_printf("--cache=%s", v->cache);
  g_autofree guint8 *shadow = NULL;
  g_autofree guint8 *got = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct worker workers[THREADS] = { 0 };
  GThread *threads[THREADS];
  struct tl_server *server;
  guint32 seed = g_test_rand_int();
  uint64_t size;
  gint64 deadline;
  gsize len;

  if (!fm_nbdfs())
    return;
  if (!tl_require(strcmp(v->name, "qemu-nbd") == 0 ? "qemu-nbd" : "nbdkit"))
    return;

  /* Whole blocks, then a tail that no thread owns. */
  size = (v->stripe * v->nstripes * THREADS + 4095) / 4096 * 4096 + TAIL;
  img = tl_make_file(name, size, seed);
  g_assert_true(g_file_get_contents(img, (char **)&shadow, &len, NULL));
  g_assert_cmpuint(len, ==, size);

  server = v->start(img);
  uri = tl_server_uri(server, "");
  m = fm_mounted((const char *const[]){ opt, uri, NULL });
  file = fm_path(m, "disk");
  g_test_message("%s: seed %u, %d threads, %u stripes each of %"
                 G_GUINT64_FORMAT " bytes, --cache=%s", v->name, seed,
                 THREADS, v->nstripes, v->stripe, v->cache);

  for (int i = 0; i < THREADS; i++) {
    struct worker *w = &workers[i];

    w->id = i;
    w->file = file;
    w->size = size;
    w->stripe = v->stripe;
    w->nstripes = v->nstripes;
    w->ops = v->ops;
    w->shadow = shadow;
    w->seed = seed + 1 + i;
    w->sync_before_seek = v->sync_before_seek;
    w->aio = uses_aio(v);
    threads[i] = g_thread_new("random", worker_main, w);
  }

  /* The threads stop after OPS operations or TIME_LIMIT_S; a thread
   * stuck in a system call longer than the watchdog is a hang, and the
   * abort takes the mount down, which unblocks it.
   */
  deadline = g_get_monotonic_time() + WATCHDOG_S * G_USEC_PER_SEC;
  g_mutex_lock(&finished_lock);
  while (finished < THREADS)
    if (!g_cond_wait_until(&finished_cond, &finished_lock, deadline))
      g_error("%s: a thread is still busy after %d s", v->name,
              WATCHDOG_S);
  finished = 0;
  g_mutex_unlock(&finished_lock);
  for (int i = 0; i < THREADS; i++)
    g_thread_join(threads[i]);

  for (int i = 0; i < THREADS; i++) {
    struct worker *w = &workers[i];
    g_autoptr(GString) counts = g_string_new(NULL);

    for (int k = 0; k < N_OPS; k++)
      g_string_append_printf(counts, " %s=%u", op_names[k], w->counts[k]);
    g_test_message("thread %d:%s", i, counts->str);
  }
  for (int i = 0; i < THREADS; i++)
    if (workers[i].failure != NULL)
      g_error("%s (seed %u): %s", v->name, seed, workers[i].failure);

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);

  /* The server's copy, the tail past the last region included. */
  g_assert_true(g_file_get_contents(img, (char **)&got, &len, NULL));
  g_assert_cmpuint(len, ==, size);
  for (gsize i = 0; i < len; i++)
    if (got[i] != shadow[i])
      g_error("%s (seed %u): backing file byte %" G_GSIZE_FORMAT
              " (%s) is 0x%02x, want 0x%02x", v->name, seed, i,
              i < v->stripe * v->nstripes * THREADS ? "in a stripe"
                                                    : "in the tail",
              got[i], shadow[i]);

  tl_server_stop(server);
}

/* The first three give each thread one large region; the last
 * interleaves small stripes, so that nearly every block is shared by
 * two or more threads whose read-modify-write cycles then race unless
 * the scheduler orders them (O6, S16).  With --cache=writeback the
 * threads fsync before each seek: the server cannot report data that
 * still sits in dirty pages (see /fuse/writeback/seek in test-fuse.c).
 */
static const struct variant variants[] = {
  { "nbdkit", "kernel", REGION, 1, 250, false, start_nbdkit_file },
  { "nbdkit-blocksize", "none", REGION, 1, 250, false,
    start_nbdkit_blocksize },
  { "qemu-nbd", "writeback", REGION, 1, 250, true, start_qemu_nbd },
  { "shared-blocks", "none", 1000, 64, 3000, false,
    start_nbdkit_blocksize },
};

int
main(int argc, char **argv)
{
  tl_init(&argc, &argv);
  fm_init();

  for (size_t i = 0; i < G_N_ELEMENTS(variants); i++) {
    g_autofree char *path = g_strdup_printf("/fuse/random/%s",
                                            variants[i].name);

    g_test_add_data_func(path, &variants[i], test_random);
  }
  return g_test_run();
}
