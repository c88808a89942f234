/* nbdfs: large read replies that never pass through user space.
 *
 * Answered the usual way, a 1 MiB read costs its reader thread two
 * copies: from the socket into a buffer, then from the buffer into
 * /dev/fuse.  Here the reply's header goes into a pipe first, the
 * payload is spliced from the socket behind it (nbd_cmd.sink), and the
 * pipe is spliced into /dev/fuse, so the kernel copies the bytes once,
 * into the reading process's pages.
 *
 * libfuse can splice a reply as well (fuse_reply_data), but it wants a
 * pipe a few pages larger than the payload, and a process without
 * CAP_SYS_RESOURCE may not grow a pipe past 1 MiB (pipe-max-size): the
 * 1 MiB reads that gain most would never take that path.  So the reply
 * is written here, in the kernel's format (linux/fuse.h), with the
 * unique id of the request that loop.c is handling, and libfuse's
 * request is then released with fuse_reply_none().
 *
 * A reply that comes in several pieces, or over TLS, fills the read
 * buffer as before and goes out through libfuse; its pipe is closed.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <unistd.h>

#include "nbdfs.h"

#define PIPE_SIZE (1024 * 1024) /* the most an unprivileged pipe may hold */
#define PIPES_MAX 16            /* pipes alive at once, in use or spare */

struct fuse_sink {
  struct nbd_sink sink;         /* first: the pointer nbdproto sees */
  fuse_req_t req;
  size_t len;                   /* the payload the header announces */
  int fuse_fd;
};

static GMutex pipes_lock;
static struct fuse_sink *spare[PIPES_MAX];
static unsigned n_spare;
static unsigned n_pipes;        /* spare and in use */
static bool pipes_refused;      /* the kernel would not size one */

/* A spare pipe, or a new one while there are fewer than PIPES_MAX.  A
 * user's pipes share a quota (pipe-user-pages-soft); once it is spent
 * the kernel refuses the size, and the daemon stops asking. */
static struct fuse_sink *
sink_get(void)
{
  struct fuse_sink *fs = NULL;
  bool make = false;
  int fds[2];

  g_mutex_lock(&pipes_lock);
  if (n_spare > 0) {
    fs = spare[--n_spare];
  } else if (n_pipes < PIPES_MAX && !pipes_refused) {
    make = true;
    n_pipes++;
  }
  g_mutex_unlock(&pipes_lock);
  if (!make)
    return fs;

  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) {
    log_debug("read: pipe: %s; replying without splice", g_strerror(errno));
    fds[0] = fds[1] = -1;
  } else if (fcntl(fds[1], F_SETPIPE_SZ, PIPE_SIZE) < 0) {
    log_debug("read: pipe of %d bytes: %s; replying without splice",
              PIPE_SIZE, g_strerror(errno));
    g_mutex_lock(&pipes_lock);
    pipes_refused = true;
    g_mutex_unlock(&pipes_lock);
  } else {
    fs = g_new0(struct fuse_sink, 1);
    fs->sink.rd = fds[0];
    fs->sink.wr = fds[1];
    return fs;
  }

  if (fds[0] >= 0) {
    close(fds[0]);
    close(fds[1]);
  }
  g_mutex_lock(&pipes_lock);
  n_pipes--;
  g_mutex_unlock(&pipes_lock);
  return NULL;
}

static void
sink_close(struct fuse_sink *fs)
{
  close(fs->sink.rd);
  close(fs->sink.wr);
  g_free(fs);
  g_mutex_lock(&pipes_lock);
  n_pipes--;
  g_mutex_unlock(&pipes_lock);
}

/* Keeps an empty pipe for the next read. */
static void
sink_put(struct fuse_sink *fs)
{
  g_mutex_lock(&pipes_lock);
  g_assert(n_spare < PIPES_MAX);
  spare[n_spare++] = fs;
  g_mutex_unlock(&pipes_lock);
}

struct nbd_sink *
splice_sink_new(fuse_req_t req, size_t len)
{
  struct fuse_out_header out = { .len = sizeof out + len };
  struct fuse_sink *fs;

  /* The pipe's 1 MiB is counted in slots of a page, but a slot can
   * hold more than a page of what a socket spliced, so a header and
   * 1 MiB usually fit.  When they do not, the reader takes the bytes
   * back (nbd_cmd.sink). */
  out.unique = loop_read_unique();
  if (out.unique == 0 || len > PIPE_SIZE)
    return NULL;
  fs = sink_get();
  if (fs == NULL)
    return NULL;

  /* An empty pipe of 1 MiB takes 16 bytes without blocking. */
  if (write(fs->sink.wr, &out, sizeof out) != (ssize_t) sizeof out) {
    sink_close(fs);
    return NULL;
  }
  fs->sink.prefix = sizeof out;
  fs->req = req;
  fs->len = len;
  fs->fuse_fd = loop_fuse_fd();
  return &fs->sink;
}

void
splice_reply(struct nbd_sink *sink, int err, const void *data, size_t len)
{
  struct fuse_sink *fs = (struct fuse_sink *) sink;
  fuse_req_t req = fs->req;
  size_t total = sink->prefix + len;
  ssize_t n;

  if (err != 0 || !sink->filled || len != fs->len) {
    /* The pipe holds the header, or stale bytes: not worth emptying. */
    sink_close(fs);
    if (err != 0)
      fuse_reply_err(req, err);
    else
      fuse_reply_buf(req, data, len);
    return;
  }

  /* The kernel takes the whole reply from the pipe in one call, or
   * none of it. */
  n = splice(sink->rd, NULL, fs->fuse_fd, NULL, total, 0);
  if (n == (ssize_t) total) {
    sink_put(fs);
    fuse_reply_none(req);
    return;
  }

  sink_close(fs);
  if (n < 0 && errno == ENOENT) {
    /* The request was interrupted: the kernel has forgotten it. */
    fuse_reply_none(req);
    return;
  }
  log_error("read: /dev/fuse: splicing a reply of %zu bytes: %s", total,
            n < 0 ? g_strerror(errno) : "short write");
  fuse_reply_err(req, EIO);
}
