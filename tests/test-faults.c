/* nbdfs under failure: servers killed and restarted during a verified
 * workload, a server that loses its unflushed writes, injected errors,
 * a stalled server, and SIGTERM under load.
 *
 * The servers here are started by hand on a fixed socket path, because a
 * restart must come back where the mount expects it; each runs with
 * --exit-with-parent (nbdkit) or PR_SET_PDEATHSIG through testlib's
 * conventions, and is killed at exit whatever happens.  Mounts go through
 * fusemount.h and are always taken down.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "fusemount.h"
#include "testlib.h"

#define MiB (1024 * 1024)
#define REGION (32 * MiB)

/* ---- A server that can be killed and restarted in place ---- */

enum kind {
  NBDKIT_FILE,
  QEMU_NBD,
};

struct server {
  enum kind kind;
  char *socket;
  char *image;
  char *filter;    /* nbdkit: a --filter= argument, or NULL */
  char **params;   /* nbdkit: parameters after the plugin's, or NULL */
  pid_t pid;
};

static struct server *live_servers[8];

static void
kill_live_servers(void)
{
  for (size_t i = 0; i < G_N_ELEMENTS(live_servers); i++)
    if (live_servers[i] != NULL && live_servers[i]->pid > 0)
      kill(live_servers[i]->pid, SIGKILL);
}

static void
child_setup(gpointer data)
{
  /* Die with the test, even on SIGKILL. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
}

static void
server_start(struct server *s)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;

  g_unlink(s->socket);
  if (s->kind == NBDKIT_FILE) {
    g_ptr_array_add(argv, "nbdkit");
    g_ptr_array_add(argv, "-f");
    g_ptr_array_add(argv, "-U");
    g_ptr_array_add(argv, s->socket);
    if (s->filter != NULL)
      g_ptr_array_add(argv, s->filter);
    g_ptr_array_add(argv, "file");
    g_ptr_array_add(argv, s->image);
    for (char **p = s->params; p && *p; p++)
      g_ptr_array_add(argv, *p);
  } else {
    g_ptr_array_add(argv, "qemu-nbd");
    g_ptr_array_add(argv, "--persistent");
    g_ptr_array_add(argv, "--shared=8");
    g_ptr_array_add(argv, "--format=raw");
    g_ptr_array_add(argv, "--cache=writeback");
    g_ptr_array_add(argv, "--socket");
    g_ptr_array_add(argv, s->socket);
    g_ptr_array_add(argv, s->image);
  }
  g_ptr_array_add(argv, NULL);

  g_spawn_async(NULL, (char **) argv->pdata, NULL,
                G_SPAWN_SEARCH_PATH | G_SPAWN_DO_NOT_REAP_CHILD |
                  G_SPAWN_STDOUT_TO_DEV_NULL,
                child_setup, NULL, &s->pid, &error);
  g_assert_no_error(error);

  /* Ready when the socket accepts. */
  while (g_get_monotonic_time() < deadline) {
    struct tl_server probe = { .socket_path = s->socket };
    g_autoptr(GError) perr = NULL;
    int fd = tl_server_connect(&probe, &perr);

    if (fd >= 0) {
      close(fd);
      return;
    }
    g_usleep(50 * 1000);
  }
  g_error("%s did not start on %s", s->kind == NBDKIT_FILE ? "nbdkit"
                                                           : "qemu-nbd",
          s->socket);
}

static void
server_kill(struct server *s)
{
  /* kill -9: no goodbye, no flush of anything the server buffered. */
  kill(s->pid, SIGKILL);
  waitpid(s->pid, NULL, 0);
  s->pid = 0;
}

static struct server *
server_new(enum kind kind, const char *name, const char *filter,
           char **params)
{
  struct server *s = g_new0(struct server, 1);
  g_autofree char *base = g_strdup_printf("%s/%s", tl_tmpdir(), name);
  int fd;

  s->kind = kind;
  s->socket = g_strconcat(base, ".sock", NULL);
  s->image = g_strconcat(base, ".img", NULL);
  s->filter = g_strdup(filter);
  s->params = g_strdupv(params);
  fd = open(s->image, O_CREAT | O_TRUNC | O_WRONLY, 0644);
  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(ftruncate(fd, 64 * MiB), ==, 0);
  close(fd);

  for (size_t i = 0; i < G_N_ELEMENTS(live_servers); i++)
    if (live_servers[i] == NULL) {
      live_servers[i] = s;
      break;
    }
  server_start(s);
  return s;
}

static void
server_free(struct server *s)
{
  for (size_t i = 0; i < G_N_ELEMENTS(live_servers); i++)
    if (live_servers[i] == s)
      live_servers[i] = NULL;
  if (s->pid > 0)
    server_kill(s);
  g_unlink(s->socket);
  g_unlink(s->image);
  g_free(s->socket);
  g_free(s->image);
  g_free(s->filter);
  g_strfreev(s->params);
  g_free(s);
}

static char *
server_uri(const struct server *s)
{
  return g_strdup_printf("nbd+unix:///?socket=%s", s->socket);
}

/* ---- A verified workload on a thread ---- */

struct workload {
  char *path;
  guint8 *shadow;          /* what the first REGION bytes must hold */
  guint32 seed;
  volatile gint stop;
  gint ops;
  gint errors;
  char *first_error;
  GMutex lock;             /* shadow and synced against the workload */
};

static void
note_error(struct workload *w, const char *what, int err)
{
  g_atomic_int_inc(&w->errors);
  g_mutex_lock(&w->lock);
  if (w->first_error == NULL)
    w->first_error = g_strdup_printf("%s: %s", what, g_strerror(err));
  g_mutex_unlock(&w->lock);
}

/* Random writes of 4 KiB to 256 KiB, each read back at once and checked
 * against the shadow, with an fsync every 8 writes.  Any error or
 * mismatch counts: the point is that a restarting server costs the
 * application nothing. */
static gpointer
workload_main(gpointer opaque)
{
  struct workload *w = opaque;
  GRand *rand = g_rand_new_with_seed(w->seed);
  guint8 *buf = g_malloc(256 * 1024);
  guint8 *back = g_malloc(256 * 1024);
  int fd = open(w->path, O_RDWR);

  if (fd < 0) {
    note_error(w, "open", errno);
    goto out;
  }
  while (!g_atomic_int_get(&w->stop)) {
    size_t len = 4096 * g_rand_int_range(rand, 1, 65);
    off_t off = 4096 * (off_t) g_rand_int_range(rand, 0,
                                                (REGION - len) / 4096);

    for (size_t i = 0; i < len; i++)
      buf[i] = g_rand_int(rand);
    if (pwrite(fd, buf, len, off) != (ssize_t) len) {
      note_error(w, "pwrite", errno);
      break;
    }
    g_mutex_lock(&w->lock);
    memcpy(w->shadow + off, buf, len);
    g_mutex_unlock(&w->lock);

    if (pread(fd, back, len, off) != (ssize_t) len) {
      note_error(w, "pread", errno);
      break;
    }
    if (memcmp(back, buf, len) != 0) {
      note_error(w, "read back differs", EIO);
      break;
    }
    if (g_atomic_int_add(&w->ops, 1) % 8 == 7 && fsync(fd) < 0) {
      note_error(w, "fsync", errno);
      break;
    }
  }
  if (fsync(fd) < 0)
    note_error(w, "final fsync", errno);
  close(fd);
out:
  g_free(buf);
  g_free(back);
  g_rand_free(rand);
  return NULL;
}

static void
assert_file_equals(const char *path, const guint8 *want, size_t len)
{
  g_autofree char *data = NULL;
  gsize got = 0;
  g_autoptr(GError) error = NULL;

  g_file_get_contents(path, &data, &got, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(got, >=, len);
  for (size_t i = 0; i < len; i++)
    if ((guint8) data[i] != want[i])
      g_error("%s: first difference at offset %zu", path, i);
}

static bool
have(const char *program)
{
  return tl_require(program);
}

/* kill -9 and restart the server twice under a verified workload: no
 * error reaches the application, and the backing file ends equal to
 * what the application wrote (D9 reconnect policy, with the replay). */
static void
test_restart_under_load(gconstpointer data)
{
  enum kind kind = GPOINTER_TO_INT(data);
  struct server *s;
  g_autofree char *uri = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct workload w = { 0 };
  GThread *t;

  if (!fm_nbdfs() || !have(kind == NBDKIT_FILE ? "nbdkit" : "qemu-nbd"))
    return;
  s = server_new(kind, "restart", NULL, NULL);
  uri = server_uri(s);
  m = fm_mounted((const char *const[]) { uri, NULL });

  w.path = fm_path(m, "disk");
  w.shadow = g_malloc0(REGION);
  w.seed = 7;
  g_mutex_init(&w.lock);
  t = g_thread_new("workload", workload_main, &w);

  for (int round = 0; round < 2; round++) {
    g_usleep(700 * 1000);
    server_kill(s);
    g_usleep(300 * 1000);
    server_start(s);
  }
  g_usleep(700 * 1000);
  g_atomic_int_set(&w.stop, 1);
  g_thread_join(t);

  g_assert_cmpstr(w.first_error, ==, NULL);
  g_assert_cmpint(w.errors, ==, 0);
  g_assert_cmpint(w.ops, >, 20);
  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  assert_file_equals(s->image, w.shadow, REGION);

  g_free(w.path);
  g_free(w.shadow);
  g_free(w.first_error);
  g_mutex_clear(&w.lock);
  server_free(s);
}

/* Writes A, fsync, snapshot the backing file, write B without fsync,
 * then kill the server and restart it from the snapshot, as a server
 * that loses its volatile cache would come back.  With the replay log
 * B is written again and an fsync reports success truthfully; with
 * --replay-limit 0 that fsync fails once with EIO (O2, O5, D9). */
static void
test_lost_cache(gconstpointer data)
{
  bool replay = GPOINTER_TO_INT(data);
  struct server *s;
  g_autofree char *uri = NULL;
  g_autofree char *path = NULL;
  g_autofree char *snap = NULL;
  g_autofree guint8 *a = g_malloc(MiB);
  g_autofree guint8 *b = g_malloc(MiB);
  g_autofree guint8 *back = g_malloc(MiB);
  g_autoptr(fm_mount) m = NULL;
  g_autofree char *contents = NULL;
  gsize len;
  int fd, rc;

  if (!fm_nbdfs() || !have("nbdkit"))
    return;
  s = server_new(NBDKIT_FILE, replay ? "replay" : "noreplay", NULL,
                 NULL);
  uri = server_uri(s);
  m = fm_mounted(replay ? (const char *const[]) { uri, NULL }
                        : (const char *const[]) { "--replay-limit", "0",
                                                  uri, NULL });
  path = fm_path(m, "disk");
  tl_fill_random(a, MiB, 1, 0);
  tl_fill_random(b, MiB, 2, 0);

  fd = open(path, O_RDWR);
  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(pwrite(fd, a, MiB, 0), ==, MiB);
  g_assert_cmpint(fsync(fd), ==, 0);
  g_assert_true(g_file_get_contents(s->image, &contents, &len, NULL));
  snap = g_strconcat(s->image, ".snap", NULL);
  g_assert_true(g_file_set_contents(snap, contents, len, NULL));
  g_assert_cmpint(pwrite(fd, b, MiB, MiB), ==, MiB);

  server_kill(s);
  g_assert_cmpint(g_rename(snap, s->image), ==, 0);
  server_start(s);

  /* The next request waits for the reconnect (and the replay). */
  g_assert_cmpint(pread(fd, back, MiB, 0), ==, MiB);
  g_assert_cmpmem(back, MiB, a, MiB);
  rc = fsync(fd);
  if (replay) {
    g_assert_cmpint(rc, ==, 0);
    g_assert_cmpint(pread(fd, back, MiB, MiB), ==, MiB);
    g_assert_cmpmem(back, MiB, b, MiB);
  } else {
    /* The truth: B may be gone, and the fsync says so once. */
    g_assert_cmpint(rc, ==, -1);
    g_assert_cmpint(errno, ==, EIO);
    g_assert_cmpint(fsync(fd), ==, 0);
  }
  close(fd);
  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);

  g_clear_pointer(&contents, g_free);
  g_assert_true(g_file_get_contents(s->image, &contents, &len, NULL));
  g_assert_cmpmem(contents, MiB, a, MiB);
  if (replay)
    g_assert_cmpmem(contents + MiB, MiB, b, MiB);
  server_free(s);
}

/* nbdkit's error filter fails a share of reads with EIO: those reads
 * fail, the mount stays usable, and later reads succeed. */
static void
test_error_filter(void)
{
  struct server *s;
  g_autofree char *uri = NULL;
  g_autofree char *path = NULL;
  g_autofree char *ctl = NULL;
  g_autofree char *trigger = NULL;
  char *params[] = { "error=EIO", "error-pread-rate=1", NULL, NULL };
  g_autoptr(fm_mount) m = NULL;
  guint8 buf[4096];
  int fd, failed = 0;

  if (!fm_nbdfs() || !have("nbdkit"))
    return;

  /* The filter fails every read while the trigger file exists. */
  ctl = g_strdup_printf("%s/errors-on", tl_tmpdir());
  g_assert_true(g_file_set_contents(ctl, "", 0, NULL));
  trigger = g_strdup_printf("error-pread-file=%s", ctl);
  params[2] = trigger;
  s = server_new(NBDKIT_FILE, "errors", "--filter=error", params);
  uri = server_uri(s);
  m = fm_mounted((const char *const[]) { uri, NULL });
  path = fm_path(m, "disk");

  fd = open(path, O_RDONLY);
  g_assert_cmpint(fd, >=, 0);
  for (int i = 0; i < 4; i++)
    if (pread(fd, buf, sizeof buf, i * 4096) < 0 && errno == EIO)
      failed++;
  g_assert_cmpint(failed, ==, 4);

  /* Errors off: the same mount reads fine. */
  g_assert_cmpint(g_unlink(ctl), ==, 0);
  for (int i = 0; i < 4; i++)
    g_assert_cmpint(pread(fd, buf, sizeof buf, i * 4096), ==, sizeof buf);
  close(fd);
  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  server_free(s);
}

/* A server that stops answering (SIGSTOP): a read does not wait for
 * ever.  After --request-timeout the connection is redone; once the
 * server stays away past --reconnect-timeout the read fails with EIO.
 * When the server resumes, the mount works again. */
static void
test_stalled_server(void)
{
  struct server *s;
  g_autofree char *uri = NULL;
  g_autofree char *path = NULL;
  g_autoptr(fm_mount) m = NULL;
  guint8 buf[4096];
  gint64 start, took;
  int fd;
  ssize_t n;

  if (!fm_nbdfs() || !have("nbdkit"))
    return;
  s = server_new(NBDKIT_FILE, "stall", NULL, NULL);
  uri = server_uri(s);
  m = fm_mounted((const char *const[]) { "--request-timeout", "1",
                                         "--reconnect-timeout", "3",
                                         uri, NULL });
  path = fm_path(m, "disk");
  fd = open(path, O_RDONLY);
  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(pread(fd, buf, sizeof buf, 0), ==, sizeof buf);

  kill(s->pid, SIGSTOP);
  start = g_get_monotonic_time();
  n = pread(fd, buf, sizeof buf, 8192);
  took = (g_get_monotonic_time() - start) / G_USEC_PER_SEC;
  g_assert_cmpint(n, ==, -1);
  g_assert_cmpint(errno, ==, EIO);
  g_assert_cmpint(took, <=, 40);

  /* The server is back: so is the mount. */
  kill(s->pid, SIGCONT);
  for (int i = 0; i < 100; i++) {
    n = pread(fd, buf, sizeof buf, 8192);
    if (n == sizeof buf)
      break;
    g_usleep(100 * 1000);
  }
  g_assert_cmpint(n, ==, sizeof buf);
  close(fd);
  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  server_free(s);
}

/* SIGTERM during heavy writes: the daemon ends, no stale mount stays,
 * and what was written and fsynced before the signal is on the server. */
static void
test_sigterm_under_load(void)
{
  struct server *s;
  g_autofree char *uri = NULL;
  g_autofree char *path = NULL;
  g_autofree guint8 *a = g_malloc(4 * MiB);
  g_autoptr(fm_mount) m = NULL;
  g_autofree char *contents = NULL;
  g_autofree char *type = NULL;
  struct workload w = { 0 };
  GThread *t;
  gsize len;
  int fd;

  if (!fm_nbdfs() || !have("nbdkit"))
    return;
  s = server_new(NBDKIT_FILE, "sigterm", NULL, NULL);
  uri = server_uri(s);
  m = fm_mounted((const char *const[]) { uri, NULL });
  path = fm_path(m, "disk");

  /* Flushed data first, far from where the load writes. */
  tl_fill_random(a, 4 * MiB, 3, 0);
  fd = open(path, O_RDWR);
  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(pwrite(fd, a, 4 * MiB, 48 * MiB), ==, 4 * MiB);
  g_assert_cmpint(fsync(fd), ==, 0);
  close(fd);

  w.path = path;
  w.shadow = g_malloc0(REGION);
  w.seed = 11;
  g_mutex_init(&w.lock);
  t = g_thread_new("workload", workload_main, &w);
  g_usleep(500 * 1000);

  kill(m->daemon, SIGTERM);
  g_assert_cmpint(fm_wait_daemon(m, 30), ==, 0);
  g_atomic_int_set(&w.stop, 1);
  g_thread_join(t);

  type = fm_mount_type(m->dir);
  g_assert_cmpstr(type, ==, NULL);
  g_assert_true(g_file_get_contents(s->image, &contents, &len, NULL));
  g_assert_cmpmem(contents + 48 * MiB, 4 * MiB, a, 4 * MiB);

  g_free(w.shadow);
  g_free(w.first_error);
  g_mutex_clear(&w.lock);
  server_free(s);
}

int
main(int argc, char **argv)
{
  tl_init(&argc, &argv);
  fm_init();
  atexit(kill_live_servers);

  g_test_add_data_func("/faults/restart/nbdkit",
                       GINT_TO_POINTER(NBDKIT_FILE),
                       test_restart_under_load);
  g_test_add_data_func("/faults/restart/qemu-nbd",
                       GINT_TO_POINTER(QEMU_NBD), test_restart_under_load);
  g_test_add_data_func("/faults/lost-cache/replayed", GINT_TO_POINTER(1),
                       test_lost_cache);
  g_test_add_data_func("/faults/lost-cache/replay-limit-0",
                       GINT_TO_POINTER(0), test_lost_cache);
  g_test_add_func("/faults/error-filter", test_error_filter);
  g_test_add_func("/faults/stalled-server", test_stalled_server);
  g_test_add_func("/faults/sigterm-under-load", test_sigterm_under_load);
  return g_test_run();
}
