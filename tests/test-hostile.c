/* nbdfs against a hostile server: the daemon itself, on a real mount,
 * talks to tests/hostile-server, which serves correctly and then breaks
 * one rule of the protocol (its --mode) on purpose.
 *
 * What nbdfs does about a broken rule (nbdproto/reply.c, fuse/pool.c):
 * the connection ends, the commands in flight go back to the pool, and
 * after a reconnect they are sent again.  So:
 *
 *   once:    the server breaks the rule on the first request it applies
 *            to, then behaves: the application gets the right data and
 *            never sees an error;
 *   always:  the server breaks it on every such request: the
 *            application gets EIO once --reconnect-timeout has passed
 *            since the connection was first lost, not before and not
 *            much later, and the daemon makes a bounded number of
 *            attempts; when the server behaves again (SIGUSR1), so does
 *            the mount;
 *   handshake: an export size beyond 2^63-1, a flood of option replies:
 *            the mount fails with exit status 1 and a message that
 *            names the rule, within bounded time and memory.
 *
 * Every case also checks that the daemon logged the broken rule, is
 * still alive, and kept its peak memory under PEAK_LIMIT_KIB.  The
 * daemon runs in the foreground with -v so that its log can be read
 * (fm_start_foreground); mounts and the server are always taken down.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "fusemount.h"
#include "testlib.h"

#define KiB 1024
#define MiB (1024 * KiB)

/* Short timeouts keep the suite fast; the bounds below follow them. */
#define REQUEST_TIMEOUT_S 2
#define RECONNECT_TIMEOUT_S 3

/* nbdfs idles at about 10 MiB; anything near this is a leak or an
 * allocation sized by the server.  AddressSanitizer's quarantine (256
 * MiB) and redzones come on top under meson test --setup asan. */
#define PEAK_LIMIT_KIB (200 * 1024)
#define ASAN_PEAK_LIMIT_KIB (2 * PEAK_LIMIT_KIB + 256 * 1024)

/* A server that breaks a rule on every connection must not be met with
 * a tight loop of reconnections: a few per second at most. */
#define MAX_LOST_CONNECTIONS 20

#define IO_LEN (64 * KiB)
#define IO_OFF (1 * MiB)

/* ---- The hostile server ---- */

struct hostile {
  pid_t pid;
  char *socket;
  char *uri;
};

static volatile pid_t live_server;

static void
kill_live_server(void)
{
  if (live_server > 0)
    kill(live_server, SIGKILL);
}

static void
server_child_setup(gpointer unused)
{
  prctl(PR_SET_PDEATHSIG, SIGKILL);
}

static const char *
hostile_program(void)
{
  const char *path = g_getenv("HOSTILE_SERVER");

  if (path != NULL && access(path, X_OK) == 0)
    return path;
  if (g_strcmp0(g_getenv("CI"), "true") == 0) {
    g_test_message("prerequisite missing: $HOSTILE_SERVER");
    g_test_fail();
  } else {
    g_test_skip("prerequisite missing: $HOSTILE_SERVER");
  }
  return NULL;
}

/* Starts the server in MODE, misbehaving from the AT-th request it
 * applies to, TIMES times (0: for ever).  Returns once it listens. */
static struct hostile *
hostile_start(const char *mode, int at, int times)
{
  struct hostile *h = g_new0(struct hostile, 1);
  g_autofree char *at_s = g_strdup_printf("%d", at);
  g_autofree char *times_s = g_strdup_printf("%d", times);
  g_autoptr(GError) error = NULL;
  gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  const char *argv[] = {
    hostile_program(), "--socket", NULL, "--mode", mode, "--at", at_s,
    "--times", times_s, NULL,
  };

  h->socket = g_build_filename(tl_tmpdir(), "hostile.sock", NULL);
  h->uri = g_strdup_printf("nbd+unix:///?socket=%s", h->socket);
  argv[2] = h->socket;
  g_unlink(h->socket);
  if (!g_spawn_async(NULL, (char **)argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD,
                     server_child_setup, NULL, &h->pid, &error))
    g_error("hostile-server: %s", error->message);
  live_server = h->pid;

  /* The server renames its socket into place once it listens. */
  while (!g_file_test(h->socket, G_FILE_TEST_EXISTS)) {
    if (g_get_monotonic_time() > deadline ||
        waitpid(h->pid, NULL, WNOHANG) == h->pid)
      g_error("hostile-server --mode %s did not start", mode);
    g_usleep(10 * 1000);
  }
  return h;
}

static void
hostile_stop(struct hostile *h)
{
  kill(h->pid, SIGKILL);
  waitpid(h->pid, NULL, 0);
  live_server = 0;
  g_unlink(h->socket);
  g_free(h->socket);
  g_free(h->uri);
  g_free(h);
}

/* ---- The daemon and its log ---- */

static char *
new_log_path(void)
{
  static int n;

  return g_strdup_printf("%s/nbdfs-%d.log", tl_tmpdir(), ++n);
}

static char *
read_log(const char *log)
{
  char *text = NULL;

  if (!g_file_get_contents(log, &text, NULL, NULL))
    text = g_strdup("");
  return text;
}

/* Asserts that the daemon's log says WHAT within a few seconds (a
 * violation that follows a good reply is logged after the application
 * got its data); a failure shows the log. */
static void
assert_logged(const char *log, const char *what)
{
  gint64 deadline = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;

  for (;;) {
    g_autofree char *text = read_log(log);

    if (strstr(text, what) != NULL)
      return;
    if (g_get_monotonic_time() > deadline) {
      g_test_message("nbdfs log:\n%s", text);
      g_error("the nbdfs log does not say \"%s\"", what);
    }
    g_usleep(50 * 1000);
  }
}

static unsigned
count_in_log(const char *log, const char *what)
{
  g_autofree char *text = read_log(log);
  unsigned n = 0;

  for (const char *p = text; (p = strstr(p, what)) != NULL; p++)
    n++;
  return n;
}

/* Unmounts; the daemon must end with status 0.  A failure shows the
 * daemon's log, where a crash or a hang would have left its trace. */
static void
assert_clean_unmount(struct fm_mount *m, const char *log)
{
  int rc = fm_unmount(m, NULL);

  if (rc != 0) {
    g_autofree char *text = read_log(log);

    g_test_message("nbdfs log:\n%s", text);
  }
  g_assert_cmpint(rc, ==, 0);
}

static struct fm_mount *
mount_hostile(const struct hostile *h, const char *log)
{
  g_autofree char *rq = g_strdup_printf("%d", REQUEST_TIMEOUT_S);
  g_autofree char *rc = g_strdup_printf("%d", RECONNECT_TIMEOUT_S);
  struct fm_mount *m = fm_new((uid_t)-1);
  const char *const args[] = {
    "-v", "--request-timeout", rq, "--reconnect-timeout", rc, h->uri,
    NULL,
  };

  if (fm_start_foreground(m, args, log, NULL) != 0) {
    g_autofree char *text = read_log(log);

    g_error("nbdfs did not mount (status %d): %s", m->status, text);
  }
  return m;
}

static long
peak_limit_kib(void)
{
  return g_getenv("ASAN_OPTIONS") != NULL ? ASAN_PEAK_LIMIT_KIB
                                          : PEAK_LIMIT_KIB;
}

/* The daemon is alive, its mount is there, its peak memory bounded. */
static void
assert_healthy(const struct fm_mount *m)
{
  g_autofree char *type = fm_mount_type(m->dir);
  long peak = fm_peak_rss_kib(m->daemon);

  g_assert_true(tl_process_running(m->daemon));
  g_assert_cmpstr(type, ==, "fuse.nbdfs");
  g_test_message("nbdfs peak RSS (VmHWM): %ld KiB", peak);
  g_assert_cmpint(peak, >, 0);
  g_assert_cmpint(peak, <, peak_limit_kib());
}

/* ---- The rules ---- */

struct rule {
  const char *mode;
  const char *says;     /* what the daemon's log must contain */
  bool on_write;        /* the mode applies to WRITEs, not READs */
  bool answered;        /* the request got its good reply before the
                         * violation, so it succeeds even "always" */
  bool slow;            /* it takes --request-timeout to notice */
};

/* The checklist ID that each message names (nbdproto/reply.c), or the
 * words of the one case that breaks no rule but the stream itself. */
static const struct rule rules[] = {
  { "bad-magic", "bad reply magic 0xdeadbeef (V20)" },
  { "unknown-cookie", "(V21)" },
  { "chunk-outside", "(V27)" },
  { "data-for-write", "(V24)", .on_write = true },
  { "oversize-chunk", "(V33)" },
  { "duplicate", "(V21)", .answered = true },
  { "error-offset", "outside the request (V29)" },
  { "disconnect", "server closed the connection" },
  { "slow-drip", "(--request-timeout)", .slow = true },
};

/* The application's side: write a pattern at IO_OFF and read it back
 * through its own descriptor.  Returns 0, or the errno of the first
 * call that failed (the read-back must then match, else it aborts). */
static int
write_and_read_back(const char *path, unsigned seed, gint64 *write_us,
                    gint64 *read_us)
{
  g_autofree guint8 *want = g_malloc(IO_LEN);
  g_autofree guint8 *got = g_malloc0(IO_LEN);
  gint64 start;
  ssize_t n;
  int fd, err = 0;

  tl_fill_random(want, IO_LEN, seed, IO_OFF);
  fd = open(path, O_RDWR | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);

  start = g_get_monotonic_time();
  n = pwrite(fd, want, IO_LEN, IO_OFF);
  if (n < 0)
    err = errno;
  *write_us = g_get_monotonic_time() - start;
  if (err == 0) {
    g_assert_cmpint(n, ==, IO_LEN);
    start = g_get_monotonic_time();
    n = pread(fd, got, IO_LEN, IO_OFF);
    if (n < 0)
      err = errno;
    *read_us = g_get_monotonic_time() - start;
  }
  if (err == 0) {
    g_assert_cmpint(n, ==, IO_LEN);
    fm_assert_bytes(got, want, IO_LEN, IO_OFF, "read back");
  }
  close(fd);
  return err;
}

static bool
have_prerequisites(void)
{
  return fm_nbdfs() != NULL && hostile_program() != NULL;
}

/* The server breaks the rule once, then behaves: the daemon logs the
 * rule, reconnects, sends the request again, and the application gets
 * the right data without an error (D9). */
static void
test_once(gconstpointer data)
{
  const struct rule *r = data;
  g_autofree char *log = new_log_path();
  g_autofree char *path = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct hostile *h;
  gint64 w_us = 0, r_us = 0, bound_us;

  if (!have_prerequisites())
    return;
  h = hostile_start(r->mode, 1, 1);
  m = mount_hostile(h, log);
  path = fm_path(m, "disk");

  g_assert_cmpint(write_and_read_back(path, 1, &w_us, &r_us), ==, 0);
  g_test_message("%s once: write %" G_GINT64_FORMAT " ms, read %"
                 G_GINT64_FORMAT " ms", r->mode, w_us / 1000, r_us / 1000);

  /* A violation costs one reconnect, at once; a stall costs the
   * request timeout (checked each second) on top. */
  bound_us = (r->slow ? REQUEST_TIMEOUT_S + 3 : 3) * G_USEC_PER_SEC;
  g_assert_cmpint(r->on_write ? w_us : r_us, <, bound_us);

  assert_logged(log, "connection lost");
  assert_logged(log, r->says);
  assert_logged(log, "reconnected");
  assert_healthy(m);

  /* Later requests go through as usual. */
  g_assert_cmpint(write_and_read_back(path, 2, &w_us, &r_us), ==, 0);
  assert_clean_unmount(m, log);
  hostile_stop(h);
}

/* The server breaks the rule on every request it applies to.  The
 * daemon keeps trying for --reconnect-timeout after the connection was
 * first lost, a few times and not in a tight loop, then fails the
 * request with EIO and says why.  The mount stays; once the server
 * behaves, I/O works again. */
static void
test_always(gconstpointer data)
{
  const struct rule *r = data;
  g_autofree char *log = new_log_path();
  g_autofree char *path = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct hostile *h;
  gint64 w_us = 0, r_us = 0, took_us, low_us, high_us, deadline;
  unsigned lost;
  int err;

  if (!have_prerequisites())
    return;
  h = hostile_start(r->mode, 1, 0);
  m = mount_hostile(h, log);
  path = fm_path(m, "disk");

  err = write_and_read_back(path, 3, &w_us, &r_us);
  took_us = r->on_write ? w_us : r_us;
  g_test_message("%s always: %s after %" G_GINT64_FORMAT " ms", r->mode,
                 g_strerror(err), took_us / 1000);
  assert_logged(log, r->says);

  if (r->answered) {
    /* Every reply was whole before the rule broke: no error. */
    g_assert_cmpint(err, ==, 0);
  } else {
    /* No sooner than the reconnect timeout, no later than the checks
     * that enforce it allow: a request timeout to notice a stall, then
     * one more round of it before the next check; a second each. */
    g_assert_cmpint(err, ==, EIO);
    low_us = RECONNECT_TIMEOUT_S * G_USEC_PER_SEC;
    high_us = (RECONNECT_TIMEOUT_S + 3 +
               (r->slow ? 2 * REQUEST_TIMEOUT_S + 2 : 0)) * G_USEC_PER_SEC;
    g_assert_cmpint(took_us, >=, low_us);
    g_assert_cmpint(took_us, <, high_us);
    assert_logged(log, "(--reconnect-timeout)");
  }
  lost = count_in_log(log, "connection lost");
  g_test_message("%s always: %u connections lost", r->mode, lost);
  g_assert_cmpuint(lost, >=, 1);
  g_assert_cmpuint(lost, <=, MAX_LOST_CONNECTIONS);
  assert_healthy(m);

  /* The server mends its ways: within the reconnect backoff (5 s at
   * most) the same mount works again, and nothing crashed meanwhile. */
  kill(h->pid, SIGUSR1);
  deadline = g_get_monotonic_time() + 15 * G_USEC_PER_SEC;
  while ((err = write_and_read_back(path, 4, &w_us, &r_us)) != 0) {
    g_assert_cmpint(err, ==, EIO);
    g_assert_cmpint(g_get_monotonic_time(), <, deadline);
    g_usleep(200 * 1000);
  }
  assert_healthy(m);
  assert_clean_unmount(m, log);
  hostile_stop(h);
}

/* ---- Broken handshakes: the mount itself must fail cleanly ---- */

struct handshake_case {
  const char *mode;
  const char *says;
};

static const struct handshake_case handshakes[] = {
  /* V10: off_t cannot hold it. */
  { "size-2^63", "export size 9223372036854775808 is beyond 2^63-1 "
                 "(V10)" },
  { "size-2^64-1", "export size 18446744073709551615 is beyond 2^63-1 "
                   "(V10)" },
  /* V4: a hundred thousand NBD_REP_INFO before the ACK; nbdfs stops
   * reading after a few dozen. */
  { "info-flood", "NBD_REP_INFO" },
};

static void
test_handshake(gconstpointer data)
{
  const struct handshake_case *c = data;
  g_autofree char *log = new_log_path();
  g_autofree char *type = NULL;
  g_autoptr(fm_mount) m = NULL;
  struct hostile *h;
  long peak = 0;
  gint64 start, took;
  int status;

  if (!have_prerequisites())
    return;
  h = hostile_start(c->mode, 1, 1);
  m = fm_new((uid_t)-1);

  start = g_get_monotonic_time();
  status = fm_start_foreground(m, (const char *const[]){ h->uri, NULL },
                               log, &peak);
  took = g_get_monotonic_time() - start;
  g_test_message("%s: exit %d after %" G_GINT64_FORMAT " ms, peak RSS "
                 "%ld KiB", c->mode, status, took / 1000, peak);

  /* Exit status 1: the export could not be negotiated; nothing is
   * mounted; the one line on stderr names the rule. */
  g_assert_cmpint(status, ==, 1);
  type = fm_mount_type(m->dir);
  g_assert_cmpstr(type, ==, NULL);
  assert_logged(log, c->says);
  g_assert_cmpint(took, <, 10 * G_USEC_PER_SEC);
  g_assert_cmpint(peak, >, 0);
  g_assert_cmpint(peak, <, peak_limit_kib());
  hostile_stop(h);
}

int
main(int argc, char **argv)
{
  tl_init(&argc, &argv);

  /* Registered before fm_init(), so it runs after the mounts are down
   * (atexit order is reversed): no daemon outlives its server. */
  atexit(kill_live_server);
  fm_init();

  for (size_t i = 0; i < G_N_ELEMENTS(rules); i++) {
    g_autofree char *once = g_strdup_printf("/hostile/once/%s",
                                            rules[i].mode);
    g_autofree char *always = g_strdup_printf("/hostile/always/%s",
                                              rules[i].mode);

    g_test_add_data_func(once, &rules[i], test_once);
    g_test_add_data_func(always, &rules[i], test_always);
  }
  for (size_t i = 0; i < G_N_ELEMENTS(handshakes); i++) {
    g_autofree char *name = g_strdup_printf("/hostile/handshake/%s",
                                            handshakes[i].mode);

    g_test_add_data_func(name, &handshakes[i], test_handshake);
  }
  return g_test_run();
}
