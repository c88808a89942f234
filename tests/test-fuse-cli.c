/* nbdfs end to end: the command line and read-only mounts.
 *
 * The nbdfs command returns only when the mount is ready (exit 0), or
 * says why it failed, exits 1 (connect), 2 (usage) or 3 (mount) and
 * leaves nothing mounted and no daemon behind.  Servers come from
 * testlib, mounts from fusemount.h; both are taken down even when an
 * assertion fails.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "fusemount.h"
#include "testlib.h"

#define KiB ((uint64_t)1024)
#define MiB (1024 * KiB)

/* ---- Helpers ---- */

static int
compare_strings(gconstpointer a, gconstpointer b)
{
  return g_strcmp0(*(char *const *)a, *(char *const *)b);
}

/* The names in DIR, sorted and joined with spaces. */
static char *
list_dir(const char *dir)
{
  g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
  g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
  const char *name;

  g_assert_nonnull(d);
  while ((name = g_dir_read_name(d)) != NULL)
    g_ptr_array_add(names, g_strdup(name));
  g_ptr_array_sort(names, compare_strings);
  g_ptr_array_add(names, NULL);
  return g_strjoinv(" ", (char **)names->pdata);
}

/* nbdfs must not have left a daemon or a mount behind after a failure,
 * and it must have said why on stderr.
 */
static void
assert_failed_cleanly(struct fm_mount *m, int want_status)
{
  g_autofree char *type = fm_mount_type(m->dir);

  g_assert_cmpint(m->status, ==, want_status);
  g_assert_true(g_str_has_prefix(m->err, "nbdfs: "));
  g_assert_null(type);
  g_assert_cmpint(m->daemon, ==, 0);
}

/* ---- Command line ---- */

/* Exit 0 means the mount is there and the export is connected; the file
 * shows the export's size and bytes; fusermount3 -u ends the daemon
 * with status 0.
 */
static void
test_cli_ready(void)
{
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autofree char *names = NULL;
  g_autofree char *type = NULL;
  g_autofree guint8 *got = NULL;
  g_autofree guint8 *want = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;
  struct stat st;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  img = tl_make_file("ready.img", 4 * MiB, 1);
  server = fm_start_nbdkit((const char *const[]){ "file", img, NULL });
  uri = tl_server_uri(server, "");

  m = fm_new((uid_t)-1);
  g_assert_cmpint(fm_start(m, NULL, (const char *const[]){ uri, NULL }),
                  ==, 0);
  type = fm_mount_type(m->dir);
  g_assert_cmpstr(type, ==, "fuse.nbdfs");
  g_assert_cmpint(m->daemon, >, 0);

  names = list_dir(m->dir);
  g_assert_cmpstr(names, ==, "disk");
  file = fm_path(m, "disk");
  g_assert_cmpint(stat(file, &st), ==, 0);
  g_assert_cmpuint(st.st_size, ==, 4 * MiB);
  g_assert_cmpuint(st.st_mode, ==, S_IFREG | 0644);
  g_assert_cmpuint(st.st_uid, ==, getuid());

  got = fm_read_range(file, 0, 4 * MiB);
  want = fm_read_range(img, 0, 4 * MiB);
  fm_assert_bytes(got, want, 4 * MiB, 0, "disk");

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  g_clear_pointer(&type, g_free);
  type = fm_mount_type(m->dir);
  g_assert_null(type);
  tl_server_stop(server);
}

/* An export that cannot be reached: exit 1, a message, nothing mounted
 * and no daemon left.
 */
static void
test_cli_connect_failure(void)
{
  g_autofree char *sock = NULL;
  g_autofree char *uri = NULL;
  g_autoptr(fm_mount) m = NULL;
  g_autoptr(fm_mount) m2 = NULL;

  if (!fm_nbdfs())
    return;

  sock = g_build_filename(tl_tmpdir(), "nobody-listens.sock", NULL);
  uri = g_strdup_printf("nbd+unix:///?socket=%s", sock);
  m = fm_new((uid_t)-1);
  fm_start(m, NULL, (const char *const[]){ uri, NULL });
  assert_failed_cleanly(m, 1);
  g_assert_nonnull(strstr(m->err, sock));

  /* A server that is there but does not have the export. */
  if (!tl_require("nbd-server"))
    return;

  g_autofree char *img = tl_make_file("alpha.img", 1 * MiB, 2);
  g_autoptr(GError) error = NULL;
  struct tl_server *server = tl_nbd_server_start(
      (const struct tl_export[]){ { "alpha", img, false }, { NULL } },
      &error);
  g_autofree char *missing = NULL;

  g_assert_no_error(error);
  missing = tl_server_uri(server, "beta");
  m2 = fm_new((uid_t)-1);
  fm_start(m2, NULL, (const char *const[]){ missing, NULL });
  assert_failed_cleanly(m2, 1);
  tl_server_stop(server);
}

/* Bad usage exits 2 with a message and mounts nothing. */
static void
test_cli_usage(void)
{
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  struct tl_server *server;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  img = tl_make_file("usage.img", 1 * MiB, 3);
  server = fm_start_nbdkit((const char *const[]){ "file", img, NULL });
  uri = tl_server_uri(server, "");

  const char *const *cases[] = {
    (const char *const[]){ NULL },
    (const char *const[]){ "--cache=bogus", uri, NULL },
    (const char *const[]){ "--tls=maybe", uri, NULL },
    (const char *const[]){ "--sched=fifo", uri, NULL },
    (const char *const[]){ "-C", "-1", uri, NULL },
    (const char *const[]){ "--no-such-option", uri, NULL },
    (const char *const[]){ "-o", "no_such_mount_option", uri, NULL },
    (const char *const[]){ "http://127.0.0.1/disk", NULL },
    (const char *const[]){ "--all", "--name", "x", uri, NULL },
    (const char *const[]){ "--name", "a/b", uri, NULL },
  };

  for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autoptr(fm_mount) m = fm_new((uid_t)-1);

    fm_start(m, NULL, cases[i]);
    assert_failed_cleanly(m, 2);
  }
  tl_server_stop(server);
}

/* A mount point that is missing, or a stale FUSE mount: exit 3 and a
 * message that says how to fix it.
 */
static void
test_cli_bad_mountpoint(void)
{
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autoptr(fm_mount) m = NULL;
  g_autoptr(fm_mount) stale = NULL;
  struct tl_server *server;
  struct stat st;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  img = tl_make_file("mountpoint.img", 1 * MiB, 4);
  server = fm_start_nbdkit((const char *const[]){ "file", img, NULL });
  uri = tl_server_uri(server, "");

  m = fm_new((uid_t)-1);
  g_assert_cmpint(g_rmdir(m->dir), ==, 0);
  fm_start(m, NULL, (const char *const[]){ uri, NULL });
  g_assert_cmpint(g_mkdir(m->dir, 0755), ==, 0);
  assert_failed_cleanly(m, 3);
  g_assert_nonnull(strstr(m->err, "mkdir -p"));

  /* A daemon killed outright leaves its mount stale. */
  stale = fm_mounted((const char *const[]){ uri, NULL });
  g_assert_cmpint(kill(stale->daemon, SIGKILL), ==, 0);
  g_assert_cmpint(fm_wait_daemon(stale, 10), ==, -1);
  g_assert_cmpint(stat(stale->dir, &st), ==, -1);
  g_assert_cmpint(errno, ==, ENOTCONN);

  /* A second nbdfs on the stale mount point: the same directory, so a
   * plain struct rather than a second registration.
   */
  struct fm_mount again = { .dir = stale->dir, .slot = stale->slot };

  fm_start(&again, NULL, (const char *const[]){ uri, NULL });
  g_assert_cmpint(again.status, ==, 3);
  g_assert_nonnull(strstr(again.err, "fusermount3 -u"));
  g_assert_cmpint(again.daemon, ==, 0);
  g_free(again.out);
  g_free(again.err);

  g_assert_cmpint(fm_run((const char *const[]){ "fusermount3", "-u",
                                                stale->dir, NULL },
                         10, NULL, NULL),
                  ==, 0);
  tl_server_stop(server);
}

/* File names: the export name with '/' made '_', "disk" for the empty
 * name, --name for a single URI; a clash is refused before mounting.
 */
static void
test_cli_names(void)
{
  g_autofree char *img = NULL;
  g_autofree char *plain = NULL;
  g_autofree char *nested = NULL;
  g_autofree char *flat = NULL;
  g_autofree char *names = NULL;
  g_autofree char *file = NULL;
  g_autofree guint8 *got = NULL;
  g_autofree guint8 *want = NULL;
  struct tl_server *server;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  /* The file plugin serves the same file under any export name. */
  img = tl_make_file("names.img", 1 * MiB, 5);
  server = fm_start_nbdkit((const char *const[]){ "file", img, NULL });
  plain = tl_server_uri(server, "");
  nested = tl_server_uri(server, "vm/disk0");
  flat = tl_server_uri(server, "vm_disk0");
  want = fm_read_range(img, 0, 1 * MiB);

  {
    g_autoptr(fm_mount) m =
        fm_mounted((const char *const[]){ plain, nested, NULL });

    names = list_dir(m->dir);
    g_assert_cmpstr(names, ==, "disk vm_disk0");
    file = fm_path(m, "vm_disk0");
    got = fm_read_range(file, 0, 1 * MiB);
    fm_assert_bytes(got, want, 1 * MiB, 0, "vm_disk0");
    g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  }

  {
    g_autoptr(fm_mount) m =
        fm_mounted((const char *const[]){ "--name", "root.img", nested,
                                        NULL });

    g_clear_pointer(&names, g_free);
    names = list_dir(m->dir);
    g_assert_cmpstr(names, ==, "root.img");
    g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  }

  /* Two URIs that would make the same file name. */
  const char *const *clashes[] = {
    (const char *const[]){ nested, nested, NULL },
    (const char *const[]){ nested, flat, NULL },
    (const char *const[]){ "--name", "x", plain, nested, NULL },
  };

  for (size_t i = 0; i < G_N_ELEMENTS(clashes); i++) {
    g_autoptr(fm_mount) m = fm_new((uid_t)-1);

    fm_start(m, NULL, clashes[i]);
    assert_failed_cleanly(m, 2);
    if (i < 2)
      g_assert_nonnull(strstr(m->err, "vm_disk0"));
  }
  tl_server_stop(server);
}

/* The scheduling policy of every thread of process PID, or -1 when the
 * threads disagree.  The threads that serve I/O start after the mount
 * is ready, so they are there to be counted. */
static int
thread_policy(pid_t pid, unsigned *threads)
{
  g_autofree char *dir = g_strdup_printf("/proc/%d/task", (int)pid);
  g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
  const char *tid;
  int policy = -2;

  g_assert_nonnull(d);
  *threads = 0;
  while ((tid = g_dir_read_name(d)) != NULL) {
    int p = sched_getscheduler((pid_t)atoi(tid));

    g_assert_cmpint(p, >=, 0);
    if (policy != -2 && p != policy)
      return -1;
    policy = p;
    (*threads)++;
  }
  return policy;
}

/* Every thread of the daemon runs SCHED_BATCH unless --sched=normal (or
 * -o sched=normal) asks for the default policy, and the choice holds for
 * the threads started to serve I/O. */
static void
test_cli_sched(void)
{
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  struct tl_server *server;
  struct {
    const char *opt1, *opt2;
    int want;
  } cases[] = {
    { NULL, NULL, SCHED_BATCH },
    { "--sched=batch", NULL, SCHED_BATCH },
    { "--sched=normal", NULL, SCHED_OTHER },
    { "-o", "sched=normal", SCHED_OTHER },
  };

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  img = tl_make_file("sched.img", 4 * MiB, 4);
  server = fm_start_nbdkit((const char *const[]){ "file", img, NULL });
  uri = tl_server_uri(server, "");

  for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
    const char *args[4] = { uri, NULL };
    g_autoptr(fm_mount) m = fm_new((uid_t)-1);
    g_autofree char *file = NULL;
    g_autofree guint8 *got = NULL;
    g_autofree guint8 *want = NULL;
    unsigned threads;

    if (cases[i].opt1 != NULL) {
      args[0] = cases[i].opt1;
      args[1] = cases[i].opt2 != NULL ? cases[i].opt2 : uri;
      args[2] = cases[i].opt2 != NULL ? uri : NULL;
    }
    g_assert_cmpint(fm_start(m, NULL, args), ==, 0);

    /* I/O first: readers and the scheduler's worker exist by now. */
    file = fm_path(m, "disk");
    got = fm_read_range(file, 0, 4 * MiB);
    want = fm_read_range(img, 0, 4 * MiB);
    fm_assert_bytes(got, want, 4 * MiB, 0, "disk");

    g_assert_cmpint(thread_policy(m->daemon, &threads), ==, cases[i].want);
    g_assert_cmpuint(threads, >=, 3);
    g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  }
  tl_server_stop(server);
}

/* ---- Read-only ---- */

/* A read-only file: mode 0444, opens for writing fail with EROFS (O9),
 * reads work, and the backing file is untouched.
 */
static void
assert_readonly_file(const char *file, const char *img, uint64_t size)
{
  g_autofree guint8 *got = NULL;
  g_autofree guint8 *want = NULL;
  g_autofree guint8 *after = NULL;
  struct stat st;

  g_assert_cmpint(stat(file, &st), ==, 0);
  g_assert_cmpuint(st.st_mode, ==, S_IFREG | 0444);
  g_assert_cmpuint(st.st_size, ==, size);

  /* Root ignores mode bits, so EROFS must come from nbdfs itself. */
  fm_assert_fails_with(open(file, O_RDWR | O_CLOEXEC), EROFS);
  fm_assert_fails_with(open(file, O_WRONLY | O_CLOEXEC), EROFS);

  /* Truncation is refused with EPERM on any export (the size is the
   * server's); EROFS would do as well here.
   */
  errno = 0;
  g_assert_cmpint(truncate(file, 0), ==, -1);
  g_assert_true(errno == EROFS || errno == EPERM);

  want = fm_read_range(img, 0, size);
  got = fm_read_range(file, 0, size);
  fm_assert_bytes(got, want, size, 0, "read-only file");
  after = fm_read_range(img, 0, size);
  fm_assert_bytes(after, want, size, 0, "backing file");
}

static void
test_readonly_option(void)
{
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  struct tl_server *server;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  img = tl_make_file("ro-option.img", 2 * MiB, 6);
  server = fm_start_nbdkit((const char *const[]){ "file", img, NULL });
  uri = tl_server_uri(server, "");

  const char *const *variants[] = {
    (const char *const[]){ "-r", uri, NULL },
    (const char *const[]){ "--readonly", uri, NULL },
    (const char *const[]){ "-o", "ro", uri, NULL },
  };

  for (size_t i = 0; i < G_N_ELEMENTS(variants); i++) {
    g_autoptr(fm_mount) m = fm_mounted(variants[i]);

    g_free(file);
    file = fm_path(m, "disk");
    assert_readonly_file(file, img, 2 * MiB);
    g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  }
  tl_server_stop(server);
}

static void
test_readonly_export_nbdkit(void)
{
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autofree char *flags = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;

  if (!fm_nbdfs() || !tl_require("nbdkit"))
    return;

  img = tl_make_file("ro-nbdkit.img", 2 * MiB, 7);
  server = fm_start_nbdkit((const char *const[]){ "-r", "file", img, NULL });
  uri = tl_server_uri(server, "");
  m = fm_mounted((const char *const[]){ uri, NULL });
  file = fm_path(m, "disk");
  flags = fm_get_xattr(file, "user.nbd.flags");
  g_assert_nonnull(strstr(flags, "READ_ONLY"));
  assert_readonly_file(file, img, 2 * MiB);
  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(server);
}

static void
test_readonly_export_nbd_server(void)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *img = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *file = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct tl_server *server;

  if (!fm_nbdfs() || !tl_require("nbd-server"))
    return;

  img = tl_make_file("ro-nbd-server.img", 2 * MiB, 8);
  server = tl_nbd_server_start(
      (const struct tl_export[]){ { "ro", img, true }, { NULL } }, &error);
  g_assert_no_error(error);
  uri = tl_server_uri(server, "ro");
  m = fm_mounted((const char *const[]){ uri, NULL });
  file = fm_path(m, "ro");
  assert_readonly_file(file, img, 2 * MiB);
  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  tl_server_stop(server);
}

int
main(int argc, char **argv)
{
  tl_init(&argc, &argv);
  fm_init();

  g_test_add_func("/fuse/cli/ready", test_cli_ready);
  g_test_add_func("/fuse/cli/connect-failure", test_cli_connect_failure);
  g_test_add_func("/fuse/cli/usage", test_cli_usage);
  g_test_add_func("/fuse/cli/bad-mountpoint", test_cli_bad_mountpoint);
  g_test_add_func("/fuse/cli/names", test_cli_names);
  g_test_add_func("/fuse/cli/sched", test_cli_sched);
  g_test_add_func("/fuse/readonly/option", test_readonly_option);
  g_test_add_func("/fuse/readonly/nbdkit-export",
                  test_readonly_export_nbdkit);
  g_test_add_func("/fuse/readonly/nbd-server-export",
                  test_readonly_export_nbd_server);

  return g_test_run();
}
