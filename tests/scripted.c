/* nbdfs tests: a scripted NBD server (see scripted.h).
 *
 * The server's end of the socketpair is non-blocking and every wait is a
 * poll() with SCRIPTED_TIMEOUT_MS, so no step can hang a test.  The
 * client's end stays blocking, as a real socket would be.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "scripted.h"

/* An option's data above this is not one nbdfs would send. */
#define MAX_OPTION_DATA (64 * 1024)

enum step_kind {
  STEP_SEND,
  STEP_SEND_SLOW,
  STEP_EXPECT,
  STEP_EXPECT_OPTION,
  STEP_EXPECT_REQUEST,
  STEP_SILENCE,
  STEP_EOF,
  STEP_CLOSE,
  STEP_SLEEP,
  STEP_CALL,
};

struct step {
  enum step_kind kind;
  GByteArray *bytes;         /* SEND: what to send; EXPECT: exact bytes */
  size_t len;                /* EXPECT: how many bytes */
  uint32_t code;             /* EXPECT_OPTION, EXPECT_REQUEST */
  unsigned ms;               /* SILENCE, SLEEP */
  scripted_pred_fn pred;
  scripted_fn fn;
  void *user;
  char *what;
};

struct scripted {
  GPtrArray *steps;
  int fd;                    /* the server's end */
  int client_fd;             /* handed out by scripted_start() */
  GThread *thread;

  /* Written by the thread, read after the join. */
  unsigned at;               /* index of the step being played */
  GByteArray *received;
  GString *errors;
  bool gone;
  bool eof;                  /* the client's end of stream was seen */

  char *option_names;        /* cache for scripted_option_names() */
};

static void
step_free(gpointer p)
{
  struct step *s = p;

  if (s->bytes != NULL)
    g_byte_array_unref(s->bytes);
  g_free(s->what);
  g_free(s);
}

struct scripted *
scripted_new(void)
{
  struct scripted *sc = g_new0(struct scripted, 1);

  sc->steps = g_ptr_array_new_with_free_func(step_free);
  sc->fd = -1;
  sc->client_fd = -1;
  sc->received = g_byte_array_new();
  sc->errors = g_string_new(NULL);
  return sc;
}

void
scripted_free(struct scripted *sc)
{
  if (sc == NULL)
    return;
  g_assert(sc->thread == NULL);
  if (sc->fd >= 0)
    close(sc->fd);
  g_ptr_array_unref(sc->steps);
  g_byte_array_unref(sc->received);
  g_string_free(sc->errors, TRUE);
  g_free(sc->option_names);
  g_free(sc);
}

static struct step *
add_step(struct scripted *sc, enum step_kind kind, const char *what)
{
  struct step *s = g_new0(struct step, 1);

  g_assert(sc->thread == NULL);
  s->kind = kind;
  s->what = g_strdup(what);
  g_ptr_array_add(sc->steps, s);
  return s;
}

/* ---- Low-level I/O on the server's end -------------------------------- */

void
scripted_fail(struct scripted *sc, const char *fmt, ...)
{
  const struct step *s = NULL;
  va_list ap;

  if (sc->at < sc->steps->len)
    s = sc->steps->pdata[sc->at];
  g_string_append_printf(sc->errors, "step %u (%s): ", sc->at,
                         s != NULL ? s->what : "end of script");
  va_start(ap, fmt);
  g_string_append_vprintf(sc->errors, fmt, ap);
  va_end(ap);
  g_string_append_c(sc->errors, '\n');
}

/* Waits for events on the server's end.  Returns true when ready. */
static bool
wait_for(struct scripted *sc, short events, int timeout_ms)
{
  struct pollfd pfd = { .fd = sc->fd, .events = events };
  int n;

  do
    n = poll(&pfd, 1, timeout_ms);
  while (n < 0 && errno == EINTR);
  return n > 0;
}

/* Reads up to len bytes into buf and records them.  Returns the count,
 * 0 at end of stream, -1 on timeout. */
static ssize_t
read_some(struct scripted *sc, void *buf, size_t len, int timeout_ms)
{
  for (;;) {
    ssize_t n;

    if (!wait_for(sc, POLLIN, timeout_ms))
      return -1;
    n = recv(sc->fd, buf, len, MSG_DONTWAIT);
    if (n > 0) {
      g_byte_array_append(sc->received, buf, n);
      return n;
    }
    /* A client that closes with our bytes unread resets the socket;
     * for the script both mean the client is gone. */
    if (n == 0 || errno == ECONNRESET) {
      sc->eof = true;
      return 0;
    }
    if (errno != EAGAIN && errno != EINTR)
      g_error("scripted: recv: %s", g_strerror(errno));
  }
}

bool
scripted_read(struct scripted *sc, void *buf, size_t len)
{
  uint8_t *p = buf;
  size_t want = len;

  while (len > 0) {
    ssize_t n = read_some(sc, p, len, SCRIPTED_TIMEOUT_MS);

    if (n < 0) {
      scripted_fail(sc, "timed out: client sent %zu of %zu bytes",
                    want - len, want);
      return false;
    }
    if (n == 0) {
      scripted_fail(sc, "client closed after %zu of %zu bytes",
                    want - len, want);
      return false;
    }
    p += n;
    len -= n;
  }
  return true;
}

bool
scripted_write(struct scripted *sc, const void *buf, size_t len)
{
  const uint8_t *p = buf;

  while (len > 0) {
    ssize_t n = send(sc->fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);

    if (n > 0) {
      p += n;
      len -= n;
      continue;
    }
    if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
      /* The client hung up; what it sent is recorded, and a test that
       * expected it to stay will see the missing steps. */
      sc->gone = true;
      return false;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR)
      g_error("scripted: send: %s", g_strerror(errno));
    if (!wait_for(sc, POLLOUT, SCRIPTED_TIMEOUT_MS)) {
      scripted_fail(sc, "timed out: client stopped reading with %zu "
                    "bytes unsent", len);
      return false;
    }
  }
  return true;
}

bool
scripted_client_closed(struct scripted *sc)
{
  uint8_t byte;
  ssize_t n;

  if (!wait_for(sc, POLLIN, SCRIPTED_TIMEOUT_MS))
    return false;
  n = recv(sc->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0 || (n < 0 && errno == ECONNRESET)) {
    sc->eof = true;
    return true;
  }
  return false;
}

static char *
hex(const uint8_t *p, size_t len)
{
  GString *s = g_string_new(NULL);
  size_t show = MIN(len, 48);

  for (size_t i = 0; i < show; i++)
    g_string_append_printf(s, "%02x", p[i]);
  if (show < len)
    g_string_append_printf(s, "... (%zu bytes)", len);
  return g_string_free(s, FALSE);
}

/* ---- Playing the steps ------------------------------------------------- */

static bool
play_expect(struct scripted *sc, const struct step *s)
{
  g_autofree uint8_t *got = g_malloc(s->len ? s->len : 1);
  g_autoptr(GString) why = g_string_new(NULL);

  if (!scripted_read(sc, got, s->len))
    return false;

  if (s->bytes != NULL && memcmp(got, s->bytes->data, s->len) != 0) {
    g_autofree char *want = hex(s->bytes->data, s->len);
    g_autofree char *have = hex(got, s->len);

    scripted_fail(sc, "expected %s, client sent %s", want, have);
    return false;
  }
  if (s->pred != NULL && !s->pred(got, s->len, s->user, why)) {
    scripted_fail(sc, "%s", why->str);
    return false;
  }
  return true;
}

static bool
play_expect_option(struct scripted *sc, const struct step *s)
{
  uint8_t hdr[16];
  g_autofree uint8_t *data = NULL;
  uint64_t magic;
  uint32_t code, len;

  if (!scripted_read(sc, hdr, sizeof hdr))
    return false;
  magic = nbd_get64(hdr);
  code = nbd_get32(hdr + 8);
  len = nbd_get32(hdr + 12);

  if (magic != NBD_OPTS_MAGIC) {
    scripted_fail(sc, "option magic 0x%016" PRIx64 ", not IHAVEOPT", magic);
    return false;
  }
  if (code != s->code) {
    scripted_fail(sc, "expected %s, client sent %s (%" PRIu32 ")",
                  nbd_opt_name(s->code), nbd_opt_name(code), code);
    return false;
  }
  if (len > MAX_OPTION_DATA) {
    scripted_fail(sc, "%s with %" PRIu32 " bytes of data",
                  nbd_opt_name(code), len);
    return false;
  }
  data = g_malloc(len + 1);
  return scripted_read(sc, data, len);
}

static bool
play_expect_request(struct scripted *sc, const struct step *s)
{
  uint8_t hdr[28];
  uint32_t magic, count;
  uint16_t type;

  if (!scripted_read(sc, hdr, sizeof hdr))
    return false;
  magic = nbd_get32(hdr);
  type = nbd_get16(hdr + 6);
  count = nbd_get32(hdr + 24);

  if (magic != NBD_REQUEST_MAGIC || type != s->code) {
    scripted_fail(sc, "expected a %s request, client sent magic 0x%08"
                  PRIx32 " type %s", nbd_cmd_name(s->code), magic,
                  nbd_cmd_name(type));
    return false;
  }
  if (type == NBD_CMD_WRITE) {
    g_autofree uint8_t *payload = g_malloc(count ? count : 1);

    return scripted_read(sc, payload, count);
  }
  return true;
}

static bool
play_slow(struct scripted *sc, const struct step *s)
{
  size_t off = 0;

  /* Pieces of 1..7 bytes: every read of a fixed-size header on the
   * other side must loop to complete (T19). */
  for (unsigned i = 0; off < s->bytes->len; i++) {
    size_t n = MIN(s->bytes->len - off, i % 7 + 1);

    if (!scripted_write(sc, s->bytes->data + off, n))
      return false;
    off += n;
    g_usleep(200);
  }
  return true;
}

static bool
play_silence(struct scripted *sc, const struct step *s)
{
  uint8_t byte;
  ssize_t n = read_some(sc, &byte, 1, s->ms);

  if (n > 0) {
    scripted_fail(sc, "client sent 0x%02x within %u ms", byte, s->ms);
    return false;
  }
  if (n == 0) {
    scripted_fail(sc, "client closed within %u ms", s->ms);
    return false;
  }
  return true;
}

/* Reads until the client closes.  Returns false on timeout. */
static bool
drain(struct scripted *sc)
{
  uint8_t buf[16384];
  gint64 deadline = g_get_monotonic_time() +
                    SCRIPTED_TIMEOUT_MS * G_TIME_SPAN_MILLISECOND;

  while (!sc->eof) {
    gint64 left = (deadline - g_get_monotonic_time()) / 1000;

    if (left <= 0 || read_some(sc, buf, sizeof buf, left) < 0)
      return false;
  }
  return true;
}

static bool
play_step(struct scripted *sc, const struct step *s)
{
  switch (s->kind) {
    case STEP_SEND:
      return scripted_write(sc, s->bytes->data, s->bytes->len);
    case STEP_SEND_SLOW:
      return play_slow(sc, s);
    case STEP_EXPECT:
      return play_expect(sc, s);
    case STEP_EXPECT_OPTION:
      return play_expect_option(sc, s);
    case STEP_EXPECT_REQUEST:
      return play_expect_request(sc, s);
    case STEP_SILENCE:
      return play_silence(sc, s);
    case STEP_EOF:
      if (!drain(sc)) {
        scripted_fail(sc, "client did not close within %d ms",
                      SCRIPTED_TIMEOUT_MS);
        return false;
      }
      return true;
    case STEP_CLOSE:
      shutdown(sc->fd, SHUT_WR);
      return true;
    case STEP_SLEEP:
      g_usleep(s->ms * G_TIME_SPAN_MILLISECOND);
      return true;
    case STEP_CALL:
      return s->fn(sc, s->user);
  }
  g_assert_not_reached();
}

static gpointer
server_main(gpointer opaque)
{
  struct scripted *sc = opaque;

  for (sc->at = 0; sc->at < sc->steps->len; sc->at++)
    if (!play_step(sc, sc->steps->pdata[sc->at]))
      break;

  /* Whatever happened, tell the client the stream is over (a client
   * waiting for more must not wait forever), then collect everything it
   * still sends until it closes: the tests assert on those bytes too. */
  shutdown(sc->fd, SHUT_WR);
  if (!drain(sc))
    scripted_fail(sc, "client did not close within %d ms",
                  SCRIPTED_TIMEOUT_MS);
  return NULL;
}

struct nbd_transport *
scripted_start(struct scripted *sc)
{
  int fds[2];

  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
    g_error("scripted: socketpair: %s", g_strerror(errno));
  if (fcntl(fds[0], F_SETFL, O_NONBLOCK) < 0)
    g_error("scripted: fcntl: %s", g_strerror(errno));

  sc->fd = fds[0];
  sc->client_fd = fds[1];
  sc->thread = g_thread_new("scripted", server_main, sc);
  return nbd_transport_new_fd(fds[1], "scripted");
}

void
scripted_finish(struct scripted *sc)
{
  g_assert(sc->thread != NULL);
  g_thread_join(sc->thread);
  sc->thread = NULL;
  close(sc->fd);
  sc->fd = -1;
}

/* ---- Adding steps ------------------------------------------------------ */

GByteArray *
scripted_out(struct scripted *sc)
{
  struct step *last = NULL;

  if (sc->steps->len > 0)
    last = sc->steps->pdata[sc->steps->len - 1];
  if (last == NULL || last->kind != STEP_SEND) {
    last = add_step(sc, STEP_SEND, "send");
    last->bytes = g_byte_array_new();
  }
  return last->bytes;
}

void
scripted_send(struct scripted *sc, const void *data, size_t len)
{
  g_byte_array_append(scripted_out(sc), data, len);
}

void
scripted_send_slow(struct scripted *sc, const void *data, size_t len)
{
  struct step *s = add_step(sc, STEP_SEND_SLOW, "send slowly");

  s->bytes = g_byte_array_new();
  g_byte_array_append(s->bytes, data, len);
}

void
scripted_expect(struct scripted *sc, const void *exact, size_t len,
                const char *what)
{
  struct step *s = add_step(sc, STEP_EXPECT, what);

  s->len = len;
  if (exact != NULL) {
    s->bytes = g_byte_array_new();
    g_byte_array_append(s->bytes, exact, len);
  }
}

void
scripted_expect_pred(struct scripted *sc, size_t len, scripted_pred_fn fn,
                     void *user, const char *what)
{
  struct step *s = add_step(sc, STEP_EXPECT, what);

  s->len = len;
  s->pred = fn;
  s->user = user;
}

void
scripted_expect_flags(struct scripted *sc, uint32_t flags)
{
  uint32_t be = htobe32(flags);

  scripted_expect(sc, &be, sizeof be, "client flags");
}

void
scripted_expect_option(struct scripted *sc, uint32_t option)
{
  struct step *s = add_step(sc, STEP_EXPECT_OPTION, nbd_opt_name(option));

  s->code = option;
}

void
scripted_expect_request(struct scripted *sc, uint16_t type)
{
  struct step *s = add_step(sc, STEP_EXPECT_REQUEST, nbd_cmd_name(type));

  s->code = type;
}

void
scripted_expect_silence(struct scripted *sc, unsigned ms)
{
  add_step(sc, STEP_SILENCE, "silence")->ms = ms;
}

void
scripted_expect_eof(struct scripted *sc)
{
  add_step(sc, STEP_EOF, "wait for the client to close");
}

void
scripted_close(struct scripted *sc)
{
  add_step(sc, STEP_CLOSE, "close");
}

void
scripted_sleep(struct scripted *sc, unsigned ms)
{
  add_step(sc, STEP_SLEEP, "sleep")->ms = ms;
}

void
scripted_call(struct scripted *sc, scripted_fn fn, void *user)
{
  struct step *s = add_step(sc, STEP_CALL, "call");

  s->fn = fn;
  s->user = user;
}

/* ---- Results ----------------------------------------------------------- */

const GByteArray *
scripted_received(const struct scripted *sc)
{
  return sc->received;
}

const char *
scripted_errors(const struct scripted *sc)
{
  return sc->errors->len > 0 ? sc->errors->str : NULL;
}

bool
scripted_client_gone(const struct scripted *sc)
{
  return sc->gone;
}

int64_t
scripted_client_flags(const struct scripted *sc)
{
  if (sc->received->len < 4)
    return -1;
  return nbd_get32(sc->received->data);
}

/* Walks the options after the client flags; calls fn for each until it
 * returns false.  Returns false when the bytes stop framing as
 * options. */
static bool
walk_options(const struct scripted *sc,
             bool (*fn)(uint32_t code, const uint8_t *data, uint32_t len,
                        void *user),
             void *user)
{
  const uint8_t *p = sc->received->data;
  size_t left = sc->received->len;

  if (left < 4)
    return left == 0;
  p += 4;
  left -= 4;

  while (left > 0) {
    uint32_t len;

    if (left < 16 || nbd_get64(p) != NBD_OPTS_MAGIC)
      return false;
    len = nbd_get32(p + 12);
    if (len > left - 16)
      return false;
    if (!fn(nbd_get32(p + 8), p + 16, len, user))
      return true;
    p += 16 + len;
    left -= 16 + len;
  }
  return true;
}

static bool
append_name(uint32_t code, const uint8_t *data, uint32_t len, void *user)
{
  GString *s = user;
  const char *name = nbd_opt_name(code);

  if (g_str_has_prefix(name, "NBD_OPT_"))
    name += strlen("NBD_OPT_");
  if (s->len > 0)
    g_string_append_c(s, ' ');
  g_string_append(s, name);
  return true;
}

const char *
scripted_option_names(struct scripted *sc)
{
  GString *s = g_string_new(NULL);

  if (!walk_options(sc, append_name, s))
    g_string_append(s, s->len > 0 ? " ?" : "?");
  g_free(sc->option_names);
  sc->option_names = g_string_free(s, FALSE);
  return sc->option_names;
}

struct find {
  unsigned index;
  GBytes *found;
};

static bool
find_option(uint32_t code, const uint8_t *data, uint32_t len, void *user)
{
  struct find *f = user;

  if (f->index-- > 0)
    return true;
  f->found = g_bytes_new(data, len);
  return false;
}

GBytes *
scripted_option_data(const struct scripted *sc, unsigned index)
{
  struct find f = { .index = index };

  walk_options(sc, find_option, &f);
  return f.found;
}

/* ---- Builders ---------------------------------------------------------- */

void
sc_be16(GByteArray *b, uint16_t v)
{
  v = htobe16(v);
  g_byte_array_append(b, (const guint8 *) &v, sizeof v);
}

void
sc_be32(GByteArray *b, uint32_t v)
{
  v = htobe32(v);
  g_byte_array_append(b, (const guint8 *) &v, sizeof v);
}

void
sc_be64(GByteArray *b, uint64_t v)
{
  v = htobe64(v);
  g_byte_array_append(b, (const guint8 *) &v, sizeof v);
}

static void
append(GByteArray *b, const void *data, size_t len)
{
  if (len > 0)
    g_byte_array_append(b, data, len);
}

void
sc_greeting(GByteArray *b, uint16_t gflags)
{
  sc_be64(b, NBD_MAGIC);
  sc_be64(b, NBD_OPTS_MAGIC);
  sc_be16(b, gflags);
}

void
sc_old_greeting(GByteArray *b, uint64_t size, uint32_t flags)
{
  static const uint8_t zeroes[124];

  sc_be64(b, NBD_MAGIC);
  sc_be64(b, NBD_OLD_VERSION_MAGIC);
  sc_be64(b, size);
  sc_be32(b, flags);
  append(b, zeroes, sizeof zeroes);
}

void
sc_opt_reply(GByteArray *b, uint32_t option, uint32_t type,
             const void *data, uint32_t len)
{
  sc_be64(b, NBD_REP_MAGIC);
  sc_be32(b, option);
  sc_be32(b, type);
  sc_be32(b, len);
  append(b, data, len);
}

void
sc_opt_error(GByteArray *b, uint32_t option, uint32_t type, const char *msg)
{
  sc_opt_reply(b, option, type, msg, msg != NULL ? strlen(msg) : 0);
}

void
sc_info_export(GByteArray *b, uint32_t option, uint64_t size,
               uint16_t tflags)
{
  sc_be64(b, NBD_REP_MAGIC);
  sc_be32(b, option);
  sc_be32(b, NBD_REP_INFO);
  sc_be32(b, 12);
  sc_be16(b, NBD_INFO_EXPORT);
  sc_be64(b, size);
  sc_be16(b, tflags);
}

void
sc_info_block_size(GByteArray *b, uint32_t option, uint32_t min,
                   uint32_t pref, uint32_t max)
{
  sc_be64(b, NBD_REP_MAGIC);
  sc_be32(b, option);
  sc_be32(b, NBD_REP_INFO);
  sc_be32(b, 14);
  sc_be16(b, NBD_INFO_BLOCK_SIZE);
  sc_be32(b, min);
  sc_be32(b, pref);
  sc_be32(b, max);
}

void
sc_info_string(GByteArray *b, uint32_t option, uint16_t info,
               const char *text)
{
  size_t len = strlen(text);

  sc_be64(b, NBD_REP_MAGIC);
  sc_be32(b, option);
  sc_be32(b, NBD_REP_INFO);
  sc_be32(b, 2 + len);
  sc_be16(b, info);
  append(b, text, len);
}

void
sc_meta_context(GByteArray *b, uint32_t option, uint32_t id,
                const char *name)
{
  size_t len = strlen(name);

  sc_be64(b, NBD_REP_MAGIC);
  sc_be32(b, option);
  sc_be32(b, NBD_REP_META_CONTEXT);
  sc_be32(b, 4 + len);
  sc_be32(b, id);
  append(b, name, len);
}

void
sc_server(GByteArray *b, const char *name, const char *description)
{
  size_t nlen = strlen(name);
  size_t dlen = description != NULL ? strlen(description) : 0;

  sc_be64(b, NBD_REP_MAGIC);
  sc_be32(b, NBD_OPT_LIST);
  sc_be32(b, NBD_REP_SERVER);
  sc_be32(b, 4 + nlen + dlen);
  sc_be32(b, nlen);
  append(b, name, nlen);
  append(b, description, dlen);
}

void
sc_export_name_reply(GByteArray *b, uint64_t size, uint16_t tflags,
                     bool zeroes)
{
  static const uint8_t pad[124];

  sc_be64(b, size);
  sc_be16(b, tflags);
  if (zeroes)
    append(b, pad, sizeof pad);
}

void
sc_simple(GByteArray *b, uint64_t cookie, uint32_t error)
{
  sc_be32(b, NBD_SIMPLE_REPLY_MAGIC);
  sc_be32(b, error);
  sc_be64(b, cookie);
}

void
sc_chunk(GByteArray *b, uint16_t flags, uint16_t type, uint64_t cookie,
         const void *payload, uint32_t len)
{
  sc_be32(b, NBD_STRUCTURED_REPLY_MAGIC);
  sc_be16(b, flags);
  sc_be16(b, type);
  sc_be64(b, cookie);
  sc_be32(b, len);
  append(b, payload, len);
}

void
sc_chunk_data(GByteArray *b, uint16_t flags, uint64_t cookie,
              uint64_t offset, const void *data, uint32_t len)
{
  sc_be32(b, NBD_STRUCTURED_REPLY_MAGIC);
  sc_be16(b, flags);
  sc_be16(b, NBD_REPLY_TYPE_OFFSET_DATA);
  sc_be64(b, cookie);
  sc_be32(b, 8 + len);
  sc_be64(b, offset);
  append(b, data, len);
}

void
sc_chunk_hole(GByteArray *b, uint16_t flags, uint64_t cookie,
              uint64_t offset, uint32_t size)
{
  sc_be32(b, NBD_STRUCTURED_REPLY_MAGIC);
  sc_be16(b, flags);
  sc_be16(b, NBD_REPLY_TYPE_OFFSET_HOLE);
  sc_be64(b, cookie);
  sc_be32(b, 12);
  sc_be64(b, offset);
  sc_be32(b, size);
}

void
sc_chunk_error(GByteArray *b, uint16_t flags, uint64_t cookie,
               uint32_t error, const char *msg)
{
  size_t mlen = msg != NULL ? strlen(msg) : 0;

  sc_be32(b, NBD_STRUCTURED_REPLY_MAGIC);
  sc_be16(b, flags);
  sc_be16(b, NBD_REPLY_TYPE_ERROR);
  sc_be64(b, cookie);
  sc_be32(b, 6 + mlen);
  sc_be32(b, error);
  sc_be16(b, mlen);
  append(b, msg, mlen);
}

void
sc_chunk_error_offset(GByteArray *b, uint16_t flags, uint64_t cookie,
                      uint32_t error, const char *msg, uint64_t offset)
{
  size_t mlen = msg != NULL ? strlen(msg) : 0;

  sc_be32(b, NBD_STRUCTURED_REPLY_MAGIC);
  sc_be16(b, flags);
  sc_be16(b, NBD_REPLY_TYPE_ERROR_OFFSET);
  sc_be64(b, cookie);
  sc_be32(b, 14 + mlen);
  sc_be32(b, error);
  sc_be16(b, mlen);
  append(b, msg, mlen);
  sc_be64(b, offset);
}

void
sc_chunk_status(GByteArray *b, uint16_t flags, uint64_t cookie,
                uint32_t ctx, const uint32_t *ext, size_t n)
{
  sc_be32(b, NBD_STRUCTURED_REPLY_MAGIC);
  sc_be16(b, flags);
  sc_be16(b, NBD_REPLY_TYPE_BLOCK_STATUS);
  sc_be64(b, cookie);
  sc_be32(b, 4 + 8 * n);
  sc_be32(b, ctx);
  for (size_t i = 0; i < 2 * n; i++)
    sc_be32(b, ext[i]);
}

void
sc_request(GByteArray *b, uint16_t flags, uint16_t type, uint64_t cookie,
           uint64_t offset, uint32_t count)
{
  sc_be32(b, NBD_REQUEST_MAGIC);
  sc_be16(b, flags);
  sc_be16(b, type);
  sc_be64(b, cookie);
  sc_be64(b, offset);
  sc_be32(b, count);
}

void
sc_pattern(void *buf, uint64_t offset, size_t len)
{
  uint8_t *p = buf;

  /* A mix of the whole offset, so that data placed at the wrong offset
   * differs whatever the shift. */
  for (size_t i = 0; i < len; i++) {
    uint64_t x = (offset + i) * UINT64_C(0x9e3779b97f4a7c15);

    p[i] = (uint8_t) ((x >> 56) ^ (x >> 29));
  }
}

/* ---- Canned streams ---------------------------------------------------- */

struct scripted_feed {
  int fd;
  GThread *thread;
  uint8_t *data;
  size_t len;
};

/* Writes everything (blocking), then end of stream.  A client that
 * closes early ends the write with EPIPE, which is fine. */
static void
feed_write(int fd, const uint8_t *p, size_t len)
{
  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    p += n;
    len -= n;
  }
  shutdown(fd, SHUT_WR);
}

static gpointer
feed_main(gpointer opaque)
{
  struct scripted_feed *f = opaque;

  feed_write(f->fd, f->data, f->len);
  return NULL;
}

struct nbd_transport *
scripted_feed_new(const void *data, size_t len, struct scripted_feed **out)
{
  struct scripted_feed *f = g_new0(struct scripted_feed, 1);
  const uint8_t *p = data;
  int fds[2];

  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
    g_error("scripted: socketpair: %s", g_strerror(errno));
  f->fd = fds[0];

  /* As much as the socket takes now, without blocking: for most inputs
   * that is all of it, and no thread is needed (fuzzers run this a
   * million times). */
  while (len > 0) {
    ssize_t n = send(f->fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);

    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    p += n;
    len -= n;
  }

  if (len == 0) {
    shutdown(f->fd, SHUT_WR);
  } else {
    f->data = g_malloc(len);
    memcpy(f->data, p, len);
    f->len = len;
    f->thread = g_thread_new("feed", feed_main, f);
  }
  *out = f;
  return nbd_transport_new_fd(fds[1], "canned");
}

void
scripted_feed_free(struct scripted_feed *f)
{
  if (f == NULL)
    return;
  if (f->thread != NULL)
    g_thread_join(f->thread);
  close(f->fd);
  g_free(f->data);
  g_free(f);
}
