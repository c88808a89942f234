/* nbdfs end to end: the system around the mount.
 *
 * ext4 on a loop device over the file, an unprivileged user mounting
 * through fusermount3, the final FLUSH on unmount, and SIGTERM and
 * SIGINT, during I/O and idle.  The ext4 and user tests need root
 * (skipped otherwise, failed under CI=true).
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "fusemount.h"
#include "testlib.h"

#define KiB ((uint64_t)1024)
#define MiB (1024 * KiB)

/* ---- ext4 on a loop device over the file ---- */

struct ext4_file {
  const char *name;
  size_t size;
  unsigned seed;
};

static const struct ext4_file ext4_files[] = {
  { "big.bin", 3 * MiB + 7, 50 },
  { "dir/nested.txt", 4000, 51 },
  { "dir/empty", 0, 52 },
  { "small-1", 1, 53 },
  { "small-2", 511, 54 },
  { "small-3", 4097, 55 },
  { "small-4", 65536, 56 },
  { "small-5", 200001, 57 },
};

/* The whole file at PATH (free with g_free()). */
static guint8 *
read_whole(const char *path, size_t *len)
{
  g_autoptr(GError) error = NULL;
  char *text = NULL;
  gsize n;

  if (!g_file_get_contents(path, &text, &n, &error))
    g_error("read %s: %s", path, error->message);
  *len = n;
  return (guint8 *)text;
}

static void
ext4_write_files(const char *root)
{
  g_autofree char *sub = g_build_filename(root, "dir", NULL);

  g_assert_cmpint(g_mkdir(sub, 0755), ==, 0);
  for (size_t i = 0; i < G_N_ELEMENTS(ext4_files); i++) {
    g_autoptr(GError) error = NULL;
    g_autofree char *path = g_build_filename(root, ext4_files[i].name,
                                             NULL);
    g_autofree char *data = g_malloc(MAX(ext4_files[i].size, 1));

    tl_fill_random(data, ext4_files[i].size, ext4_files[i].seed, 0);
    if (!g_file_set_contents(path, data, ext4_files[i].size, &error))
      g_error("write %s: %s", path, error->message);
  }
}

static void
ext4_check_files(const char *root)
{
  for (size_t i = 0; i < G_N_ELEMENTS(ext4_files); i++) {
    g_autofree char *path = g_build_filename(root, ext4_files[i].name,
                                             NULL);
    g_autofree char *want = g_malloc(MAX(ext4_files[i].size, 1));
    g_autofree guint8 *got = NULL;
    size_t len;

    got = read_whole(path, &len);
    g_assert_cmpuint(len, ==, ext4_files[i].size);
    tl_fill_random(want, len, ext4_files[i].seed, 0);
    fm_assert_bytes(got, want, len, 0, ext4_files[i].name);
  }
}

/* Attaches FILE to a free loop device with direct I/O, which only works
 * when the file takes O_DIRECT; returns the device.
 */
static char *
loop_attach(const char *file, int *handle)
{
  g_autofree char *out = NULL;
  g_autofree char *dio_path = NULL;
  g_autofree char *dio = NULL;
  char *dev;

  g_assert_cmpint(fm_run((const char *const[]){ "losetup", "--direct-io=on",
                                                "--find", "--show", file,
                                                NULL },
                         30, &out, NULL),
                  ==, 0);
  dev = g_strdup(g_strstrip(out));
  g_assert_true(g_str_has_prefix(dev, "/dev/loop"));
  *handle = fm_track(FM_LOOP, dev);

  dio_path = g_strdup_printf("/sys/block/%s/loop/dio", dev + 5);
  g_assert_true(g_file_get_contents(dio_path, &dio, NULL, NULL));
  g_assert_cmpstr(g_strstrip(dio), ==, "1");
  return dev;
}

/* Detaches DEV and waits (10 s at most) until it has let go of the
 * file, which may be deferred while udev still has it open.
 */
static void
loop_detach(const char *dev, int handle)
{
  g_autofree char *backing = g_strdup_printf("/sys/block/%s/loop/"
                                             "backing_file", dev + 5);

  g_assert_cmpint(fm_run((const char *const[]){ "losetup", "-d", dev,
                                                NULL },
                         30, NULL, NULL),
                  ==, 0);
  for (int i = 0; g_file_test(backing, G_FILE_TEST_EXISTS); i++) {
    g_assert_cmpint(i, <, 1000);
    g_usleep(10000);
  }
  fm_untrack(handle);
}

static void
ext4_mount(const char *dev, const char *dir, int *handle)
{
  g_autofree char *type = NULL;

  g_assert_cmpint(fm_run((const char *const[]){ "mount", "-t", "ext4", dev,
                                                dir, NULL },
                         30, NULL, NULL),
                  ==, 0);
  *handle = fm_track(FM_OTHER_MOUNT, dir);
  type = fm_mount_type(dir);
  g_assert_cmpstr(type, ==, "ext4");
}

static void
ext4_unmount(const char *dir, int handle)
{
  g_autofree char *type = NULL;

  g_assert_cmpint(fm_run((const char *const[]){ "umount", dir, NULL }, 60,
                         NULL, NULL),
                  ==, 0);
  fm_untrack(handle);
  type = fm_mount_type(dir);
  g_assert_null(type);
}

/* mkfs.ext4 on the file, loop-mounted with direct I/O, files written,
 * unmounted, e2fsck -fn clean on the file and on the server's backing
 * file, then mounted again and read back.
 */
static void
test_ext4(void)
{
  const char *const tools[] = {
    "nbdkit", "mkfs.ext4", "e2fsck", "losetup", "mount", "umount",
  };
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autofree char *dev = NULL;
  g_autofree char *ext = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  int loop_handle, mount_handle;

  if (!fm_nbdfs() || !fm_require_root())
    return;
  for (size_t i = 0; i < G_N_ELEMENTS(tools); i++)
    if (!tl_require(tools[i]))
      return;

  img = fm_make_sparse_file("ext4.img", 64 * MiB);
  server = fm_start_nbdkit((const char *const[]){ "file", img, NULL });
  uri = tl_server_uri(server, "");
  m = fm_mounted((const char *const[]){ uri, NULL });
  file = fm_path(m, "disk");
  ext = g_build_filename(tl_tmpdir(), "ext4-mnt", NULL);
  g_assert_cmpint(g_mkdir(ext, 0755), ==, 0);

  g_assert_cmpint(fm_run((const char *const[]){ "mkfs.ext4", "-q", "-F",
                                                file, NULL },
                         120, NULL, NULL),
                  ==, 0);

  dev = loop_attach(file, &loop_handle);
  ext4_mount(dev, ext, &mount_handle);
  ext4_write_files(ext);
  ext4_unmount(ext, mount_handle);
  loop_detach(dev, loop_handle);

  g_assert_cmpint(fm_run((const char *const[]){ "e2fsck", "-fn", file,
                                                NULL },
                         120, NULL, NULL),
                  ==, 0);
  g_assert_cmpint(fm_run((const char *const[]){ "e2fsck", "-fn", img,
                                                NULL },
                         120, NULL, NULL),
                  ==, 0);

  g_clear_pointer(&dev, g_free);
  dev = loop_attach(file, &loop_handle);
  ext4_mount(dev, ext, &mount_handle);
  ext4_check_files(ext);
  ext4_unmount(ext, mount_handle);
  loop_detach(dev, loop_handle);
  g_rmdir(ext);

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(server);
}

/* ---- An unprivileged user ---- */

/* What the user does in the mount, in a child that has become the user;
 * the exit code names the step that failed.
 */
enum user_step {
  USER_OK,
  USER_STAT,
  USER_OWNER,
  USER_OPEN,
  USER_READ,
  USER_READ_BYTES,
  USER_WRITE,
  USER_FSYNC,
  USER_READ_BACK,
  USER_SETUID,
};

static const char *const user_step_names[] = {
  "ok", "stat", "file owner", "open", "read", "bytes read", "write",
  "fsync", "read back", "setuid",
};

#define USER_OFF (1 * MiB + 123)

/* Runs in the forked child: only system calls and memcmp, no GLib. */
static int
user_session(const char *file, uid_t uid, const guint8 *head,
             guint8 *scratch, const guint8 *pattern, size_t len)
{
  struct stat st;
  int fd;

  if (stat(file, &st) < 0)
    return USER_STAT;
  if (st.st_uid != uid)
    return USER_OWNER;
  fd = open(file, O_RDWR | O_CLOEXEC);
  if (fd < 0)
    return USER_OPEN;
  if (pread(fd, scratch, len, 0) != (ssize_t)len)
    return USER_READ;
  if (memcmp(scratch, head, len) != 0)
    return USER_READ_BYTES;
  if (pwrite(fd, pattern, len, USER_OFF) != (ssize_t)len)
    return USER_WRITE;
  if (fsync(fd) < 0)
    return USER_FSYNC;
  if (pread(fd, scratch, len, USER_OFF) != (ssize_t)len ||
      memcmp(scratch, pattern, len) != 0)
    return USER_READ_BACK;
  close(fd);
  return USER_OK;
}

static int
run_as_user(const char *file, uid_t uid, gid_t gid, const guint8 *head,
            const guint8 *pattern, size_t len)
{
  g_autofree guint8 *scratch = g_malloc(len);
  pid_t pid = fork();
  int ws;

  g_assert_cmpint(pid, >=, 0);
  if (pid == 0) {
    if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 ||
        setresuid(uid, uid, uid) < 0)
      _exit(USER_SETUID);
    _exit(user_session(file, uid, head, scratch, pattern, len));
  }

  for (int i = 0; waitpid(pid, &ws, WNOHANG) != pid; i++) {
    if (i >= 3000) {
      kill(pid, SIGKILL);
      waitpid(pid, &ws, 0);
      g_error("the user's session in the mount hung for 30 s");
    }
    g_usleep(10000);
  }
  g_assert_true(WIFEXITED(ws));
  return WEXITSTATUS(ws);
}

/* The uid that PID runs as, from /proc. */
static uid_t
process_uid(pid_t pid)
{
  g_autofree char *path = g_strdup_printf("/proc/%d/status", (int)pid);
  g_autofree char *text = NULL;
  const char *line;

  g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
  line = strstr(text, "\nUid:");
  g_assert_nonnull(line);
  return (uid_t)g_ascii_strtoull(line + 5, NULL, 10);
}

/* nobody mounts through fusermount3 from an nbdkit Unix socket, reads
 * and writes the file, and unmounts with fusermount3 -u.
 */
static void
test_unprivileged(void)
{
  const size_t len = 100000;
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autofree char *reuid = NULL;
  g_autofree char *regid = NULL;
  g_autofree char *type = NULL;
  g_autofree guint8 *head = NULL;
  g_autofree guint8 *pattern = g_malloc(len);
  g_autofree guint8 *got = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  struct passwd *pw;
  struct stat st;
  uid_t uid;
  gid_t gid;
  int step;

  if (!fm_nbdfs() || !fm_require_root() || !tl_require("nbdkit") ||
      !tl_require("setpriv") || !tl_require("fusermount3"))
    return;

  pw = getpwnam("nobody");
  uid = pw != NULL ? pw->pw_uid : 65534;
  gid = pw != NULL ? pw->pw_gid : 65534;
  reuid = g_strdup_printf("--reuid=%d", (int)uid);
  regid = g_strdup_printf("--regid=%d", (int)gid);
  const char *const as_user[] = {
    "setpriv", reuid, regid, "--clear-groups", NULL,
  };

  img = tl_make_file("unprivileged.img", 4 * MiB, 60);
  server = fm_start_nbdkit((const char *const[]){ "file", img, NULL });
  uri = tl_server_uri(server, "");

  /* The user must reach the socket: its directory searchable, the
   * socket itself writable.
   */
  g_assert_cmpint(chmod(tl_tmpdir(), 0711), ==, 0);
  g_assert_cmpint(chmod(server->socket_path, 0666), ==, 0);
  fm_open_fuse_device();

  m = fm_new(uid);
  g_assert_cmpint(fm_start(m, as_user, (const char *const[]){ uri, NULL }),
                  ==, 0);
  type = fm_mount_type(m->dir);
  g_assert_cmpstr(type, ==, "fuse.nbdfs");
  g_assert_cmpint(m->daemon, >, 0);
  g_assert_cmpuint(process_uid(m->daemon), ==, uid);
  file = fm_path(m, "disk");

  /* Without allow_other even root is kept out of a user's mount. */
  fm_assert_fails_with(stat(file, &st), EACCES);

  head = fm_read_range(img, 0, len);
  tl_fill_random(pattern, len, 61, 0);
  step = run_as_user(file, uid, gid, head, pattern, len);
  g_assert_cmpstr(user_step_names[step], ==, "ok");

  g_assert_cmpint(fm_unmount(m, as_user), ==, 0);
  got = fm_read_range(img, USER_OFF, len);
  fm_assert_bytes(got, pattern, len, USER_OFF, "backing file");

  fm_restore_fuse_device();
  g_assert_cmpint(chmod(tl_tmpdir(), 0700), ==, 0);
  tl_server_stop(server);
}

/* ---- Clean ends ---- */

/* The lines of nbdkit's log filter file, from line FROM on. */
static GStrv
log_lines(const char *log, guint from)
{
  g_autofree char *text = NULL;
  g_auto(GStrv) all = NULL;
  GPtrArray *out = g_ptr_array_new();

  g_assert_true(g_file_get_contents(log, &text, NULL, NULL));
  all = g_strsplit(text, "\n", -1);
  for (guint i = from; i < g_strv_length(all); i++)
    if (all[i][0] != '\0')
      g_ptr_array_add(out, g_strdup(all[i]));
  g_ptr_array_add(out, NULL);
  return (GStrv)g_ptr_array_free(out, FALSE);
}

static int
last_line_with(GStrv lines, const char *what)
{
  int last = -1;

  for (int i = 0; lines[i] != NULL; i++)
    if (strstr(lines[i], what) != NULL)
      last = i;
  return last;
}

/* O2, D5: every write the server completed is followed by a FLUSH that
 * the server completed without error.
 */
static void
assert_flush_after_writes(GStrv lines)
{
  int write_done = last_line_with(lines, "...Write ");
  int flush_done = last_line_with(lines, "...Flush ");

  g_assert_cmpint(write_done, >=, 0);
  g_assert_cmpint(flush_done, >, write_done);
  g_assert_nonnull(strstr(lines[flush_done], "return=0"));
}

/* fusermount3 -u sends a final FLUSH after writes, and none after a
 * mount that only read.
 */
static void
test_unmount_flush(void)
{
  g_autofree char *img = NULL;
  g_autofree char *log = NULL;
  g_autofree char *logarg = NULL;
  g_autofree char *uri = NULL;
  g_autofree guint8 *buf = g_malloc(1 * MiB);
  g_autofree guint8 *got = NULL;
  struct tl_server *server;
  guint seen;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  img = tl_make_file("flush.img", 4 * MiB, 80);
  log = g_build_filename(tl_tmpdir(), "flush.log", NULL);
  logarg = g_strdup_printf("logfile=%s", log);
  server = fm_start_nbdkit((const char *const[]){ "--filter=log", "file", img,
                                               logarg, NULL });
  uri = tl_server_uri(server, "");

  {
    g_autoptr(fm_mount) m = fm_mounted((const char *const[]){ uri, NULL });
    g_autofree char *file = fm_path(m, "disk");
    g_auto(GStrv) lines = NULL;

    g_free(fm_read_range(file, 0, 1 * MiB));
    g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
    lines = log_lines(log, 0);
    g_assert_cmpint(last_line_with(lines, " Flush "), ==, -1);
    g_assert_cmpint(last_line_with(lines, " Write "), ==, -1);
    seen = g_strv_length(lines);
  }

  {
    g_autoptr(fm_mount) m = fm_mounted((const char *const[]){ uri, NULL });
    g_autofree char *file = fm_path(m, "disk");
    g_auto(GStrv) lines = NULL;
    int fd = open(file, O_WRONLY | O_CLOEXEC);

    g_assert_cmpint(fd, >=, 0);
    tl_fill_random(buf, 1 * MiB, 81, 0);
    fm_write_range(fd, buf, 1 * MiB, 12345);
    close(fd);
    g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
    lines = log_lines(log, seen);
    assert_flush_after_writes(lines);
  }

  got = fm_read_range(img, 12345, 1 * MiB);
  fm_assert_bytes(got, buf, 1 * MiB, 12345, "backing file");
  tl_server_stop(server);
}

#define SIG_CHUNK  (64 * KiB)
#define SIG_CHUNKS 4096        /* 256 MiB: more than can be written */

struct writer {
  char *file;
  GMutex lock;
  GCond changed;
  unsigned acked;   /* chunks whose pwrite returned in full */
  unsigned synced;  /* chunks a successful fsync covered */
  int err;          /* errno of the call that failed, or 0 */
  bool done;
};

static gpointer
writer_main(gpointer data)
{
  struct writer *w = data;
  g_autofree guint8 *buf = g_malloc(SIG_CHUNK);
  int fd = open(w->file, O_RDWR | O_CLOEXEC);
  int err = fd < 0 ? errno : 0;

  for (unsigned i = 0; err == 0 && i < SIG_CHUNKS; i++) {
    tl_fill_random(buf, SIG_CHUNK, 90, (uint64_t)i * SIG_CHUNK);
    if (pwrite(fd, buf, SIG_CHUNK, (off_t)i * SIG_CHUNK) !=
        (ssize_t)SIG_CHUNK) {
      err = errno ? errno : EIO;
      break;
    }
    g_mutex_lock(&w->lock);
    w->acked = i + 1;
    g_cond_signal(&w->changed);
    g_mutex_unlock(&w->lock);

    if (i % 8 == 7) {
      if (fsync(fd) < 0) {
        err = errno;
        break;
      }
      g_mutex_lock(&w->lock);
      w->synced = i + 1;
      g_mutex_unlock(&w->lock);
    }
  }
  if (fd >= 0)
    close(fd);

  g_mutex_lock(&w->lock);
  w->err = err;
  w->done = true;
  g_cond_signal(&w->changed);
  g_mutex_unlock(&w->lock);
  return NULL;
}

/* SIGTERM while a writer is busy: the daemon ends with status 0, the
 * mount is gone, every acknowledged write is in the backing file and a
 * final FLUSH covered them (D5, O2).
 */
static void
test_sigterm_during_io(void)
{
  g_autofree char *img = NULL;
  g_autofree char *log = NULL;
  g_autofree char *logarg = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *type = NULL;
  g_autofree guint8 *want = g_malloc(SIG_CHUNK);
  g_autoptr(fm_mount) m = NULL;
  g_auto(GStrv) lines = NULL;
  struct tl_server *server;
  struct writer w = { 0 };
  unsigned acked_at_signal, synced_at_signal;
  GThread *thread;
  gint64 deadline;
  int fd;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  img = fm_make_sparse_file("sigterm.img", SIG_CHUNKS * SIG_CHUNK);
  log = g_build_filename(tl_tmpdir(), "sigterm.log", NULL);
  logarg = g_strdup_printf("logfile=%s", log);
  server = fm_start_nbdkit((const char *const[]){ "--filter=log", "file", img,
                                               logarg, NULL });
  uri = tl_server_uri(server, "");
  m = fm_mounted((const char *const[]){ uri, NULL });

  w.file = fm_path(m, "disk");
  g_mutex_init(&w.lock);
  g_cond_init(&w.changed);
  thread = g_thread_new("writer", writer_main, &w);

  /* Let the writer get going, then signal the daemon mid-stream. */
  deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
  g_mutex_lock(&w.lock);
  while (w.acked < 24 && !w.done)
    if (!g_cond_wait_until(&w.changed, &w.lock, deadline))
      break;
  acked_at_signal = w.acked;
  synced_at_signal = w.synced;
  g_assert_cmpint(kill(m->daemon, SIGTERM), ==, 0);
  g_mutex_unlock(&w.lock);
  g_assert_cmpuint(acked_at_signal, >=, 24);
  g_test_message("SIGTERM after %u chunks written, %u synced",
                 acked_at_signal, synced_at_signal);

  g_assert_cmpint(fm_wait_daemon(m, 30), ==, 0);
  type = fm_mount_type(m->dir);
  g_assert_null(type);

  deadline = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
  g_mutex_lock(&w.lock);
  while (!w.done)
    if (!g_cond_wait_until(&w.changed, &w.lock, deadline))
      g_error("the writer is still blocked 30 s after the unmount");
  g_mutex_unlock(&w.lock);
  g_thread_join(thread);
  g_test_message("the writer stopped after %u chunks: %s", w.acked,
                 g_strerror(w.err));

  /* Every write acknowledged before or after the signal is there. */
  g_assert_cmpuint(w.acked, >=, acked_at_signal);
  g_assert_cmpuint(w.acked, <, SIG_CHUNKS);
  fd = open(img, O_RDONLY | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  for (unsigned i = 0; i < w.acked; i++) {
    g_autofree guint8 *got = g_malloc(SIG_CHUNK);

    g_assert_cmpint(pread(fd, got, SIG_CHUNK, (off_t)i * SIG_CHUNK), ==,
                    SIG_CHUNK);
    tl_fill_random(want, SIG_CHUNK, 90, (uint64_t)i * SIG_CHUNK);
    fm_assert_bytes(got, want, SIG_CHUNK, (uint64_t)i * SIG_CHUNK,
                 "acknowledged chunk");
  }
  close(fd);

  lines = log_lines(log, 0);
  assert_flush_after_writes(lines);

  g_free(w.file);
  g_mutex_clear(&w.lock);
  g_cond_clear(&w.changed);
  tl_server_stop(server);
}

/* SIGINT on an idle mount: status 0 and the mount is gone. */
static void
test_sigint(void)
{
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *type = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  img = tl_make_file("sigint.img", 1 * MiB, 91);
  server = fm_start_nbdkit((const char *const[]){ "file", img, NULL });
  uri = tl_server_uri(server, "");
  m = fm_mounted((const char *const[]){ uri, NULL });
  g_assert_cmpint(kill(m->daemon, SIGINT), ==, 0);
  g_assert_cmpint(fm_wait_daemon(m, 30), ==, 0);
  type = fm_mount_type(m->dir);
  g_assert_null(type);
  tl_server_stop(server);
}

int
main(int argc, char **argv)
{
  tl_init(&argc, &argv);
  fm_init();

  g_test_add_func("/fuse/ext4/loop-mount", test_ext4);
  g_test_add_func("/fuse/unprivileged/user-mount", test_unprivileged);
  g_test_add_func("/fuse/unmount/flush", test_unmount_flush);
  g_test_add_func("/fuse/signal/sigterm-during-io", test_sigterm_during_io);
  g_test_add_func("/fuse/signal/sigint", test_sigint);

  return g_test_run();
}
