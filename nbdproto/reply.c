/* nbdfs: parsing transmission replies, simple and structured.
 *
 * Every value the server sends is checked before it is used (checklist
 * V20..V35).  A violation ends the connection: the caller fails every
 * command in flight.  Read payloads go straight from the socket into the
 * caller's buffer, or into the caller's pipe (nbd_cmd.sink); only
 * headers pass through the receive buffer.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <inttypes.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "reply.h"

#define RBUF_SIZE (64 * 1024)

/* S12, S13, V33: a data chunk may exceed the maximum payload by its own
 * overhead, and no more than 32 MiB is ever asked for. */
#define MAX_DATA_CHUNK ((uint64_t) NBD_DEFAULT_MAX_PAYLOAD + 8)
#define MAX_STATUS_CHUNK (4 + 8 * (uint64_t) NBD_MAX_EXTENTS) /* B10 */

struct range {
  uint64_t lo, hi;
};

void
nbd_reply_parser_init(struct nbd_reply_parser *p, struct nbd_transport *t,
                      const struct nbd_export_info *info)
{
  memset(p, 0, sizeof *p);
  p->t = t;
  p->structured = info->structured;
  p->block_status = info->block_status;
  p->alloc_ctx_id = info->alloc_ctx_id;
  p->export_size = info->size;
  p->cap = RBUF_SIZE;
  p->buf = g_malloc(p->cap);
}

void
nbd_reply_parser_clear(struct nbd_reply_parser *p)
{
  g_clear_pointer(&p->buf, g_free);
}

void
nbd_reply_cmd_reset(struct nbd_cmd *cmd)
{
  g_clear_pointer((GTree **) &cmd->priv.ranges, g_tree_destroy);
  cmd->priv.covered = 0;
  cmd->priv.chunks = 0;
  cmd->priv.err = 0;
  cmd->priv.seen_status = false;
}

/* Makes n bytes available at p->buf + p->start. */
static int
need(struct nbd_reply_parser *p, size_t n, GError **error)
{
  g_assert(n <= p->cap);
  if (p->end - p->start >= n)
    return 0;

  if (p->start > 0) {
    memmove(p->buf, p->buf + p->start, p->end - p->start);
    p->end -= p->start;
    p->start = 0;
  }
  while (p->end < n) {
    ssize_t r = nbd_transport_read_some(p->t, p->buf + p->end,
                                        p->cap - p->end, error);

    if (r < 0)
      return r;
    if (r == 0)
      return nbd_set_error(error, ECONNRESET,
                           "receive: %s: server closed the connection",
                           nbd_transport_name(p->t));
    p->end += r;
  }
  return 0;
}

/* Copies n bytes of payload to dst (or drops them when dst is NULL):
 * first what is buffered, then the rest straight from the transport. */
static int
take(struct nbd_reply_parser *p, void *dst, size_t n, GError **error)
{
  size_t have = MIN(n, p->end - p->start);
  char *d = dst;

  if (d != NULL)
    memcpy(d, p->buf + p->start, have);
  p->start += have;
  n -= have;
  if (d != NULL)
    d += have;

  while (n > 0) {
    size_t step = MIN(n, p->cap);
    int rc;

    if (d != NULL && n >= p->cap / 2) {
      /* Large payload: no detour through the buffer. */
      rc = nbd_transport_read(p->t, d, n, error);
      return rc;
    }
    rc = need(p, step, error);
    if (rc < 0)
      return rc;
    if (d != NULL) {
      memcpy(d, p->buf + p->start, step);
      d += step;
    }
    p->start += step;
    n -= step;
  }
  return 0;
}

/* Reads exactly len bytes back out of a pipe that holds them. */
static int
pipe_take(struct nbd_reply_parser *p, int rd, void *dst, size_t len,
          GError **error)
{
  char *d = dst;

  while (len > 0) {
    ssize_t n = read(rd, d, len);

    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return nbd_set_error(error, n < 0 ? errno : EIO,
                           "receive: %s: reading back a pipe: %s",
                           nbd_transport_name(p->t),
                           n < 0 ? g_strerror(errno) : "bytes missing");
    d += n;
    len -= n;
  }
  return 0;
}

/* The sink filled up after moved bytes of the payload: those go back
 * from the pipe to buf, the owner's prefix is dropped, and the rest of
 * the payload comes the usual way.  The pipe is empty after. */
static int
unsink(struct nbd_reply_parser *p, struct nbd_cmd *cmd, size_t moved,
       GError **error)
{
  struct nbd_sink *s = cmd->sink;
  size_t drop = s->prefix;
  int rc;

  while (drop > 0) {
    size_t step = MIN(drop, cmd->count);

    rc = pipe_take(p, s->rd, cmd->buf, step, error);
    if (rc < 0)
      return rc;
    drop -= step;
  }
  rc = pipe_take(p, s->rd, cmd->buf, moved, error);
  if (rc < 0)
    return rc;
  return take(p, (char *) cmd->buf + moved, cmd->count - moved, error);
}

/* Delivers the payload of a READ that arrives as one piece: into the
 * command's sink when it has one that holds just its prefix and the
 * socket is plain, else into buf.  What the receive buffer already
 * holds goes into the pipe with a copy; the rest moves from the socket
 * to the pipe without passing through user space. */
static int
take_whole(struct nbd_reply_parser *p, struct nbd_cmd *cmd, GError **error)
{
  struct nbd_sink *s = cmd->sink;
  size_t moved = 0;
  int queued = -1;

  if (s == NULL || !nbd_transport_can_splice(p->t) ||
      ioctl(s->rd, FIONREAD, &queued) < 0 || (size_t) queued != s->prefix)
    return take(p, cmd->buf, cmd->count, error);

  while (moved < cmd->count && p->start < p->end) {
    size_t step = MIN(cmd->count - moved, p->end - p->start);
    ssize_t n = write(s->wr, p->buf + p->start, step);

    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      return unsink(p, cmd, moved, error);
    if (n < 0)
      return nbd_set_error(error, errno, "receive: %s: pipe: %s",
                           nbd_transport_name(p->t), g_strerror(errno));
    p->start += n;
    moved += n;
  }
  while (moved < cmd->count) {
    ssize_t n = nbd_transport_splice(p->t, s->wr, cmd->count - moved,
                                     error);

    if (n < 0)
      return n;
    if (n == 0)
      return unsink(p, cmd, moved, error);
    moved += n;
  }
  s->filled = true;
  return 0;
}

/* Ends the connection for a broken rule; the message names it.  Takes
 * ownership of msg. */
static int
fail(struct nbd_reply_parser *p, GError **error, const char *rule,
     char *msg)
{
  int rc = nbd_set_error(error, EPROTO, "receive: %s: %s (%s)",
                         nbd_transport_name(p->t), msg, rule);

  g_free(msg);
  return rc;
}

static bool
inside(const struct nbd_cmd *cmd, uint64_t off, uint64_t len)
{
  /* V27: [off, off+len) within [cmd offset, +count), overflow-safe. */
  return off >= cmd->offset && len <= cmd->count &&
         off - cmd->offset <= cmd->count - len;
}

static gint
range_key_cmp(gconstpointer a, gconstpointer b, gpointer unused)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

  return x < y ? -1 : x > y;
}

/* Records [lo, hi) as covered by a content chunk of cmd.  Returns false
 * when it overlaps an earlier chunk (V27).  Chunks may come in any
 * order and size (V32), so covered ranges live in a balanced tree keyed
 * by their start, with touching ranges merged: a hostile order cannot
 * make this quadratic. */
static bool
cover(struct nbd_cmd *cmd, uint64_t lo, uint64_t hi)
{
  GTree *t = cmd->priv.ranges;
  GTreeNode *next, *prev;
  struct range *r;

  /* The common case: one chunk for the whole read, no tree. */
  if (cmd->priv.chunks++ == 0) {
    cmd->priv.first_lo = lo;
    cmd->priv.first_hi = hi;
    cmd->priv.covered = hi - lo;
    return true;
  }
  if (t == NULL) {
    t = g_tree_new_full(range_key_cmp, NULL, NULL, g_free);
    r = g_new(struct range, 1);
    r->lo = cmd->priv.first_lo;
    r->hi = cmd->priv.first_hi;
    g_tree_insert(t, &r->lo, r);
    cmd->priv.ranges = t;
  }

  /* The first range starting at or after lo, and the one before it:
   * neither may reach into [lo, hi). */
  next = g_tree_lower_bound(t, &lo);
  prev = next ? g_tree_node_previous(next) : g_tree_node_last(t);
  if (prev != NULL && ((struct range *) g_tree_node_value(prev))->hi > lo)
    return false;
  if (next != NULL && ((struct range *) g_tree_node_value(next))->lo < hi)
    return false;
  cmd->priv.covered += hi - lo;

  /* Merge with the neighbours it touches. */
  if (prev != NULL && ((struct range *) g_tree_node_value(prev))->hi == lo) {
    r = g_tree_node_value(prev);
    r->hi = hi;
  } else {
    r = g_new(struct range, 1);
    r->lo = lo;
    r->hi = hi;
    g_tree_insert(t, &r->lo, r);
  }
  if (next != NULL && ((struct range *) g_tree_node_value(next))->lo == hi) {
    struct range *n = g_tree_node_value(next);

    r->hi = n->hi;
    g_tree_remove(t, &n->lo);
  }
  return true;
}

static int
simple_reply(struct nbd_reply_parser *p, GError **error)
{
  struct nbd_cmd *cmd;
  uint32_t err;
  uint64_t cookie;
  int rc;

  rc = need(p, sizeof(struct nbd_simple_reply), error);
  if (rc < 0)
    return rc;
  err = nbd_get32(p->buf + p->start + 4);
  cookie = nbd_get64(p->buf + p->start + 8);
  p->start += sizeof(struct nbd_simple_reply);

  cmd = p->lookup(p->opaque, cookie);
  if (cmd == NULL)
    return fail(p, error, "V21",
                g_strdup_printf("reply to unknown cookie 0x%" PRIx64,
                                cookie));

  /* V22: with structured replies a READ's data always comes in chunks,
   * so a simple success to a READ cannot be framed.  A simple error
   * carries no payload and keeps the stream in step, so it is taken. */
  if (cmd->type == NBD_CMD_READ && err == 0) {
    if (p->structured || cmd->priv.chunks > 0)
      return fail(p, error, "V22",
                  g_strdup("simple reply with data to a READ in "
                           "structured mode"));

    /* V23: exactly the requested bytes follow. */
    rc = take_whole(p, cmd, error);
    if (rc < 0)
      return rc;
  }
  if (cmd->type == NBD_CMD_BLOCK_STATUS && err == 0)
    return fail(p, error, "V31",
                g_strdup("simple success reply to BLOCK_STATUS"));

  p->retire(p->opaque, cmd, err ? nbd_errno_from_wire(err) : 0);
  return 0;
}

/* OFFSET_DATA and OFFSET_HOLE (V27). */
static int
content_chunk(struct nbd_reply_parser *p, struct nbd_cmd *cmd,
              uint16_t type, uint32_t len, GError **error)
{
  uint64_t off, size;
  int rc;

  if (cmd->type != NBD_CMD_READ)
    return fail(p, error, "V24",
                g_strdup_printf("%s chunk for %s",
                                nbd_reply_type_name(type),
                                nbd_cmd_name(cmd->type)));
  if ((type == NBD_REPLY_TYPE_OFFSET_DATA && len < 9) ||
      (type == NBD_REPLY_TYPE_OFFSET_HOLE && len != 12))
    return fail(p, error, "V27",
                g_strdup_printf("%s chunk of wrong length %" PRIu32,
                                nbd_reply_type_name(type), len));

  rc = need(p, type == NBD_REPLY_TYPE_OFFSET_HOLE ? 12 : 8, error);
  if (rc < 0)
    return rc;
  off = nbd_get64(p->buf + p->start);
  if (type == NBD_REPLY_TYPE_OFFSET_HOLE) {
    size = nbd_get32(p->buf + p->start + 8);
    p->start += 12;
  } else {
    size = len - 8;
    p->start += 8;
  }

  if (size == 0 || !inside(cmd, off, size))
    return fail(p, error, "V27",
                g_strdup_printf("%s chunk [%" PRIu64 ", +%" PRIu64
                                ") outside the request [%" PRIu64
                                ", +%" PRIu32 ")",
                                nbd_reply_type_name(type), off, size,
                                cmd->offset, cmd->count));
  if ((cmd->flags & NBD_CMD_FLAG_DF) && cmd->priv.chunks > 0)
    return fail(p, error, "V27",
                g_strdup("second content chunk for a DF read"));
  if (!cover(cmd, off, off + size))
    return fail(p, error, "V27",
                g_strdup_printf("%s chunk at %" PRIu64
                                " overlaps an earlier chunk",
                                nbd_reply_type_name(type), off));

  if (type == NBD_REPLY_TYPE_OFFSET_HOLE) {
    memset((char *) cmd->buf + (off - cmd->offset), 0, size);
    return 0;
  }
  if (off == cmd->offset && size == cmd->count)
    return take_whole(p, cmd, error);
  return take(p, (char *) cmd->buf + (off - cmd->offset), size, error);
}

/* Adds the extents of one BLOCK_STATUS chunk to cmd, clipped to the
 * request and the export (B7), merging equal neighbours (B8). */
static void
add_extents(struct nbd_reply_parser *p, struct nbd_cmd *cmd,
            const uint8_t *d, uint32_t n)
{
  uint64_t pos = cmd->offset;
  uint64_t end = MIN(cmd->offset + (uint64_t) cmd->count, p->export_size);
  GArray *a = g_array_new(FALSE, FALSE, sizeof(struct nbd_extent));

  for (uint32_t i = 0; i < n && pos < end; i++) {
    uint64_t len = nbd_get32(d + 8 * i);
    uint32_t flags = nbd_get32(d + 8 * i + 4);
    struct nbd_extent *last;

    /* B11: only the two defined bits mean anything. */
    flags &= NBD_STATE_HOLE | NBD_STATE_ZERO;
    len = MIN(len, end - pos);
    last = a->len ? &g_array_index(a, struct nbd_extent, a->len - 1) : NULL;
    if (last != NULL && last->flags == flags) {
      last->length += len;
    } else {
      struct nbd_extent e = { pos, len, flags };

      g_array_append_val(a, e);
    }
    pos += len;
  }

  g_free(cmd->extents);
  cmd->n_extents = a->len;
  cmd->extents = (struct nbd_extent *) g_array_free(a, FALSE);
}

static int
status_chunk(struct nbd_reply_parser *p, struct nbd_cmd *cmd, uint32_t len,
             GError **error)
{
  g_autofree uint8_t *d = NULL;
  uint32_t id, n;
  uint64_t sum = 0;
  int rc;

  if (cmd->type != NBD_CMD_BLOCK_STATUS)
    return fail(p, error, "V24",
                g_strdup_printf("BLOCK_STATUS chunk for %s",
                                nbd_cmd_name(cmd->type)));
  if (len < 12 || (len - 4) % 8 != 0 || len > MAX_STATUS_CHUNK)
    return fail(p, error, "V31",
                g_strdup_printf("BLOCK_STATUS chunk of bad length %" PRIu32,
                                len));

  d = g_malloc(len);
  rc = take(p, d, len, error);
  if (rc < 0)
    return rc;
  id = nbd_get32(d);
  n = (len - 4) / 8;

  if (!p->block_status || id != p->alloc_ctx_id)
    return fail(p, error, "V31",
                g_strdup_printf("status for context %" PRIu32
                                ", which was not selected", id));
  if (cmd->priv.seen_status)
    return fail(p, error, "V31",
                g_strdup("two status chunks for one context"));
  cmd->priv.seen_status = true;

  for (uint32_t i = 0; i < n; i++) {
    uint32_t elen = nbd_get32(d + 4 + 8 * i);

    if (elen == 0)
      return fail(p, error, "V31", g_strdup("extent of length 0"));
    /* V31: all but the last extent lie inside the request. */
    if (i + 1 < n && sum + elen >= cmd->count)
      return fail(p, error, "V31",
                  g_strdup("extents run past the request"));
    sum += elen;
  }
  if ((cmd->flags & NBD_CMD_FLAG_REQ_ONE) &&
      (n != 1 || nbd_get32(d + 4) > cmd->count))
    return fail(p, error, "V31",
                g_strdup("REQ_ONE answered with more than one extent "
                         "or one longer than the request"));

  add_extents(p, cmd, d + 4, n);
  return 0;
}

/* ERROR, ERROR_OFFSET and unknown types with bit 15 (V24, V29). */
static int
error_chunk(struct nbd_reply_parser *p, struct nbd_cmd *cmd, uint16_t type,
            uint32_t len, GError **error)
{
  g_autofree uint8_t *d = NULL;
  uint32_t err;
  uint16_t mlen;
  int rc;

  if (len < 6)
    return fail(p, error, "V29",
                g_strdup_printf("error chunk of %" PRIu32 " bytes", len));
  if (len > 6 + NBD_MAX_STRING + 8 + 64 * 1024)
    return fail(p, error, "V33",
                g_strdup_printf("error chunk of %" PRIu32 " bytes", len));

  d = g_malloc(len);
  rc = take(p, d, len, error);
  if (rc < 0)
    return rc;
  err = nbd_get32(d);
  mlen = nbd_get16(d + 4);

  if (mlen > len - 6 || mlen > NBD_MAX_STRING)
    return fail(p, error, "V29",
                g_strdup("error message longer than its chunk"));
  if (err == 0 && (type == NBD_REPLY_TYPE_ERROR ||
                   type == NBD_REPLY_TYPE_ERROR_OFFSET))
    return fail(p, error, "V29", g_strdup("error chunk with error 0"));

  if (type == NBD_REPLY_TYPE_ERROR_OFFSET) {
    uint64_t off;

    if (len < 14 || mlen > len - 14)
      return fail(p, error, "V29",
                  g_strdup("ERROR_OFFSET chunk too short"));
    off = nbd_get64(d + 6 + mlen);
    switch (cmd->type) {
      case NBD_CMD_READ:
      case NBD_CMD_WRITE:
      case NBD_CMD_TRIM:
      case NBD_CMD_CACHE:
      case NBD_CMD_WRITE_ZEROES:
      case NBD_CMD_BLOCK_STATUS:
        if (!inside(cmd, off, 1))
          return fail(p, error, "V29",
                      g_strdup_printf("error offset %" PRIu64
                                      " outside the request", off));
        break;
      default:
        /* V29, V24: unexpected for this command, but an error type:
         * the request fails and the connection stays. */
        break;
    }
  }

  /* V35, X18: any error chunk fails the whole request.  The first
   * error is the one reported. */
  if (cmd->priv.err == 0)
    cmd->priv.err = err ? nbd_errno_from_wire(err) : EIO;
  return 0;
}

static int
finish(struct nbd_reply_parser *p, struct nbd_cmd *cmd, GError **error)
{
  int err = cmd->priv.err;

  if (err == 0 && cmd->type == NBD_CMD_READ &&
      cmd->priv.covered != cmd->count)
    return fail(p, error, "V28",
                g_strdup_printf("READ reply covers %" PRIu64 " of %" PRIu32
                                " bytes", cmd->priv.covered, cmd->count));
  if (err == 0 && cmd->type == NBD_CMD_BLOCK_STATUS &&
      !cmd->priv.seen_status)
    return fail(p, error, "V31",
                g_strdup("BLOCK_STATUS reply without status"));

  p->retire(p->opaque, cmd, err);
  return 0;
}

static int
structured_chunk(struct nbd_reply_parser *p, GError **error)
{
  struct nbd_cmd *cmd;
  uint16_t flags, type;
  uint64_t cookie;
  uint32_t len;
  int rc;

  rc = need(p, sizeof(struct nbd_structured_reply), error);
  if (rc < 0)
    return rc;
  flags = nbd_get16(p->buf + p->start + 4);
  type = nbd_get16(p->buf + p->start + 6);
  cookie = nbd_get64(p->buf + p->start + 8);
  len = nbd_get32(p->buf + p->start + 16);
  p->start += sizeof(struct nbd_structured_reply);

  cmd = p->lookup(p->opaque, cookie);
  if (cmd == NULL)
    return fail(p, error, "V21",
                g_strdup_printf("chunk for unknown cookie 0x%" PRIx64,
                                cookie));
  if (len > MAX_DATA_CHUNK && type != NBD_REPLY_TYPE_BLOCK_STATUS)
    return fail(p, error, "V33",
                g_strdup_printf("chunk of %" PRIu32 " bytes", len));

  switch (type) {
    case NBD_REPLY_TYPE_NONE:
      /* V25: NONE is empty and final. */
      if (len != 0 || !(flags & NBD_REPLY_FLAG_DONE))
        return fail(p, error, "V25",
                    g_strdup("NONE chunk with a payload or without DONE"));
      break;
    case NBD_REPLY_TYPE_OFFSET_DATA:
    case NBD_REPLY_TYPE_OFFSET_HOLE:
      rc = content_chunk(p, cmd, type, len, error);
      break;
    case NBD_REPLY_TYPE_BLOCK_STATUS:
      rc = status_chunk(p, cmd, len, error);
      break;
    default:
      if (!NBD_REPLY_TYPE_IS_ERR(type))
        return fail(p, error, "V24",
                    g_strdup_printf("unknown chunk type %u", type));
      rc = error_chunk(p, cmd, type, len, error);
      break;
  }
  if (rc < 0)
    return rc;

  /* V26: DONE ends the reply; other flag bits are ignored. */
  if (flags & NBD_REPLY_FLAG_DONE)
    return finish(p, cmd, error);
  return 0;
}

int
nbd_reply_parse_one(struct nbd_reply_parser *p, GError **error)
{
  uint32_t magic;
  int rc;

  rc = need(p, 4, error);
  if (rc < 0)
    return rc;
  magic = nbd_get32(p->buf + p->start);

  /* X5, V20: the magic must be one the negotiation allows. */
  if (magic == NBD_SIMPLE_REPLY_MAGIC)
    return simple_reply(p, error);
  if (magic == NBD_STRUCTURED_REPLY_MAGIC && p->structured)
    return structured_chunk(p, error);
  return fail(p, error, "V20",
              g_strdup_printf("bad reply magic 0x%08" PRIx32, magic));
}
