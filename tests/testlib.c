/* nbdfs test helpers: real NBD servers that are always stopped.
 *
 * The table of live servers is a plain array of pids so that the signal
 * handler can walk it without locks or allocation; everything the handler
 * calls is async-signal-safe (kill, waitpid, open, read, getdents64,
 * unlinkat, nanosleep).
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "testlib.h"

#define MAX_SERVERS      64
#define START_TIMEOUT_US (10 * G_USEC_PER_SEC)
#define STOP_TIMEOUT_US  (5 * G_USEC_PER_SEC)
#define TCP_ATTEMPTS     5
#define POLL_NS          (10 * 1000 * 1000)

G_DEFINE_QUARK(tl-error-quark, tl_error)
#define TL_ERROR (tl_error_quark())

static char *tmpdir;
static pid_t owner_pid;
static GMutex table_lock;
static volatile sig_atomic_t live_pid[MAX_SERVERS];
static volatile sig_atomic_t live_is_child[MAX_SERVERS];
static volatile sig_atomic_t cleaning_up;
static int name_counter;

static const int cleanup_signals[] = {
  SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGABRT, SIGPIPE,
};

/* ---- Async-signal-safe helpers, used at exit and from the handler ---- */

static void
sleep_a_little(void)
{
  struct timespec ts = { 0, POLL_NS };

  nanosleep(&ts, NULL);
}

/* Writes "/proc/PID/stat" into BUF without snprintf, which is not
 * async-signal-safe.
 */
static void
proc_stat_path(char *buf, pid_t pid)
{
  char digits[16];
  int n = 0;

  do {
    digits[n++] = '0' + pid % 10;
    pid /= 10;
  } while (pid > 0);

  strcpy(buf, "/proc/");
  buf += strlen(buf);
  while (n > 0)
    *buf++ = digits[--n];
  strcpy(buf, "/stat");
}

bool
tl_process_running(pid_t pid)
{
  char path[48], buf[512], *paren;
  ssize_t len;
  int fd;

  if (pid <= 0)
    return false;

  proc_stat_path(path, pid);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return false;
  len = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (len <= 0)
    return false;
  buf[len] = '\0';

  /* The command name in parentheses may itself hold spaces or ')', so
   * the state letter is found after the last ')'.
   */
  paren = strrchr(buf, ')');
  if (paren == NULL || paren[1] != ' ')
    return false;
  return paren[2] != 'Z' && paren[2] != 'X';
}

/* True once PID has ended; a child of ours is reaped on the way. */
static bool
process_gone(pid_t pid, bool is_child)
{
  if (is_child) {
    pid_t r = waitpid(pid, NULL, WNOHANG);

    return r == pid || (r < 0 && errno == ECHILD);
  }
  return !tl_process_running(pid);
}

/* Removes everything below the open directory DIRFD, staying on device
 * DEV so that a FUSE mount left inside the temporary directory is never
 * walked into.  Unlinking while reading a directory may hide entries
 * from getdents64, so passes repeat until one removes nothing.
 */
static void
empty_dir(int dirfd, dev_t dev, int depth)
{
  char buf[4096] __attribute__((aligned(8)));
  bool removed = true;

  while (removed) {
    ssize_t n;

    removed = false;
    if (lseek(dirfd, 0, SEEK_SET) < 0)
      return;
    while ((n = getdents64(dirfd, buf, sizeof buf)) > 0) {
      for (ssize_t off = 0; off < n;) {
        struct dirent64 *d = (struct dirent64 *)(buf + off);
        const char *name = d->d_name;

        off += d->d_reclen;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
          continue;
        if (unlinkat(dirfd, name, 0) == 0) {
          removed = true;
          continue;
        }
        if (errno != EISDIR || depth >= 16)
          continue;

        int sub = openat(dirfd, name,
                         O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        struct stat st;

        if (sub < 0)
          continue;
        if (fstat(sub, &st) == 0 && st.st_dev == dev)
          empty_dir(sub, dev, depth + 1);
        close(sub);
        if (unlinkat(dirfd, name, AT_REMOVEDIR) == 0)
          removed = true;
      }
    }
  }
}

static void
remove_tmpdir(void)
{
  struct stat st;
  int fd;

  if (tmpdir == NULL)
    return;

  fd = open(tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return;
  if (fstat(fd, &st) == 0)
    empty_dir(fd, st.st_dev, 0);
  close(fd);
  rmdir(tmpdir);
}

/* SIGTERM to every live server, a grace period for them to finish
 * cleanly, then SIGKILL to the rest.
 */
static void
kill_all_servers(void)
{
  int waited = 0;
  bool any;

  for (int i = 0; i < MAX_SERVERS; i++)
    if (live_pid[i] > 0)
      kill(live_pid[i], SIGTERM);

  do {
    any = false;
    for (int i = 0; i < MAX_SERVERS; i++) {
      if (live_pid[i] <= 0)
        continue;
      if (process_gone(live_pid[i], live_is_child[i]))
        live_pid[i] = 0;
      else
        any = true;
    }
    if (any)
      sleep_a_little();
  } while (any && ++waited < 300);

  for (int i = 0; i < MAX_SERVERS; i++) {
    if (live_pid[i] <= 0)
      continue;
    kill(live_pid[i], SIGKILL);
    if (live_is_child[i])
      waitpid(live_pid[i], NULL, 0);
    live_pid[i] = 0;
  }
}

static void
cleanup(void)
{
  /* A child forked by a test inherits this handler and must not stop
   * its parent's servers; and the handler may interrupt the exit path.
   */
  if (getpid() != owner_pid || cleaning_up)
    return;
  cleaning_up = 1;

  kill_all_servers();
  remove_tmpdir();
}

static void
on_fatal_signal(int sig)
{
  int saved_errno = errno;

  cleanup();

  /* SA_RESETHAND restored the default action, and the signal stays
   * blocked until we return, so this ends the process the way the
   * signal would have, exit status and core dump included.
   */
  raise(sig);
  errno = saved_errno;
}

/* ---- Setup ---- */

void
tl_init(int *argc, char ***argv)
{
  g_autoptr(GError) error = NULL;
  struct sigaction sa = { 0 };

  g_test_init(argc, argv, NULL);

  owner_pid = getpid();
  tmpdir = g_dir_make_tmp("nbdfs-test-XXXXXX", &error);
  if (tmpdir == NULL)
    g_error("tl_init: temporary directory: %s", error->message);

  if (atexit(cleanup) != 0)
    g_error("tl_init: atexit: cannot register the cleanup");

  sa.sa_handler = on_fatal_signal;
  sa.sa_flags = SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  for (size_t i = 0; i < G_N_ELEMENTS(cleanup_signals); i++)
    sigaction(cleanup_signals[i], &sa, NULL);
}

const char *
tl_tmpdir(void)
{
  g_assert(tmpdir != NULL);
  return tmpdir;
}

bool
tl_require(const char *program)
{
  g_autofree char *path = g_find_program_in_path(program);

  if (path != NULL)
    return true;

  if (g_strcmp0(g_getenv("CI"), "true") == 0) {
    g_test_message("prerequisite missing: %s", program);
    g_test_fail();
  } else {
    g_autofree char *msg = g_strdup_printf("prerequisite missing: %s",
                                           program);

    g_test_skip(msg);
  }
  return false;
}

/* ---- Server bookkeeping ---- */

static char *
unique_path(const char *prefix, const char *suffix)
{
  int n = g_atomic_int_add(&name_counter, 1);

  return g_strdup_printf("%s/%s-%d%s", tl_tmpdir(), prefix, n, suffix);
}

static struct tl_server *
server_new(const char *program)
{
  struct tl_server *s = g_new0(struct tl_server, 1);

  s->program = g_strdup(program);
  s->slot = -1;
  return s;
}

static void
server_free(struct tl_server *s)
{
  g_free(s->program);
  g_free(s->socket_path);
  g_free(s->host);
  g_free(s->pidfile);
  g_free(s->config);
  g_free(s);
}

/* Enters S in the table that the exit handlers walk. */
static bool
server_register(struct tl_server *s, GError **error)
{
  g_mutex_lock(&table_lock);
  for (int i = 0; i < MAX_SERVERS; i++) {
    if (live_pid[i] == 0) {
      live_is_child[i] = s->is_child;
      live_pid[i] = s->pid;
      s->slot = i;
      break;
    }
  }
  g_mutex_unlock(&table_lock);

  if (s->slot < 0) {
    g_set_error(error, TL_ERROR, EMFILE,
                "start: %s: more than %d servers at once", s->program,
                MAX_SERVERS);
    return false;
  }
  return true;
}

static void
server_unregister(struct tl_server *s)
{
  if (s->slot < 0)
    return;

  g_mutex_lock(&table_lock);
  live_pid[s->slot] = 0;
  g_mutex_unlock(&table_lock);
  s->slot = -1;
}

/* Ends S's process: SIGTERM, a grace period, then SIGKILL. */
static void
server_kill(struct tl_server *s)
{
  gint64 deadline = g_get_monotonic_time() + STOP_TIMEOUT_US;

  if (s->pid <= 0)
    return;

  kill(s->pid, SIGTERM);
  while (!process_gone(s->pid, s->is_child)) {
    if (g_get_monotonic_time() > deadline) {
      g_test_message("stop: %s: pid %d ignored SIGTERM, sending SIGKILL",
                     s->program, (int)s->pid);
      kill(s->pid, SIGKILL);
      if (s->is_child)
        waitpid(s->pid, NULL, 0);
      else
        while (tl_process_running(s->pid))
          sleep_a_little();
      break;
    }
    sleep_a_little();
  }
  s->pid = 0;
}

void
tl_server_stop(struct tl_server *server)
{
  if (server == NULL)
    return;

  server_kill(server);
  server_unregister(server);
  if (server->socket_path != NULL)
    g_unlink(server->socket_path);
  server_free(server);
}

/* ---- Spawning and waiting ---- */

/* Runs in the child between fork and exec. */
static void
child_setup(gpointer unused)
{
  /* A SIGKILLed test cannot clean up; the kernel then stops the server
   * for us.
   */
  prctl(PR_SET_PDEATHSIG, SIGTERM);

  /* The test's stdout carries TAP, which a server's chatter would
   * corrupt; its messages belong in the test log with our stderr.
   */
  dup2(STDERR_FILENO, STDOUT_FILENO);
}

static bool
spawn(const char *const *argv, pid_t *pid, GError **error)
{
  g_autoptr(GError) err = NULL;
  g_autofree char *cmd = g_strjoinv(" ", (char **)argv);

  g_test_message("start: %s", cmd);
  if (!g_spawn_async(NULL, (char **)argv, NULL,
                     G_SPAWN_SEARCH_PATH | G_SPAWN_DO_NOT_REAP_CHILD,
                     child_setup, NULL, pid, &err)) {
    g_set_error(error, TL_ERROR, ENOEXEC, "start: %s: %s", argv[0],
                err->message);
    return false;
  }
  return true;
}

static void
describe_status(GString *msg, int status)
{
  if (WIFEXITED(status))
    g_string_append_printf(msg, "exited with status %d",
                           WEXITSTATUS(status));
  else if (WIFSIGNALED(status))
    g_string_append_printf(msg, "was killed by signal %d",
                           WTERMSIG(status));
  else
    g_string_append_printf(msg, "ended with wait status %#x", status);
}

/* Reads the pid from PIDFILE once it holds a whole line ("1234\n"), or
 * returns 0.
 */
static pid_t
read_pidfile(const char *pidfile)
{
  g_autofree char *text = NULL;
  gsize len;
  gint64 pid;

  if (!g_file_get_contents(pidfile, &text, &len, NULL))
    return 0;
  if (len == 0 || text[len - 1] != '\n')
    return 0;
  pid = g_ascii_strtoll(text, NULL, 10);
  return pid > 0 && pid <= G_MAXINT ? (pid_t)pid : 0;
}

/* Waits until CHILD has written a complete PIDFILE.  All three servers
 * write it only after their listening socket exists, so it is the
 * readiness signal and no probing connection is needed (a probe would
 * stop nbd-server -d, and qemu-nbd logs it as a failed client).
 *
 * When LAUNCHER is true, CHILD is a launcher that daemonizes: its exit
 * with status 0 is expected and the pid in the file is the daemon's.
 */
static pid_t
wait_for_pidfile(const char *program, pid_t child, bool launcher,
                 const char *pidfile, GError **error)
{
  gint64 deadline = g_get_monotonic_time() + START_TIMEOUT_US;
  bool child_done = false;

  for (;;) {
    pid_t pid = read_pidfile(pidfile);
    int status;

    if (pid > 0 && (child_done || !launcher))
      return pid;

    if (!child_done && waitpid(child, &status, WNOHANG) == child) {
      child_done = true;
      if (!launcher || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        g_autoptr(GString) msg = g_string_new(NULL);

        g_string_append_printf(msg, "start: %s: ", program);
        describe_status(msg, status);
        g_string_append(msg, " before it was ready (see its messages "
                             "above)");
        g_set_error_literal(error, TL_ERROR, ECHILD, msg->str);
        return 0;
      }
    }

    if (g_get_monotonic_time() > deadline) {
      g_set_error(error, TL_ERROR, ETIMEDOUT,
                  "start: %s: no pid file %s after %d s", program, pidfile,
                  (int)(START_TIMEOUT_US / G_USEC_PER_SEC));
      if (!child_done) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
      }
      return 0;
    }
    sleep_a_little();
  }
}

/* A TCP port of 127.0.0.1 that was free a moment ago.  Another process
 * may take it before the server binds it; callers retry on failure.
 */
static int
pick_free_port(GError **error)
{
  struct sockaddr_in sin = { .sin_family = AF_INET };
  socklen_t len = sizeof sin;
  int fd, port = -1;

  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && bind(fd, (struct sockaddr *)&sin, sizeof sin) == 0 &&
      getsockname(fd, (struct sockaddr *)&sin, &len) == 0)
    port = ntohs(sin.sin_port);
  else
    g_set_error(error, TL_ERROR, errno, "bind: 127.0.0.1:0: %s",
                g_strerror(errno));
  if (fd >= 0)
    close(fd);
  return port;
}

static bool
check_socket_path(const char *program, const char *path, GError **error)
{
  struct sockaddr_un addr;

  if (strlen(path) < sizeof addr.sun_path)
    return true;
  g_set_error(error, TL_ERROR, ENAMETOOLONG,
              "start: %s: socket path %s is too long; set TMPDIR to a "
              "shorter directory", program, path);
  return false;
}

/* Starts a server that stays our child and writes SERVER->pidfile once
 * it listens.  ARGV is the complete command line.
 */
static bool
start_child_server(struct tl_server *server, const char *const *argv,
                   GError **error)
{
  pid_t child;

  if (!spawn(argv, &child, error))
    return false;
  server->pid = child;
  server->is_child = true;
  if (!server_register(server, error)) {
    server_kill(server);
    return false;
  }

  if (wait_for_pidfile(server->program, child, false, server->pidfile,
                       error) == 0) {
    /* wait_for_pidfile() reaped or killed the child already. */
    server->pid = 0;
    server_unregister(server);
    return false;
  }
  return true;
}

/* ---- nbdkit ---- */

static struct tl_server *
nbdkit_start(const char *const *args, bool tcp, GError **error)
{
  g_autoptr(GError) last = NULL;

  for (int attempt = 0; attempt < (tcp ? TCP_ATTEMPTS : 1); attempt++) {
    struct tl_server *s = server_new("nbdkit");
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);

    s->pidfile = unique_path("nbdkit", ".pid");
    g_ptr_array_add(argv, g_strdup("nbdkit"));
    g_ptr_array_add(argv, g_strdup("-f"));
    g_ptr_array_add(argv, g_strdup("--exit-with-parent"));
    g_ptr_array_add(argv, g_strdup_printf("--pidfile=%s", s->pidfile));

    if (tcp) {
      s->port = pick_free_port(error);
      if (s->port < 0) {
        server_free(s);
        return NULL;
      }
      s->host = g_strdup("127.0.0.1");
      g_ptr_array_add(argv, g_strdup("--ipaddr=127.0.0.1"));
      g_ptr_array_add(argv, g_strdup_printf("--port=%d", s->port));
    } else {
      s->socket_path = unique_path("nbdkit", ".sock");
      if (!check_socket_path("nbdkit", s->socket_path, error)) {
        server_free(s);
        return NULL;
      }
      g_ptr_array_add(argv, g_strdup_printf("--unix=%s", s->socket_path));
    }

    for (size_t i = 0; args != NULL && args[i] != NULL; i++)
      g_ptr_array_add(argv, g_strdup(args[i]));
    g_ptr_array_add(argv, NULL);

    g_clear_error(&last);
    if (start_child_server(s, (const char *const *)argv->pdata, &last))
      return s;
    server_free(s);
  }

  g_propagate_error(error, g_steal_pointer(&last));
  return NULL;
}

struct tl_server *
tl_nbdkit_start(const char *const *args, GError **error)
{
  return nbdkit_start(args, false, error);
}

struct tl_server *
tl_nbdkit_start_tcp(const char *const *args, GError **error)
{
  return nbdkit_start(args, true, error);
}

/* ---- qemu-nbd ---- */

struct tl_server *
tl_qemu_nbd_start(const char *file, const char *format,
                  const char *export_name, const char *const *extra_args,
                  GError **error)
{
  struct tl_server *s = server_new("qemu-nbd");
  g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);

  s->pidfile = unique_path("qemu-nbd", ".pid");
  s->socket_path = unique_path("qemu-nbd", ".sock");
  if (!check_socket_path("qemu-nbd", s->socket_path, error)) {
    server_free(s);
    return NULL;
  }

  /* --persistent keeps it serving after the last client leaves, and
   * --shared lets a test open several connections at once (one is the
   * default).
   */
  g_ptr_array_add(argv, g_strdup("qemu-nbd"));
  g_ptr_array_add(argv, g_strdup_printf("--socket=%s", s->socket_path));
  g_ptr_array_add(argv, g_strdup_printf("--export-name=%s", export_name));
  g_ptr_array_add(argv, g_strdup_printf("--format=%s", format));
  g_ptr_array_add(argv, g_strdup("--persistent"));
  g_ptr_array_add(argv, g_strdup("--shared=16"));
  g_ptr_array_add(argv, g_strdup_printf("--pid-file=%s", s->pidfile));
  for (size_t i = 0; extra_args != NULL && extra_args[i] != NULL; i++)
    g_ptr_array_add(argv, g_strdup(extra_args[i]));
  g_ptr_array_add(argv, g_strdup(file));
  g_ptr_array_add(argv, NULL);

  if (!start_child_server(s, (const char *const *)argv->pdata, error)) {
    server_free(s);
    return NULL;
  }
  return s;
}

/* ---- nbd-server ---- */

static char *
nbd_server_config(const struct tl_export *exports, const char *generic,
                  int port)
{
  GString *conf = g_string_new(NULL);

  /* allowlist lets clients use NBD_OPT_LIST. */
  g_string_append_printf(conf,
                         "[generic]\n"
                         "listenaddr = 127.0.0.1\n"
                         "port = %d\n"
                         "allowlist = true\n%s",
                         port, generic ? generic : "");

  /* The section name is the export name a client asks for; exportname
   * is, confusingly, the backing file.
   */
  for (size_t i = 0; exports[i].name != NULL; i++)
    g_string_append_printf(conf,
                           "[%s]\n"
                           "exportname = %s\n"
                           "readonly = %s\n%s",
                           exports[i].name, exports[i].path,
                           exports[i].readonly ? "true" : "false",
                           exports[i].extra ? exports[i].extra : "");
  return g_string_free(conf, false);
}

/* The inode of the socket listening on TCP PORT, from /proc/net/tcp, or
 * 0.
 */
static guint64
listener_inode(int port)
{
  g_autofree char *text = NULL;
  g_auto(GStrv) lines = NULL;

  if (!g_file_get_contents("/proc/net/tcp", &text, NULL, NULL))
    return 0;

  /* Each line: "sl local_address rem_address st ... uid timeout inode",
   * addresses as hex "ADDR:PORT", state 0A for LISTEN.
   */
  lines = g_strsplit(text, "\n", -1);
  for (size_t i = 1; lines[i] != NULL; i++) {
    g_auto(GStrv) f = g_strsplit_set(g_strstrip(lines[i]), " ", -1);
    const char *fields[10];
    size_t n = 0;
    const char *colon;

    for (size_t j = 0; f[j] != NULL && n < G_N_ELEMENTS(fields); j++)
      if (f[j][0] != '\0')
        fields[n++] = f[j];
    if (n < 10 || strcmp(fields[3], "0A") != 0)
      continue;
    colon = strchr(fields[1], ':');
    if (colon != NULL && g_ascii_strtoll(colon + 1, NULL, 16) == port)
      return g_ascii_strtoull(fields[9], NULL, 10);
  }
  return 0;
}

/* True when process PID holds the socket listening on PORT.  nbd-server
 * writes its pid file before it binds, and a port picked free may have
 * been taken meanwhile by another test's server, so "the port accepts"
 * alone would prove nothing.
 */
static bool
owns_listener(pid_t pid, int port)
{
  guint64 inode = listener_inode(port);
  g_autofree char *fddir = g_strdup_printf("/proc/%d/fd", (int)pid);
  g_autofree char *want = g_strdup_printf("socket:[%" G_GUINT64_FORMAT "]",
                                          inode);
  g_autoptr(GDir) dir = NULL;
  const char *name;

  if (inode == 0)
    return false;
  dir = g_dir_open(fddir, 0, NULL);
  if (dir == NULL)
    return false;
  while ((name = g_dir_read_name(dir)) != NULL) {
    g_autofree char *link = g_build_filename(fddir, name, NULL);
    g_autofree char *target = g_file_read_link(link, NULL);

    if (g_strcmp0(target, want) == 0)
      return true;
  }
  return false;
}

/* One attempt on one port: launch, find the daemon, wait until it
 * listens.
 */
static bool
nbd_server_try(struct tl_server *s, const struct tl_export *exports,
               const char *generic, GError **error)
{
  g_autoptr(GError) err = NULL;
  g_autofree char *conf = NULL;
  gint64 deadline;
  pid_t launcher, daemon_pid;
  const char *argv[] = {
    "nbd-server", "-C", s->config, "-p", s->pidfile, NULL,
  };

  s->port = pick_free_port(error);
  if (s->port < 0)
    return false;

  conf = nbd_server_config(exports, generic, s->port);
  if (!g_file_set_contents(s->config, conf, -1, &err)) {
    g_set_error(error, TL_ERROR, EIO, "write: %s: %s", s->config,
                err->message);
    return false;
  }
  g_unlink(s->pidfile);

  /* Without -d nbd-server forks a daemon that serves many sessions in
   * turn; with -d it would exit after the first session.
   */
  if (!spawn(argv, &launcher, error))
    return false;
  daemon_pid = wait_for_pidfile("nbd-server", launcher, true, s->pidfile,
                                error);
  if (daemon_pid == 0)
    return false;

  s->pid = daemon_pid;
  s->is_child = false;
  if (!server_register(s, error)) {
    server_kill(s);
    return false;
  }

  deadline = g_get_monotonic_time() + START_TIMEOUT_US;
  while (!owns_listener(daemon_pid, s->port)) {
    if (!tl_process_running(daemon_pid) ||
        g_get_monotonic_time() > deadline) {
      g_set_error(error, TL_ERROR, EADDRINUSE,
                  "start: nbd-server: daemon %d is not listening on "
                  "127.0.0.1:%d (when daemonized it logs only to syslog)",
                  (int)daemon_pid, s->port);
      server_kill(s);
      server_unregister(s);
      return false;
    }
    sleep_a_little();
  }
  return true;
}

struct tl_server *
tl_nbd_server_start(const struct tl_export *exports, GError **error)
{
  return tl_nbd_server_start_with(exports, NULL, error);
}

struct tl_server *
tl_nbd_server_start_with(const struct tl_export *exports,
                         const char *generic, GError **error)
{
  g_autoptr(GError) last = NULL;
  struct tl_server *s = server_new("nbd-server");

  s->host = g_strdup("127.0.0.1");
  s->config = unique_path("nbd-server", ".conf");
  s->pidfile = unique_path("nbd-server", ".pid");

  /* Only a daemon that died without listening is worth another port; a
   * launcher that failed or a timeout would fail again the same way.
   */
  for (int attempt = 0; attempt < TCP_ATTEMPTS; attempt++) {
    g_clear_error(&last);
    if (nbd_server_try(s, exports, generic, &last))
      return s;
    if (!g_error_matches(last, TL_ERROR, EADDRINUSE))
      break;
  }

  server_free(s);
  g_propagate_error(error, g_steal_pointer(&last));
  return NULL;
}

/* ---- Using a server ---- */

char *
tl_server_uri(const struct tl_server *server, const char *export_name)
{
  g_autofree char *name = g_uri_escape_string(
      export_name, G_URI_RESERVED_CHARS_ALLOWED_IN_PATH_ELEMENT, false);

  if (server->socket_path != NULL) {
    g_autofree char *path = g_uri_escape_string(server->socket_path, "/",
                                                false);

    return g_strdup_printf("nbd+unix:///%s?socket=%s", name, path);
  }
  return g_strdup_printf("nbd://%s:%d/%s", server->host, server->port,
                         name);
}

int
tl_server_connect(const struct tl_server *server, GError **error)
{
  g_autofree char *where = NULL;
  int fd, r;

  if (server->socket_path != NULL) {
    struct sockaddr_un addr = { .sun_family = AF_UNIX };

    where = g_strdup(server->socket_path);
    g_strlcpy(addr.sun_path, server->socket_path, sizeof addr.sun_path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    r = fd < 0 ? -1 : connect(fd, (struct sockaddr *)&addr, sizeof addr);
  } else {
    struct sockaddr_in sin = {
      .sin_family = AF_INET,
      .sin_port = htons(server->port),
    };

    where = g_strdup_printf("%s:%d", server->host, server->port);
    inet_pton(AF_INET, server->host, &sin.sin_addr);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    r = fd < 0 ? -1 : connect(fd, (struct sockaddr *)&sin, sizeof sin);
  }

  if (r < 0) {
    int e = errno;

    if (fd >= 0)
      close(fd);
    g_set_error(error, TL_ERROR, e, "connect: %s: %s", where,
                g_strerror(e));
    return -1;
  }
  return fd;
}

/* ---- Test data ---- */

/* splitmix64's finalizer: a good 64-bit mix, so that counter-based
 * output needs no state and any offset can be computed directly.
 */
static guint64
mix64(guint64 z)
{
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

void
tl_fill_random(void *buf, size_t len, unsigned seed, uint64_t offset)
{
  guint8 *p = buf;
  guint64 key = mix64(seed + UINT64_C(0x9e3779b97f4a7c15));

  for (size_t i = 0; i < len; i++) {
    uint64_t off = offset + i;
    guint64 word = mix64(key ^ (off / 8));

    p[i] = (guint8)(word >> (8 * (off % 8)));
  }
}

char *
tl_make_file(const char *name, size_t size, unsigned seed)
{
  char *path = g_build_filename(tl_tmpdir(), name, NULL);
  g_autofree guint8 *chunk = g_malloc(1 << 20);
  FILE *f = fopen(path, "wb");
  size_t done = 0;

  if (f == NULL)
    g_error("tl_make_file: %s: %s", path, g_strerror(errno));

  while (done < size) {
    size_t n = MIN(size - done, (size_t)1 << 20);

    tl_fill_random(chunk, n, seed, done);
    if (fwrite(chunk, 1, n, f) != n)
      g_error("tl_make_file: write: %s: %s", path, g_strerror(errno));
    done += n;
  }
  if (fclose(f) != 0)
    g_error("tl_make_file: close: %s: %s", path, g_strerror(errno));
  return path;
}
