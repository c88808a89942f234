/* nbdfs: the transport, a byte stream to one server.
 *
 * A plain socket supplies the recv/sendv pair here; TLS replaces the pair
 * after STARTTLS.  Everything above reads and writes through
 * nbd_transport_read() and nbd_transport_writev().
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <fcntl.h>
#include <unistd.h>

#define CONNECT_TIMEOUT_MS 10000
#define UNIX_SNDBUF (2 * 1024 * 1024)

#include "internal.h"

/* With a timeout set (SO_RCVTIMEO, SO_SNDTIMEO), EAGAIN means the
 * server stayed silent that long. */
static int
io_errno(int err)
{
  return err == EAGAIN || err == EWOULDBLOCK ? ETIMEDOUT : err;
}

/* A thread asleep in recv() on a Unix socket wakes whenever the server
 * takes bytes we sent, since readers and writers of a socket wait on
 * one queue: with 1 MiB writes that is several useless wakeups of the
 * reader per request.  poll() waits for input alone, at the price of
 * two more system calls, so it is used only while sends are large
 * (paired fio runs, 1 MiB writes at iodepth 1: a fifth less CPU per
 * write; 4 KiB reads at iodepth 1 would pay 5% more). */
ssize_t
nbd_socket_recv(int fd, void *buf, size_t len, bool poll_first)
{
  struct pollfd pfd = { .fd = fd, .events = POLLIN };
  ssize_t n;

  if (!poll_first)
    return recv(fd, buf, len, 0);

  n = recv(fd, buf, len, MSG_DONTWAIT);
  while (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK ||
                   errno == EINTR)) {
    if (errno != EINTR && poll(&pfd, 1, -1) < 0 && errno != EINTR)
      return -1;
    n = recv(fd, buf, len, MSG_DONTWAIT);
  }
  return n;
}

/* What counts as a large send for nbd_socket_recv. */
#define BIG_SEND (128 * 1024)

static ssize_t
plain_recv(struct nbd_transport *t, void *buf, size_t len)
{
  for (;;) {
    /* With a timeout, a blocking recv() is what enforces it. */
    ssize_t n = nbd_socket_recv(t->fd, buf, len,
                                t->timeout_ms == 0 &&
                                g_atomic_int_get(&t->big_sends));

    if (n >= 0)
      return n;
    if (errno != EINTR)
      return -io_errno(errno);
  }
}

static ssize_t
plain_sendv(struct nbd_transport *t, struct iovec *iov, int iovcnt)
{
  struct msghdr msg = { .msg_iov = iov, .msg_iovlen = iovcnt };

  for (;;) {
    /* MSG_NOSIGNAL: a vanished server is an error to report, not a
     * reason to kill the daemon with SIGPIPE. */
    ssize_t n = sendmsg(t->fd, &msg, MSG_NOSIGNAL);

    if (n >= 0)
      return n;
    if (errno != EINTR)
      return -io_errno(errno);
  }
}

static size_t
plain_pending(struct nbd_transport *t)
{
  return 0;
}

static void
plain_close(struct nbd_transport *t)
{
}

static const struct nbd_transport_ops plain_ops = {
  .recv = plain_recv,
  .sendv = plain_sendv,
  .pending = plain_pending,
  .close = plain_close,
  .what = "plain",
};

struct nbd_transport *
nbd_transport_new_fd(int fd, const char *name)
{
  struct nbd_transport *t = g_new0(struct nbd_transport, 1);

  t->ops = &plain_ops;
  t->fd = fd;
  t->name = g_strdup(name);
  return t;
}

static int
connect_unix(const char *path, GError **error)
{
  struct sockaddr_un sun = { .sun_family = AF_UNIX };
  size_t len = strlen(path);
  int fd;

  if (len >= sizeof sun.sun_path)
    return nbd_set_error(error, ENAMETOOLONG,
                         "connect: %s: socket path too long", path);
  memcpy(sun.sun_path, path, len);

  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return nbd_set_error(error, errno, "socket: %s: %s", path,
                         g_strerror(errno));

  /* A Unix socket queues at most its send buffer, 208 KiB by default,
   * so a 1 MiB write blocks four times for the server to read on.
   * Room for a whole request saves those sleeps (paired fio runs, 1 MiB
   * writes at iodepth 8: 11% more IOPS, 14% less CPU per write).  The
   * kernel caps it at net.core.wmem_max; failing is harmless. */
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &(int) { UNIX_SNDBUF },
             sizeof(int));
  if (connect(fd, (struct sockaddr *) &sun,
              offsetof(struct sockaddr_un, sun_path) + len) < 0) {
    int err = errno;

    close(fd);
    return nbd_set_error(error, err, "connect: %s: %s", path,
                         g_strerror(err));
  }
  return fd;
}

static void
tune_tcp(int fd)
{
  int on = 1;
  int idle = 30, intvl = 10, cnt = 3;

  /* G2: without TCP_NODELAY a request split over two segments waits for
   * Nagle.  Keepalive notices a peer that vanished without a reset. */
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

/* connect(2) that gives up after CONNECT_TIMEOUT_MS: a host that drops
 * packets would otherwise hold the caller for minutes.  Returns 0 or an
 * errno. */
static int
connect_within(int fd, const struct sockaddr *addr, socklen_t len)
{
  struct pollfd pfd = { .fd = fd, .events = POLLOUT };
  int flags = fcntl(fd, F_GETFL);
  int err = 0;
  socklen_t elen = sizeof err;
  int rc;

  fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  if (connect(fd, addr, len) == 0)
    goto out;
  if (errno != EINPROGRESS) {
    err = errno;
    goto out;
  }
  do
    rc = poll(&pfd, 1, CONNECT_TIMEOUT_MS);
  while (rc < 0 && errno == EINTR);
  if (rc == 0)
    err = ETIMEDOUT;
  else if (rc < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
    err = errno;
out:
  fcntl(fd, F_SETFL, flags);
  return err;
}

static int
connect_tcp(const char *host, const char *port, const char *name,
            GError **error)
{
  struct addrinfo hints = {
    .ai_family = AF_UNSPEC,
    .ai_socktype = SOCK_STREAM,
    .ai_flags = AI_ADDRCONFIG,
  };
  struct addrinfo *res = NULL;
  int err = 0, fd = -1, rc;

  rc = getaddrinfo(host, port, &hints, &res);
  if (rc != 0)
    return nbd_set_error(error, EHOSTUNREACH, "resolve: %s: %s", name,
                         gai_strerror(rc));

  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                ai->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    err = connect_within(fd, ai->ai_addr, ai->ai_addrlen);
    if (err == 0)
      break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);

  if (fd < 0)
    return nbd_set_error(error, err, "connect: %s: %s", name,
                         g_strerror(err));
  tune_tcp(fd);
  return fd;
}

int
nbd_transport_connect(const struct nbd_uri *uri, struct nbd_transport **out,
                      GError **error)
{
  g_autofree char *name = nbd_uri_endpoint(uri);
  int fd;

  if (uri->is_unix)
    fd = connect_unix(uri->socket_path, error);
  else
    fd = connect_tcp(uri->host, uri->port, name, error);
  if (fd < 0)
    return fd;

  *out = nbd_transport_new_fd(fd, name);
  return 0;
}

ssize_t
nbd_transport_read_some(struct nbd_transport *t, void *buf, size_t len,
                        GError **error)
{
  ssize_t n = t->ops->recv(t, buf, len);
  const char *why;

  if (n == -ETIMEDOUT)
    return nbd_set_error(error, ETIMEDOUT, "receive: %s: the server did "
                         "not answer in time", t->name);
  if (n < 0) {
    why = t->ops->why ? t->ops->why(t, false) : NULL;
    return nbd_set_error(error, -n, "receive: %s: %s", t->name,
                         why ? why : g_strerror(-n));
  }
  return n;
}

int
nbd_transport_read(struct nbd_transport *t, void *buf, size_t len,
                   GError **error)
{
  char *p = buf;

  /* T19: a record layer may return short reads; loop to the exact
   * count. */
  while (len > 0) {
    ssize_t n = nbd_transport_read_some(t, p, len, error);

    if (n < 0)
      return n;
    if (n == 0)
      return nbd_set_error(error, ECONNRESET,
                           "receive: %s: server closed the connection",
                           t->name);
    p += n;
    len -= n;
  }
  return 0;
}

int
nbd_transport_writev(struct nbd_transport *t, struct iovec *iov, int iovcnt,
                     GError **error)
{
  size_t total = 0;

  for (int i = 0; i < iovcnt; i++)
    total += iov[i].iov_len;
  if ((total >= BIG_SEND) != g_atomic_int_get(&t->big_sends))
    g_atomic_int_set(&t->big_sends, total >= BIG_SEND);

  while (iovcnt > 0) {
    ssize_t n = t->ops->sendv(t, iov, iovcnt);
    const char *why;

    if (n < 0) {
      why = t->ops->why ? t->ops->why(t, true) : NULL;
      return nbd_set_error(error, -n, "send: %s: %s", t->name,
                           why ? why : g_strerror(-n));
    }

    /* Step over what went out; a partial write leaves the rest of the
     * current element to the next round. */
    while (iovcnt > 0 && (size_t) n >= iov->iov_len) {
      n -= iov->iov_len;
      iov++;
      iovcnt--;
    }
    if (iovcnt > 0) {
      iov->iov_base = (char *) iov->iov_base + n;
      iov->iov_len -= n;
    }
  }
  return 0;
}

int
nbd_transport_write(struct nbd_transport *t, const void *buf, size_t len,
                    GError **error)
{
  struct iovec iov = { .iov_base = (void *) buf, .iov_len = len };

  return nbd_transport_writev(t, &iov, 1, error);
}

void
nbd_transport_set_timeout(struct nbd_transport *t, unsigned ms)
{
  struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = ms % 1000 * 1000 };

  t->timeout_ms = ms;
  setsockopt(t->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(t->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

size_t
nbd_transport_pending(struct nbd_transport *t)
{
  return t->ops->pending(t);
}

void
nbd_transport_shutdown(struct nbd_transport *t)
{
  if (t != NULL && t->fd >= 0)
    shutdown(t->fd, SHUT_RDWR);
}

void
nbd_transport_free(struct nbd_transport *t)
{
  if (t == NULL)
    return;
  t->ops->close(t);
  if (t->fd >= 0)
    close(t->fd);
  g_free(t->name);
  g_free(t);
}

const char *
nbd_transport_name(const struct nbd_transport *t)
{
  return t->name;
}

int
nbd_transport_fd(const struct nbd_transport *t)
{
  return t->fd;
}

bool
nbd_transport_can_splice(const struct nbd_transport *t)
{
  return t->ops == &plain_ops;
}

/* SPLICE_F_NONBLOCK covers both ends, so EAGAIN means the socket is
 * empty or the pipe is full.  The socket tells which: bytes waiting in
 * it mean the pipe had no room.  Waiting happens in poll(), where the
 * timeout is enforced by hand, since SO_RCVTIMEO does not apply. */
ssize_t
nbd_transport_splice(struct nbd_transport *t, int wr, size_t len,
                     GError **error)
{
  struct pollfd pfd = { .fd = t->fd, .events = POLLIN };
  int timeout = t->timeout_ms > 0 ? (int) t->timeout_ms : -1;
  unsigned full = 0;

  for (;;) {
    ssize_t n = splice(t->fd, NULL, wr, NULL, len,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    int queued = 0;

    if (n > 0)
      return n;
    if (n == 0)
      return nbd_set_error(error, ECONNRESET,
                           "receive: %s: server closed the connection",
                           t->name);
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN)
      return nbd_set_error(error, errno, "receive: %s: splice: %s",
                           t->name, g_strerror(errno));

    /* Bytes may arrive between the splice and the check: only a second
     * refusal with bytes waiting means the pipe is full. */
    if (ioctl(t->fd, FIONREAD, &queued) == 0 && queued > 0) {
      if (++full == 2)
        return 0;
      continue;
    }
    n = poll(&pfd, 1, timeout);
    if (n == 0)
      return nbd_set_error(error, ETIMEDOUT, "receive: %s: the server did "
                           "not answer in time", t->name);
    if (n < 0 && errno != EINTR)
      return nbd_set_error(error, errno, "receive: %s: poll: %s", t->name,
                           g_strerror(errno));
  }
}

char *
nbd_sanitize(const void *data, size_t len, size_t max)
{
  const unsigned char *s = data;
  GString *out;
  size_t i = 0;

  if (len > max)
    len = max;
  out = g_string_sized_new(len + 1);
  while (i < len) {
    gunichar c;
    const char *end;

    /* Printable ASCII passes; valid multi-byte UTF-8 passes; anything
     * else (controls, escape sequences, broken bytes) becomes '?'. */
    if (s[i] >= 0x20 && s[i] < 0x7f) {
      g_string_append_c(out, s[i++]);
      continue;
    }
    c = g_utf8_get_char_validated((const char *) s + i, len - i);
    if (s[i] >= 0x80 && c != (gunichar) -1 && c != (gunichar) -2 &&
        g_unichar_isprint(c)) {
      end = g_utf8_next_char((const char *) s + i);
      g_string_append_len(out, (const char *) s + i,
                          end - ((const char *) s + i));
      i = end - (const char *) s;
      continue;
    }
    g_string_append_c(out, '?');
    i++;
  }
  return g_string_free(out, FALSE);
}
