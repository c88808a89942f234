/* nbdfs: the loop that reads FUSE requests.
 *
 * libfuse's own loops wake one thread per request, and each handler
 * then writes its NBD request on its own, which wakes the server once
 * per request too.  On a small machine those thread switches cost more
 * than the work (tools/bench: 4 KiB random reads at iodepth 32 went
 * from about 23,000 to 45,000 IOPS on 2 cores).  Here one thread reads
 * /dev/fuse without blocking for as long as requests are queued, with
 * its NBD requests corked (nbd_cork), and writes them out before it
 * sleeps: a burst from the kernel becomes one write on each connection.
 *
 * Handlers never wait on the network (fs.c), so the loop only sleeps
 * here, in epoll_wait.  Replies go out from the connections' reader
 * threads.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <malloc.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "nbdfs.h"

#define BATCH_MAX 32               /* requests corked at most */
#define BATCH_BYTES (128 * 1024)   /* a request this big goes out at once */

#define TAKE_MIN (256 * 1024)      /* a payload worth its own buffer */

#define IDLE_TRIM_MS 1000          /* idle this long: give memory back */

static struct fuse_session *loop_se;
static int loop_stop = -1;         /* eventfd: a signal asks the loop out */
static struct fuse_buf *loop_buf;  /* holds the request being handled */

/* SIGTERM, SIGINT and SIGHUP end the loop, whichever thread the kernel
 * picks to run the handler: the eventfd wakes the loop's epoll_wait.
 * Both calls are safe in a handler. */
static void
on_signal(int sig)
{
  int saved = errno;

  fuse_session_exit(loop_se);
  eventfd_write(loop_stop, 1);
  errno = saved;
}

/* Sends need no SIGPIPE handling: they use MSG_NOSIGNAL. */
static int
set_handlers(void (*handler)(int))
{
  static const int sigs[] = { SIGTERM, SIGINT, SIGHUP };
  struct sigaction sa = { .sa_handler = handler };

  sigemptyset(&sa.sa_mask);
  for (size_t i = 0; i < G_N_ELEMENTS(sigs); i++)
    if (sigaction(sigs[i], &sa, NULL) < 0)
      return -errno;
  return 0;
}

/* Request and reply buffers of up to 1 MiB come and go thousands of
 * times a second.  By default glibc maps the large ones afresh or trims
 * the heap under them, and the kernel zeroes every new page: a fifth of
 * the loop's time on 1 MiB writes (perf).  Keeping them in the heap
 * reuses the pages; wait_request gives the memory back once the loop
 * has been idle a while, so a quiet daemon stays small. */
static void
keep_buffers(void)
{
  mallopt(M_MMAP_THRESHOLD, 8 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 128 * 1024 * 1024);
}

/* Waits until /dev/fuse has a request or the loop must end.  Returns 1
 * for a request, 0 to end, or a negative errno. */
static int
wait_request(int ep)
{
  static bool trimmed = true;
  struct epoll_event ev[2];
  int n = epoll_wait(ep, ev, G_N_ELEMENTS(ev),
                     trimmed ? -1 : IDLE_TRIM_MS);

  if (n == 0) {
    malloc_trim(0);
    trimmed = true;
    return 1;
  }
  trimmed = false;
  if (n < 0)
    return errno == EINTR ? 1 : -errno;
  for (int i = 0; i < n; i++)
    if (ev[i].data.fd == loop_stop)
      return 0;
  return 1;
}

/* Reads and answers requests until the session ends.  Returns 0 or a
 * negative errno. */
static int
serve(int ep)
{
  struct fuse_buf buf = { 0 };
  unsigned batch = 0;
  int rc = 0;

  nbd_cork();
  while (!fuse_session_exited(loop_se)) {
    int res = fuse_session_receive_buf(loop_se, &buf);

    if (res == -EAGAIN || res == -EINTR || batch >= BATCH_MAX) {
      /* Nothing more queued (or enough): send the batch, then sleep. */
      nbd_uncork();
      nbd_cork();
      batch = 0;
      if (res == -EAGAIN && (rc = wait_request(ep)) <= 0)
        break;
      if (res < 0)
        continue;
    }
    if (res == 0)
      break;          /* unmounted: libfuse marked the session exited */
    if (res < 0) {
      rc = res;
      break;
    }

    loop_buf = &buf;
    fuse_session_process_buf(loop_se, &buf);
    loop_buf = NULL;
    batch++;

    /* A large write is worth sending while the next request is read. */
    if ((size_t) res >= BATCH_BYTES) {
      nbd_uncork();
      nbd_cork();
      batch = 0;
    }
  }
  nbd_uncork();
  free(buf.mem);
  return rc < 0 ? rc : 0;
}

GBytes *
loop_take_payload(const void *data, size_t size)
{
  struct fuse_buf *b = loop_buf;
  const char *p = data, *mem = b != NULL ? b->mem : NULL;
  GBytes *bytes;

  /* A small payload is copied: the replay log may keep it for a while,
   * and it should not pin a whole request buffer of 1 MiB. */
  if (mem == NULL || size < TAKE_MIN || p < mem || p + size > mem + b->size)
    return g_bytes_new(data, size);

  /* A large one keeps the buffer it was read into, which saves a copy;
   * libfuse allocates a new one for the next request. */
  bytes = g_bytes_new_with_free_func(data, size, free, b->mem);
  b->mem = NULL;
  return bytes;
}

uint64_t
loop_read_unique(void)
{
  const struct fuse_buf *b = loop_buf;
  const struct fuse_in_header *in;

  if (b == NULL || b->mem == NULL || (b->flags & FUSE_BUF_IS_FD) ||
      b->size < sizeof *in)
    return 0;
  in = b->mem;
  return in->opcode == FUSE_READ ? in->unique : 0;
}

int
loop_fuse_fd(void)
{
  return fuse_session_fd(loop_se);
}

int
loop_prepare(struct fuse_session *se)
{
  loop_se = se;
  keep_buffers();
  loop_stop = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (loop_stop < 0)
    return -errno;
  return set_handlers(on_signal);
}

int
loop_run(void)
{
  int fd = fuse_session_fd(loop_se);
  int flags = fcntl(fd, F_GETFL);
  struct epoll_event ev;
  int ep, rc;

  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
    return -errno;
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0)
    return -errno;
  ev = (struct epoll_event) { .events = EPOLLIN, .data.fd = fd };
  rc = epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  if (rc == 0) {
    ev = (struct epoll_event) { .events = EPOLLIN, .data.fd = loop_stop };
    rc = epoll_ctl(ep, EPOLL_CTL_ADD, loop_stop, &ev);
  }
  rc = rc < 0 ? -errno : serve(ep);
  close(ep);
  return rc;
}

void
loop_finish(void)
{
  set_handlers(SIG_DFL);
  if (loop_stop >= 0)
    close(loop_stop);
  loop_stop = -1;
}
