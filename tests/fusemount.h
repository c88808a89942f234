/* nbdfs FUSE test helpers: run the nbdfs daemon on a private mount point
 * and always take the mount down again.
 *
 * A test program calls fm_init() right after tl_init().  From then on the
 * program is a child subreaper, so a daemonized nbdfs becomes its child
 * once the nbdfs command returns: its exit status can be collected and it
 * can be killed without guessing.  Every mount point, loop device and
 * extra mount registered here is released when the program ends, whether
 * it returns, fails an assertion (SIGABRT) or is stopped by meson's
 * timeout (SIGTERM): first the mounts are detached, then the daemons are
 * stopped, and only then does testlib stop the servers, so that no daemon
 * is left talking to a dead server.
 *
 * Every external program runs with a time limit; nothing here waits
 * without one.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDFS_FUSEMOUNT_H
#define NBDFS_FUSEMOUNT_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <glib.h>

struct tl_server;

struct fm_mount {
  char *parent;  /* private directory that holds only the mount point */
  char *dir;     /* the mount point, PARENT/mnt */
  pid_t daemon;  /* the nbdfs daemon, our child; 0 when none */
  int status;    /* exit status of the nbdfs command, -1 when it hung */
  char *out;     /* what the nbdfs command printed on stdout */
  char *err;     /* and on stderr */
  int slot;      /* index in the table of things to release at exit */
};

typedef struct fm_mount fm_mount;

/* Makes the program a subreaper and installs the exit and signal
 * handlers.  Call it once, after tl_init(), from the main thread.
 */
void fm_init(void);

/* The nbdfs executable from the environment variable NBDFS.  When it is
 * missing, the current test is skipped (failed under CI=true) and NULL
 * is returned.
 */
const char *fm_nbdfs(void);

/* True when running as root; otherwise the test is skipped, or failed
 * under CI=true, and the caller returns at once.
 */
bool fm_require_root(void);

/* Runs ARGV (NULL-terminated, searched in PATH) with stdin from
 * /dev/null for at most TIMEOUT_S seconds.  OUT and ERR, when not NULL,
 * receive what it printed.  Returns its exit status, or -1 when it was
 * killed by a signal or by the time limit (which is logged).
 */
int fm_run(const char *const *argv, int timeout_s, char **out, char **err);

/* A fresh mount point owned by OWNER (a uid, or -1 to keep ours) in its
 * own directory under the system's temporary directory, registered for
 * release at exit.  Aborts only when the machine is broken.
 */
struct fm_mount *fm_new(uid_t owner);

/* Runs "PREFIX... nbdfs ARGS... M->dir" (PREFIX may be NULL, e.g. a
 * setpriv command line) and waits for it to return, as a script would.
 * Sets M->status, M->out and M->err; on status 0 also finds the daemon.
 * On failure any daemon that was left behind is reaped.  Returns
 * M->status.
 */
int fm_start(struct fm_mount *m, const char *const *prefix,
             const char *const *args);

/* fm_new() and fm_start() with ARGS; the current test fails (fatally)
 * unless nbdfs exits 0 and the mount is there.
 */
struct fm_mount *fm_mounted(const char *const *args);

/* The path of file NAME in the mount (free with g_free()). */
char *fm_path(const struct fm_mount *m, const char *name);

/* Unmounts with "PREFIX... fusermount3 -u M->dir" and waits up to 20 s
 * for the daemon to end.  Returns the daemon's exit status, or -1 when
 * the unmount failed, the daemon had to be killed or was already gone
 * (each case is logged).
 */
int fm_unmount(struct fm_mount *m, const char *const *prefix);

/* Waits up to TIMEOUT_S seconds for the daemon to end by itself (after a
 * signal, say).  Returns its exit status, -2 when it is still running,
 * or -1 when it was killed by a signal.
 */
int fm_wait_daemon(struct fm_mount *m, int timeout_s);

/* Takes down whatever is left (lazy unmount, then SIGTERM and SIGKILL to
 * the daemon), removes the directories and frees M.  NULL is accepted.
 */
void fm_free(struct fm_mount *m);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(fm_mount, fm_free)

/* The type of the filesystem mounted on DIR according to
 * /proc/self/mounts ("fuse.nbdfs", "ext4"), or NULL when nothing is.
 * Free with g_free().
 */
char *fm_mount_type(const char *dir);

/* Registers another mount point (FM_OTHER_MOUNT) or a loop device
 * (FM_LOOP) to release at exit, before the FUSE mounts.  Returns a
 * handle for fm_untrack().
 */
enum fm_kind {
  FM_OTHER_MOUNT,
  FM_LOOP,
};
int fm_track(enum fm_kind kind, const char *path);
void fm_untrack(int handle);

/* chmod 0666 /dev/fuse, as distributions ship it, until
 * fm_restore_fuse_device() or the end of the program.
 */
void fm_open_fuse_device(void);
void fm_restore_fuse_device(void);

/* ---- Checks shared by the FUSE tests; each fails the test itself ---- */

/* Asserts that EXPR, a call that returns -1 on failure, failed with
 * errno E; the errno strings make a failure readable.
 */
#define fm_assert_fails_with(expr, e)                                  \
  do {                                                                 \
    long long r_ = (long long)(expr);                                  \
    int e_ = errno;                                                    \
                                                                       \
    g_assert_cmpint(r_, ==, -1);                                       \
    g_assert_cmpstr(g_strerror(e_), ==, g_strerror(e));                \
  } while (0)

/* tl_nbdkit_start() that must succeed. */
struct tl_server *fm_start_nbdkit(const char *const *args);

/* Asserts that LEN bytes of GOT equal WANT; a failure names the first
 * difference as file offset BASE + i and says WHAT was compared.
 */
void fm_assert_bytes(const void *got, const void *want, size_t len,
                     uint64_t base, const char *what);

/* LEN bytes at OFF of the file at PATH (free with g_free()). */
guint8 *fm_read_range(const char *path, uint64_t off, size_t len);

/* pwrite() of all LEN bytes at OFF. */
void fm_write_range(int fd, const void *buf, size_t len, uint64_t off);

/* A sparse file of SIZE bytes named NAME in tl_tmpdir(); returns its
 * path (free with g_free()).
 */
char *fm_make_sparse_file(const char *name, uint64_t size);

/* The value of extended attribute NAME of PATH (free with g_free()). */
char *fm_get_xattr(const char *path, const char *name);

/* ---- A daemon in the foreground, for tests that read its log ---- */

/* Runs "nbdfs -f ARGS... M->dir" as our child, with its standard error
 * (every log line, -f sends them there) appended to the file LOG, and
 * waits up to 30 s for the mount to appear or nbdfs to end.  Returns 0
 * once mounted, with M->daemon set, so that fm_unmount() and fm_free()
 * work as after fm_start().  Otherwise returns nbdfs's exit status, or
 * -1 when a signal or the time limit ended it; then *PEAK_KIB (when not
 * NULL) holds its peak resident size in KiB.  M->status is set too.
 */
int fm_start_foreground(struct fm_mount *m, const char *const *args,
                        const char *log, long *peak_kib);

/* The peak resident size (VmHWM) of the live process PID in KiB, or -1
 * when it is gone.
 */
long fm_peak_rss_kib(pid_t pid);

/* The resident size (VmRSS) of the live process PID in KiB, or -1. */
long fm_rss_kib(pid_t pid);

#endif /* NBDFS_FUSEMOUNT_H */
