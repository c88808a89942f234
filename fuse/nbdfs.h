/* nbdfs: declarations shared by the daemon's parts.
 *
 * Layers, top down: fs.c answers FUSE requests; sched.c turns each into
 * NBD commands (split, aligned, ordered); pool.c spreads the commands
 * over the connections of an export; nbdproto sends them.
 *
 * Error convention (HACKING.md): FUSE requests are answered exactly once,
 * with a positive errno through one fuse_reply_* call.  The real cause is
 * logged before it is reduced to that errno.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDFS_NBDFS_H
#define NBDFS_NBDFS_H

#define FUSE_USE_VERSION 312

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <fuse_lowlevel.h>
#include <glib.h>

#include "nbdproto.h"

/* ---- log.c ------------------------------------------------------------ */

enum log_level {
  LOG_LEVEL_ERROR,
  LOG_LEVEL_WARNING,
  LOG_LEVEL_INFO,  /* -v: lifecycle events */
  LOG_LEVEL_DEBUG, /* -d: one line per request */
};

extern enum log_level log_max;

/* Sends log lines to syslog from now on (after daemonizing). */
void log_to_syslog(void);
void log_msg(enum log_level level, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_LEVEL_WARNING, __VA_ARGS__)
#define log_info(...)                                                  \
  do {                                                                 \
    if (log_max >= LOG_LEVEL_INFO)                                     \
      log_msg(LOG_LEVEL_INFO, __VA_ARGS__);                            \
  } while (0)
#define log_debug(...)                                                 \
  do {                                                                 \
    if (log_max >= LOG_LEVEL_DEBUG)                                    \
      log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__);                           \
  } while (0)

/* ---- stats.c: live statistics ------------------------------------------ */

#define STATS_TYPES 8    /* NBD_CMD_READ .. NBD_CMD_BLOCK_STATUS */
#define STATS_BUCKETS 32 /* log2 microseconds */

struct stats {
  uint64_t commands[STATS_TYPES];
  uint64_t bytes[STATS_TYPES];
  uint64_t errors;
  uint64_t spliced;        /* read replies moved by splice (splice.c) */
  uint64_t latency[STATS_BUCKETS];
  uint64_t samples;
};

/* Counts one completed NBD command that took us microseconds.  The
 * caller serialises calls. */
void stats_record(struct stats *st, uint16_t type, uint32_t bytes, int err,
                  gint64 us);

/* Appends one line: "read=N/BYTESB write=... errors=N spliced=N
 * reconnects=N inflight=N latency_us_p50<N p90<N p99<N". */
void stats_format(const struct stats *st, unsigned inflight,
                  unsigned reconnects, GString *out);

/* ---- pool.c: the connections of one export ---------------------------- */

struct pool;

struct pool_timeouts {
  unsigned reconnect_ms;    /* how long commands wait for a connection */
  unsigned request_ms;      /* a reply later than this ends a connection;
                             * 0: never */
};

/* Opens n connections (n == 0: 4 when the server allows multi-conn, else
 * 1).  Every connection must report the same size and flags (O7).  uri
 * and o must outlive the pool: reconnections use them.  name prefixes
 * the pool's log lines. */
int pool_open(const char *name, const struct nbd_uri *uri,
              const struct nbd_handshake_opts *o, unsigned n,
              const struct pool_timeouts *t, struct pool **out,
              GError **error);

/* The export as the first connection negotiated it. */
const struct nbd_export_info *pool_info(const struct pool *p);
unsigned pool_size(const struct pool *p);

/* Sends cmd on a live connection: small commands on the first, large
 * ones in turn on each.  Returns 0 (done will be called) or a negative
 * errno (it will not). */
int pool_submit(struct pool *p, struct nbd_cmd *cmd);

/* Sends cmd on connection i, for a FLUSH that must reach every
 * connection of a server without multi-conn (O7). */
int pool_submit_on(struct pool *p, unsigned i, struct nbd_cmd *cmd);

/* After a lost connection, replay runs on the first new connection
 * before anything else is sent on any; a failure there counts as a
 * failed reconnect.  lost runs whenever a connection dies. */
typedef int (*pool_replay_fn)(struct nbd_conn *c, void *user);
typedef void (*pool_lost_fn)(void *user);
void pool_set_replay(struct pool *p, pool_replay_fn replay,
                     pool_lost_fn lost, void *user);

/* How many times a connection was re-established. */
unsigned pool_reconnects(struct pool *p);

void pool_close(struct pool *p);

/* ---- sched.c: the I/O scheduler of one export ------------------------- */

struct sched;

enum op_kind {
  OP_READ,
  OP_WRITE,
  OP_ZERO,  /* ZERO_RANGE: reads back as zeros, stays allocated */
  OP_PUNCH, /* PUNCH_HOLE: reads back as zeros, may be deallocated */
  OP_FLUSH,
  OP_SEEK,  /* SEEK_DATA or SEEK_HOLE */
};

struct op;

/* Called once when the op has finished, from a connection's reader
 * thread or the submitting thread.  err is 0 or a positive errno.  For
 * reads, data points at the requested bytes; for seeks, result is the
 * offset found. */
typedef void (*op_done_fn)(struct op *op, int err, const void *data,
                           uint64_t result, void *user);

/* replay_limit: bytes of acknowledged, unflushed writes kept to write
 * again after a reconnect. */
struct sched *sched_new(struct pool *pool, const char *name,
                        uint64_t replay_limit);
void sched_free(struct sched *s);

/* The size presented to users: the export size rounded down to the
 * minimum block (S8). */
uint64_t sched_size(const struct sched *s);

/* Starts an operation; done runs exactly once.  For OP_WRITE, data
 * holds the len bytes and the scheduler takes over the reference (the
 * replay log may keep the bytes after done); NULL otherwise.  fua asks
 * for durable completion (O_SYNC, O_DSYNC).  For OP_SEEK, whence is
 * SEEK_DATA or SEEK_HOLE. */
void sched_submit(struct sched *s, enum op_kind kind, uint64_t off,
                  uint64_t len, GBytes *data, bool fua, int whence,
                  op_done_fn done, void *user);

/* A read like sched_submit's, whose reply may go into sink (nbd_cmd.sink)
 * when it comes from the server in one piece. */
void sched_read(struct sched *s, uint64_t off, uint64_t len,
                struct nbd_sink *sink, op_done_fn done, void *user);

/* Waits until nothing is in flight, then sends a FLUSH if any write
 * happened since the last one.  Returns 0 or a positive errno. */
int sched_drain(struct sched *s);

/* Starts a FLUSH, without waiting for it, if any write happened since
 * the last one: after a writer closes the file, what it wrote becomes
 * durable soon and leaves the replay log. */
void sched_flush_behind(struct sched *s);

/* Appends the export's live statistics (stats_format) to out. */
void sched_stats(struct sched *s, GString *out);

/* ---- export.c: one export shown as one file --------------------------- */

struct export {
  char *file_name;          /* name in the mount directory */
  struct nbd_uri *uri;
  struct nbd_handshake_opts opts;
  unsigned connections;     /* -C, 0 for the default */
  struct pool_timeouts timeouts;
  uint64_t replay_limit;    /* --replay-limit, bytes */
  bool readonly;            /* -r or the server's READ_ONLY */
  char *list_description;   /* --all: from NBD_OPT_LIST */

  GMutex lock;              /* guards the lazy connect of --all */
  struct pool *pool;
  struct sched *sched;
  struct nbd_export_info info; /* a copy, for attributes */
  bool connected;
};

/* Connects the export if it is not yet.  Returns 0 or a negative errno
 * with the reason logged. */
int export_connect(struct export *e, GError **error);

/* Flushes and disconnects an export, keeping what it learnt (size,
 * flags) for the file's attributes; the next open connects again. */
void export_release(struct export *e);
void export_free(struct export *e);

/* ---- fs.c: the FUSE operations ---------------------------------------- */

enum cache_mode {
  CACHE_NONE,      /* direct I/O: every read and write goes to the server */
  CACHE_KERNEL,    /* page cache for reads, writes go through at once */
  CACHE_WRITEBACK, /* the kernel gathers writes; fsync pushes them */
};

struct fs {
  GPtrArray *exports;       /* struct export *, inode = index + 2 */
  enum cache_mode cache;
  uid_t uid;
  gid_t gid;
  struct timespec mounted;
};

extern const struct fuse_lowlevel_ops nbdfs_ops;

/* ---- loop.c: reading FUSE requests ------------------------------------ */

/* Makes SIGTERM, SIGINT and SIGHUP end loop_run() for se.  Returns 0
 * or a negative errno. */
int loop_prepare(struct fuse_session *se);

/* Serves the session until it is unmounted or a signal ends it.
 * Returns 0 or a negative errno. */
int loop_run(void);

/* Puts the signals back to their defaults. */
void loop_finish(void);

/* The payload of the write being handled, for the scheduler to keep:
 * a large one keeps the buffer the loop read it into, a small one is
 * copied. */
GBytes *loop_take_payload(const void *data, size_t size);

/* The kernel's unique id of the FUSE_READ being handled, or 0 when the
 * request is something else or its buffer is not at hand. */
uint64_t loop_read_unique(void);

/* The session's /dev/fuse descriptor. */
int loop_fuse_fd(void);

/* ---- splice.c: large read replies through a pipe ---------------------- */

/* A sink (nbd_cmd.sink) for the reply to the read req being handled,
 * whose payload will be len bytes, with the reply's header already in
 * it; or NULL when none is to be had. */
struct nbd_sink *splice_sink_new(fuse_req_t req, size_t len);

/* Answers the read of a sink from splice_sink_new: from the pipe when
 * the payload went there, else with err or data as fuse_reply_err and
 * fuse_reply_buf would.  Releases the sink. */
void splice_reply(struct nbd_sink *sink, int err, const void *data,
                  size_t len);

#endif /* NBDFS_NBDFS_H */
