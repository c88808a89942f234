/* hostile-server: an NBD server that the nbdfs daemon itself talks to,
 * which serves an in-memory image correctly and then breaks one rule of
 * the protocol on purpose, so that tests/test-hostile.c can watch what
 * the daemon does about it.
 *
 *   hostile-server --socket PATH [--mode MODE] [--at N] [--times K]
 *                  [--size BYTES]
 *
 * The handshake is an ordinary fixed-newstyle one: structured replies,
 * the base:allocation context, GO answered with NBD_INFO_EXPORT.  The
 * export has HAS_FLAGS and SEND_FLUSH and no CAN_MULTI_CONN, so the
 * daemon opens one connection and "the Nth request" means the same
 * thing in every run.
 *
 * A transmission MODE misbehaves on the Nth request it applies to (READs,
 * or WRITEs for data-for-write), counted over the life of the server,
 * and on the K-1 such requests after it; K = 0 means for ever.  SIGUSR1
 * ends the misbehaviour for good, so a test can show that the mount
 * recovers once the server does.  Handshake modes (size-2^63,
 * size-2^64-1, info-flood) break the negotiation itself.
 *
 * The socket is bound under a temporary name and renamed to PATH once
 * it listens, so "PATH exists" means "ready".  Each connection runs on
 * its own thread; a write to a client that has gone fails with EPIPE,
 * which ends that thread quietly.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <endian.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>

#include "nbd-wire.h"

#define MiB (1024 * 1024)
#define DEFAULT_SIZE (64 * (uint64_t) MiB)
#define MAX_OPTION_LEN (64 * 1024)
#define FLOOD_REPLIES 100000
#define ALLOC_CONTEXT_ID 1

enum mode {
  MODE_NONE,
  MODE_BAD_MAGIC,       /* V20 */
  MODE_UNKNOWN_COOKIE,  /* V21 */
  MODE_CHUNK_OUTSIDE,   /* V27 */
  MODE_DATA_FOR_WRITE,  /* V24 */
  MODE_OVERSIZE_CHUNK,  /* V33 */
  MODE_DUPLICATE,       /* V21: a chunk after DONE */
  MODE_ERROR_OFFSET,    /* V29 */
  MODE_DISCONNECT,      /* D9: EOF in the middle of a reply */
  MODE_SLOW_DRIP,       /* one byte per second */
  MODE_INFO_FLOOD,      /* V4: replies without end before the ACK */
};

static const char *const mode_names[] = {
  [MODE_NONE] = "none",
  [MODE_BAD_MAGIC] = "bad-magic",
  [MODE_UNKNOWN_COOKIE] = "unknown-cookie",
  [MODE_CHUNK_OUTSIDE] = "chunk-outside",
  [MODE_DATA_FOR_WRITE] = "data-for-write",
  [MODE_OVERSIZE_CHUNK] = "oversize-chunk",
  [MODE_DUPLICATE] = "duplicate",
  [MODE_ERROR_OFFSET] = "error-offset",
  [MODE_DISCONNECT] = "disconnect",
  [MODE_SLOW_DRIP] = "slow-drip",
  [MODE_INFO_FLOOD] = "info-flood",
};

static enum mode mode;
static unsigned long first_bad = 1; /* first request that misbehaves */
static unsigned long bad_count = 1; /* how many do; 0: all from then */
static uint64_t export_size = DEFAULT_SIZE;
static uint8_t *image;            /* export_size bytes, when servable */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long matched;     /* requests the mode applies to */
static volatile sig_atomic_t reformed; /* SIGUSR1: behave from now on */

struct request {
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint32_t count;
};

/* ---- Small I/O helpers; false means the client is gone ---- */

static bool
read_all(int fd, void *buf, size_t len)
{
  char *p = buf;

  while (len > 0) {
    ssize_t n = read(fd, p, len);

    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    p += n;
    len -= n;
  }
  return true;
}

static bool
write_all(int fd, const void *buf, size_t len)
{
  const char *p = buf;

  while (len > 0) {
    ssize_t n = write(fd, p, len);

    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    p += n;
    len -= n;
  }
  return true;
}

/* Big-endian fields at any alignment. */
static uint16_t
get16(const uint8_t *p)
{
  uint16_t v;

  memcpy(&v, p, 2);
  return be16toh(v);
}

static uint32_t
get32(const uint8_t *p)
{
  uint32_t v;

  memcpy(&v, p, 4);
  return be32toh(v);
}

static uint64_t
get64(const uint8_t *p)
{
  uint64_t v;

  memcpy(&v, p, 8);
  return be64toh(v);
}

static void
put16(uint8_t *p, uint16_t v)
{
  v = htobe16(v);
  memcpy(p, &v, 2);
}

static void
put32(uint8_t *p, uint32_t v)
{
  v = htobe32(v);
  memcpy(p, &v, 4);
}

static void
put64(uint8_t *p, uint64_t v)
{
  v = htobe64(v);
  memcpy(p, &v, 8);
}

/* ---- Handshake ---- */

static bool
send_option_reply(int fd, uint32_t option, uint32_t type, const void *data,
                  uint32_t len)
{
  uint8_t hdr[20];

  put64(hdr, NBD_REP_MAGIC);
  put32(hdr + 8, option);
  put32(hdr + 12, type);
  put32(hdr + 16, len);
  return write_all(fd, hdr, sizeof hdr) && write_all(fd, data, len);
}

/* SET_META_CONTEXT: answer base:allocation with our one context id,
 * ignore any other query, then ACK (H24, B1). */
static bool
answer_meta_context(int fd, const uint8_t *d, uint32_t len)
{
  uint32_t pos, nlen, nq;

  if (len < 8)
    return send_option_reply(fd, NBD_OPT_SET_META_CONTEXT,
                             NBD_REP_ERR_INVALID, NULL, 0);
  nlen = get32(d);
  if (nlen > len - 8)
    return send_option_reply(fd, NBD_OPT_SET_META_CONTEXT,
                             NBD_REP_ERR_INVALID, NULL, 0);
  pos = 4 + nlen;
  nq = get32(d + pos);
  pos += 4;

  for (uint32_t i = 0; i < nq && pos + 4 <= len; i++) {
    uint32_t qlen;
    const char *want = NBD_CONTEXT_BASE_ALLOCATION;

    qlen = get32(d + pos);
    pos += 4;
    if (qlen > len - pos)
      break;
    if (qlen == strlen(want) && memcmp(d + pos, want, qlen) == 0) {
      uint8_t rep[4 + sizeof NBD_CONTEXT_BASE_ALLOCATION];

      put32(rep, ALLOC_CONTEXT_ID);
      memcpy(rep + 4, want, qlen);
      if (!send_option_reply(fd, NBD_OPT_SET_META_CONTEXT,
                             NBD_REP_META_CONTEXT, rep, 4 + qlen))
        return false;
    }
    pos += qlen;
  }
  return send_option_reply(fd, NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, NULL,
                           0);
}

/* GO and INFO: the export's size and flags, then ACK.  In info-flood
 * mode a hundred thousand NBD_INFO_NAME replies come first; a client
 * that bounds what it accepts hangs up long before the end. */
static bool
answer_go(int fd, uint32_t option)
{
  uint8_t rep[12];

  if (mode == MODE_INFO_FLOOD) {
    /* NBD_INFO_NAME (type 1, big-endian), then the name. */
    static const char name[] = "\0\1flood";

    for (int i = 0; i < FLOOD_REPLIES; i++)
      if (!send_option_reply(fd, option, NBD_REP_INFO, name,
                             sizeof name - 1))
        return false;
  }

  put16(rep, NBD_INFO_EXPORT);
  put64(rep + 2, export_size);
  put16(rep + 10, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH);
  return send_option_reply(fd, option, NBD_REP_INFO, rep, sizeof rep) &&
         send_option_reply(fd, option, NBD_REP_ACK, NULL, 0);
}

/* Returns true when the client entered transmission (GO); *structured
 * says whether it asked for structured replies. */
static bool
handshake(int fd, bool *structured)
{
  uint8_t greeting[18];
  uint32_t cflags;

  put64(greeting, NBD_MAGIC);
  put64(greeting + 8, NBD_OPTS_MAGIC);
  put16(greeting + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  if (!write_all(fd, greeting, sizeof greeting) ||
      !read_all(fd, &cflags, sizeof cflags))
    return false;

  *structured = false;
  for (;;) {
    uint8_t hdr[16];
    uint32_t option, len;
    uint8_t *data;
    bool ok;

    if (!read_all(fd, hdr, sizeof hdr))
      return false;
    option = get32(hdr + 8);
    len = get32(hdr + 12);
    if (get64(hdr) != NBD_OPTS_MAGIC || len > MAX_OPTION_LEN)
      return false;
    data = malloc(len + 1);
    if (data == NULL || !read_all(fd, data, len)) {
      free(data);
      return false;
    }

    switch (option) {
      case NBD_OPT_STRUCTURED_REPLY:
        *structured = true;
        ok = send_option_reply(fd, option, NBD_REP_ACK, NULL, 0);
        break;
      case NBD_OPT_SET_META_CONTEXT:
        ok = answer_meta_context(fd, data, len);
        break;
      case NBD_OPT_INFO:
        ok = answer_go(fd, option);
        break;
      case NBD_OPT_GO:
        free(data);
        return answer_go(fd, option) && image != NULL;
      case NBD_OPT_ABORT:
        send_option_reply(fd, option, NBD_REP_ACK, NULL, 0);
        ok = false;
        break;
      default:
        ok = send_option_reply(fd, option, NBD_REP_ERR_UNSUP, NULL, 0);
        break;
    }
    free(data);
    if (!ok)
      return false;
  }
}

/* ---- Transmission ---- */

/* Does this request misbehave?  Counts the requests the mode applies
 * to; SIGUSR1 ends it all. */
static bool
misbehave_now(const struct request *r)
{
  bool applies, now;

  switch (mode) {
    case MODE_NONE:
    case MODE_INFO_FLOOD:
      return false;
    case MODE_DATA_FOR_WRITE:
      applies = r->type == NBD_CMD_WRITE;
      break;
    default:
      applies = r->type == NBD_CMD_READ;
      break;
  }
  if (!applies || reformed)
    return false;

  pthread_mutex_lock(&lock);
  matched++;
  now = matched >= first_bad &&
        (bad_count == 0 || matched < first_bad + bad_count);
  pthread_mutex_unlock(&lock);
  if (now)
    fprintf(stderr, "hostile-server: %s on %s cookie %" PRIu64
            " off %" PRIu64 " len %" PRIu32 "\n", mode_names[mode],
            r->type == NBD_CMD_READ ? "READ" : "WRITE", r->cookie,
            r->offset, r->count);
  return now;
}

static void
chunk_header(uint8_t *h, uint16_t flags, uint16_t type, uint64_t cookie,
             uint32_t len)
{
  put32(h, NBD_STRUCTURED_REPLY_MAGIC);
  put16(h + 4, flags);
  put16(h + 6, type);
  put64(h + 8, cookie);
  put32(h + 16, len);
}

static bool
simple_reply(int fd, uint64_t cookie, uint32_t err)
{
  uint8_t h[16];

  put32(h, NBD_SIMPLE_REPLY_MAGIC);
  put32(h + 4, err);
  put64(h + 8, cookie);
  return write_all(fd, h, sizeof h);
}

/* One OFFSET_DATA chunk with DONE carrying the bytes of the request. */
static bool
read_reply(int fd, const struct request *r, uint64_t cookie)
{
  uint8_t h[28];
  struct iovec iov[2] = {
    { h, sizeof h },
    { image + r->offset, r->count },
  };
  size_t left = sizeof h + r->count;

  chunk_header(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, cookie,
               8 + r->count);
  put64(h + 20, r->offset);

  /* After a short writev, go on from where it stopped. */
  while (left > 0) {
    ssize_t n = writev(fd, iov, 2);

    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    left -= n;
    for (int i = 0; i < 2 && n > 0; i++) {
      size_t step = (size_t) n < iov[i].iov_len ? (size_t) n
                                                : iov[i].iov_len;

      iov[i].iov_base = (char *) iov[i].iov_base + step;
      iov[i].iov_len -= step;
      n -= step;
    }
  }
  return true;
}

/* The wrong answer to r; false when the connection is to end. */
static bool
misbehave(int fd, const struct request *r)
{
  uint8_t h[64];

  switch (mode) {
    case MODE_BAD_MAGIC:
      /* V20: neither the simple nor the structured magic. */
      chunk_header(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, r->cookie,
                   0);
      put32(h, 0xdeadbeef);
      return write_all(fd, h, 20);

    case MODE_UNKNOWN_COOKIE:
      /* V21: a good reply to a request nobody sent. */
      return read_reply(fd, r, r->cookie ^ UINT64_C(0x5a5a000000000000));

    case MODE_CHUNK_OUTSIDE:
      /* V27: the right length, starting at the first byte past the
       * request. */
      chunk_header(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA,
                   r->cookie, 8 + r->count);
      put64(h + 20, r->offset + r->count);
      return write_all(fd, h, 28) &&
             write_all(fd, image + r->offset, r->count);

    case MODE_DATA_FOR_WRITE:
      /* V24: OFFSET_DATA answers only a READ. */
      chunk_header(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA,
                   r->cookie, 8 + 512);
      put64(h + 20, r->offset);
      return write_all(fd, h, 28) && write_all(fd, image, 512);

    case MODE_OVERSIZE_CHUNK:
      /* V33: one byte more than 32 MiB of data plus its offset.  The
       * payload never follows: a client must refuse at the header. */
      chunk_header(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA,
                   r->cookie, NBD_DEFAULT_MAX_PAYLOAD + 8 + 1);
      put64(h + 20, r->offset);
      return write_all(fd, h, 28);

    case MODE_DUPLICATE:
      /* V21: the whole reply twice; the second comes after DONE. */
      return read_reply(fd, r, r->cookie) && read_reply(fd, r, r->cookie);

    case MODE_ERROR_OFFSET: {
      /* V29: a well-formed error chunk whose offset lies 4 KiB past
       * the end of the request. */
      static const char msg[] = "hostile";
      uint32_t mlen = sizeof msg - 1;

      chunk_header(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR_OFFSET,
                   r->cookie, 4 + 2 + mlen + 8);
      put32(h + 20, NBD_EIO);
      put16(h + 24, mlen);
      memcpy(h + 26, msg, mlen);
      put64(h + 26 + mlen, r->offset + r->count + 4096);
      return write_all(fd, h, 26 + mlen + 8);
    }

    case MODE_DISCONNECT:
      /* D9: the header and half the data, then hang up. */
      chunk_header(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA,
                   r->cookie, 8 + r->count);
      put64(h + 20, r->offset);
      write_all(fd, h, 28);
      write_all(fd, image + r->offset, r->count / 2);
      return false;

    case MODE_SLOW_DRIP:
      /* The right reply, one byte a second, until the client gives up
       * (the write fails) or it is all sent. */
      chunk_header(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA,
                   r->cookie, 8 + r->count);
      put64(h + 20, r->offset);
      for (size_t i = 0; i < 28 + (size_t) r->count; i++) {
        const uint8_t *b = i < 28 ? h + i : image + r->offset + i - 28;

        if (!write_all(fd, b, 1))
          return false;
        sleep(1);
      }
      return true;

    default:
      return false;
  }
}

static bool
block_status_reply(int fd, const struct request *r)
{
  uint8_t h[32];

  /* One extent of plain data over the whole request (B7). */
  chunk_header(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS,
               r->cookie, 12);
  put32(h + 20, ALLOC_CONTEXT_ID);
  put32(h + 24, r->count);
  put32(h + 28, 0);
  return write_all(fd, h, sizeof h);
}

static bool
in_range(const struct request *r)
{
  return r->offset <= export_size && r->count <= export_size - r->offset;
}

/* Serves requests until the client leaves or a misbehaviour ends the
 * connection. */
static void
transmission(int fd, bool structured)
{
  uint8_t *wbuf = malloc(NBD_DEFAULT_MAX_PAYLOAD);

  while (wbuf != NULL) {
    uint8_t raw[28];
    struct request r;
    bool ok;

    if (!read_all(fd, raw, sizeof raw) ||
        get32(raw) != NBD_REQUEST_MAGIC)
      break;
    r.flags = get16(raw + 4);
    r.type = get16(raw + 6);
    r.cookie = get64(raw + 8);
    r.offset = get64(raw + 16);
    r.count = get32(raw + 24);

    if (r.type == NBD_CMD_DISC)
      break;
    if (r.type == NBD_CMD_WRITE) {
      if (r.count > NBD_DEFAULT_MAX_PAYLOAD || !read_all(fd, wbuf, r.count))
        break;
      if (in_range(&r)) {
        pthread_mutex_lock(&lock);
        memcpy(image + r.offset, wbuf, r.count);
        pthread_mutex_unlock(&lock);
      }
    }

    if (structured && in_range(&r) && misbehave_now(&r)) {
      if (!misbehave(fd, &r))
        break;
      continue;
    }

    switch (r.type) {
      case NBD_CMD_READ:
        if (!in_range(&r))
          ok = simple_reply(fd, r.cookie, NBD_EINVAL);
        else if (structured)
          ok = read_reply(fd, &r, r.cookie);
        else
          ok = simple_reply(fd, r.cookie, 0) &&
               write_all(fd, image + r.offset, r.count);
        break;
      case NBD_CMD_WRITE:
        ok = simple_reply(fd, r.cookie, in_range(&r) ? 0 : NBD_ENOSPC);
        break;
      case NBD_CMD_FLUSH:
        ok = simple_reply(fd, r.cookie, 0);
        break;
      case NBD_CMD_BLOCK_STATUS:
        ok = structured && in_range(&r) ? block_status_reply(fd, &r)
                                        : simple_reply(fd, r.cookie,
                                                       NBD_EINVAL);
        break;
      default:
        ok = simple_reply(fd, r.cookie, NBD_EINVAL);
        break;
    }
    if (!ok)
      break;
  }
  free(wbuf);
}

static void *
connection_main(void *opaque)
{
  int fd = (int) (intptr_t) opaque;
  bool structured;

  if (handshake(fd, &structured))
    transmission(fd, structured);
  close(fd);
  return NULL;
}

/* ---- Setup ---- */

static void
on_usr1(int sig)
{
  reformed = 1;
}

static int
parse_mode(const char *s)
{
  for (size_t i = 0; i < sizeof mode_names / sizeof mode_names[0]; i++)
    if (strcmp(s, mode_names[i]) == 0)
      return (int) i;
  return -1;
}

static int
listen_on(const char *path)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  char tmp[sizeof sa.sun_path];
  int fd;

  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int) sizeof tmp) {
    fprintf(stderr, "hostile-server: %s: path too long\n", path);
    return -1;
  }
  memcpy(sa.sun_path, tmp, strlen(tmp) + 1);
  unlink(tmp);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || bind(fd, (struct sockaddr *) &sa, sizeof sa) < 0 ||
      listen(fd, 64) < 0 || rename(tmp, path) < 0) {
    fprintf(stderr, "hostile-server: listen %s: %s\n", path,
            strerror(errno));
    return -1;
  }
  return fd;
}

static void
usage(void)
{
  fprintf(stderr, "usage: hostile-server --socket PATH [--mode MODE] "
          "[--at N] [--times K] [--size BYTES]\nmodes:");
  for (size_t i = 0; i < sizeof mode_names / sizeof mode_names[0]; i++)
    fprintf(stderr, " %s", mode_names[i]);
  fprintf(stderr, " size-2^63 size-2^64-1\n");
  exit(2);
}

int
main(int argc, char **argv)
{
  static const struct option opts[] = {
    { "socket", required_argument, NULL, 's' },
    { "mode", required_argument, NULL, 'm' },
    { "at", required_argument, NULL, 'a' },
    { "times", required_argument, NULL, 't' },
    { "size", required_argument, NULL, 'z' },
    { NULL, 0, NULL, 0 },
  };
  const char *path = NULL;
  struct sigaction sa = { .sa_handler = on_usr1 };
  int c, m, lfd;

  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
      case 's':
        path = optarg;
        break;
      case 'm':
        /* The two oversized exports are handshake modes of their own:
         * the size is the misbehaviour (V10). */
        if (strcmp(optarg, "size-2^63") == 0) {
          export_size = UINT64_C(1) << 63;
        } else if (strcmp(optarg, "size-2^64-1") == 0) {
          export_size = UINT64_MAX;
        } else if ((m = parse_mode(optarg)) >= 0) {
          mode = m;
        } else {
          fprintf(stderr, "hostile-server: unknown mode %s\n", optarg);
          usage();
        }
        break;
      case 'a':
        first_bad = strtoul(optarg, NULL, 10);
        break;
      case 't':
        bad_count = strtoul(optarg, NULL, 10);
        break;
      case 'z':
        export_size = strtoull(optarg, NULL, 0);
        break;
      default:
        usage();
    }
  }
  if (path == NULL || optind != argc || first_bad == 0)
    usage();

  /* Die with the test that started us, even on its SIGKILL. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  signal(SIGPIPE, SIG_IGN);
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, NULL);

  /* Only an export that can be served gets an image; the oversized
   * ones never reach transmission. */
  if (export_size <= 1024 * (uint64_t) MiB) {
    image = calloc(1, export_size);
    if (image == NULL) {
      fprintf(stderr, "hostile-server: no memory for the image\n");
      return 1;
    }
  }

  lfd = listen_on(path);
  if (lfd < 0)
    return 1;
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    pthread_t t;

    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      fprintf(stderr, "hostile-server: accept: %s\n", strerror(errno));
      return 1;
    }
    if (pthread_create(&t, NULL, connection_main,
                       (void *) (intptr_t) fd) != 0) {
      close(fd);
      continue;
    }
    pthread_detach(t);
  }
}
