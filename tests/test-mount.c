/* nbdfs through mount(8): "mount -t fuse.nbdfs URI DIR -o ..." and
 * fstab entries, for root and, with "noauto,user", for an unprivileged
 * user, as the README and nbdfs(1) describe them.
 *
 * mount(8) runs mount.fuse3, which runs "nbdfs URI DIR -o OPTS" through
 * /bin/sh with a fixed search path, so nbdfs must be installed; and a
 * user mount reads /etc/fstab.  Neither may be changed on the machine
 * that runs the tests, so the program first moves to a private mount
 * namespace (as root), where a tmpfs over /usr/local/bin holds a copy
 * of the nbdfs under test, /etc/fstab is a file of the test's own, and
 * /dev/fuse is a node of mode 0666.  All of it vanishes with the
 * namespace, that is with this program and its daemons, however they
 * end; nothing outside sees it.
 *
 * Environment (tests/meson.build): NBDFS.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "fusemount.h"
#include "testlib.h"

#define MiB (1024 * 1024)
#define RUN_TIMEOUT_S 30
#define INSTALL_DIR "/usr/local/bin"
#define FUSE_NODE INSTALL_DIR "/.fuse-device"

/* Set once the private namespace is in place; otherwise every test is
 * skipped (failed under CI) with this reason.
 */
static const char *no_namespace = "not root: no private mount namespace";

/* ---- The private namespace ---- */

/* Called first thing in main, before any thread exists (unshare fails
 * with EINVAL in a threaded process).  Returns NULL, or why not.
 */
static const char *
enter_private_namespace(void)
{
  if (geteuid() != 0)
    return "not root: no private mount namespace";
  if (unshare(CLONE_NEWNS) < 0)
    return "unshare(CLONE_NEWNS) failed";

  /* Without this, mounts made here would propagate to the machine's
   * namespace wherever / is shared (as under systemd).
   */
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
    return "cannot make / private";
  if (mount("nbdfs-test", INSTALL_DIR, "tmpfs", 0, "mode=0755") < 0)
    return "cannot mount a tmpfs on " INSTALL_DIR;

  /* /dev/fuse as distributions ship it, for the user mount. */
  if (mknod(FUSE_NODE, S_IFCHR | 0666, makedev(10, 229)) < 0 ||
      chmod(FUSE_NODE, 0666) < 0 ||
      mount(FUSE_NODE, "/dev/fuse", NULL, MS_BIND, NULL) < 0)
    return "cannot put a /dev/fuse of mode 0666 in place";
  return NULL;
}

/* Copies the nbdfs under test to INSTALL_DIR, where mount.fuse3 finds
 * it, once.  False (test skipped, or failed under CI) without one.
 */
static bool
install_nbdfs(void)
{
  static bool done;
  const char *nbdfs;
  g_autoptr(GError) error = NULL;
  g_autofree char *bytes = NULL;
  gsize len;

  if (no_namespace != NULL) {
    if (g_strcmp0(g_getenv("CI"), "true") == 0)
      g_test_fail_printf("prerequisite missing: %s", no_namespace);
    else
      g_test_skip(no_namespace);
    return false;
  }
  if ((nbdfs = fm_nbdfs()) == NULL || !tl_require("mount.fuse3") ||
      !tl_require("nbdkit"))
    return false;
  if (done)
    return true;

  if (!g_file_get_contents(nbdfs, &bytes, &len, &error) ||
      !g_file_set_contents(INSTALL_DIR "/nbdfs", bytes, len, &error))
    g_error("install nbdfs: %s", error->message);
  g_assert_cmpint(chmod(INSTALL_DIR "/nbdfs", 0755), ==, 0);
  done = true;
  return true;
}

/* Makes TEXT this namespace's /etc/fstab. */
static void
set_fstab(const char *text)
{
  g_autofree char *path = g_build_filename(tl_tmpdir(), "fstab", NULL);

  umount2("/etc/fstab", MNT_DETACH);
  g_assert_true(g_file_set_contents(path, text, -1, NULL));
  g_assert_cmpint(chmod(path, 0644), ==, 0);
  g_assert_cmpint(mount(path, "/etc/fstab", NULL, MS_BIND, NULL), ==, 0);
}

/* ---- Helpers ---- */

/* The daemon that serves DIR: our child (fm_init made us a subreaper,
 * and the processes between us and it have exited) with DIR among its
 * arguments.  mount.fuse3 puts "-o OPTS" last, so fusemount.c's search
 * by the last argument does not find it.
 */
static pid_t
find_daemon(const char *dir)
{
  g_autoptr(GDir) proc = g_dir_open("/proc", 0, NULL);
  const char *name;

  while (proc != NULL && (name = g_dir_read_name(proc)) != NULL) {
    pid_t pid = (pid_t)g_ascii_strtoll(name, NULL, 10);
    g_autofree char *stat_path = g_strdup_printf("/proc/%s/stat", name);
    g_autofree char *cmd_path = g_strdup_printf("/proc/%s/cmdline", name);
    g_autofree char *stat = NULL;
    g_autofree char *cmd = NULL;
    const char *paren;
    gsize len;

    if (pid <= 0 || !g_file_get_contents(stat_path, &stat, NULL, NULL) ||
        (paren = strrchr(stat, ')')) == NULL ||
        g_ascii_strtoll(paren + 4, NULL, 10) != getpid() ||
        !g_file_get_contents(cmd_path, &cmd, &len, NULL))
      continue;

    /* Arguments end with a NUL each. */
    for (const char *a = cmd; a < cmd + len; a += strlen(a) + 1)
      if (strcmp(a, dir) == 0)
        return pid;
  }
  return 0;
}

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

/* The mount options /proc/self/mounts shows for DIR. */
static char *
mount_options(const char *dir)
{
  g_autofree char *text = NULL;
  g_auto(GStrv) lines = NULL;
  char *opts = NULL;

  g_assert_true(g_file_get_contents("/proc/self/mounts", &text, NULL,
                                    NULL));
  lines = g_strsplit(text, "\n", -1);
  for (size_t i = 0; lines[i] != NULL; i++) {
    g_auto(GStrv) f = g_strsplit(lines[i], " ", 5);

    if (g_strv_length(f) >= 4 && strcmp(f[1], dir) == 0) {
      g_free(opts);
      opts = g_strdup(f[3]);
    }
  }
  return opts;
}

static bool
has_option(const char *opts, const char *opt)
{
  g_auto(GStrv) list = g_strsplit(opts, ",", -1);

  return g_strv_contains((const char *const *)list, opt);
}

/* After a successful mount(8): the mount is nbdfs's, and its daemon is
 * known to M, so that fm_free() stops it whatever happens next.
 */
static void
adopt_mount(struct fm_mount *m)
{
  g_autofree char *type = fm_mount_type(m->dir);

  g_assert_cmpstr(type, ==, "fuse.nbdfs");
  m->daemon = find_daemon(m->dir);
  g_assert_cmpint(m->daemon, >, 0);
}

/* Runs umount(8) (with PREFIX, e.g. setpriv) and waits for the daemon
 * to end by itself: it must exit 0 after a clean unmount.
 */
static void
umount_and_wait(struct fm_mount *m, const char *const *prefix)
{
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  g_autofree char *type = NULL;

  for (size_t i = 0; prefix != NULL && prefix[i] != NULL; i++)
    g_ptr_array_add(argv, (char *)prefix[i]);
  g_ptr_array_add(argv, "umount");
  g_ptr_array_add(argv, m->dir);
  g_ptr_array_add(argv, NULL);

  g_assert_cmpint(fm_run((const char *const *)argv->pdata, RUN_TIMEOUT_S,
                         NULL, NULL), ==, 0);
  type = fm_mount_type(m->dir);
  g_assert_null(type);
  g_assert_cmpint(fm_wait_daemon(m, 20), ==, 0);
}

static struct tl_server *
serve_file(const char *img)
{
  g_autoptr(GError) error = NULL;
  struct tl_server *s = tl_nbdkit_start(
      (const char *const[]){ "file", img, NULL }, &error);

  g_assert_no_error(error);
  return s;
}

/* Asserts the first LEN bytes of PATH equal those of WANT_PATH. */
static void
assert_same_head(const char *path, const char *want_path, size_t len)
{
  g_autofree char *got = g_malloc(len);
  g_autofree char *want = g_malloc(len);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  int wfd = open(want_path, O_RDONLY | O_CLOEXEC);

  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(wfd, >=, 0);
  g_assert_cmpint(pread(fd, got, len, 0), ==, (ssize_t)len);
  g_assert_cmpint(pread(wfd, want, len, 0), ==, (ssize_t)len);
  g_assert_true(memcmp(got, want, len) == 0);
  close(fd);
  close(wfd);
}

/* ---- Tests ---- */

/* Root mounts with mount -t fuse.nbdfs; fstab-only options are ignored
 * and nbdfs's own options work as -o options.
 */
static void
test_mount_t(void)
{
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autofree char *err = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  char value[64] = "";
  struct stat st;
  ssize_t n;

  if (!install_nbdfs())
    return;

  img = tl_make_file("mount-t.img", 4 * MiB, 81);
  server = serve_file(img);
  uri = tl_server_uri(server, "");
  m = fm_new((uid_t)-1);

  const char *const argv[] = {
    "mount", "-t", "fuse.nbdfs", uri, m->dir, "-o",
    "ro,noauto,_netdev,nofail,x-systemd.automount,name=img,connections=2,"
    "cache=kernel,request-timeout=30", NULL,
  };

  g_assert_cmpint(fm_run(argv, RUN_TIMEOUT_S, NULL, &err), ==, 0);
  adopt_mount(m);

  file = fm_path(m, "img");
  g_assert_cmpint(stat(file, &st), ==, 0);
  g_assert_cmpuint(st.st_size, ==, 4 * MiB);
  g_assert_cmpuint(st.st_mode & 0777, ==, 0444);
  assert_same_head(file, img, 64 * 1024);
  n = getxattr(file, "user.nbd.connections", value, sizeof value - 1);
  g_assert_cmpint(n, >, 0);
  value[n] = '\0';
  g_assert_cmpstr(value, ==, "2");

  umount_and_wait(m, NULL);
  tl_server_stop(server);
}

/* The older form, with the program in the source: fuse nbdfs#URI. */
static void
test_mount_old_syntax(void)
{
  g_autofree char *uri = NULL;
  g_autofree char *source = NULL;
  g_autofree char *file = NULL;
  g_autoptr(fm_mount) m = NULL;
  g_autoptr(GError) error = NULL;
  struct tl_server *server;

  if (!install_nbdfs())
    return;

  server = tl_nbdkit_start((const char *const[]){ "memory", "1M", NULL },
                           &error);
  g_assert_no_error(error);
  uri = tl_server_uri(server, "");
  source = g_strconcat("nbdfs#", uri, NULL);
  m = fm_new((uid_t)-1);

  g_assert_cmpint(fm_run((const char *const[]){ "mount", "-t", "fuse",
                                                source, m->dir, NULL },
                         RUN_TIMEOUT_S, NULL, NULL), ==, 0);
  adopt_mount(m);
  file = fm_path(m, "disk");
  g_assert_true(g_file_test(file, G_FILE_TEST_IS_REGULAR));
  umount_and_wait(m, NULL);
  tl_server_stop(server);
}

/* An fstab line that root mounts by its mount point, as at boot. */
static void
test_fstab_root(void)
{
  g_autofree char *uri = NULL;
  g_autofree char *line = NULL;
  g_autofree char *file = NULL;
  g_autofree char *opts = NULL;
  g_autoptr(fm_mount) m = NULL;
  g_autoptr(GError) error = NULL;
  struct tl_server *server;

  if (!install_nbdfs())
    return;

  server = tl_nbdkit_start((const char *const[]){ "memory", "1M", NULL },
                           &error);
  g_assert_no_error(error);
  uri = tl_server_uri(server, "");
  m = fm_new((uid_t)-1);
  line = g_strdup_printf("%s %s fuse.nbdfs "
                         "_netdev,nofail,allow_other,name=boot 0 0\n",
                         uri, m->dir);
  set_fstab(line);

  g_assert_cmpint(fm_run((const char *const[]){ "mount", m->dir, NULL },
                         RUN_TIMEOUT_S, NULL, NULL), ==, 0);
  adopt_mount(m);
  file = fm_path(m, "boot");
  g_assert_true(g_file_test(file, G_FILE_TEST_IS_REGULAR));
  opts = mount_options(m->dir);
  g_assert_true(has_option(opts, "allow_other"));
  umount_and_wait(m, NULL);
  tl_server_stop(server);
}

/* nobody mounts and unmounts an export through a "noauto,user" fstab
 * line, and reads it.
 */
static void
test_fstab_user(void)
{
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *line = NULL;
  g_autofree char *file = NULL;
  g_autofree char *opts = NULL;
  g_autofree char *reuid = NULL;
  g_autofree char *regid = NULL;
  g_autofree char *out = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  struct passwd *pw;
  uid_t uid;
  gid_t gid;

  if (!install_nbdfs() || !tl_require("setpriv"))
    return;

  pw = getpwnam("nobody");
  uid = pw != NULL ? pw->pw_uid : 65534;
  gid = pw != NULL ? pw->pw_gid : 65534;
  reuid = g_strdup_printf("--reuid=%d", (int)uid);
  regid = g_strdup_printf("--regid=%d", (int)gid);
  const char *const as_user[] = {
    "setpriv", reuid, regid, "--clear-groups", NULL,
  };

  img = tl_make_file("user.img", 4 * MiB, 82);
  server = serve_file(img);
  uri = tl_server_uri(server, "");

  /* The user must reach the socket and read the image to compare. */
  g_assert_cmpint(chmod(tl_tmpdir(), 0711), ==, 0);
  g_assert_cmpint(chmod(server->socket_path, 0666), ==, 0);
  g_assert_cmpint(chmod(img, 0644), ==, 0);

  m = fm_new(uid);
  line = g_strdup_printf("%s %s fuse.nbdfs noauto,user,name=img,readonly "
                         "0 0\n", uri, m->dir);
  set_fstab(line);

  const char *const mount_argv[] = {
    as_user[0], as_user[1], as_user[2], as_user[3], "mount", m->dir, NULL,
  };
  g_assert_cmpint(fm_run(mount_argv, RUN_TIMEOUT_S, NULL, NULL), ==, 0);
  adopt_mount(m);
  g_assert_cmpuint(process_uid(m->daemon), ==, uid);

  /* mount(8) makes a user mount nosuid and nodev. */
  opts = mount_options(m->dir);
  g_assert_true(has_option(opts, "nosuid"));
  g_assert_true(has_option(opts, "nodev"));

  file = fm_path(m, "img");
  const char *const stat_argv[] = {
    as_user[0], as_user[1], as_user[2], as_user[3], "stat", "-c", "%s %a",
    file, NULL,
  };
  g_assert_cmpint(fm_run(stat_argv, RUN_TIMEOUT_S, &out, NULL), ==, 0);
  g_assert_cmpstr(out, ==, "4194304 444\n");
  const char *const cmp_argv[] = {
    as_user[0], as_user[1], as_user[2], as_user[3], "cmp", "-n", "1048576",
    file, img, NULL,
  };
  g_assert_cmpint(fm_run(cmp_argv, RUN_TIMEOUT_S, NULL, NULL), ==, 0);

  umount_and_wait(m, as_user);
  g_assert_cmpint(chmod(tl_tmpdir(), 0700), ==, 0);
  tl_server_stop(server);
}

/* Without nbdfs in mount.fuse3's search path, the shell says so; the
 * README's Troubleshooting section quotes this line.
 */
static void
test_not_installed(void)
{
  static const char *const path[] = {
    "/usr/local/sbin", "/usr/sbin", "/usr/bin", "/sbin", "/bin",
  };
  g_autofree char *err = NULL;
  g_autoptr(fm_mount) m = NULL;

  if (!install_nbdfs())
    return;
  for (size_t i = 0; i < G_N_ELEMENTS(path); i++) {
    g_autofree char *p = g_build_filename(path[i], "nbdfs", NULL);

    if (g_file_test(p, G_FILE_TEST_EXISTS)) {
      g_test_skip("nbdfs is installed on this machine");
      return;
    }
  }

  m = fm_new((uid_t)-1);
  g_assert_cmpint(g_rename(INSTALL_DIR "/nbdfs", INSTALL_DIR "/nbdfs.off"),
                  ==, 0);
  const char *const argv[] = {
    "mount", "-t", "fuse.nbdfs", "nbd://127.0.0.1/disk", m->dir, NULL,
  };
  g_assert_cmpint(fm_run(argv, RUN_TIMEOUT_S, NULL, &err), !=, 0);
  g_assert_cmpint(g_rename(INSTALL_DIR "/nbdfs.off", INSTALL_DIR "/nbdfs"),
                  ==, 0);
  g_assert_nonnull(strstr(err, "nbdfs: not found"));
}

int
main(int argc, char **argv)
{
  /* Before anything can start a thread. */
  no_namespace = enter_private_namespace();

  tl_init(&argc, &argv);
  fm_init();

  g_test_add_func("/mount/mount-t/root", test_mount_t);
  g_test_add_func("/mount/mount-t/old-syntax", test_mount_old_syntax);
  g_test_add_func("/mount/fstab/root", test_fstab_root);
  g_test_add_func("/mount/fstab/user", test_fstab_user);
  g_test_add_func("/mount/not-installed", test_not_installed);
  return g_test_run();
}
