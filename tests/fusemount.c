/* nbdfs FUSE test helpers: private mount points that are always taken
 * down.
 *
 * What must be released at exit lives in fixed tables of paths and pids,
 * so that the signal handler can walk them without locks or allocation.
 * The handler uses only async-signal-safe calls (umount2, ioctl, kill,
 * waitpid, fork, execv, rmdir, chmod, nanosleep), then hands the signal
 * on to testlib's handler, which stops the servers.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "fusemount.h"
#include "testlib.h"

#define MAX_MOUNTS       16
#define MAX_TRACKED      8
#define START_TIMEOUT_S  30
#define UMOUNT_TIMEOUT_S 10
#define DAEMON_EXIT_S    20
#define STOP_GRACE_MS    5000
#define PIPE_GRACE_US    (2 * G_USEC_PER_SEC)

struct fuse_slot {
  volatile sig_atomic_t used;
  volatile sig_atomic_t pid;
  char dir[PATH_MAX];
  char parent[PATH_MAX];
};

struct tracked {
  volatile sig_atomic_t used;
  enum fm_kind kind;
  char path[PATH_MAX];
};

static struct fuse_slot fuse_slots[MAX_MOUNTS];
static struct tracked tracked[MAX_TRACKED];
static volatile sig_atomic_t fuse_dev_mode = -1;
static volatile sig_atomic_t releasing;
static char fusermount_path[PATH_MAX];
static pid_t owner_pid;
static GMutex table_lock;

/* SIGTRAP too: g_error() ends a test program with a breakpoint. */
static const int release_signals[] = {
  SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGABRT, SIGPIPE, SIGTRAP,
};
static struct sigaction chained[G_N_ELEMENTS(release_signals)];

/* ---- Async-signal-safe release, used at exit and from the handler ---- */

static void
sleep_ms(int ms)
{
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

  nanosleep(&ts, NULL);
}

/* True once child PID has ended and been reaped. */
static bool
child_gone(pid_t pid)
{
  pid_t r = waitpid(pid, NULL, WNOHANG);

  return r == pid || (r < 0 && errno == ECHILD);
}

/* SIGTERM, a grace period, then SIGKILL; PID is our child (subreaper). */
static void
stop_child(pid_t pid)
{
  if (pid <= 0)
    return;

  kill(pid, SIGTERM);
  for (int waited = 0; waited < STOP_GRACE_MS; waited += 10) {
    if (child_gone(pid))
      return;
    sleep_ms(10);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

/* Detaches the FUSE mount on DIR: root can do it directly; anyone else
 * needs the setuid fusermount3.
 */
static void
detach_fuse(const char *dir)
{
  pid_t pid;

  if (geteuid() == 0) {
    umount2(dir, MNT_DETACH);
    return;
  }
  if (fusermount_path[0] == '\0')
    return;

  pid = fork();
  if (pid == 0) {
    char *const argv[] = { "fusermount3", "-u", "-z", (char *)dir, NULL };

    execv(fusermount_path, argv);
    _exit(127);
  }
  if (pid > 0)
    for (int waited = 0; !child_gone(pid); waited += 10) {
      if (waited > 2000) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        break;
      }
      sleep_ms(10);
    }
}

static void
release_fuse_slot(struct fuse_slot *s)
{
  if (!s->used)
    return;

  /* Detach first: a daemon killed under a live mount would leave it
   * stale ("Transport endpoint is not connected").
   */
  detach_fuse(s->dir);
  stop_child(s->pid);
  s->pid = 0;
  rmdir(s->dir);
  rmdir(s->parent);
  s->used = 0;
}

/* An ext4 mount comes down before its loop device, which comes down
 * before the FUSE file under it, which goes before the servers.
 */
static void
release_all(void)
{
  for (int i = 0; i < MAX_TRACKED; i++)
    if (tracked[i].used && tracked[i].kind == FM_OTHER_MOUNT) {
      umount2(tracked[i].path, MNT_DETACH);
      tracked[i].used = 0;
    }

  /* On a busy device LOOP_CLR_FD only sets autoclear, which frees it
   * once the lazily unmounted filesystem lets go.
   */
  for (int i = 0; i < MAX_TRACKED; i++)
    if (tracked[i].used && tracked[i].kind == FM_LOOP) {
      int fd = open(tracked[i].path, O_RDONLY | O_CLOEXEC);

      if (fd >= 0) {
        ioctl(fd, LOOP_CLR_FD, 0);
        close(fd);
      }
      tracked[i].used = 0;
    }

  for (int i = 0; i < MAX_MOUNTS; i++)
    release_fuse_slot(&fuse_slots[i]);

  if (fuse_dev_mode >= 0) {
    chmod("/dev/fuse", (mode_t)fuse_dev_mode);
    fuse_dev_mode = -1;
  }
}

static void
release_at_exit(void)
{
  if (getpid() != owner_pid || releasing)
    return;
  releasing = 1;
  release_all();
  releasing = 0;
}

static void
on_signal(int sig)
{
  int saved_errno = errno;

  if (getpid() == owner_pid && !releasing) {
    releasing = 1;
    release_all();
  }

  /* Hand the signal on to the handler that was there before (testlib's,
   * which stops the servers and ends the program).  The signal stays
   * blocked until we return, so it is delivered to that handler then.
   */
  for (size_t i = 0; i < G_N_ELEMENTS(release_signals); i++)
    if (release_signals[i] == sig)
      sigaction(sig, &chained[i], NULL);

  /* testlib does not catch SIGTRAP; ending as an abort lets its handler
   * stop the servers as well.
   */
  raise(sig == SIGTRAP ? SIGABRT : sig);
  errno = saved_errno;
}

/* ---- Setup ---- */

void
fm_init(void)
{
  g_autofree char *fusermount = g_find_program_in_path("fusermount3");
  struct sigaction sa = { 0 };

  owner_pid = getpid();
  if (fusermount != NULL)
    g_strlcpy(fusermount_path, fusermount, sizeof fusermount_path);

  /* The nbdfs command forks the daemon and exits; as a subreaper we
   * inherit the daemon and can wait for it like any child.
   */
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
    g_error("fm_init: PR_SET_CHILD_SUBREAPER: %s", g_strerror(errno));

  /* atexit handlers run in reverse order: ours, registered after
   * tl_init(), runs before testlib stops the servers.
   */
  if (atexit(release_at_exit) != 0)
    g_error("fm_init: atexit: cannot register the cleanup");

  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  for (size_t i = 0; i < G_N_ELEMENTS(release_signals); i++)
    sigaction(release_signals[i], &sa, &chained[i]);
}

static bool
require(const char *what)
{
  if (g_strcmp0(g_getenv("CI"), "true") == 0) {
    g_test_message("prerequisite missing: %s", what);
    g_test_fail();
  } else {
    g_autofree char *msg = g_strdup_printf("prerequisite missing: %s",
                                           what);

    g_test_skip(msg);
  }
  return false;
}

const char *
fm_nbdfs(void)
{
  const char *path = g_getenv("NBDFS");

  if (path == NULL || access(path, X_OK) != 0) {
    require("the nbdfs executable in $NBDFS");
    return NULL;
  }
  return path;
}

bool
fm_require_root(void)
{
  return geteuid() == 0 || require("root");
}

/* ---- Running programs ---- */

static void
child_setup(gpointer unused)
{
  int null = open("/dev/null", O_RDONLY);

  /* A test killed outright takes its helpers (fio, mkfs) with it. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);

  /* Nothing may wait for input (G_SPAWN_STDIN_FROM_DEV_NULL needs GLib
   * 2.74).
   */
  if (null >= 0) {
    dup2(null, STDIN_FILENO);
    if (null != STDIN_FILENO)
      close(null);
  }
}

/* Reads what is ready on FD into BUF; returns false at end of file. */
static bool
drain_pipe(int fd, GString *buf)
{
  char chunk[4096];
  ssize_t n = read(fd, chunk, sizeof chunk);

  if (n > 0) {
    g_string_append_len(buf, chunk, n);
    return true;
  }
  return n < 0 && (errno == EINTR || errno == EAGAIN);
}

int
fm_run(const char *const *argv, int timeout_s, char **out, char **err)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *cmd = g_strjoinv(" ", (char **)argv);
  g_autoptr(GString) out_text = g_string_new(NULL);
  g_autoptr(GString) err_text = g_string_new(NULL);
  GString *text[2] = { out_text, err_text };
  gint64 deadline = g_get_monotonic_time() + timeout_s * G_USEC_PER_SEC;
  gint64 grace = 0;
  int fds[2] = { -1, -1 };
  bool exited = false;
  int status = -1;
  pid_t pid;

  g_test_message("run: %s", cmd);
  if (!g_spawn_async_with_pipes(NULL, (char **)argv, NULL,
                                G_SPAWN_SEARCH_PATH |
                                  G_SPAWN_DO_NOT_REAP_CHILD,
                                child_setup, NULL, &pid, NULL, &fds[0],
                                &fds[1], &error)) {
    g_test_message("run: %s: %s", argv[0], error->message);
    g_string_assign(text[1], error->message);
    goto out;
  }

  /* The program may leave a daemon holding the pipes for a moment, so
   * reading stops at end of file or shortly after the program exits.
   */
  for (;;) {
    struct pollfd pfd[2];
    int idx[2], n = 0, ws;

    for (int i = 0; i < 2; i++)
      if (fds[i] >= 0) {
        pfd[n] = (struct pollfd){ .fd = fds[i], .events = POLLIN };
        idx[n++] = i;
      }

    if (!exited && waitpid(pid, &ws, WNOHANG) == pid) {
      exited = true;
      grace = g_get_monotonic_time() + PIPE_GRACE_US;
      status = WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
      if (WIFSIGNALED(ws))
        g_test_message("run: %s: killed by signal %d", argv[0],
                       WTERMSIG(ws));
    }
    if (exited && (n == 0 || g_get_monotonic_time() > grace))
      break;
    if (!exited && g_get_monotonic_time() > deadline) {
      g_test_message("run: %s: still running after %d s, killed", cmd,
                     timeout_s);
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
      status = -1;
      break;
    }

    if (poll(pfd, n, 20) <= 0)
      continue;
    for (int k = 0; k < n; k++)
      if (pfd[k].revents != 0 && !drain_pipe(fds[idx[k]], text[idx[k]])) {
        close(fds[idx[k]]);
        fds[idx[k]] = -1;
      }
  }

out:
  for (int i = 0; i < 2; i++)
    if (fds[i] >= 0)
      close(fds[i]);
  if (status != 0 && text[1]->len > 0)
    g_test_message("run: %s: exit %d: %s", argv[0], status, text[1]->str);
  if (out != NULL)
    *out = g_strdup(text[0]->str);
  if (err != NULL)
    *err = g_strdup(text[1]->str);
  return status;
}

/* ---- Processes of ours ---- */

/* The parent of PID from /proc, or -1 when PID is gone. */
static pid_t
parent_of(pid_t pid)
{
  g_autofree char *path = g_strdup_printf("/proc/%d/stat", (int)pid);
  g_autofree char *text = NULL;
  char *paren;

  if (!g_file_get_contents(path, &text, NULL, NULL))
    return -1;

  /* "pid (comm) S ppid ...": the name may hold spaces and ')'. */
  paren = strrchr(text, ')');
  if (paren == NULL || paren[1] != ' ' || paren[2] == '\0')
    return -1;
  return (pid_t)g_ascii_strtoll(paren + 4, NULL, 10);
}

/* The pids whose parent is this process, zombies included. */
static GArray *
list_children(void)
{
  GArray *pids = g_array_new(FALSE, FALSE, sizeof(pid_t));
  g_autoptr(GDir) dir = g_dir_open("/proc", 0, NULL);
  const char *name;

  while (dir != NULL && (name = g_dir_read_name(dir)) != NULL) {
    pid_t pid = (pid_t)g_ascii_strtoll(name, NULL, 10);

    if (pid > 0 && parent_of(pid) == getpid())
      g_array_append_val(pids, pid);
  }
  return pids;
}

static bool
array_has(const GArray *a, pid_t pid)
{
  for (guint i = 0; i < a->len; i++)
    if (g_array_index(a, pid_t, i) == pid)
      return true;
  return false;
}

/* True when the last argument of PID's command line is LAST. */
static bool
last_arg_is(pid_t pid, const char *last)
{
  g_autofree char *path = g_strdup_printf("/proc/%d/cmdline", (int)pid);
  g_autofree char *text = NULL;
  gsize len;
  const char *p;

  if (!g_file_get_contents(path, &text, &len, NULL) || len < 2)
    return false;

  /* Arguments end with NUL each; find the start of the last one. */
  p = text + len - 1;
  while (p > text && p[-1] != '\0')
    p--;
  return strcmp(p, last) == 0;
}

/* ---- Mounts ---- */

static int
register_fuse(const char *dir, const char *parent)
{
  int slot = -1;

  g_mutex_lock(&table_lock);
  for (int i = 0; i < MAX_MOUNTS; i++)
    if (!fuse_slots[i].used) {
      g_strlcpy(fuse_slots[i].dir, dir, PATH_MAX);
      g_strlcpy(fuse_slots[i].parent, parent, PATH_MAX);
      fuse_slots[i].pid = 0;
      fuse_slots[i].used = 1;
      slot = i;
      break;
    }
  g_mutex_unlock(&table_lock);

  if (slot < 0)
    g_error("fm_new: more than %d mounts at once", MAX_MOUNTS);
  return slot;
}

struct fm_mount *
fm_new(uid_t owner)
{
  g_autoptr(GError) error = NULL;
  struct fm_mount *m = g_new0(struct fm_mount, 1);

  m->parent = g_dir_make_tmp("nbdfs-mnt-XXXXXX", &error);
  if (m->parent == NULL)
    g_error("fm_new: temporary directory: %s", error->message);
  m->dir = g_build_filename(m->parent, "mnt", NULL);
  if (g_mkdir(m->dir, 0755) < 0)
    g_error("fm_new: mkdir %s: %s", m->dir, g_strerror(errno));

  /* fusermount3 lets a user mount only on a directory they may write,
   * and the user must be able to reach it.
   */
  if (owner != (uid_t)-1) {
    if (chmod(m->parent, 0755) < 0 || chown(m->dir, owner, -1) < 0)
      g_error("fm_new: hand %s to uid %d: %s", m->dir, (int)owner,
              g_strerror(errno));
  }
  m->slot = register_fuse(m->dir, m->parent);
  return m;
}

/* Waits up to TIMEOUT_MS for child PID to end; returns its wait status
 * or -1 when it is still running.
 */
static int
wait_child(pid_t pid, int timeout_ms)
{
  for (int waited = 0;; waited += 10) {
    int ws;
    pid_t r = waitpid(pid, &ws, WNOHANG);

    if (r == pid)
      return ws;
    if (r < 0) {
      g_test_message("wait: pid %d is not our child", (int)pid);
      return W_EXITCODE(255, 0);
    }
    if (waited >= timeout_ms)
      return -1;
    sleep_ms(10);
  }
}

int
fm_start(struct fm_mount *m, const char *const *prefix,
         const char *const *args)
{
  const char *nbdfs = g_getenv("NBDFS");
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  g_autoptr(GArray) before = NULL;
  g_autoptr(GArray) after = NULL;

  g_assert_nonnull(nbdfs);
  for (size_t i = 0; prefix != NULL && prefix[i] != NULL; i++)
    g_ptr_array_add(argv, (char *)prefix[i]);
  g_ptr_array_add(argv, (char *)nbdfs);
  for (size_t i = 0; args != NULL && args[i] != NULL; i++)
    g_ptr_array_add(argv, (char *)args[i]);
  g_ptr_array_add(argv, m->dir);
  g_ptr_array_add(argv, NULL);

  g_clear_pointer(&m->out, g_free);
  g_clear_pointer(&m->err, g_free);
  before = list_children();
  m->status = fm_run((const char *const *)argv->pdata, START_TIMEOUT_S,
                     &m->out, &m->err);
  after = list_children();

  /* Whatever the nbdfs command forked is now our child.  The daemon of
   * a good mount names the mount point last; after a failure anything
   * left is reaped, so that no half-started daemon outlives the test.
   */
  for (guint i = 0; i < after->len; i++) {
    pid_t pid = g_array_index(after, pid_t, i);

    if (array_has(before, pid))
      continue;
    if (m->status == 0 && m->daemon == 0 && last_arg_is(pid, m->dir)) {
      m->daemon = pid;
      fuse_slots[m->slot].pid = pid;
      continue;
    }
    if (wait_child(pid, STOP_GRACE_MS) == -1) {
      g_test_message("fm_start: pid %d outlived the failed nbdfs "
                     "command; killing it", (int)pid);
      stop_child(pid);
    }
  }
  if (m->status == 0 && m->daemon == 0)
    g_test_message("fm_start: nbdfs exited 0 but left no daemon");
  return m->status;
}

struct fm_mount *
fm_mounted(const char *const *args)
{
  struct fm_mount *m = fm_new((uid_t)-1);
  g_autofree char *type = NULL;

  if (fm_start(m, NULL, args) != 0)
    g_error("nbdfs failed (status %d): %s", m->status, m->err);
  type = fm_mount_type(m->dir);
  g_assert_cmpstr(type, ==, "fuse.nbdfs");
  g_assert_cmpint(m->daemon, >, 0);
  return m;
}

char *
fm_path(const struct fm_mount *m, const char *name)
{
  return g_build_filename(m->dir, name, NULL);
}

int
fm_wait_daemon(struct fm_mount *m, int timeout_s)
{
  int ws;

  if (m->daemon <= 0)
    return -1;
  ws = wait_child(m->daemon, timeout_s * 1000);
  if (ws == -1)
    return -2;

  m->daemon = 0;
  fuse_slots[m->slot].pid = 0;
  if (WIFSIGNALED(ws)) {
    g_test_message("nbdfs daemon was killed by signal %d", WTERMSIG(ws));
    return -1;
  }
  return WEXITSTATUS(ws);
}

int
fm_unmount(struct fm_mount *m, const char *const *prefix)
{
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  g_autofree char *type = NULL;
  bool failed = false;
  int rc;

  for (size_t i = 0; prefix != NULL && prefix[i] != NULL; i++)
    g_ptr_array_add(argv, (char *)prefix[i]);
  g_ptr_array_add(argv, "fusermount3");
  g_ptr_array_add(argv, "-u");
  g_ptr_array_add(argv, m->dir);
  g_ptr_array_add(argv, NULL);

  if (fm_run((const char *const *)argv->pdata, UMOUNT_TIMEOUT_S, NULL,
             NULL) != 0) {
    g_test_message("fm_unmount: fusermount3 -u %s failed; detaching",
                   m->dir);
    detach_fuse(m->dir);
    failed = true;
  }
  type = fm_mount_type(m->dir);
  if (type != NULL) {
    g_test_message("fm_unmount: %s is still mounted (%s)", m->dir, type);
    failed = true;
  }

  rc = fm_wait_daemon(m, DAEMON_EXIT_S);
  if (rc == -2) {
    g_test_message("fm_unmount: the daemon did not end within %d s; "
                   "killing it", DAEMON_EXIT_S);
    stop_child(m->daemon);
    m->daemon = 0;
    fuse_slots[m->slot].pid = 0;
    return -1;
  }
  return failed ? -1 : rc;
}

void
fm_free(struct fm_mount *m)
{
  g_autofree char *type = NULL;

  if (m == NULL)
    return;

  type = fm_mount_type(m->dir);
  if (type != NULL)
    detach_fuse(m->dir);
  if (m->daemon > 0)
    stop_child(m->daemon);
  g_rmdir(m->dir);
  g_rmdir(m->parent);

  g_mutex_lock(&table_lock);
  fuse_slots[m->slot].pid = 0;
  fuse_slots[m->slot].used = 0;
  g_mutex_unlock(&table_lock);

  g_free(m->parent);
  g_free(m->dir);
  g_free(m->out);
  g_free(m->err);
  g_free(m);
}

char *
fm_mount_type(const char *dir)
{
  g_autofree char *text = NULL;
  g_auto(GStrv) lines = NULL;
  char *type = NULL;

  if (!g_file_get_contents("/proc/self/mounts", &text, NULL, NULL))
    return NULL;

  /* "source target type options 0 0"; our paths hold no spaces, which
   * the file would escape.  The last match is the one on top.
   */
  lines = g_strsplit(text, "\n", -1);
  for (size_t i = 0; lines[i] != NULL; i++) {
    g_auto(GStrv) f = g_strsplit(lines[i], " ", 4);

    if (g_strv_length(f) >= 3 && strcmp(f[1], dir) == 0) {
      g_free(type);
      type = g_strdup(f[2]);
    }
  }
  return type;
}

int
fm_track(enum fm_kind kind, const char *path)
{
  int slot = -1;

  g_mutex_lock(&table_lock);
  for (int i = 0; i < MAX_TRACKED; i++)
    if (!tracked[i].used) {
      tracked[i].kind = kind;
      g_strlcpy(tracked[i].path, path, PATH_MAX);
      tracked[i].used = 1;
      slot = i;
      break;
    }
  g_mutex_unlock(&table_lock);

  if (slot < 0)
    g_error("fm_track: more than %d tracked paths", MAX_TRACKED);
  return slot;
}

void
fm_untrack(int handle)
{
  g_mutex_lock(&table_lock);
  tracked[handle].used = 0;
  g_mutex_unlock(&table_lock);
}

void
fm_open_fuse_device(void)
{
  struct stat st;

  if (stat("/dev/fuse", &st) < 0)
    g_error("fm_open_fuse_device: /dev/fuse: %s", g_strerror(errno));
  if (fuse_dev_mode < 0)
    fuse_dev_mode = st.st_mode & 07777;
  if (chmod("/dev/fuse", 0666) < 0)
    g_error("fm_open_fuse_device: chmod /dev/fuse: %s", g_strerror(errno));
}

void
fm_restore_fuse_device(void)
{
  if (fuse_dev_mode < 0)
    return;
  if (chmod("/dev/fuse", (mode_t)fuse_dev_mode) < 0)
    g_test_message("chmod /dev/fuse back: %s", g_strerror(errno));
  fuse_dev_mode = -1;
}

/* ---- Checks shared by the FUSE tests ---- */

struct tl_server *
fm_start_nbdkit(const char *const *args)
{
  g_autoptr(GError) error = NULL;
  struct tl_server *s = tl_nbdkit_start(args, &error);

  g_assert_no_error(error);
  return s;
}

void
fm_assert_bytes(const void *got, const void *want, size_t len,
                uint64_t base, const char *what)
{
  const guint8 *g = got, *w = want;

  if (memcmp(g, w, len) == 0)
    return;
  for (size_t i = 0; i < len; i++)
    if (g[i] != w[i])
      g_error("%s: first difference at offset %" G_GUINT64_FORMAT
              ": got 0x%02x, want 0x%02x", what, base + i, g[i], w[i]);
}

guint8 *
fm_read_range(const char *path, uint64_t off, size_t len)
{
  guint8 *buf = g_malloc(MAX(len, 1));
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  size_t done = 0;

  if (fd < 0)
    g_error("open %s: %s", path, g_strerror(errno));
  while (done < len) {
    ssize_t n = pread(fd, buf + done, len - done, off + done);

    if (n <= 0)
      g_error("read %s: %zu bytes at %" G_GUINT64_FORMAT ": %s", path,
              len - done, off + done,
              n < 0 ? g_strerror(errno) : "unexpected end of file");
    done += n;
  }
  close(fd);
  return buf;
}

void
fm_write_range(int fd, const void *buf, size_t len, uint64_t off)
{
  ssize_t n = pwrite(fd, buf, len, off);

  if (n < 0)
    g_error("pwrite %zu at %" G_GUINT64_FORMAT ": %s", len, off,
            g_strerror(errno));
  g_assert_cmpint(n, ==, (ssize_t)len);
}

char *
fm_make_sparse_file(const char *name, uint64_t size)
{
  char *path = g_build_filename(tl_tmpdir(), name, NULL);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(ftruncate(fd, size), ==, 0);
  close(fd);
  return path;
}

char *
fm_get_xattr(const char *path, const char *name)
{
  ssize_t len = getxattr(path, name, NULL, 0);
  char *buf;
  ssize_t n;

  if (len < 0)
    g_error("getxattr %s %s: %s", path, name, g_strerror(errno));
  buf = g_malloc(len + 1);
  n = getxattr(path, name, buf, len);
  if (n < 0)
    g_error("getxattr %s %s: %s", path, name, g_strerror(errno));
  buf[n] = '\0';
  return buf;
}

/* ---- A daemon in the foreground ---- */

/* Child setup for fm_start_foreground(): what child_setup() does, and
 * standard error into the log file named by LOG.
 */
static void
foreground_setup(gpointer log)
{
  int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

  child_setup(NULL);
  if (fd >= 0)
    dup2(fd, STDERR_FILENO);
}

int
fm_start_foreground(struct fm_mount *m, const char *const *args,
                    const char *log, long *peak_kib)
{
  const char *nbdfs = g_getenv("NBDFS");
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  g_autoptr(GError) error = NULL;
  g_autofree char *cmd = NULL;
  gint64 deadline = g_get_monotonic_time() +
                    START_TIMEOUT_S * G_USEC_PER_SEC;
  pid_t pid;

  g_assert_nonnull(nbdfs);
  g_ptr_array_add(argv, (char *)nbdfs);
  g_ptr_array_add(argv, "-f");
  for (size_t i = 0; args != NULL && args[i] != NULL; i++)
    g_ptr_array_add(argv, (char *)args[i]);
  g_ptr_array_add(argv, m->dir);
  g_ptr_array_add(argv, NULL);
  cmd = g_strjoinv(" ", (char **)argv->pdata);
  g_test_message("run: %s 2>>%s", cmd, log);

  if (!g_spawn_async(NULL, (char **)argv->pdata, NULL,
                     G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_STDOUT_TO_DEV_NULL,
                     foreground_setup, (gpointer)log, &pid, &error))
    g_error("fm_start_foreground: %s: %s", nbdfs, error->message);

  /* Mounted, or ended: whichever comes first.  A foreground nbdfs is
   * our own child, so the slot knows it at once and any exit takes it
   * down with the mount.
   */
  fuse_slots[m->slot].pid = pid;
  for (;;) {
    g_autofree char *type = fm_mount_type(m->dir);
    struct rusage ru;
    int ws;

    if (g_strcmp0(type, "fuse.nbdfs") == 0) {
      m->daemon = pid;
      m->status = 0;
      return 0;
    }
    if (wait4(pid, &ws, WNOHANG, &ru) == pid) {
      fuse_slots[m->slot].pid = 0;
      m->status = WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
      if (peak_kib != NULL)
        *peak_kib = ru.ru_maxrss;
      return m->status;
    }
    if (g_get_monotonic_time() > deadline) {
      g_test_message("fm_start_foreground: no mount after %d s; "
                     "killing nbdfs", START_TIMEOUT_S);
      stop_child(pid);
      fuse_slots[m->slot].pid = 0;
      m->status = -1;
      return -1;
    }
    sleep_ms(20);
  }
}

/* The value in KiB of FIELD ("VmHWM") in /proc/PID/status, or -1. */
static long
status_kib(pid_t pid, const char *field)
{
  g_autofree char *path = g_strdup_printf("/proc/%d/status", (int)pid);
  g_autofree char *key = g_strdup_printf("\n%s:", field);
  g_autofree char *text = NULL;
  const char *line;

  if (!g_file_get_contents(path, &text, NULL, NULL))
    return -1;
  line = strstr(text, key);
  return line != NULL ? strtol(line + strlen(key), NULL, 10) : -1;
}

long
fm_peak_rss_kib(pid_t pid)
{
  return status_kib(pid, "VmHWM");
}

long
fm_rss_kib(pid_t pid)
{
  return status_kib(pid, "VmRSS");
}
