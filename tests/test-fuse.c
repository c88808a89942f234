/* nbdfs end to end: what the file does.
 *
 * ENOSPC at the end, truncation, xattrs, statfs, O_DIRECT, data both
 * ways against nbdkit, nbd-server and qemu-nbd, block-size constraints
 * and SEEK_DATA/SEEK_HOLE, on real mounts over real servers.  Every
 * comparison is byte for byte against the server's backing file or a
 * copy kept in memory.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>

#include <glib.h>

#include "fusemount.h"
#include "testlib.h"

#define KiB ((uint64_t)1024)
#define MiB (1024 * KiB)

/* ---- File semantics ---- */

/* Writes that reach past the end fail with ENOSPC and change nothing;
 * they never succeed short.  Checked in each cache mode, since with a
 * page cache the kernel might otherwise accept the bytes itself.
 */
static void
test_enospc(gconstpointer data)
{
  const char *cache = data;
  const uint64_t size = 1 * MiB;
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autofree char *opt = g_strdup_printf("--cache=%s", cache);
  g_autofree guint8 *buf = g_malloc(512 * KiB);
  g_autofree guint8 *want = NULL;
  g_autofree guint8 *got = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  struct stat st;
  ssize_t n;
  int fd;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  img = tl_make_file("enospc.img", size, 9);
  server = fm_start_nbdkit((const char *const[]){ "file", img, NULL });
  uri = tl_server_uri(server, "");
  m = fm_mounted((const char *const[]){ opt, uri, NULL });
  file = fm_path(m, "disk");
  want = fm_read_range(img, 0, size);

  fd = open(file, O_RDWR | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  memset(buf, 0xa5, 512 * KiB);
  fm_assert_fails_with(pwrite(fd, buf, 1, size), ENOSPC);
  fm_assert_fails_with(pwrite(fd, buf, 4 * KiB, size + 1 * MiB), ENOSPC);
  fm_assert_fails_with(pwrite(fd, buf, 8 * KiB, size - 4 * KiB), ENOSPC);
  fm_assert_fails_with(fallocate(fd, 0, size - 4 * KiB, 8 * KiB), ENOSPC);

  /* A write from the middle of the last page across the end.  With
   * --cache=kernel the kernel sends the part up to the end of that page
   * as a request of its own, which fits and succeeds, before the rest,
   * which fails: the write returns short and no daemon can prevent it.
   * It may then be short by exactly the bytes past the end, no more.
   */
  n = pwrite(fd, buf, 512 * KiB, size - 1);
  if (n == 1 && strcmp(cache, "kernel") == 0) {
    g_test_message("--cache=kernel: a write across the end was short");
    want[size - 1] = 0xa5;
  } else {
    g_assert_cmpint(n, ==, -1);
    g_assert_cmpstr(g_strerror(errno), ==, g_strerror(ENOSPC));
  }

  g_assert_cmpint(fsync(fd), ==, 0);
  g_assert_cmpint(fstat(fd, &st), ==, 0);
  g_assert_cmpuint(st.st_size, ==, size);
  close(fd);

  got = fm_read_range(img, 0, size);
  fm_assert_bytes(got, want, size, 0, "backing file after refused writes");
  g_clear_pointer(&got, g_free);
  got = fm_read_range(file, 0, size);
  fm_assert_bytes(got, want, size, 0, "file after refused writes");

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(server);
}

/* The server fixes the size: truncation to any other size is refused
 * with EPERM and nothing is lost; truncating to the size is harmless.
 * An open with O_TRUNC ("cp img mnt/disk") must either be refused or
 * leave the size as it is, in the kernel's view as well as the server's.
 */
static void
test_truncate_refused(gconstpointer data)
{
  const char *cache = data;
  const uint64_t size = 1 * MiB;
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autofree char *opt = g_strdup_printf("--cache=%s", cache);
  g_autofree guint8 *want = NULL;
  g_autofree guint8 *got = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  struct stat st;
  int fd;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  img = tl_make_file("truncate.img", size, 10);
  server = fm_start_nbdkit((const char *const[]){ "file", img, NULL });
  uri = tl_server_uri(server, "");
  m = fm_mounted((const char *const[]){ opt, uri, NULL });
  file = fm_path(m, "disk");
  want = fm_read_range(img, 0, size);

  fd = open(file, O_RDWR | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  fm_assert_fails_with(ftruncate(fd, size - 4096), EPERM);
  fm_assert_fails_with(ftruncate(fd, size + 4096), EPERM);
  fm_assert_fails_with(ftruncate(fd, 0), EPERM);
  g_assert_cmpint(ftruncate(fd, size), ==, 0);
  close(fd);
  fm_assert_fails_with(truncate(file, 0), EPERM);

  fd = open(file, O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (fd < 0) {
    g_assert_cmpstr(g_strerror(errno), ==, g_strerror(EPERM));
  } else {
    g_assert_cmpint(fstat(fd, &st), ==, 0);
    g_assert_cmpuint(st.st_size, ==, size);
    close(fd);
  }

  g_assert_cmpint(stat(file, &st), ==, 0);
  g_assert_cmpuint(st.st_size, ==, size);
  if ((uint64_t)st.st_size != size)
    return; /* reached only with non-fatal assertions */
  got = fm_read_range(file, 0, size);
  fm_assert_bytes(got, want, size, 0, "file after truncate");
  g_clear_pointer(&got, g_free);
  got = fm_read_range(img, 0, size);
  fm_assert_bytes(got, want, size, 0, "backing file after truncate");

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(server);
}

/* Mounts nbdfs over a new nbdkit memory disk of SIZE ("4M"); returns
 * the path of its file. */
static char *
mount_memory(const char *size, struct tl_server **server, fm_mount **m)
{
  g_autofree char *uri = NULL;

  *server = fm_start_nbdkit((const char *const[]){ "memory", size, NULL });
  uri = tl_server_uri(*server, "");
  *m = fm_mounted((const char *const[]){ uri, NULL });
  return fm_path(*m, "disk");
}

/* The count of NAME=COUNT/BYTESB in a user.nbd.stats line. */
static guint64
stat_count(const char *line, const char *name)
{
  g_autofree char *key = g_strdup_printf("%s=", name);
  const char *p = strstr(line, key);

  g_assert_nonnull(p);
  return g_ascii_strtoull(p + strlen(key), NULL, 10);
}

/* user.nbd.stats counts the NBD commands as they complete: reads,
 * writes and flushes go up by what the I/O sent, and SIGUSR1, which
 * writes the same line to the log, leaves the daemon serving. */
static void
test_stats(void)
{
  g_autofree char *file = NULL;
  g_autofree char *before = NULL;
  g_autofree char *after = NULL;
  g_autofree char *last = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  guint8 buf[4096] = { 0 };
  int fd;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  file = mount_memory("4M", &server, &m);

  before = fm_get_xattr(file, "user.nbd.stats");
  g_assert_nonnull(before);
  g_assert_nonnull(strstr(before, "inflight=0"));
  g_assert_nonnull(strstr(before, "latency_us_p50<"));

  fd = open(file, O_RDWR | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  for (int i = 0; i < 3; i++)
    g_assert_cmpint(pwrite(fd, buf, sizeof buf, i * 8192), ==, sizeof buf);
  for (int i = 0; i < 5; i++)
    g_assert_cmpint(pread(fd, buf, sizeof buf, i * 8192), ==, sizeof buf);
  g_assert_cmpint(fsync(fd), ==, 0);
  close(fd);

  after = fm_get_xattr(file, "user.nbd.stats");
  g_assert_cmpuint(stat_count(after, "write"), ==,
                   stat_count(before, "write") + 3);
  g_assert_cmpuint(stat_count(after, "read"), ==,
                   stat_count(before, "read") + 5);
  g_assert_cmpuint(stat_count(after, "flush"), >=,
                   stat_count(before, "flush") + 1);
  g_assert_nonnull(strstr(after, "errors=0"));

  g_assert_cmpint(kill(m->daemon, SIGUSR1), ==, 0);
  last = fm_get_xattr(file, "user.nbd.stats");
  g_assert_nonnull(last);
  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(server);
}

/* Read replies of 128 KiB and more go from the socket to the kernel
 * through a pipe (fuse/splice.c).  Their bytes are the image's, also
 * for a read that the end of the export cuts short; user.nbd.stats
 * counts each of them, and a small read goes the usual way. */
static void
test_splice(void)
{
  static const struct {
    uint64_t off;
    size_t len, got;
    bool spliced;
  } reads[] = {
    { 0, 1 * MiB, 1 * MiB, true },
    { 3 * 4096, 256 * 1024, 256 * 1024, true },
    { 4 * MiB - 512 * 1024, 1 * MiB, 512 * 1024, true },
    { 8192, 4096, 4096, false },
  };
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autofree char *before = NULL;
  g_autofree char *after = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  guint64 want = 0;
  void *buf;
  int fd;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  img = tl_make_file("splice.img", 4 * MiB, 21);
  server = fm_start_nbdkit((const char *const[]){ "file", img, NULL });
  uri = tl_server_uri(server, "");
  m = fm_mounted((const char *const[]){ uri, NULL });
  file = fm_path(m, "disk");
  before = fm_get_xattr(file, "user.nbd.stats");
  g_assert_nonnull(before);

  fd = open(file, O_RDONLY | O_DIRECT | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(posix_memalign(&buf, 4096, 1 * MiB), ==, 0);
  for (size_t i = 0; i < G_N_ELEMENTS(reads); i++) {
    g_autofree guint8 *image = NULL;

    memset(buf, 0, 1 * MiB);
    g_assert_cmpint(pread(fd, buf, reads[i].len, reads[i].off), ==,
                    reads[i].got);
    image = fm_read_range(img, reads[i].off, reads[i].got);
    fm_assert_bytes(buf, image, reads[i].got, reads[i].off, "read");
    want += reads[i].spliced;
  }
  free(buf);
  close(fd);

  after = fm_get_xattr(file, "user.nbd.stats");
  g_assert_cmpuint(stat_count(after, "spliced"), ==,
                   stat_count(before, "spliced") + want);
  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(server);
}

/* The flush count in the export's user.nbd.stats. */
static guint64
flushes(const char *file)
{
  g_autofree char *line = fm_get_xattr(file, "user.nbd.stats");

  g_assert_nonnull(line);
  return stat_count(line, "flush");
}

/* Waits up to 5 s for the flush count to pass BEFORE; returns it. */
static guint64
await_flush(const char *file, guint64 before)
{
  guint64 now = flushes(file);

  for (int i = 0; i < 100 && now <= before; i++) {
    g_usleep(50 * 1000);
    now = flushes(file);
  }
  return now;
}

/* O2, O5: closing a file that was written sends a FLUSH without fsync,
 * and close does not wait for it; a file only read sends none. */
static void
test_flush_behind(void)
{
  g_autofree char *file = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  guint8 buf[4096] = { 1 };
  guint64 before;
  int fd;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  file = mount_memory("4M", &server, &m);

  before = flushes(file);
  fd = open(file, O_RDWR | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(pwrite(fd, buf, sizeof buf, 0), ==, sizeof buf);
  g_assert_cmpint(close(fd), ==, 0);
  before = await_flush(file, before);
  g_assert_cmpuint(before, >=, 1);

  fd = open(file, O_RDONLY | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(pread(fd, buf, sizeof buf, 0), ==, sizeof buf);
  g_assert_cmpint(close(fd), ==, 0);
  g_usleep(300 * 1000);
  g_assert_cmpuint(flushes(file), ==, before);

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(server);
}

/* The replay log holds written data until a FLUSH; once the writer has
 * closed the file and the daemon has been idle a while, that memory
 * goes back to the system.  (Not registered under AddressSanitizer,
 * whose allocator keeps freed memory in quarantine.) */
static void
test_idle_memory(void)
{
  const uint64_t total = 48 * MiB;
  g_autofree char *file = NULL;
  g_autofree guint8 *buf = g_malloc(MiB);
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  long rss = 0;
  int fd;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  file = mount_memory("64M", &server, &m);

  memset(buf, 0x5a, MiB);
  fd = open(file, O_WRONLY | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  for (uint64_t off = 0; off < total; off += MiB)
    g_assert_cmpint(pwrite(fd, buf, MiB, off), ==, MiB);

  /* Acknowledged, not flushed: the replay log holds all of it. */
  rss = fm_rss_kib(m->daemon);
  g_test_message("nbdfs RSS with 48 MiB unflushed: %ld KiB", rss);
  g_assert_cmpint(rss, >=, (long)(total / KiB));
  g_assert_cmpint(close(fd), ==, 0);

  for (int i = 0; i < 100 && (rss = fm_rss_kib(m->daemon)) > 24 * 1024; i++)
    g_usleep(50 * 1000);
  g_test_message("nbdfs RSS after close and idle: %ld KiB", rss);
  g_assert_cmpint(rss, >, 0);
  g_assert_cmpint(rss, <=, 24 * 1024);

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(server);
}

static void
test_xattrs(void)
{
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autoptr(fm_mount) m = NULL;
  g_auto(GStrv) names = NULL;
  g_autoptr(GPtrArray) listed = g_ptr_array_new();
  struct tl_server *server;
  char list[4096], small[2];
  const char *const promised[] = {
    "user.nbd.uri", "user.nbd.export", "user.nbd.description",
    "user.nbd.size", "user.nbd.block_size", "user.nbd.flags",
    "user.nbd.tls", "user.nbd.connections",
  };
  ssize_t n;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  img = tl_make_file("xattr.img", 4 * MiB, 11);
  server = fm_start_nbdkit((const char *const[]){
      "--filter=exportname", "file", img, "exportdesc=fixed:test disk",
      NULL });
  uri = tl_server_uri(server, "vol/a");
  m = fm_mounted((const char *const[]){ "-C", "2", uri, NULL });
  file = fm_path(m, "vol_a");

  /* The names the issue promises must be there; any other must be in
   * the user.nbd. namespace too, and readable.
   */
  n = listxattr(file, list, sizeof list);
  g_assert_cmpint(n, >, 0);
  for (ssize_t i = 0; i < n; i += strlen(list + i) + 1) {
    g_autofree char *v = fm_get_xattr(file, list + i);

    g_assert_nonnull(v);
    g_assert_true(g_str_has_prefix(list + i, "user.nbd."));
    g_ptr_array_add(listed, list + i);
  }
  g_ptr_array_add(listed, NULL);
  for (size_t i = 0; i < G_N_ELEMENTS(promised); i++)
    if (!g_strv_contains((const char *const *)listed->pdata, promised[i]))
      g_error("listxattr: %s is missing", promised[i]);

  {
    g_autofree char *v_uri = fm_get_xattr(file, "user.nbd.uri");
    g_autofree char *v_export = fm_get_xattr(file, "user.nbd.export");
    g_autofree char *v_desc = fm_get_xattr(file, "user.nbd.description");
    g_autofree char *v_size = fm_get_xattr(file, "user.nbd.size");
    g_autofree char *v_tls = fm_get_xattr(file, "user.nbd.tls");
    g_autofree char *v_conns = fm_get_xattr(file, "user.nbd.connections");
    g_autofree char *v_flags = fm_get_xattr(file, "user.nbd.flags");
    g_autofree char *v_bs = fm_get_xattr(file, "user.nbd.block_size");

    g_autofree char *shown = g_strdup_printf("nbd+unix:///vol/a?socket=%s",
                                             server->socket_path);

    /* U9: a '/' inside the export name is shown as it is. */
    g_assert_cmpstr(v_uri, ==, shown);
    g_assert_cmpstr(v_export, ==, "vol/a");
    g_assert_cmpstr(v_desc, ==, "test disk");
    g_assert_cmpstr(v_size, ==, "4194304");
    g_assert_cmpstr(v_tls, ==, "no");
    g_assert_cmpstr(v_conns, ==, "2");
    names = g_strsplit(v_flags, " ", -1);
    g_assert_true(g_strv_contains((const char *const *)names,
                                  "SEND_FLUSH"));
    g_assert_true(g_strv_contains((const char *const *)names,
                                  "CAN_MULTI_CONN"));
    g_assert_false(g_strv_contains((const char *const *)names,
                                   "READ_ONLY"));
    g_assert_true(g_str_has_prefix(v_bs, "1 "));
  }

  /* The size query, a too small buffer, unknown and foreign names. */
  g_assert_cmpint(getxattr(file, "user.nbd.size", NULL, 0), ==, 7);
  fm_assert_fails_with(getxattr(file, "user.nbd.size", small, sizeof small),
                    ERANGE);
  fm_assert_fails_with(getxattr(file, "user.nbd.nonesuch", list, sizeof list),
                    ENODATA);
  fm_assert_fails_with(getxattr(file, "trusted.nbd.size", list, sizeof list),
                    ENODATA);
  fm_assert_fails_with(getxattr(m->dir, "user.nbd.size", list, sizeof list),
                    ENODATA);
  g_assert_cmpint(setxattr(file, "user.nbd.size", "1", 1, 0), ==, -1);

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(server);
}

/* statfs: the files fill the filesystem, nothing is free. */
static void
test_statfs(void)
{
  g_autofree char *a = NULL;
  g_autofree char *b = NULL;
  g_autofree char *uri_a = NULL;
  g_autofree char *uri_b = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *sa, *sb;
  struct statvfs sv;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  a = tl_make_file("statfs-a.img", 4 * MiB, 12);
  b = tl_make_file("statfs-b.img", 8 * MiB, 13);
  sa = fm_start_nbdkit((const char *const[]){ "file", a, NULL });
  sb = fm_start_nbdkit((const char *const[]){ "file", b, NULL });
  uri_a = tl_server_uri(sa, "a");
  uri_b = tl_server_uri(sb, "b");
  m = fm_mounted((const char *const[]){ uri_a, uri_b, NULL });

  g_assert_cmpint(statvfs(m->dir, &sv), ==, 0);
  g_assert_cmpuint(sv.f_frsize, ==, 4096);
  g_assert_cmpuint(sv.f_blocks * sv.f_frsize, ==, 12 * MiB);
  g_assert_cmpuint(sv.f_bfree, ==, 0);
  g_assert_cmpuint(sv.f_bavail, ==, 0);
  g_assert_cmpuint(sv.f_files, ==, 3);
  g_assert_cmpuint(sv.f_ffree, ==, 0);
  g_assert_cmpuint(sv.f_namemax, ==, 255);

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(sa);
  tl_server_stop(sb);
}

/* O_DIRECT opens work in every cache mode, and fio --direct=1 with
 * verification passes.
 */
static void
test_odirect(gconstpointer data)
{
  const char *cache = data;
  const uint64_t size = 16 * MiB;
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autofree char *opt = g_strdup_printf("--cache=%s", cache);
  g_autofree char *fname = NULL;
  g_autofree char *out = NULL;
  g_autofree guint8 *got = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  void *buf;
  int fd;

  if (!fm_nbdfs() || !tl_require("nbdkit") || !tl_require("fio"))
    return;

  img = tl_make_file("odirect.img", size, 14);
  server = fm_start_nbdkit((const char *const[]){ "file", img, NULL });
  uri = tl_server_uri(server, "");
  m = fm_mounted((const char *const[]){ opt, uri, NULL });
  file = fm_path(m, "disk");

  fd = open(file, O_RDWR | O_DIRECT | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(posix_memalign(&buf, 4096, 1 * MiB), ==, 0);
  tl_fill_random(buf, 1 * MiB, 15, 0);
  fm_write_range(fd, buf, 1 * MiB, 3 * 4096);
  memset(buf, 0, 1 * MiB);
  g_assert_cmpint(pread(fd, buf, 1 * MiB, 3 * 4096), ==, 1 * MiB);
  got = fm_read_range(img, 3 * 4096, 1 * MiB);
  fm_assert_bytes(buf, got, 1 * MiB, 3 * 4096, "O_DIRECT read");
  tl_fill_random(got, 1 * MiB, 15, 0);
  fm_assert_bytes(buf, got, 1 * MiB, 3 * 4096, "O_DIRECT write");
  free(buf);
  close(fd);

  fname = g_strdup_printf("--filename=%s", file);
  g_assert_cmpint(fm_run((const char *const[]){
                             "fio", "--name=odirect", fname, "--direct=1",
                             "--rw=randwrite", "--bs=4k", "--size=8M",
                             "--ioengine=libaio", "--iodepth=16",
                             "--verify=crc32c", "--do_verify=1",
                             "--verify_fatal=1", "--output-format=terse",
                             NULL },
                         60, &out, NULL),
                  ==, 0);
  g_assert_cmpstr(out, !=, "");

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(server);
}

/* ---- Data through the file and through the server ---- */

struct span {
  uint64_t off, len;
};

/* Writes through the file reach the backing file, and writes to the
 * backing file read back through a fresh open of the file.
 */
static void
check_data_both_ways(struct tl_server *server, const char *export_name,
                     const char *file_name, const char *img,
                     uint64_t size)
{
  g_autofree char *uri = tl_server_uri(server, export_name);
  g_autofree char *file = NULL;
  g_autofree guint8 *expect = fm_read_range(img, 0, size);
  g_autofree guint8 *got = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct stat st;
  int fd;

  /* Odd offsets and lengths, a write of several MiB, one that ends at
   * the last byte.
   */
  const struct span writes[] = {
    { 0, 1 },
    { 4095, 2 },
    { 65536 + 17, 300000 },
    { 1 * MiB + 1, 3 * MiB },
    { size - 4096 - 5, 4096 + 5 },
  };
  const struct span server_writes[] = {
    { 12345, 70000 },
    { size / 2, 1 * MiB },
    { size - 1, 1 },
  };

  m = fm_mounted((const char *const[]){ uri, NULL });
  file = fm_path(m, file_name);
  g_assert_cmpint(stat(file, &st), ==, 0);
  g_assert_cmpuint(st.st_size, ==, size);

  got = fm_read_range(file, 0, size);
  fm_assert_bytes(got, expect, size, 0, "file before writing");
  g_clear_pointer(&got, g_free);

  fd = open(file, O_RDWR | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  for (size_t i = 0; i < G_N_ELEMENTS(writes); i++) {
    uint64_t off = writes[i].off, len = writes[i].len;

    tl_fill_random(expect + off, len, 21, off);
    fm_write_range(fd, expect + off, len, off);
  }
  g_assert_cmpint(fsync(fd), ==, 0);
  close(fd);
  got = fm_read_range(img, 0, size);
  fm_assert_bytes(got, expect, size, 0, "backing file after writes");
  g_clear_pointer(&got, g_free);

  /* Now the other way: change the backing file behind the server. */
  fd = open(img, O_RDWR | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  for (size_t i = 0; i < G_N_ELEMENTS(server_writes); i++) {
    uint64_t off = server_writes[i].off, len = server_writes[i].len;

    tl_fill_random(expect + off, len, 22, off);
    fm_write_range(fd, expect + off, len, off);
  }
  g_assert_cmpint(fsync(fd), ==, 0);
  close(fd);
  got = fm_read_range(file, 0, size);
  fm_assert_bytes(got, expect, size, 0, "file after server-side writes");

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  g_clear_pointer(&got, g_free);
  got = fm_read_range(img, 0, size);
  fm_assert_bytes(got, expect, size, 0, "backing file after unmount");
}

static void
test_data_nbdkit(void)
{
  g_autofree char *img = NULL;
  struct tl_server *server;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  img = tl_make_file("data-nbdkit.img", 8 * MiB, 20);
  server = fm_start_nbdkit((const char *const[]){ "file", img, NULL });
  check_data_both_ways(server, "", "disk", img, 8 * MiB);
  tl_server_stop(server);
}

static void
test_data_nbd_server(void)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *img = NULL;
  struct tl_server *server;

  if (!fm_nbdfs() || !tl_require("nbd-server"))
    return;

  img = tl_make_file("data-nbd-server.img", 8 * MiB, 23);
  server = tl_nbd_server_start(
      (const struct tl_export[]){ { "data", img, false }, { NULL } },
      &error);
  g_assert_no_error(error);
  check_data_both_ways(server, "data", "data", img, 8 * MiB);
  tl_server_stop(server);
}

static void
test_data_qemu_nbd(void)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *img = NULL;
  struct tl_server *server;

  if (!fm_nbdfs() || !tl_require("qemu-nbd"))
    return;

  img = tl_make_file("data-qemu-nbd.img", 8 * MiB, 24);
  server = tl_qemu_nbd_start(img, "raw", "data", NULL, &error);
  g_assert_no_error(error);
  check_data_both_ways(server, "data", "data", img, 8 * MiB);
  tl_server_stop(server);
}

/* ---- Block-size constraints ---- */

/* A 4 KiB minimum and a 64 KiB maximum that the server enforces: every
 * unaligned access must be turned into aligned read-modify-write (S7,
 * S16) and split (S9), and the size is rounded down to the minimum
 * block (S8).
 */
static void
test_blocksize(gconstpointer data)
{
  const char *cache = data;
  const uint64_t size = 4 * MiB;
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autofree char *opt = g_strdup_printf("--cache=%s", cache);
  g_autofree char *bs = NULL;
  g_autofree guint8 *expect = NULL;
  g_autofree guint8 *got = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  struct stat st;
  char byte;
  int fd;

  const struct span writes[] = {
    { 4095, 1 },
    { 4000, 5000 },
    { 12345, 200000 },
    { 65536 - 3, 6 },
    { 300000, 3 * 65536 + 77 },
    { size - 3, 3 },
    { 8192, 4096 },
  };
  const struct span reads[] = {
    { 1, 1 }, { 4095, 2 }, { 70000, 140000 }, { size - 5, 5 },
    { 65535, 65538 },
  };

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  /* 1000 bytes past the last whole block: out of reach (S8). */
  img = tl_make_file("blocksize.img", size + 1000, 30);
  server = fm_start_nbdkit((const char *const[]){
      "--filter=blocksize-policy", "file", img,
      "blocksize-minimum=4096", "blocksize-maximum=65536",
      "blocksize-error-policy=error", NULL });
  uri = tl_server_uri(server, "");
  m = fm_mounted((const char *const[]){ opt, uri, NULL });
  file = fm_path(m, "disk");

  bs = fm_get_xattr(file, "user.nbd.block_size");
  g_assert_true(g_str_has_prefix(bs, "4096 "));
  g_assert_true(g_str_has_suffix(bs, " 65536"));
  g_assert_cmpint(stat(file, &st), ==, 0);
  g_assert_cmpuint(st.st_size, ==, size);

  expect = fm_read_range(img, 0, size + 1000);
  fd = open(file, O_RDWR | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  for (size_t i = 0; i < G_N_ELEMENTS(reads); i++) {
    g_autofree guint8 *buf = g_malloc(reads[i].len);

    g_assert_cmpint(pread(fd, buf, reads[i].len, reads[i].off), ==,
                    reads[i].len);
    fm_assert_bytes(buf, expect + reads[i].off, reads[i].len, reads[i].off,
                 "unaligned read");
  }
  g_assert_cmpint(pread(fd, &byte, 1, size), ==, 0);

  for (size_t i = 0; i < G_N_ELEMENTS(writes); i++) {
    uint64_t off = writes[i].off, len = writes[i].len;

    tl_fill_random(expect + off, len, 31 + i, off);
    fm_write_range(fd, expect + off, len, off);
  }

  /* Zeroing with unaligned edges is read-modify-write too. */
  g_assert_cmpint(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                            100000, 150001),
                  ==, 0);
  memset(expect + 100000, 0, 150001);
  g_assert_cmpint(fallocate(fd, FALLOC_FL_ZERO_RANGE, 3 * 4096 + 1, 10),
                  ==, 0);
  memset(expect + 3 * 4096 + 1, 0, 10);

  g_assert_cmpint(fsync(fd), ==, 0);
  got = g_malloc(size);
  g_assert_cmpint(pread(fd, got, size, 0), ==, size);
  fm_assert_bytes(got, expect, size, 0, "file after unaligned writes");
  close(fd);

  g_clear_pointer(&got, g_free);
  got = fm_read_range(img, 0, size + 1000);
  fm_assert_bytes(got, expect, size + 1000, 0, "backing file");

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(server);
}

/* ---- SEEK_DATA and SEEK_HOLE ---- */

/* The file plugin on a sparse file of the host: the allocation is known
 * to the block, so the answers are exact (B13).
 */
static void
test_seek_sparse_file(void)
{
  const uint64_t size = 16 * MiB;
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autofree guint8 *buf = g_malloc(64 * KiB);
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  int fd;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  img = fm_make_sparse_file("sparse.img", size);
  fd = open(img, O_RDWR | O_CLOEXEC);
  tl_fill_random(buf, 64 * KiB, 40, 0);
  fm_write_range(fd, buf, 64 * KiB, 1 * MiB);
  fm_write_range(fd, "x", 1, 5 * MiB);
  g_assert_cmpint(fsync(fd), ==, 0);
  if (lseek(fd, 0, SEEK_DATA) != 1 * MiB) {
    close(fd);
    g_test_skip("the temporary directory's filesystem has no holes");
    return;
  }
  close(fd);

  server = fm_start_nbdkit((const char *const[]){ "file", img, NULL });
  uri = tl_server_uri(server, "");
  m = fm_mounted((const char *const[]){ uri, NULL });
  file = fm_path(m, "disk");
  fd = open(file, O_RDONLY | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);

  g_assert_cmpint(lseek(fd, 0, SEEK_HOLE), ==, 0);
  g_assert_cmpint(lseek(fd, 0, SEEK_DATA), ==, 1 * MiB);
  g_assert_cmpint(lseek(fd, 1 * MiB + 5, SEEK_DATA), ==, 1 * MiB + 5);
  g_assert_cmpint(lseek(fd, 1 * MiB, SEEK_HOLE), ==, 1 * MiB + 64 * KiB);
  g_assert_cmpint(lseek(fd, 1 * MiB + 64 * KiB, SEEK_DATA), ==, 5 * MiB);
  g_assert_cmpint(lseek(fd, 5 * MiB, SEEK_HOLE), ==, 5 * MiB + 4096);
  fm_assert_fails_with(lseek(fd, 5 * MiB + 4096, SEEK_DATA), ENXIO);
  g_assert_cmpint(lseek(fd, size - 1, SEEK_HOLE), ==, size - 1);
  fm_assert_fails_with(lseek(fd, size, SEEK_DATA), ENXIO);
  fm_assert_fails_with(lseek(fd, size, SEEK_HOLE), ENXIO);
  close(fd);

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(server);
}

/* The memory plugin allocates in pages of its own; holes made through
 * the file by writes, PUNCH_HOLE and ZERO_RANGE show in the answers
 * (B11, B13).
 */
static void
test_seek_sparse_memory(void)
{
  const uint64_t size = 64 * MiB;
  g_autofree char *file = NULL;
  g_autofree guint8 *buf = g_malloc(64 * KiB);
  g_autofree guint8 *zero = g_malloc0(64 * KiB);
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  off_t hole;
  int fd;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  file = mount_memory("64M", &server, &m);
  fd = open(file, O_RDWR | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);

  /* All of a fresh export reads as zeros: no data at all. */
  fm_assert_fails_with(lseek(fd, 0, SEEK_DATA), ENXIO);
  g_assert_cmpint(lseek(fd, 0, SEEK_HOLE), ==, 0);

  tl_fill_random(buf, 4096, 41, 0);
  fm_write_range(fd, buf, 4096, 8 * MiB);
  fm_write_range(fd, "y", 1, 40 * MiB + 5);

  /* The plugin's pages are smaller than 1 MiB, so the data starts where
   * it was written and ends within a MiB of it.
   */
  g_assert_cmpint(lseek(fd, 0, SEEK_DATA), ==, 8 * MiB);
  hole = lseek(fd, 8 * MiB, SEEK_HOLE);
  g_assert_cmpint(hole, >=, 8 * MiB + 4096);
  g_assert_cmpint(hole, <=, 9 * MiB);
  g_assert_cmpint(lseek(fd, hole, SEEK_DATA), >, 39 * MiB);
  g_assert_cmpint(lseek(fd, hole, SEEK_DATA), <=, 40 * MiB + 5);
  g_assert_cmpint(lseek(fd, 40 * MiB + 5, SEEK_DATA), ==, 40 * MiB + 5);
  g_assert_cmpint(lseek(fd, 40 * MiB + 5, SEEK_HOLE), >, 40 * MiB + 5);
  fm_assert_fails_with(lseek(fd, 41 * MiB, SEEK_DATA), ENXIO);
  g_assert_cmpint(lseek(fd, size - 1, SEEK_HOLE), ==, size - 1);

  /* A punched hole reads as zeros and is no longer data. */
  g_assert_cmpint(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                            8 * MiB, 4096),
                  ==, 0);
  g_assert_cmpint(pread(fd, buf, 4096, 8 * MiB), ==, 4096);
  fm_assert_bytes(buf, zero, 4096, 8 * MiB, "punched hole");
  g_assert_cmpint(lseek(fd, 0, SEEK_DATA), >, 39 * MiB);

  /* ZERO_RANGE reads as zeros too, whatever it does to allocation. */
  g_assert_cmpint(fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                            40 * MiB, 4096),
                  ==, 0);
  g_assert_cmpint(pread(fd, buf, 4096, 40 * MiB), ==, 4096);
  fm_assert_bytes(buf, zero, 4096, 40 * MiB, "zeroed range");
  close(fd);

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(server);
}

/* Without block status the whole file is data (B12). */
static void
test_seek_no_block_status(void)
{
  const uint64_t size = 2 * MiB;
  g_autoptr(GError) error = NULL;
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  int fd;

  if (!fm_nbdfs() || !tl_require("nbd-server"))
    return;

  /* A sparse backing file: the holes must not show through. */
  img = fm_make_sparse_file("no-status.img", size);
  server = tl_nbd_server_start(
      (const struct tl_export[]){ { "plain", img, false }, { NULL } },
      &error);
  g_assert_no_error(error);
  uri = tl_server_uri(server, "plain");
  m = fm_mounted((const char *const[]){ uri, NULL });
  file = fm_path(m, "plain");

  fd = open(file, O_RDONLY | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(lseek(fd, 0, SEEK_DATA), ==, 0);
  g_assert_cmpint(lseek(fd, 12345, SEEK_DATA), ==, 12345);
  g_assert_cmpint(lseek(fd, 12345, SEEK_HOLE), ==, size);
  fm_assert_fails_with(lseek(fd, size, SEEK_DATA), ENXIO);
  close(fd);

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(server);
}

/* ---- --cache=writeback ---- */

/* With --cache=writeback the kernel keeps the file's size and gathers
 * writes in its page cache, so a write past the end is accepted there
 * and can only fail when it reaches nbdfs.  The promise that is left,
 * and that this checks: the failure is reported (fsync fails with
 * ENOSPC) and the server's data is not touched.
 */
static void
test_writeback_enospc(void)
{
  const uint64_t size = 1 * MiB;
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autofree guint8 *want = NULL;
  g_autofree guint8 *got = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  guint8 buf[4096];
  int fd;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  img = tl_make_file("wb-enospc.img", size, 19);
  server = fm_start_nbdkit((const char *const[]){ "file", img, NULL });
  uri = tl_server_uri(server, "");
  m = fm_mounted((const char *const[]){ "--cache=writeback", uri, NULL });
  file = fm_path(m, "disk");
  want = fm_read_range(img, 0, size);

  fd = open(file, O_RDWR | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  memset(buf, 0x5a, sizeof buf);
  if (pwrite(fd, buf, sizeof buf, size) == sizeof buf)
    fm_assert_fails_with(fsync(fd), ENOSPC);
  else
    g_assert_cmpstr(g_strerror(errno), ==, g_strerror(ENOSPC));
  close(fd);

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  got = fm_read_range(img, 0, size);
  fm_assert_bytes(got, want, size, 0, "backing file");
  tl_server_stop(server);
}

/* O_TRUNC stays a truncate in writeback mode, and is refused. */
static void
test_writeback_truncate(void)
{
  test_truncate_refused("writeback");
}

/* Data still in dirty pages is data (B13): a copy that follows
 * SEEK_DATA (cp --sparse=auto, qemu-img convert) must not skip it.
 */
static void
test_writeback_seek(void)
{
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autofree guint8 *buf = g_malloc(4096);
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  int fd;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  server = fm_start_nbdkit((const char *const[]){ "memory", "16M", NULL });
  uri = tl_server_uri(server, "");
  m = fm_mounted((const char *const[]){ "--cache=writeback", uri, NULL });
  file = fm_path(m, "disk");
  fd = open(file, O_RDWR | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);

  /* Zeros reported as data are harmless, so "all data" passes too;
   * skipping the written block does not.
   */
  tl_fill_random(buf, 4096, 42, 0);
  fm_write_range(fd, buf, 4096, 1 * MiB);
  g_assert_cmpint(lseek(fd, 0, SEEK_DATA), >=, 0);
  g_assert_cmpint(lseek(fd, 0, SEEK_DATA), <=, 1 * MiB);
  g_assert_cmpint(lseek(fd, 1 * MiB, SEEK_HOLE), >, 1 * MiB);

  /* Once written back, the server knows. */
  g_assert_cmpint(fsync(fd), ==, 0);
  g_assert_cmpint(lseek(fd, 0, SEEK_DATA), >=, 0);
  g_assert_cmpint(lseek(fd, 0, SEEK_DATA), <=, 1 * MiB);
  g_assert_cmpint(lseek(fd, 1 * MiB, SEEK_HOLE), >, 1 * MiB);
  close(fd);

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(server);
}

int
main(int argc, char **argv)
{
  static const char *const caches[] = { "none", "kernel", "writeback" };

  tl_init(&argc, &argv);
  fm_init();

  for (size_t i = 0; i < G_N_ELEMENTS(caches); i++) {
    g_autofree char *odirect = g_strdup_printf("/fuse/file/odirect/%s",
                                               caches[i]);

    g_test_add_data_func(odirect, caches[i], test_odirect);
  }
  g_test_add_data_func("/fuse/file/enospc/none", "none", test_enospc);
  g_test_add_data_func("/fuse/file/enospc/kernel", "kernel", test_enospc);
  g_test_add_data_func("/fuse/file/truncate/none", "none",
                       test_truncate_refused);
  g_test_add_data_func("/fuse/file/truncate/kernel", "kernel",
                       test_truncate_refused);
  g_test_add_func("/fuse/file/xattrs", test_xattrs);
  g_test_add_func("/fuse/file/stats", test_stats);
  g_test_add_func("/fuse/file/splice", test_splice);
  g_test_add_func("/fuse/file/flush-behind", test_flush_behind);
  if (g_getenv("ASAN_OPTIONS") == NULL) /* as test-load.c tells */
    g_test_add_func("/fuse/file/idle-memory", test_idle_memory);
  g_test_add_func("/fuse/file/statfs", test_statfs);
  g_test_add_func("/fuse/data/nbdkit", test_data_nbdkit);
  g_test_add_func("/fuse/data/nbd-server", test_data_nbd_server);
  g_test_add_func("/fuse/data/qemu-nbd", test_data_qemu_nbd);
  g_test_add_data_func("/fuse/blocksize/none", "none", test_blocksize);
  g_test_add_data_func("/fuse/blocksize/kernel", "kernel", test_blocksize);
  g_test_add_func("/fuse/seek/sparse-file", test_seek_sparse_file);
  g_test_add_func("/fuse/seek/sparse-memory", test_seek_sparse_memory);
  g_test_add_func("/fuse/seek/no-block-status", test_seek_no_block_status);

  /* Last: they fail today and switch assertions to non-fatal. */
  g_test_add_func("/fuse/writeback/enospc", test_writeback_enospc);
  g_test_add_func("/fuse/writeback/seek", test_writeback_seek);
  g_test_add_func("/fuse/writeback/truncate", test_writeback_truncate);

  return g_test_run();
}
