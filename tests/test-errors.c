/* Every error a user can meet when starting nbdfs, as the README's
 * Troubleshooting section documents it: each case runs the real nbdfs
 * with one bad input and checks the exit status, that standard error
 * holds the documented text, that nothing was left mounted or running,
 * and that the text is still in the README, so that the two cannot
 * drift apart.
 *
 * Cases that need root run the daemon as nobody, or take FUSE away, in
 * a private mount namespace made by unshare(1): there /dev is a fresh
 * tmpfs with only the device nodes the case wants, and /etc/fuse.conf
 * is empty, so that nothing on the machine is changed, even by a test
 * that is killed.
 *
 * Environment (tests/meson.build): NBDFS, README, MAKE_PKI.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "fusemount.h"
#include "testlib.h"

/* The server a case talks to. */
enum server {
  NO_SERVER,
  PLAIN,          /* nbdkit memory, no TLS */
  NAMED,          /* qemu-nbd serving one export named "disk" */
  PSK,            /* nbdkit requiring TLS with alice's pre-shared key */
  X509,           /* nbdkit requiring TLS, certificate for localhost */
  X509_EXPIRED,   /* ... that expired in 2020 */
  X509_WRONGNAME, /* ... for wrong.example */
};

/* How nbdfs is run. */
enum runner {
  DIRECT,      /* as the test, root or not */
  AS_USER,     /* as nobody, with /dev/fuse of mode fuse_mode */
  NO_FUSE,     /* as root, without /dev/fuse */
};

/* What the mount point is. */
enum dir_state {
  DIR_OK,      /* an empty directory of the user who mounts */
  DIR_MISSING,
  DIR_FILE,    /* a regular file */
  DIR_STALE,   /* a FUSE mount whose daemon was killed */
  DIR_ROOTS,   /* a directory of root's, which nobody may not write */
  DIR_HIDDEN,  /* a directory below one that nobody may not search */
};

struct error_case {
  const char *path;
  enum server server;
  enum runner runner;
  enum dir_state dir;
  mode_t fuse_mode;
  /* Before the mount point; @sock, @pki, @tmp and @port are replaced. */
  const char *args[6];
  const char *message;    /* the documented text, found in stderr */
  int status;
};

static const struct error_case cases[] = {
  /* Usage: exit 2, before anything connects. */
  { "/errors/usage/missing-arguments", NO_SERVER, DIRECT, DIR_OK, 0,
    { NULL },
    "usage: nbdfs [OPTION]... URI... MOUNTPOINT", 2 },
  { "/errors/usage/unknown-option", NO_SERVER, DIRECT, DIR_OK, 0,
    { "--bogus", "nbd://127.0.0.1/disk" },
    "Unknown option --bogus", 2 },
  { "/errors/usage/bad-value", NO_SERVER, DIRECT, DIR_OK, 0,
    { "--cache=fast", "nbd://127.0.0.1/disk" },
    "--cache=fast: expected none, kernel or writeback", 2 },
  { "/errors/usage/unknown-mount-option", NO_SERVER, DIRECT, DIR_OK, 0,
    { "-o", "bogus", "nbd://127.0.0.1/disk" },
    "-o bogus: unknown mount option", 2 },
  { "/errors/usage/bad-mount-option-value", NO_SERVER, DIRECT, DIR_OK, 0,
    { "-o", "connections=many", "nbd://127.0.0.1/disk" },
    "-o connections=many: Cannot parse integer value", 2 },
  { "/errors/uri/unknown-scheme", NO_SERVER, DIRECT, DIR_OK, 0,
    { "http://127.0.0.1/disk" },
    "unknown scheme 'http'; use nbd, nbds, nbd+unix or nbds+unix", 2 },
  { "/errors/uri/no-host", NO_SERVER, DIRECT, DIR_OK, 0,
    { "nbd:///disk" },
    "no host; write nbd://HOST/EXPORT", 2 },
  { "/errors/uri/nbds-without-tls", NO_SERVER, DIRECT, DIR_OK, 0,
    { "--tls=off", "nbds://127.0.0.1/disk" },
    "URIs always require TLS", 2 },
  { "/errors/tls/missing-file", NO_SERVER, DIRECT, DIR_OK, 0,
    { "--tls-ca=@tmp/missing-ca.pem", "nbds://127.0.0.1/disk" },
    "Failed to open file", 2 },

  /* The server or the export: exit 1. */
  { "/errors/connect/refused", NO_SERVER, DIRECT, DIR_OK, 0,
    { "nbd://127.0.0.1:@port/disk" },
    "Connection refused", 1 },
  { "/errors/connect/no-socket", NO_SERVER, DIRECT, DIR_OK, 0,
    { "nbd+unix:///?socket=@tmp/missing.sock" },
    "No such file or directory", 1 },
  { "/errors/connect/unknown-host", NO_SERVER, DIRECT, DIR_OK, 0,
    { "nbd://no-such-host.invalid/disk" },
    "resolve: no-such-host.invalid:10809", 1 },
  { "/errors/export/missing", NAMED, DIRECT, DIR_OK, 0,
    { "nbd+unix:///nope?socket=@sock" },
    "no export named 'nope' on this server; nbdfs-info --list shows them",
    1 },
  { "/errors/tls/server-requires-tls", PSK, DIRECT, DIR_OK, 0,
    { "nbd+unix:///?socket=@sock" },
    "the server requires TLS; connect with nbds:// or --tls=require", 1 },
  { "/errors/tls/server-without-tls", PLAIN, DIRECT, DIR_OK, 0,
    { "--tls-psk-file=@pki/psk/keys.psk",
      "nbds+unix://alice@/?socket=@sock" },
    "server refused STARTTLS", 1 },
  { "/errors/tls/untrusted-signer", X509, DIRECT, DIR_OK, 0,
    { "--tls-ca=@pki/other-ca-cert.pem", "nbds+unix:///?socket=@sock" },
    "signer not trusted", 1 },
  { "/errors/tls/hostname-mismatch", X509_WRONGNAME, DIRECT, DIR_OK, 0,
    { "--tls-ca=@pki/ca-cert.pem", "nbds+unix:///?socket=@sock" },
    "hostname mismatch", 1 },
  { "/errors/tls/expired", X509_EXPIRED, DIRECT, DIR_OK, 0,
    { "--tls-ca=@pki/ca-cert.pem", "nbds+unix:///?socket=@sock" },
    "expired on", 1 },
  { "/errors/tls/psk-wrong-key", PSK, DIRECT, DIR_OK, 0,
    { "--tls-psk-file=@pki/psk/wrong.psk",
      "nbds+unix://alice@/?socket=@sock" },
    "unknown PSK identity 'alice' or wrong key", 1 },
  { "/errors/tls/psk-unknown-user", PSK, DIRECT, DIR_OK, 0,
    { "--tls-psk-file=@pki/psk/keys.psk",
      "nbds+unix://bob@/?socket=@sock" },
    "no key for user 'bob'; make one with: psktool", 2 },

  /* The mount: exit 3. */
  { "/errors/mount/missing-directory", NO_SERVER, DIRECT, DIR_MISSING, 0,
    { "nbd://127.0.0.1/disk" },
    "no such directory; create it with: mkdir -p", 3 },
  { "/errors/mount/not-a-directory", NO_SERVER, DIRECT, DIR_FILE, 0,
    { "nbd://127.0.0.1/disk" },
    "not a directory", 3 },
  { "/errors/mount/stale", PLAIN, DIRECT, DIR_STALE, 0,
    { "nbd+unix:///?socket=@sock" },
    "a stale FUSE mount is in the way; clear it with: fusermount3 -u", 3 },
  { "/errors/mount/unreachable-directory", NO_SERVER, AS_USER, DIR_HIDDEN,
    0666, { "nbd://127.0.0.1/disk" },
    "Permission denied", 3 },
  { "/errors/mount/no-fuse", NO_SERVER, NO_FUSE, DIR_OK, 0,
    { "nbd://127.0.0.1/disk" },
    "FUSE is not available; load it with: modprobe fuse", 3 },
  { "/errors/mount/dev-fuse-denied", NO_SERVER, AS_USER, DIR_OK, 0600,
    { "nbd://127.0.0.1/disk" },
    "permission denied; ask an administrator to run: chmod 0666 /dev/fuse",
    3 },
  { "/errors/mount/no-write-access", PLAIN, AS_USER, DIR_ROOTS, 0666,
    { "nbd+unix:///?socket=@sock" },
    "user has no write access to mountpoint", 3 },
  { "/errors/mount/allow-other", PLAIN, AS_USER, DIR_OK, 0666,
    { "-o", "allow_other", "nbd+unix:///?socket=@sock" },
    "option allow_other only allowed if 'user_allow_other' is set in "
    "/etc/fuse.conf", 3 },
};

static char *pki;             /* made by make-pki.sh; NULL without it */
static char *troubleshooting; /* the README's section */

/* ---- Setup ---- */

/* A TCP port of 127.0.0.1 where nothing listens: one the kernel just
 * handed out and took back.
 */
static int
closed_port(void)
{
  struct sockaddr_in sa = { .sin_family = AF_INET };
  socklen_t len = sizeof sa;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int port;

  g_assert_cmpint(fd, >=, 0);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  g_assert_cmpint(bind(fd, (struct sockaddr *)&sa, sizeof sa), ==, 0);
  g_assert_cmpint(getsockname(fd, (struct sockaddr *)&sa, &len), ==, 0);
  port = ntohs(sa.sin_port);
  close(fd);
  return port;
}

/* S with every TOKEN replaced by VALUE; frees S. */
static char *
replace(char *s, const char *token, const char *value)
{
  g_auto(GStrv) parts = NULL;

  if (value == NULL || strstr(s, token) == NULL)
    return s;
  parts = g_strsplit(s, token, -1);
  g_free(s);
  return g_strjoinv(value, parts);
}

static char *
expand(const char *arg, const struct tl_server *server, int port)
{
  g_autofree char *port_text = g_strdup_printf("%d", port);
  char *s = g_strdup(arg);

  s = replace(s, "@sock", server != NULL ? server->socket_path : NULL);
  s = replace(s, "@pki", pki);
  s = replace(s, "@tmp", tl_tmpdir());
  return replace(s, "@port", port_text);
}

static struct tl_server *
start_server(enum server kind)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *psk = NULL;
  g_autofree char *certs = NULL;
  g_autofree char *img = NULL;
  struct tl_server *s = NULL;
  const char *dir = NULL;

  switch (kind) {
  case NO_SERVER:
    return NULL;
  case PLAIN:
    s = tl_nbdkit_start((const char *const[]){ "memory", "1M", NULL },
                        &error);
    break;
  case NAMED:
    img = tl_make_file("named.img", 1024 * 1024, 7);
    s = tl_qemu_nbd_start(img, "raw", "disk", NULL, &error);
    break;
  case PSK:
    psk = g_strdup_printf("--tls-psk=%s/psk/keys.psk", pki);
    s = tl_nbdkit_start((const char *const[]){ "--tls=require", psk,
                                               "memory", "1M", NULL },
                        &error);
    break;
  case X509:
    dir = "server";
    break;
  case X509_EXPIRED:
    dir = "expired";
    break;
  case X509_WRONGNAME:
    dir = "wrongname";
    break;
  }
  if (dir != NULL) {
    certs = g_strdup_printf("--tls-certificates=%s/%s", pki, dir);
    s = tl_nbdkit_start((const char *const[]){ "--tls=require", certs,
                                               "memory", "1M", NULL },
                        &error);
  }
  g_assert_no_error(error);
  return s;
}

static bool
uses_pki(const struct error_case *c)
{
  if (c->server >= PSK)
    return true;
  for (size_t i = 0; c->args[i] != NULL; i++)
    if (strstr(c->args[i], "@pki") != NULL)
      return true;
  return false;
}

/* The programs a case needs; false (and the test skipped, or failed
 * under CI) when one is missing.
 */
static bool
have_prerequisites(const struct error_case *c)
{
  if (!fm_nbdfs())
    return false;
  if (c->server == NAMED && !tl_require("qemu-nbd"))
    return false;
  if (c->server != NO_SERVER && c->server != NAMED &&
      !tl_require("nbdkit"))
    return false;
  if (uses_pki(c)) {
    if (!tl_require("certtool") || !tl_require("psktool"))
      return false;
    if (pki == NULL) {
      g_test_fail_printf("MAKE_PKI is not set: run through meson test");
      return false;
    }
  }
  if (c->dir == DIR_STALE && !tl_require("fusermount3"))
    return false;
  if (c->runner != DIRECT)
    return fm_require_root() && tl_require("unshare") &&
           tl_require("setpriv") && tl_require("fusermount3");
  return true;
}

/* The command that runs nbdfs for case C: in a private mount namespace
 * with a /dev of our own for AS_USER and NO_FUSE.  The script runs the
 * nbdfs command line that follows it ("$0" "$@").
 */
static GPtrArray *
prefix_for(const struct error_case *c)
{
  GPtrArray *argv = g_ptr_array_new_with_free_func(g_free);
  g_autofree char *empty = g_build_filename(tl_tmpdir(), "fuse.conf", NULL);
  struct passwd *pw = getpwnam("nobody");
  uid_t uid = pw != NULL ? pw->pw_uid : 65534;
  gid_t gid = pw != NULL ? pw->pw_gid : 65534;
  char *script = NULL;

  if (c->runner == NO_FUSE)
    script = g_strdup("set -e\n"
                      "mount -t tmpfs -o mode=0755 nbdfs-test /dev\n"
                      "exec \"$0\" \"$@\"\n");
  else if (c->runner == AS_USER) {
    g_assert_true(g_file_set_contents(empty, "", 0, NULL));
    g_assert_cmpint(chmod(empty, 0644), ==, 0);
    script = g_strdup_printf(
      "set -e\n"
      "mount -t tmpfs -o mode=0755 nbdfs-test /dev\n"
      "mknod -m 0666 /dev/null c 1 3\n"
      "mknod -m %04o /dev/fuse c 10 229\n"
      "if [ -e /etc/fuse.conf ]; then mount --bind %s /etc/fuse.conf; fi\n"
      "exec setpriv --reuid=%d --regid=%d --clear-groups \"$0\" \"$@\"\n",
      (unsigned)c->fuse_mode, empty, (int)uid, (int)gid);
  }
  if (script == NULL) {
    g_ptr_array_add(argv, NULL);
    return argv;
  }
  g_ptr_array_add(argv, g_strdup("unshare"));
  g_ptr_array_add(argv, g_strdup("--mount"));
  g_ptr_array_add(argv, g_strdup("--propagation=private"));
  g_ptr_array_add(argv, g_strdup("sh"));
  g_ptr_array_add(argv, g_strdup("-c"));
  g_ptr_array_add(argv, script);
  g_ptr_array_add(argv, NULL);
  return argv;
}

/* ---- The test ---- */

static void
run_case(gconstpointer data)
{
  const struct error_case *c = data;
  g_autoptr(GPtrArray) args = g_ptr_array_new_with_free_func(g_free);
  g_autoptr(GPtrArray) prefix = NULL;
  g_autoptr(fm_mount) m = NULL;
  g_autoptr(fm_mount) stale = NULL;
  g_autofree char *type = NULL;
  struct fm_mount again = { 0 };
  struct fm_mount *target;
  struct tl_server *server;
  struct passwd *pw;
  int port = closed_port();

  /* The documented text first: a case the README lost is a failure
   * even where the case cannot run.
   */
  if (troubleshooting == NULL)
    g_test_fail_printf("README is not set: run through meson test");
  else if (strstr(troubleshooting, c->message) == NULL)
    g_test_fail_printf("the README's Troubleshooting section lacks: %s",
                       c->message);

  if (!have_prerequisites(c))
    return;

  server = start_server(c->server);
  for (size_t i = 0; c->args[i] != NULL; i++)
    g_ptr_array_add(args, expand(c->args[i], server, port));
  g_ptr_array_add(args, NULL);
  prefix = prefix_for(c);

  /* nobody must reach nbdfs and the server's socket, and own the mount
   * point.
   */
  pw = getpwnam("nobody");
  if (c->runner == AS_USER)
    g_assert_cmpint(chmod(tl_tmpdir(), 0711), ==, 0);
  if (c->runner == AS_USER && server != NULL)
    g_assert_cmpint(chmod(server->socket_path, 0666), ==, 0);
  m = fm_new(c->runner == AS_USER && c->dir == DIR_OK
             ? (pw != NULL ? pw->pw_uid : 65534) : (uid_t)-1);
  target = m;

  switch (c->dir) {
  case DIR_OK:
  case DIR_HIDDEN:  /* fm_new() made its parent 0700, root's */
    break;
  case DIR_ROOTS:
    /* nobody may reach it, not write it. */
    g_assert_cmpint(chmod(m->parent, 0755), ==, 0);
    break;
  case DIR_MISSING:
    g_assert_cmpint(g_rmdir(m->dir), ==, 0);
    break;
  case DIR_FILE:
    g_assert_cmpint(g_rmdir(m->dir), ==, 0);
    g_assert_true(g_file_set_contents(m->dir, "", 0, NULL));
    break;
  case DIR_STALE: {
    g_autofree char *uri = tl_server_uri(server, "");

    /* A daemon killed outright leaves its mount stale; the second
     * nbdfs runs on that same directory, so a plain struct stands in
     * for a second registration.
     */
    stale = fm_mounted((const char *const[]){ uri, NULL });
    g_assert_cmpint(kill(stale->daemon, SIGKILL), ==, 0);
    g_assert_cmpint(fm_wait_daemon(stale, 10), ==, -1);
    again.dir = stale->dir;
    again.slot = stale->slot;
    target = &again;
    break;
  }
  }

  fm_start(target, (const char *const *)prefix->pdata,
           (const char *const *)args->pdata);
  g_test_message("stderr: %s", target->err);
  g_assert_cmpint(target->status, ==, c->status);
  if (strstr(target->err, c->message) == NULL)
    g_test_fail_printf("stderr lacks '%s': %s", c->message, target->err);
  g_assert_cmpint(target->daemon, ==, 0);

  /* Nothing mounted: only the stale mount that the case made. */
  type = fm_mount_type(target->dir);
  if (c->dir == DIR_STALE)
    g_assert_cmpstr(type, ==, "fuse.nbdfs");
  else
    g_assert_null(type);

  if (c->dir == DIR_FILE) {
    g_assert_cmpint(g_unlink(m->dir), ==, 0);
    g_assert_cmpint(g_mkdir(m->dir, 0755), ==, 0);
  } else if (c->dir == DIR_MISSING) {
    g_assert_cmpint(g_mkdir(m->dir, 0755), ==, 0);
  }
  g_free(again.out);
  g_free(again.err);
  g_assert_cmpint(chmod(tl_tmpdir(), 0700), ==, 0);
  tl_server_stop(server);
}

/* The Troubleshooting section of README: from its heading to the next
 * heading of the same level.
 */
static char *
read_troubleshooting(const char *readme)
{
  g_autofree char *text = NULL;
  const char *start, *end;

  if (readme == NULL || !g_file_get_contents(readme, &text, NULL, NULL))
    return NULL;
  start = strstr(text, "\n## Troubleshooting\n");
  if (start == NULL)
    return g_strdup("");
  end = strstr(start + 1, "\n## ");
  return end != NULL ? g_strndup(start, end - start) : g_strdup(start);
}

/* nobody runs nbdfs in some cases, and may not reach the build
 * directory (under /root, say): NBDFS is pointed at a copy in our
 * temporary directory, which those cases open to everyone's search.
 */
static void
use_reachable_copy(void)
{
  const char *nbdfs = g_getenv("NBDFS");
  g_autofree char *copy = g_build_filename(tl_tmpdir(), "nbdfs", NULL);
  g_autoptr(GError) error = NULL;
  g_autofree char *bytes = NULL;
  gsize len;

  if (nbdfs == NULL)
    return;
  if (!g_file_get_contents(nbdfs, &bytes, &len, &error) ||
      !g_file_set_contents(copy, bytes, len, &error))
    g_error("copy nbdfs: %s", error->message);
  if (chmod(copy, 0755) < 0)
    g_error("chmod %s: %s", copy, g_strerror(errno));
  g_setenv("NBDFS", copy, TRUE);
}

static void
make_pki(void)
{
  const char *script = g_getenv("MAKE_PKI");
  g_autofree char *certtool = g_find_program_in_path("certtool");
  g_autofree char *cmd = NULL;
  int status = -1;

  if (script == NULL || certtool == NULL)
    return;
  pki = g_build_filename(tl_tmpdir(), "pki", NULL);
  cmd = g_strdup_printf("bash %s %s", script, pki);
  if (!g_spawn_command_line_sync(cmd, NULL, NULL, &status, NULL) ||
      status != 0)
    g_error("make-pki.sh failed (status %d)", status);
}

int
main(int argc, char **argv)
{
  int rc;

  tl_init(&argc, &argv);
  fm_init();

  /* One case that fails must not hide the next: each cleans up after
   * itself whatever its checks found.
   */
  g_test_set_nonfatal_assertions();
  troubleshooting = read_troubleshooting(g_getenv("README"));
  make_pki();
  use_reachable_copy();

  for (size_t i = 0; i < G_N_ELEMENTS(cases); i++)
    g_test_add_data_func(cases[i].path, &cases[i], run_case);
  rc = g_test_run();
  g_free(troubleshooting);
  g_free(pki);
  return rc;
}
