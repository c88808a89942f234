/* nbdfs: the command line, the mount and the clean end.
 *
 *   nbdfs [OPTION]... URI... MOUNTPOINT
 *
 * Every export is connected before anything is mounted, and the command
 * returns only when the mount is ready; a failure before then leaves
 * nothing mounted.  Exit status: 0 mounted (or unmounted cleanly in the
 * foreground), 1 an export could not be reached or negotiated, 2 bad
 * usage (options, URI), 3 the mount itself failed.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <locale.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "nbdfs.h"

#define EXIT_CONNECT 1
#define EXIT_USAGE 2
#define EXIT_MOUNT 3
#define MAX_LIST_ENTRIES 10000

static gboolean opt_foreground;
static gboolean opt_verbose;
static gboolean opt_debug;
static gboolean opt_readonly;
static gboolean opt_all;
static gboolean opt_version;
static int opt_connections;
static int opt_reconnect_timeout = 60;
static int opt_request_timeout = 60;
static int opt_replay_limit = 64;
static char **opt_o;
static char *opt_name;
static char *opt_cache;
static char *opt_tls;
static char *opt_sched;
static bool sched_batch = true; /* --sched, once parsed */
static struct nbd_tls_settings tls_settings; /* the --tls-* options */

static GOptionEntry entries[] = {
  { "foreground", 'f', 0, G_OPTION_ARG_NONE, &opt_foreground,
    "Stay in the foreground", NULL },
  { "verbose", 'v', 0, G_OPTION_ARG_NONE, &opt_verbose,
    "Log connections, exports and unmount", NULL },
  { "debug", 'd', 0, G_OPTION_ARG_NONE, &opt_debug,
    "Also log every NBD command (implies -v)", NULL },
  { "readonly", 'r', 0, G_OPTION_ARG_NONE, &opt_readonly,
    "Refuse all writes", NULL },
  { "connections", 'C', 0, G_OPTION_ARG_INT, &opt_connections,
    "Connections per export (multi-conn: 4, else 1)", "N" },
  { "reconnect-timeout", 0, 0, G_OPTION_ARG_INT, &opt_reconnect_timeout,
    "Seconds I/O waits for a lost server (60)", "S" },
  { "request-timeout", 0, 0, G_OPTION_ARG_INT, &opt_request_timeout,
    "Redo a connection silent for S s (60; 0: off)", "S" },
  { "name", 'n', 0, G_OPTION_ARG_STRING, &opt_name,
    "File name of the export (one URI only)", "NAME" },
  { "all", 'a', 0, G_OPTION_ARG_NONE, &opt_all,
    "Show every export the server lists", NULL },
  { "cache", 0, 0, G_OPTION_ARG_STRING, &opt_cache,
    "Page cache: none (default), kernel or writeback", "MODE" },
  { "tls", 0, 0, G_OPTION_ARG_STRING, &opt_tls,
    "TLS policy: off, prefer or require", "POLICY" },
  { "option", 'o', 0, G_OPTION_ARG_STRING_ARRAY, &opt_o,
    "Mount options, comma separated (see nbdfs(1))", "OPTS" },
  { "version", 'V', 0, G_OPTION_ARG_NONE, &opt_version,
    "Print the version and exit", NULL },
  { NULL },
};

/* Rarely needed: listed by --help-tuning and --help-all, so that
 * --help fits a screen. */
static GOptionEntry tuning_entries[] = {
  { "replay-limit", 0, 0, G_OPTION_ARG_INT, &opt_replay_limit,
    "MiB of unflushed writes kept for replay (64)", "MIB" },
  { "sched", 0, 0, G_OPTION_ARG_STRING, &opt_sched,
    "CPU scheduling: batch (default) or normal", "POLICY" },
  { NULL },
};

/* Options of mount(8) and fstab that concern mount(8) alone. */
static const char *const ignored_opts[] = {
  "_netdev", "auto", "noauto", "user", "users", "nouser", "owner",
  "group", "nofail", "defaults", NULL,
};

/* Options libfuse understands and gets as they are. */
static const char *const fuse_opts[] = {
  "allow_other", "allow_root", "default_permissions", "auto_unmount",
  "rw", "ro", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async",
  "sync", "atime", "noatime", "relatime", "norelatime", "strictatime",
  "nostrictatime", "diratime", "nodiratime", "lazytime", "nolazytime",
  "dirsync", NULL,
};

/* nbdfs's own options that -o also takes, as NAME or NAME=VALUE, so
 * that an fstab line can say everything; so does every tls-* option.
 * The others (foreground, help, version, -o itself) make no sense in
 * fstab. */
static const char *const own_opts[] = {
  "readonly", "connections", "cache", "tls", "name", "reconnect-timeout",
  "request-timeout", "replay-limit", "all", "verbose", "debug", "sched",
  NULL,
};

/* Those that take no value: GOption would quietly drop one. */
static const char *const own_flags[] = {
  "readonly", "all", "verbose", "debug", "tls-no-fetch", NULL,
};

static bool
in_list(const char *const *list, const char *s)
{
  for (; *list; list++)
    if (strcmp(*list, s) == 0)
      return true;
  return false;
}

static bool
is_own_opt(const char *opt)
{
  g_autofree char *name = g_strndup(opt, strcspn(opt, "="));

  return in_list(own_opts, name) || g_str_has_prefix(name, "tls-");
}

/* Parses -o NAME[=VALUE] as --NAME[=VALUE], with the parser of the
 * command line, so that the value is checked and stored as it would be
 * there.  Being parsed later, it wins over the same option given on
 * the command line. */
static int
parse_own_opt(GOptionContext *ctx, const char *opt, GError **error)
{
  g_autofree char *arg = g_strconcat("--", opt, NULL);
  g_autofree char *name = g_strndup(opt, strcspn(opt, "="));
  char *argv[] = { "nbdfs", arg, NULL };
  char **v = argv;
  int argc = 2;
  g_autoptr(GError) local = NULL;

  if (in_list(own_flags, name) && strchr(opt, '=') != NULL)
    return nbd_set_error(error, EINVAL, "parse options: -o %s: %s takes "
                         "no value", opt, name);
  if (!g_option_context_parse(ctx, &argc, &v, &local))
    return nbd_set_error(error, EINVAL, "parse options: -o %s: %s", opt,
                         local->message);
  return 0;
}

/* Sorts the -o options into ours and libfuse's. */
static int
parse_mount_opts(GOptionContext *ctx, struct fs *fs, struct fuse_args *args,
                 GError **error)
{
  for (char **o = opt_o; o && *o; o++) {
    g_auto(GStrv) parts = g_strsplit(*o, ",", -1);

    for (char **p = parts; *p; p++) {
      const char *opt = *p;
      char *end;

      if (*opt == '\0' || in_list(ignored_opts, opt) ||
          g_str_has_prefix(opt, "x-") || g_str_has_prefix(opt, "comment="))
        continue;
      if (is_own_opt(opt)) {
        if (parse_own_opt(ctx, opt, error) < 0)
          return -EINVAL;
        continue;
      }
      if (g_str_has_prefix(opt, "uid=") || g_str_has_prefix(opt, "gid=")) {
        unsigned long v = strtoul(opt + 4, &end, 10);

        if (*end != '\0' || end == opt + 4)
          return nbd_set_error(error, EINVAL,
                               "parse options: -o %s: not a number", opt);
        if (opt[0] == 'u')
          fs->uid = v;
        else
          fs->gid = v;
        continue;
      }
      if (strcmp(opt, "ro") == 0)
        opt_readonly = TRUE;
      if (in_list(fuse_opts, opt) || g_str_has_prefix(opt, "fsname=") ||
          g_str_has_prefix(opt, "subtype=") ||
          g_str_has_prefix(opt, "max_read=")) {
        fuse_opt_add_arg(args, "-o");
        fuse_opt_add_arg(args, opt);
        continue;
      }
      return nbd_set_error(error, EINVAL,
                           "parse options: -o %s: unknown mount option",
                           opt);
    }
  }
  return 0;
}

static int
parse_policy(const struct nbd_uri *uri, enum nbd_tls_policy *out,
             GError **error)
{
  return nbd_tls_policy_parse(opt_tls, uri, out, error);
}

/* The TLS credentials of one export, loaded once and shared by all its
 * connections and reconnects. */
static int
load_tls(const struct nbd_uri *uri, struct nbd_handshake_opts *o,
         GError **error)
{
  if (o->tls == NBD_TLS_OFF)
    return 0;
  return nbd_tls_config_new(&tls_settings, uri, &o->tls_config, error);
}

/* The file name of an export: its name with '/' made '_', or "disk". */
static char *
file_name_for(const char *export_name)
{
  if (*export_name == '\0')
    return g_strdup("disk");
  return g_strdelimit(g_strdup(export_name), "/", '_');
}

static struct export *
export_new(struct nbd_uri *uri, const char *file_name)
{
  struct export *e = g_new0(struct export, 1);

  g_mutex_init(&e->lock);
  e->uri = uri;
  e->file_name = g_strdup(file_name);
  e->opts.export_name = uri->export_name;
  e->connections = opt_connections;
  e->timeouts.reconnect_ms = opt_reconnect_timeout * 1000u;
  e->timeouts.request_ms = opt_request_timeout * 1000u;
  e->replay_limit = (uint64_t) opt_replay_limit << 20;
  e->readonly = opt_readonly;
  return e;
}

static int
add_export(struct fs *fs, struct export *e, GError **error)
{
  for (guint i = 0; i < fs->exports->len; i++) {
    struct export *o = fs->exports->pdata[i];

    if (strcmp(o->file_name, e->file_name) == 0) {
      int rc = nbd_set_error(error, EINVAL,
                             "parse options: %s: two exports would both "
                             "be named '%s'; use one URI with --name",
                             e->uri->export_name, e->file_name);

      export_free(e);
      return rc;
    }
  }
  g_ptr_array_add(fs->exports, e);
  return 0;
}

/* --all: one file per listed export, sized now, connected on open. */
static int
add_listed_exports(struct fs *fs, const char *text, GError **error)
{
  g_autoptr(nbd_uri) base = NULL;
  g_autoptr(GPtrArray) list = NULL;
  struct nbd_handshake_opts o = { .export_name = "" };
  g_autoptr(nbd_tls_config) tls = NULL;
  int rc;

  rc = nbd_uri_parse(text, &base, error);
  if (rc == 0)
    rc = parse_policy(base, &o.tls, error);
  if (rc == 0)
    rc = load_tls(base, &o, error);
  tls = o.tls_config;
  if (rc < 0)
    return EXIT_USAGE;
  rc = nbd_connect_list(base, &o, MAX_LIST_ENTRIES, &list, error);
  if (rc < 0)
    return EXIT_CONNECT;

  for (guint i = 0; i < list->len; i++) {
    const struct nbd_export_entry *le = list->pdata[i];
    g_autofree char *name = file_name_for(le->name);
    g_autofree char *shown = nbd_uri_display(base);
    struct nbd_uri *uri = NULL;
    struct export *e;

    /* The listed export's own URI: the base with its name swapped. */
    rc = nbd_uri_parse(shown, &uri, error);
    if (rc < 0)
      return EXIT_USAGE;
    g_free(uri->export_name);
    uri->export_name = g_strdup(le->name);
    e = export_new(uri, name);
    e->opts.tls = o.tls;
    if (tls != NULL)
      e->opts.tls_config = nbd_tls_config_ref(tls);
    e->list_description = g_strdup(le->description);
    if (add_export(fs, e, error) < 0)
      return EXIT_USAGE;

    /* Learn the size now, so the file shows it before any open; the
     * connection itself waits for the first open. */
    rc = export_connect(e, error);
    if (rc < 0)
      return EXIT_CONNECT;
    export_release(e);
  }
  return 0;
}

static int
build_exports(struct fs *fs, int nuris, char **uris, GError **error)
{
  if (opt_all) {
    if (nuris != 1 || opt_name != NULL) {
      nbd_set_error(error, EINVAL,
                    "parse options: --all: takes exactly one URI and no "
                    "--name");
      return EXIT_USAGE;
    }
    return add_listed_exports(fs, uris[0], error);
  }
  if (opt_name != NULL && nuris != 1) {
    nbd_set_error(error, EINVAL,
                  "parse options: --name: only with a single URI");
    return EXIT_USAGE;
  }

  for (int i = 0; i < nuris; i++) {
    struct nbd_uri *uri = NULL;
    g_autofree char *name = NULL;
    struct export *e;

    if (nbd_uri_parse(uris[i], &uri, error) < 0)
      return EXIT_USAGE;
    name = opt_name ? g_strdup(opt_name) : file_name_for(uri->export_name);
    if (strchr(name, '/') != NULL || strcmp(name, ".") == 0 ||
        strcmp(name, "..") == 0) {
      nbd_set_error(error, EINVAL, "parse options: --name %s: not a valid "
                    "file name", name);
      nbd_uri_free(uri);
      return EXIT_USAGE;
    }
    e = export_new(uri, name);
    if (parse_policy(uri, &e->opts.tls, error) < 0 ||
        load_tls(uri, &e->opts, error) < 0 ||
        add_export(fs, e, error) < 0)
      return EXIT_USAGE;
  }

  for (guint i = 0; i < fs->exports->len; i++)
    if (export_connect(fs->exports->pdata[i], error) < 0)
      return EXIT_CONNECT;
  return 0;
}

/* Says why the mount point cannot be used, with the fix. */
static int
check_mountpoint(const char *dir, GError **error)
{
  struct stat st;

  if (stat(dir, &st) == 0) {
    if (!S_ISDIR(st.st_mode))
      return nbd_set_error(error, ENOTDIR,
                           "mount: %s: not a directory", dir);
    return 0;
  }
  if (errno == ENOTCONN)
    return nbd_set_error(error, ENOTCONN,
                         "mount: %s: a stale FUSE mount is in the way; "
                         "clear it with: fusermount3 -u %s", dir, dir);
  if (errno == ENOENT)
    return nbd_set_error(error, ENOENT,
                         "mount: %s: no such directory; create it with: "
                         "mkdir -p %s", dir, dir);
  return nbd_set_error(error, errno, "mount: %s: %s", dir,
                       g_strerror(errno));
}

static int
check_fuse_device(GError **error)
{
  int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);

  if (fd >= 0) {
    close(fd);
    return 0;
  }
  if (errno == ENOENT)
    return nbd_set_error(error, ENOENT,
                         "mount: /dev/fuse: FUSE is not available; load "
                         "it with: modprobe fuse");
  if (errno == EACCES)
    return nbd_set_error(error, EACCES,
                         "mount: /dev/fuse: permission denied; ask an "
                         "administrator to run: chmod 0666 /dev/fuse");
  return nbd_set_error(error, errno, "mount: /dev/fuse: %s",
                       g_strerror(errno));
}

/* Daemonizing happens before any thread exists (connections start
 * threads), so the parent waits on a pipe for the child to say whether
 * the mount is ready, and exits with the child's status. */
static int ready_fd = -1;

static void
daemonize_early(void)
{
  int fds[2];
  pid_t pid;
  char status;

  if (pipe2(fds, O_CLOEXEC) < 0) {
    perror("nbdfs: daemonize: pipe");
    exit(EXIT_MOUNT);
  }
  pid = fork();
  if (pid < 0) {
    perror("nbdfs: daemonize: fork");
    exit(EXIT_MOUNT);
  }
  if (pid > 0) {
    close(fds[1]);
    if (read(fds[0], &status, 1) != 1) {
      int ws;

      /* The child died without a word: pass on how it ended. */
      waitpid(pid, &ws, 0);
      exit(WIFEXITED(ws) && WEXITSTATUS(ws) ? WEXITSTATUS(ws) : EXIT_MOUNT);
    }
    exit(status);
  }

  close(fds[0]);
  ready_fd = fds[1];
  setsid();
}

static void
report_ready(int status)
{
  char s = status;
  int null;

  if (ready_fd < 0)
    return;
  if (write(ready_fd, &s, 1) != 1)
    log_error("daemonize: cannot tell the parent: %s", g_strerror(errno));
  close(ready_fd);
  ready_fd = -1;
  if (status != 0)
    return;

  /* From here on nobody reads our terminal. */
  log_to_syslog();
  null = open("/dev/null", O_RDWR);
  if (null >= 0) {
    dup2(null, STDIN_FILENO);
    dup2(null, STDOUT_FILENO);
    dup2(null, STDERR_FILENO);
    if (null > STDERR_FILENO)
      close(null);
  }
  if (chdir("/") < 0)
    log_warning("daemonize: chdir /: %s", g_strerror(errno));
}

static G_NORETURN void
fail(int status, const char *message)
{
  fprintf(stderr, "nbdfs: %s\n", message);
  report_ready(status);
  exit(status);
}

static void
trace_line(const char *line)
{
  log_debug("%s", line);
}

/* nbdproto's warnings (TLS verification off, a key others can read)
 * and lifecycle lines (TLS version and cipher, with -v). */
static void
nbdproto_log(enum nbd_log_level level, const char *line)
{
  if (level == NBD_LOG_WARNING)
    log_warning("%s", line);
  else if (level == NBD_LOG_INFO)
    log_info("%s", line);
  else
    log_debug("%s", line);
}

static int
parse_cache(struct fs *fs, GError **error)
{
  /* none is the default: it is the safest (no stale pages, nothing
   * held back from the server) and measured fastest for random I/O,
   * buffered or direct (README, Performance). */
  if (opt_cache == NULL || strcmp(opt_cache, "none") == 0)
    fs->cache = CACHE_NONE;
  else if (strcmp(opt_cache, "kernel") == 0)
    fs->cache = CACHE_KERNEL;
  else if (strcmp(opt_cache, "writeback") == 0)
    fs->cache = CACHE_WRITEBACK;
  else
    return nbd_set_error(error, EINVAL,
                         "parse options: --cache=%s: expected none, kernel "
                         "or writeback", opt_cache);
  return 0;
}

/* Checks --sched before anything starts. */
static int
parse_sched(GError **error)
{
  if (opt_sched == NULL || strcmp(opt_sched, "batch") == 0)
    return 0;
  if (strcmp(opt_sched, "normal") == 0) {
    sched_batch = false;
    return 0;
  }
  return nbd_set_error(error, EINVAL, "parse options: --sched=%s: expected "
                       "batch or normal", opt_sched);
}

/* Puts the calling thread, and so every thread it starts later, under
 * SCHED_BATCH unless --sched=normal.  A request passes between fio (or
 * any program), the FUSE loop, the server and a reader thread, each
 * waking the next; under the normal policy each wakeup may preempt the
 * waker on its way to sleep, which costs two context switches for
 * nothing.  A batch thread that is woken waits for the running task to
 * block or use up its slice instead.  Measured build against build in
 * both run orders: 4 KiB random reads at iodepth 1 1.30x and 1.29x the
 * IOPS with about 0.6x the CPU, 1 MiB reads 1.1x, the rest 0.99x to
 * 1.11x (docs/performance.md).  Needs no privilege; a refusal leaves
 * the normal policy. */
static void
set_sched(void)
{
  struct sched_param sp = { 0 };

  if (!sched_batch)
    return;
  if (sched_setscheduler(0, SCHED_BATCH, &sp) < 0)
    log_warning("start: scheduling policy SCHED_BATCH: %s; the normal "
                "policy stays", g_strerror(errno));
}

/* SIGUSR1 writes every export's statistics to the log.  The signal is
 * blocked in every thread and taken here with sigwait, so no handler
 * runs in the middle of the I/O path. */
static GMutex exports_lock; /* the stats thread against close_exports */

static gpointer
stats_main(gpointer opaque)
{
  struct fs *fs = opaque;
  sigset_t set;
  int sig;

  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  while (sigwait(&set, &sig) == 0) {
    g_mutex_lock(&exports_lock);
    for (guint i = 0; i < fs->exports->len; i++) {
      struct export *e = fs->exports->pdata[i];
      g_autoptr(GString) line = g_string_new(NULL);

      if (e == NULL || !e->connected)
        continue;
      sched_stats(e->sched, line);
      log_warning("%s: %s", e->file_name, line->str);
    }
    g_mutex_unlock(&exports_lock);
  }
  return NULL;
}

static void
block_sigusr1(void)
{
  sigset_t set;

  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
}

/* In-flight requests finish, a FLUSH covers the writes, then each
 * connection says NBD_CMD_DISC. */
static void
close_exports(struct fs *fs)
{
  for (guint i = 0; i < fs->exports->len; i++) {
    struct export *e = fs->exports->pdata[i];
    int err;

    if (e->connected && (err = sched_drain(e->sched)) != 0)
      log_error("unmount: %s: final flush failed: %s; recent writes may "
                "not be on stable storage", e->file_name, g_strerror(err));
    g_mutex_lock(&exports_lock);
    fs->exports->pdata[i] = NULL;
    g_mutex_unlock(&exports_lock);
    export_free(e);
  }
  g_mutex_lock(&exports_lock);
  g_ptr_array_set_size(fs->exports, 0);
  g_mutex_unlock(&exports_lock);
}

int
main(int argc, char **argv)
{
  g_autoptr(GOptionContext) ctx =
    g_option_context_new("URI... MOUNTPOINT - show NBD exports as files");
  g_autoptr(GError) error = NULL;
  struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
  struct fs fs = { 0 };
  struct fuse_session *se;
  GOptionGroup *tuning;
  const char *mountpoint;
  int rc, status;

  setlocale(LC_ALL, "");
  g_option_context_add_main_entries(ctx, entries, NULL);
  g_option_context_add_group(ctx, nbd_tls_option_group(&tls_settings));
  tuning = g_option_group_new("tuning", "Tuning options:",
                              "Show the tuning options", NULL, NULL);
  g_option_group_add_entries(tuning, tuning_entries);
  g_option_context_add_group(ctx, tuning);
  if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
    g_autofree char *msg = g_strdup_printf("parse options: %s; see "
                                           "nbdfs --help",
                                           error->message);
    fail(EXIT_USAGE, msg);
  }
  if (opt_version) {
    printf("nbdfs %s\n", NBDFS_VERSION);
    return 0;
  }
  if (argc < 3)
    fail(EXIT_USAGE, "usage: nbdfs [OPTION]... URI... MOUNTPOINT "
                     "(see --help)");
  mountpoint = argv[argc - 1];

  nbd_log_hook = nbdproto_log;

  fs.uid = getuid();
  fs.gid = getgid();
  fs.exports = g_ptr_array_new();
  clock_gettime(CLOCK_REALTIME, &fs.mounted);
  fuse_opt_add_arg(&args, argv[0]);
  fuse_opt_add_arg(&args, "-o");
  fuse_opt_add_arg(&args, "fsname=nbdfs,subtype=nbdfs");
  if (parse_mount_opts(ctx, &fs, &args, &error) < 0 ||
      parse_cache(&fs, &error) < 0 || parse_sched(&error) < 0)
    fail(EXIT_USAGE, error->message);

  /* After -o, which may say verbose or debug. */
  log_max = opt_debug ? LOG_LEVEL_DEBUG
          : opt_verbose ? LOG_LEVEL_INFO : LOG_LEVEL_WARNING;
  if (opt_debug)
    nbd_trace_hook = trace_line;
  if (opt_connections < 0 || opt_reconnect_timeout < 0 ||
      opt_request_timeout < 0 || opt_replay_limit < 0)
    fail(EXIT_USAGE, "parse options: -C, --reconnect-timeout, "
                     "--request-timeout and --replay-limit take numbers "
                     "of 0 or more");
  if (check_mountpoint(mountpoint, &error) < 0 ||
      check_fuse_device(&error) < 0)
    fail(EXIT_MOUNT, error->message);

  if (!opt_foreground)
    daemonize_early();
  block_sigusr1(); /* before any thread exists, so all inherit it */
  set_sched();     /* the same */

  status = build_exports(&fs, argc - 2, argv + 1, &error);
  if (status != 0)
    fail(status, error->message);

  se = fuse_session_new(&args, &nbdfs_ops, sizeof nbdfs_ops, &fs);
  if (se == NULL)
    fail(EXIT_MOUNT, "mount: cannot start a FUSE session (see above)");
  if (loop_prepare(se) < 0)
    fail(EXIT_MOUNT, "mount: cannot install signal handlers");
  if (fuse_session_mount(se, mountpoint) < 0) {
    g_autofree char *msg = g_strdup_printf("mount: %s: the mount failed "
                                           "(see above)", mountpoint);
    fail(EXIT_MOUNT, msg);
  }
  log_info("mounted %u export(s) on %s", fs.exports->len, mountpoint);
  report_ready(0);
  g_thread_unref(g_thread_new("nbd-stats", stats_main, &fs));

  rc = loop_run();
  if (rc < 0)
    log_error("serve: %s: reading /dev/fuse failed: %s", mountpoint,
              g_strerror(-rc));

  log_info("unmounting %s", mountpoint);
  close_exports(&fs);
  fuse_session_unmount(se);
  loop_finish();
  fuse_session_destroy(se);
  fuse_opt_free_args(&args);
  g_ptr_array_free(fs.exports, TRUE);
  g_strfreev(opt_o);
  nbd_tls_settings_clear(&tls_settings);
  return rc < 0 ? EXIT_MOUNT : 0;
}
