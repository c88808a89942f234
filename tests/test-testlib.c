/* Proves the test helpers: each server starts, greets a client with
 * NBDMAGIC, and is gone after tl_server_stop(); a test that dies still
 * takes its servers and temporary directory with it.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>

#include <glib.h>

#include "testlib.h"

/* Reads the first 8 bytes a server sends on a new connection. */
static void
assert_greets(const struct tl_server *server)
{
  g_autoptr(GError) error = NULL;
  struct timeval tv = { .tv_sec = 5 };
  char magic[8];
  ssize_t n;
  int fd;

  fd = tl_server_connect(server, &error);
  g_assert_no_error(error);
  g_assert_cmpint(fd, >=, 0);

  /* A server that accepts but never writes must fail the test, not hang
   * it until meson's timeout.
   */
  g_assert_cmpint(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv),
                  ==, 0);
  n = recv(fd, magic, sizeof magic, MSG_WAITALL);
  g_assert_cmpint(n, ==, sizeof magic);
  g_assert_cmpmem(magic, sizeof magic, "NBDMAGIC", 8);
  close(fd);
}

static void
assert_stops(struct tl_server *server)
{
  pid_t pid = server->pid;

  g_assert_true(tl_process_running(pid));
  tl_server_stop(server);
  g_assert_false(tl_process_running(pid));
}

static void
test_nbdkit_unix(void)
{
  const char *args[] = { "memory", "64M", NULL };
  g_autoptr(GError) error = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *want = NULL;
  struct tl_server *server;

  if (!tl_require("nbdkit"))
    return;

  server = tl_nbdkit_start(args, &error);
  g_assert_no_error(error);
  g_assert_nonnull(server->socket_path);

  uri = tl_server_uri(server, "disk one");
  want = g_strdup_printf("nbd+unix:///disk%%20one?socket=%s",
                         server->socket_path);
  g_assert_cmpstr(uri, ==, want);

  assert_greets(server);
  assert_greets(server);
  assert_stops(server);
}

static void
test_nbdkit_tcp(void)
{
  const char *args[] = { "pattern", "1M", NULL };
  g_autoptr(GError) error = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *want = NULL;
  struct tl_server *server;

  if (!tl_require("nbdkit"))
    return;

  server = tl_nbdkit_start_tcp(args, &error);
  g_assert_no_error(error);
  g_assert_cmpint(server->port, >, 0);

  uri = tl_server_uri(server, "");
  want = g_strdup_printf("nbd://127.0.0.1:%d/", server->port);
  g_assert_cmpstr(uri, ==, want);

  assert_greets(server);
  assert_stops(server);
}

static void
test_nbdkit_bad_plugin(void)
{
  const char *args[] = { "nbdfs-no-such-plugin", NULL };
  g_autoptr(GError) error = NULL;
  struct tl_server *server;

  if (!tl_require("nbdkit"))
    return;

  server = tl_nbdkit_start(args, &error);
  g_assert_null(server);
  g_assert_nonnull(error);
  g_assert_true(g_str_has_prefix(error->message, "start: nbdkit: "));
}

static void
test_nbd_server_two_exports(void)
{
  g_autofree char *a = NULL;
  g_autofree char *b = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *uri = NULL;
  struct tl_server *server;

  if (!tl_require("nbd-server"))
    return;

  a = tl_make_file("nbd-server-a.img", 1 << 20, 1);
  b = tl_make_file("nbd-server-b.img", 2 << 20, 2);
  server = tl_nbd_server_start((const struct tl_export[]){
                                   { "alpha", a, false },
                                   { "beta", b, true },
                                   { NULL },
                               },
                               &error);
  g_assert_no_error(error);

  uri = tl_server_uri(server, "beta");
  g_assert_true(g_str_has_prefix(uri, "nbd://127.0.0.1:"));
  g_assert_true(g_str_has_suffix(uri, "/beta"));

  /* Twice: nbd-server -d would have exited after the first session. */
  assert_greets(server);
  assert_greets(server);
  assert_stops(server);
}

static void
test_qemu_nbd(const char *format)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *file = NULL;
  g_autofree char *uri = NULL;
  struct tl_server *server;

  if (!tl_require("qemu-nbd"))
    return;

  if (strcmp(format, "qcow2") == 0) {
    g_autofree char *err_out = NULL;
    int status;

    if (!tl_require("qemu-img"))
      return;
    file = g_build_filename(tl_tmpdir(), "disk.qcow2", NULL);
    const char *argv[] = {
      "qemu-img", "create", "-q", "-f", "qcow2", file, "16M", NULL,
    };
    g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL,
                 NULL, NULL, &err_out, &status, &error);
    g_assert_no_error(error);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      g_error("qemu-img: create: %s: %s", file, err_out);
  } else {
    file = tl_make_file("disk.raw", 4 << 20, 3);
  }

  server = tl_qemu_nbd_start(file, format, "vol", NULL, &error);
  g_assert_no_error(error);

  uri = tl_server_uri(server, "vol");
  g_assert_true(g_str_has_prefix(uri, "nbd+unix:///vol?socket="));

  assert_greets(server);
  assert_greets(server);
  assert_stops(server);
}

static void
test_qemu_nbd_raw(void)
{
  test_qemu_nbd("raw");
}

static void
test_qemu_nbd_qcow2(void)
{
  test_qemu_nbd("qcow2");
}

static void
test_make_file(void)
{
  g_autofree char *path = tl_make_file("pattern.bin", 3 << 20, 42);
  g_autofree char *data = NULL;
  guint8 expect[100], other[100];
  gsize len;

  g_assert_true(g_file_get_contents(path, &data, &len, NULL));
  g_assert_cmpuint(len, ==, 3 << 20);

  /* Any range of the stream can be recomputed on its own, including
   * across the 1 MiB chunks the file was written in.
   */
  tl_fill_random(expect, sizeof expect, 42, (1 << 20) - 37);
  g_assert_cmpmem(data + (1 << 20) - 37, sizeof expect, expect,
                  sizeof expect);

  tl_fill_random(other, sizeof other, 43, (1 << 20) - 37);
  g_assert_true(memcmp(expect, other, sizeof other) != 0);
}

/* The child half of test_require_missing(). */
static void
require_child(void)
{
  g_assert_false(tl_require("nbdfs-no-such-program"));
}

/* Runs this program again with only require_child() in it, with CI set
 * to CI_VALUE or unset, and returns the TAP it printed.
 */
static char *
run_require_child(const char *ci_value)
{
  const char *argv[] = { "/proc/self/exe", "--tap", NULL };
  g_auto(GStrv) env = g_get_environ();
  g_autoptr(GError) error = NULL;
  char *out = NULL;
  int status;

  env = g_environ_setenv(env, "TL_TEST_REQUIRE_CHILD", "1", true);
  if (ci_value != NULL)
    env = g_environ_setenv(env, "CI", ci_value, true);
  else
    env = g_environ_unsetenv(env, "CI");

  g_spawn_sync(NULL, (char **)argv, env, 0, NULL, NULL, &out, NULL,
               &status, &error);
  g_assert_no_error(error);
  return out;
}

/* What meson sees when a prerequisite is missing: a skip on a
 * developer's machine, a failure under CI=true.
 */
static void
test_require_missing(void)
{
  g_autofree char *dev = run_require_child(NULL);
  g_autofree char *ci = run_require_child("true");

  g_assert_nonnull(strstr(dev, "\nok 1 /testlib/require/child # SKIP "
                               "prerequisite missing: "
                               "nbdfs-no-such-program\n"));
  g_assert_nonnull(strstr(ci, "\nnot ok 1 /testlib/require/child"));
  g_assert_nonnull(strstr(ci, "prerequisite missing: "
                              "nbdfs-no-such-program"));
}

/* In a subprocess: start nbdkit, note its pid and the temporary
 * directory in the file named by $TL_TEST_REPORT, then fail an
 * assertion.  The parent checks that both are gone.
 */
static void
test_abort_cleans_up(void)
{
  g_autofree char *report = NULL;
  g_autofree char *text = NULL;
  g_auto(GStrv) fields = NULL;
  g_autoptr(GError) error = NULL;

  if (!tl_require("nbdkit"))
    return;

  if (g_test_subprocess()) {
    const char *args[] = { "memory", "1M", NULL };
    struct tl_server *server = tl_nbdkit_start(args, &error);
    g_autofree char *line = NULL;

    g_assert_no_error(error);
    line = g_strdup_printf("%d %s", (int)server->pid, tl_tmpdir());
    g_assert_true(g_file_set_contents(g_getenv("TL_TEST_REPORT"), line,
                                      -1, NULL));
    abort();
  }

  report = g_build_filename(tl_tmpdir(), "abort-report", NULL);
  g_setenv("TL_TEST_REPORT", report, true);
  g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_DEFAULT);
  g_test_trap_assert_failed();

  g_assert_true(g_file_get_contents(report, &text, NULL, &error));
  g_assert_no_error(error);
  fields = g_strsplit(text, " ", 2);
  g_assert_cmpuint(g_strv_length(fields), ==, 2);
  g_assert_false(tl_process_running(atoi(fields[0])));
  g_assert_false(g_file_test(fields[1], G_FILE_TEST_EXISTS));
}

int
main(int argc, char **argv)
{
  tl_init(&argc, &argv);

  if (g_getenv("TL_TEST_REQUIRE_CHILD") != NULL) {
    g_test_add_func("/testlib/require/child", require_child);
    return g_test_run();
  }

  g_test_add_func("/testlib/nbdkit/unix-memory", test_nbdkit_unix);
  g_test_add_func("/testlib/nbdkit/tcp-pattern", test_nbdkit_tcp);
  g_test_add_func("/testlib/nbdkit/bad-plugin-fails", test_nbdkit_bad_plugin);
  g_test_add_func("/testlib/nbd-server/two-exports",
                  test_nbd_server_two_exports);
  g_test_add_func("/testlib/qemu-nbd/raw", test_qemu_nbd_raw);
  g_test_add_func("/testlib/qemu-nbd/qcow2", test_qemu_nbd_qcow2);
  g_test_add_func("/testlib/make-file/random-access", test_make_file);
  g_test_add_func("/testlib/require/missing-skips-or-fails",
                  test_require_missing);
  g_test_add_func("/testlib/cleanup/abort-stops-servers",
                  test_abort_cleans_up);

  return g_test_run();
}
