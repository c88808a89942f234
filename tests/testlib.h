/* nbdfs test helpers: start real NBD servers for GLib tests and always
 * stop them.
 *
 * A test program calls tl_init() instead of g_test_init().  From then on
 * every server started through this file is killed when the program ends,
 * whether it returns from main, calls exit(), fails an assertion (SIGABRT)
 * or is stopped by meson's timeout (SIGTERM), and the program's private
 * temporary directory is removed.  nbdkit and qemu-nbd also die with the
 * thread that started them (--exit-with-parent, PR_SET_PDEATHSIG), which
 * covers a SIGKILL; so start servers from the main thread.
 *
 * Helpers that can fail for reasons outside the test (a server that will
 * not start) return NULL and set a GError; helpers that can only fail
 * when the machine is broken (a full temporary directory) abort with
 * g_error().
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDFS_TESTLIB_H
#define NBDFS_TESTLIB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <glib.h>

struct tl_server {
  pid_t pid;         /* the server process (a daemon for nbd-server) */
  bool is_child;     /* pid is our child, so we must reap it */
  char *program;     /* "nbdkit", "nbd-server" or "qemu-nbd" */
  char *socket_path; /* Unix socket, or NULL for a TCP server */
  char *host;        /* "127.0.0.1" for a TCP server, else NULL */
  int port;          /* TCP port, or 0 for a Unix socket */
  char *pidfile;     /* where the server wrote its pid */
  char *config;      /* nbd-server's configuration file, else NULL */
  int slot;          /* index in the table of live servers */
};

/* One export of tl_nbd_server_start(); an array of them ends with an
 * entry whose name is NULL.  path must be absolute (nbd-server refuses
 * relative paths).
 */
struct tl_export {
  const char *name;
  const char *path;
  bool readonly;
  const char *extra;  /* more "key = value" lines for the section */
};

/* Replaces g_test_init(): also makes the temporary directory and
 * installs the handlers that stop every server at exit.
 */
void tl_init(int *argc, char ***argv);

/* The program's private temporary directory, removed at exit. */
const char *tl_tmpdir(void);

/* True when PROGRAM is in PATH.  Otherwise the current test is marked
 * skipped, or failed when the environment variable CI is "true" (CI must
 * never pass by skipping), and the caller should return at once.
 */
bool tl_require(const char *program);

/* nbdkit in the foreground on a fresh Unix socket in tl_tmpdir().  ARGS
 * is NULL-terminated and holds what follows nbdkit's own options: any
 * --filter=, the plugin, and its parameters, e.g. { "memory", "64M",
 * NULL }.  Returns once the server accepts connections (at most 10 s).
 */
struct tl_server *tl_nbdkit_start(const char *const *args, GError **error);

/* The same on a free TCP port of 127.0.0.1. */
struct tl_server *tl_nbdkit_start_tcp(const char *const *args,
                                      GError **error);

/* nbd-server with one section per export, on a free TCP port of
 * 127.0.0.1 with listing allowed.  nbd-server serves only one session
 * when it does not fork (-d), so it runs as a daemon; the pid is the
 * daemon's, and tl_server_stop() stops it all the same.
 */
struct tl_server *tl_nbd_server_start(const struct tl_export *exports,
                                      GError **error);

/* The same with GENERIC (may be NULL) added to the [generic] section,
 * e.g. the TLS keys "certfile = ...\nkeyfile = ...\n".
 */
struct tl_server *tl_nbd_server_start_with(const struct tl_export *exports,
                                           const char *generic,
                                           GError **error);

/* qemu-nbd serving FILE in FORMAT ("raw", "qcow2") as EXPORT_NAME on a
 * fresh Unix socket, persistent and shareable by several clients.
 * EXTRA_ARGS (NULL-terminated, may be NULL) go before the file name.
 */
struct tl_server *tl_qemu_nbd_start(const char *file, const char *format,
                                    const char *export_name,
                                    const char *const *extra_args,
                                    GError **error);

/* The NBD URI of EXPORT_NAME on SERVER ("" for the default export):
 * nbd+unix:///NAME?socket=PATH or nbd://127.0.0.1:PORT/NAME.  Free the
 * result with g_free().
 */
char *tl_server_uri(const struct tl_server *server, const char *export_name);

/* A connected stream socket to SERVER, or -1 with ERROR set. */
int tl_server_connect(const struct tl_server *server, GError **error);

/* SIGTERM, up to 5 s of grace, then SIGKILL; frees SERVER.  NULL is
 * accepted.
 */
void tl_server_stop(struct tl_server *server);

/* True while PID exists and is not a zombie. */
bool tl_process_running(pid_t pid);

/* Fills BUF with the LEN pseudo-random bytes that start at OFFSET of the
 * endless stream named by SEED.  Any byte of the stream can be computed
 * on its own, so a test can check a range read from the middle of a file
 * that tl_make_file() wrote.
 */
void tl_fill_random(void *buf, size_t len, unsigned seed, uint64_t offset);

/* Writes the first SIZE bytes of SEED's stream to NAME in tl_tmpdir()
 * and returns the file's path (free with g_free()).
 */
char *tl_make_file(const char *name, size_t size, unsigned seed);

#endif /* NBDFS_TESTLIB_H */
