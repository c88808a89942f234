/* nbdfs unit tests: the transmission reply parser on canned bytes.
 *
 * Every case runs the parser (reply.h) over a byte stream that a
 * table row builds, with the same fixed set of commands in flight, until
 * it stops.  The row says how it must stop (end of stream, or a
 * violation naming its checklist rule), how each command must have
 * completed, and what data or extents it must have delivered.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "reply.h"
#include "scripted.h"

#define CTX    7                       /* the base:allocation context id */
#define EXPORT (UINT64_C(1) << 20)
#define DONE   NBD_REPLY_FLAG_DONE

/* The commands in flight in every case; the cookie is the index. */
enum {
  R = 1,   /* READ 4096 bytes at 4096 */
  W,       /* WRITE 512 bytes at 0 */
  S1,      /* BLOCK_STATUS with REQ_ONE, 65536 bytes at 0 */
  S,       /* BLOCK_STATUS, 65536 bytes at 8192 */
  F,       /* FLUSH */
  DF,      /* READ with DF, 1024 bytes at 0 */
  T,       /* TRIM 4096 bytes at 0 */
  BIG,     /* READ 256 KiB at 64 KiB */
  N_CMDS,
};

static const struct nbd_cmd templates[N_CMDS] = {
  [R] = { .type = NBD_CMD_READ, .offset = 4096, .count = 4096 },
  [W] = { .type = NBD_CMD_WRITE, .offset = 0, .count = 512 },
  [S1] = { .type = NBD_CMD_BLOCK_STATUS, .flags = NBD_CMD_FLAG_REQ_ONE,
           .offset = 0, .count = 65536 },
  [S] = { .type = NBD_CMD_BLOCK_STATUS, .offset = 8192, .count = 65536 },
  [F] = { .type = NBD_CMD_FLUSH },
  [DF] = { .type = NBD_CMD_READ, .flags = NBD_CMD_FLAG_DF, .offset = 0,
           .count = 1024 },
  [T] = { .type = NBD_CMD_TRIM, .offset = 0, .count = 4096 },
  [BIG] = { .type = NBD_CMD_READ, .offset = 65536, .count = 262144 },
};

/* Expected completion of each command: PEND (still in flight), OK, or
 * the positive errno it failed with. */
#define PEND 0
#define OK   (-1)

struct fake {
  struct nbd_cmd cmds[N_CMDS];
  bool live[N_CMDS];
  int retired[N_CMDS];
  int err[N_CMDS];
};

struct rp_case {
  const char *path;
  void (*bytes)(GByteArray *b);
  bool simple;               /* structured replies were not negotiated */
  bool no_context;           /* no context was selected */
  int rc;                    /* how parsing ends: 0 means -ECONNRESET */
  const char *words[3];      /* in the message of the final error */
  int done[N_CMDS];
  void (*check)(const struct fake *f);
};

/* ---- The fake in-flight table ------------------------------------------ */

static struct nbd_cmd *
fake_lookup(void *opaque, uint64_t cookie)
{
  struct fake *f = opaque;

  if (cookie == 0 || cookie >= N_CMDS || !f->live[cookie])
    return NULL;
  return &f->cmds[cookie];
}

static void
fake_retire(void *opaque, struct nbd_cmd *cmd, int err)
{
  struct fake *f = opaque;
  size_t i = cmd - f->cmds;

  g_assert_cmpuint(i, <, N_CMDS);
  g_assert_true(f->live[i]);
  g_assert_cmpint(err, >=, 0);
  f->live[i] = false;
  f->retired[i]++;
  f->err[i] = err;
  nbd_reply_cmd_reset(cmd);
}

static void
fake_init(struct fake *f)
{
  memset(f, 0, sizeof *f);
  for (int i = 1; i < N_CMDS; i++) {
    f->cmds[i] = templates[i];
    f->cmds[i].priv.cookie = i;
    f->live[i] = true;
    if (f->cmds[i].type == NBD_CMD_READ) {
      /* Not zero: a hole that is not zeroed shows. */
      f->cmds[i].buf = g_malloc(f->cmds[i].count);
      memset(f->cmds[i].buf, 0xaa, f->cmds[i].count);
    }
  }
}

static void
fake_clear(struct fake *f)
{
  for (int i = 1; i < N_CMDS; i++) {
    if (f->live[i])
      nbd_reply_cmd_reset(&f->cmds[i]);
    g_free(f->cmds[i].buf);
    g_free(f->cmds[i].extents);
  }
}

/* ---- Byte builders for the cases --------------------------------------- */

/* An OFFSET_DATA chunk carrying the pattern at [off, off + len). */
static void
data(GByteArray *b, uint16_t flags, uint64_t cookie, uint64_t off,
     uint32_t len)
{
  g_autofree uint8_t *p = g_malloc(len + 1);

  sc_pattern(p, off, len);
  sc_chunk_data(b, flags, cookie, off, p, len);
}

static void
none(GByteArray *b, uint64_t cookie)
{
  sc_chunk(b, DONE, NBD_REPLY_TYPE_NONE, cookie, NULL, 0);
}

static void
status(GByteArray *b, uint16_t flags, uint64_t cookie, uint32_t ctx,
       const uint32_t *ext, size_t n)
{
  sc_chunk_status(b, flags, cookie, ctx, ext, n);
}

/* A chunk header announcing len bytes, with nothing behind it. */
static void
header_only(GByteArray *b, uint16_t type, uint64_t cookie, uint32_t len)
{
  sc_be32(b, NBD_STRUCTURED_REPLY_MAGIC);
  sc_be16(b, DONE);
  sc_be16(b, type);
  sc_be64(b, cookie);
  sc_be32(b, len);
}

/* An error-type chunk with a message length field of mlen, whatever
 * the chunk's real size. */
static void
error_raw(GByteArray *b, uint16_t type, uint64_t cookie, uint32_t error,
          uint16_t mlen, uint32_t payload_len)
{
  g_autofree uint8_t *p = g_malloc0(payload_len);

  g_assert_cmpuint(payload_len, >=, 6);
  p[0] = error >> 24;
  p[1] = error >> 16;
  p[2] = error >> 8;
  p[3] = error;
  p[4] = mlen >> 8;
  p[5] = mlen;
  sc_chunk(b, DONE, type, cookie, p, payload_len);
}

/* ---- V20, V21 ---------------------------------------------------------- */

static void
b_bad_magic(GByteArray *b)
{
  sc_be32(b, 0x12345678);
  sc_be32(b, 0);
  sc_be64(b, W);
}

static void
b_old_reply_magic(GByteArray *b)
{
  /* A reserved magic that was never valid on the wire. */
  sc_be32(b, 0x96744668);
  sc_be32(b, 0);
  sc_be64(b, W);
}

static void
b_none_for_write(GByteArray *b)
{
  none(b, W);
}

static void
b_ok_then_bad_magic(GByteArray *b)
{
  sc_simple(b, W, 0);
  b_bad_magic(b);
}

static void
b_unknown_cookie_simple(GByteArray *b)
{
  sc_simple(b, 99, 0);
}

static void
b_unknown_cookie_chunk(GByteArray *b)
{
  none(b, UINT64_C(0xdeadbeefcafe));
}

static void
b_cookie_zero(GByteArray *b)
{
  sc_simple(b, 0, 0);
}

static void
b_after_done(GByteArray *b)
{
  none(b, W);
  none(b, W);
}

/* ---- V22, V23, X22 ----------------------------------------------------- */

static void
b_simple_read_structured(GByteArray *b)
{
  g_autofree uint8_t *p = g_malloc(4096);

  sc_simple(b, R, 0);
  sc_pattern(p, 4096, 4096);
  g_byte_array_append(b, p, 4096);
}

static void
b_simple_read_error_structured(GByteArray *b)
{
  sc_simple(b, R, NBD_EIO);
}

static void
b_simple_read(GByteArray *b)
{
  g_autofree uint8_t *p = g_malloc(4096);

  sc_simple(b, R, 0);
  sc_pattern(p, 4096, 4096);
  g_byte_array_append(b, p, 4096);
  sc_simple(b, W, 0);
}

static void
b_simple_read_error_then_write(GByteArray *b)
{
  /* V23: no payload follows an error, the next reply comes at once. */
  sc_simple(b, R, NBD_EIO);
  sc_simple(b, W, 0);
}

static void
b_simple_read_truncated(GByteArray *b)
{
  g_autofree uint8_t *p = g_malloc0(4000);

  sc_simple(b, R, 0);
  g_byte_array_append(b, p, 4000);
}

static void
b_simple_big_read(GByteArray *b)
{
  g_autofree uint8_t *p = g_malloc(262144);

  sc_simple(b, BIG, 0);
  sc_pattern(p, 65536, 262144);
  g_byte_array_append(b, p, 262144);
}

static void
b_truncated_header(GByteArray *b)
{
  sc_be32(b, NBD_SIMPLE_REPLY_MAGIC);
  sc_be32(b, 0);
  sc_be16(b, 0);
}

static void
b_error_numbers(GByteArray *b)
{
  /* X22: unknown values count as EINVAL; X22a: explicit mapping. */
  sc_simple(b, W, 9999);
  sc_simple(b, T, NBD_ENOSPC);
  sc_simple(b, F, NBD_ENOTSUP);
  sc_simple(b, S, NBD_ESHUTDOWN);
}

/* ---- V24, V25, V26 ----------------------------------------------------- */

static void
b_data_for_write(GByteArray *b)
{
  data(b, DONE, W, 0, 16);
}

static void
b_hole_for_flush(GByteArray *b)
{
  sc_chunk_hole(b, DONE, F, 0, 512);
}

static void
b_status_for_read(GByteArray *b)
{
  static const uint32_t ext[] = { 4096, 0 };

  status(b, DONE, R, CTX, ext, 1);
}

static void
b_type_3(GByteArray *b)
{
  static const uint8_t p[12];

  /* P1: 3 is not block status, whatever the reference nbd.h says. */
  sc_chunk(b, DONE, 3, S, p, sizeof p);
}

static void
b_unknown_error_type(GByteArray *b)
{
  sc_chunk(b, DONE, 0x8003, W, "\0\0\0\1\0\2hi", 8);
  none(b, F);
}

static void
b_unknown_error_type_bad_len(GByteArray *b)
{
  error_raw(b, 0x8003, W, NBD_EIO, 100, 10);
}

static void
b_none_with_length(GByteArray *b)
{
  sc_chunk(b, DONE, NBD_REPLY_TYPE_NONE, W, "abcd", 4);
}

static void
b_none_without_done(GByteArray *b)
{
  sc_chunk(b, 0, NBD_REPLY_TYPE_NONE, W, NULL, 0);
}

static void
b_unknown_flags(GByteArray *b)
{
  /* V26, X14: bits other than DONE mean nothing. */
  data(b, 0x8000, R, 4096, 4096);
  sc_chunk(b, 0xfffe | DONE, NBD_REPLY_TYPE_NONE, R, NULL, 0);
  sc_chunk(b, 0x0100 | DONE, NBD_REPLY_TYPE_NONE, W, NULL, 0);
}

/* ---- V27, V28 ---------------------------------------------------------- */

static void
b_data_before_start(GByteArray *b)
{
  data(b, DONE, R, 0, 16);
}

static void
b_data_past_end(GByteArray *b)
{
  data(b, DONE, R, 8192 - 10, 20);
}

static void
b_data_wraps(GByteArray *b)
{
  /* off + len wraps to 8: a check written as off + len <= end would
   * pass it. */
  data(b, DONE, R, UINT64_C(0xfffffffffffffff8), 16);
}

static void
b_hole_wraps(GByteArray *b)
{
  sc_chunk_hole(b, DONE, R, 4096 + 8, 0xffffffffu);
}

static void
b_hole_size_0(GByteArray *b)
{
  sc_chunk_hole(b, DONE, R, 4096, 0);
}

static void
b_hole_length_8(GByteArray *b)
{
  static const uint8_t p[8] = { 0, 0, 0, 0, 0, 0, 0x10, 0 };

  sc_chunk(b, DONE, NBD_REPLY_TYPE_OFFSET_HOLE, R, p, sizeof p);
}

static void
b_data_length_8(GByteArray *b)
{
  static const uint8_t p[8] = { 0, 0, 0, 0, 0, 0, 0x10, 0 };

  sc_chunk(b, DONE, NBD_REPLY_TYPE_OFFSET_DATA, R, p, sizeof p);
}

static void
b_overlap(GByteArray *b)
{
  data(b, 0, R, 4096, 2048);
  data(b, DONE, R, 6000, 1000);
}

static void
b_overlap_hole(GByteArray *b)
{
  sc_chunk_hole(b, 0, R, 4096, 4096);
  data(b, DONE, R, 5000, 10);
}

static void
b_overlap_left(GByteArray *b)
{
  data(b, 0, R, 4096, 1024);
  data(b, 0, R, 7168, 1024);
  data(b, DONE, R, 5000, 200);
}

static void
b_overlap_right(GByteArray *b)
{
  data(b, 0, R, 4096, 1024);
  data(b, 0, R, 7168, 1024);
  data(b, DONE, R, 6000, 1200);
}

static void
b_duplicate(GByteArray *b)
{
  data(b, 0, R, 4096, 1024);
  data(b, 0, R, 6144, 1024);
  data(b, DONE, R, 6144, 1024);
}

static void
b_df_two_chunks(GByteArray *b)
{
  data(b, 0, DF, 0, 512);
  data(b, DONE, DF, 512, 512);
}

static void
b_df_one_chunk(GByteArray *b)
{
  data(b, DONE, DF, 0, 1024);
}

static void
b_short_coverage(GByteArray *b)
{
  data(b, 0, R, 4096, 4095);
  none(b, R);
}

static void
b_none_for_read(GByteArray *b)
{
  none(b, R);
}

static void
b_data_done(GByteArray *b)
{
  data(b, DONE, R, 4096, 4096);
}

/* ---- V29, V30, X18 ----------------------------------------------------- */

static void
b_error_0(GByteArray *b)
{
  sc_chunk_error(b, DONE, W, 0, NULL);
}

static void
b_error_msg_too_long(GByteArray *b)
{
  error_raw(b, NBD_REPLY_TYPE_ERROR, W, NBD_EIO, 5, 10);
}

static void
b_error_length_5(GByteArray *b)
{
  sc_chunk(b, DONE, NBD_REPLY_TYPE_ERROR, W, "\0\0\0\5\0", 5);
}

static void
b_error_offset_short(GByteArray *b)
{
  /* 13 bytes: room for the message but not the offset. */
  error_raw(b, NBD_REPLY_TYPE_ERROR_OFFSET, R, NBD_EIO, 0, 13);
}

static void
b_error_offset_msg_over_offset(GByteArray *b)
{
  error_raw(b, NBD_REPLY_TYPE_ERROR_OFFSET, R, NBD_EIO, 4, 14);
}

static void
b_error_offset_outside(GByteArray *b)
{
  sc_chunk_error_offset(b, DONE, R, NBD_EIO, "bad sector", 0);
}

static void
b_error_offset_end(GByteArray *b)
{
  /* The first byte after the request is outside it. */
  sc_chunk_error_offset(b, DONE, R, NBD_EIO, NULL, 8192);
}

static void
b_error_offset_inside(GByteArray *b)
{
  data(b, 0, R, 4096, 2048);
  sc_chunk_error_offset(b, DONE, R, NBD_EIO, "bad sector", 8191);
  sc_simple(b, W, 0);
}

static void
b_error_offset_flush(GByteArray *b)
{
  /* V29, V24: unexpected on FLUSH, yet an error type: the FLUSH fails
   * and the stream goes on. */
  sc_chunk_error_offset(b, DONE, F, NBD_EIO, "flush", 0);
  none(b, W);
}

static void
b_error_msg_4097(GByteArray *b)
{
  error_raw(b, NBD_REPLY_TYPE_ERROR, W, NBD_EIO, 4097, 6 + 4097);
}

static void
b_error_huge(GByteArray *b)
{
  header_only(b, NBD_REPLY_TYPE_ERROR, W, 100000);
}

static void
b_error_with_message(GByteArray *b)
{
  sc_chunk_error(b, DONE, W, NBD_EPERM, "read-only \x1b[1m");
  sc_chunk_error(b, 0, T, NBD_EIO, NULL);
  sc_chunk_error(b, DONE, T, NBD_ENOSPC, NULL);
}

static void
b_data_then_error(GByteArray *b)
{
  data(b, 0, R, 4096, 4096);
  sc_chunk_error(b, DONE, R, NBD_EIO, "late");
}

static void
b_error_then_data(GByteArray *b)
{
  sc_chunk_error(b, 0, R, NBD_EIO, NULL);
  data(b, 0, R, 4096, 4096);
  none(b, R);
}

static void
b_error_unknown_number(GByteArray *b)
{
  sc_chunk_error(b, DONE, W, 12345, NULL);
}

/* ---- V31, B7, B8 ------------------------------------------------------- */

static void
b_status_wrong_ctx(GByteArray *b)
{
  static const uint32_t ext[] = { 65536, 0 };

  status(b, DONE, S, CTX + 1, ext, 1);
}

static void
b_status_twice(GByteArray *b)
{
  static const uint32_t ext[] = { 65536, 0 };

  status(b, 0, S, CTX, ext, 1);
  status(b, DONE, S, CTX, ext, 1);
}

static void
b_status_zero_extent(GByteArray *b)
{
  static const uint32_t ext[] = { 4096, 0, 0, 3, 4096, 0 };

  status(b, DONE, S, CTX, ext, 3);
}

static void
b_status_req_one_two(GByteArray *b)
{
  static const uint32_t ext[] = { 4096, 0, 4096, 3 };

  status(b, DONE, S1, CTX, ext, 2);
}

static void
b_status_req_one_long(GByteArray *b)
{
  static const uint32_t ext[] = { 65536 + 512, 0 };

  status(b, DONE, S1, CTX, ext, 1);
}

static void
b_status_past_request(GByteArray *b)
{
  /* The first of two extents already covers the whole request. */
  static const uint32_t ext[] = { 65536, 0, 4096, 3 };

  status(b, DONE, S, CTX, ext, 2);
}

static void
b_status_bad_length(GByteArray *b)
{
  static const uint8_t p[13] = { 0, 0, 0, CTX, 0, 0, 0x10, 0 };

  sc_chunk(b, DONE, NBD_REPLY_TYPE_BLOCK_STATUS, S, p, sizeof p);
}

static void
b_status_no_extents(GByteArray *b)
{
  static const uint8_t p[4] = { 0, 0, 0, CTX };

  sc_chunk(b, DONE, NBD_REPLY_TYPE_BLOCK_STATUS, S, p, sizeof p);
}

static void
b_status_huge(GByteArray *b)
{
  /* B10: one extent over the cap, announced but never sent. */
  header_only(b, NBD_REPLY_TYPE_BLOCK_STATUS, S,
              4 + 8 * (NBD_MAX_EXTENTS + 1));
}

static void
b_status_missing(GByteArray *b)
{
  none(b, S);
}

static void
b_status_simple_ok(GByteArray *b)
{
  sc_simple(b, S, 0);
}

static void
b_status_errors(GByteArray *b)
{
  /* B12: errors arrive as a simple reply or an error chunk. */
  sc_simple(b, S1, NBD_EINVAL);
  sc_chunk_error(b, DONE, S, NBD_EIO, NULL);
}

static void
b_status_merge(GByteArray *b)
{
  /* B7, B8, B11: merge equal neighbours, mask unknown bits, clip the
   * last extent to the request's end (8192 + 65536). */
  static const uint32_t ext[] = {
    4096, 0, 4096, 0, 8192, 3, 4096, 0xfffffff7, 131072, 0,
  };

  status(b, DONE, S, CTX, ext, 5);
}

static void
b_status_req_one_short(GByteArray *b)
{
  static const uint32_t ext[] = { 16384, NBD_STATE_HOLE };

  status(b, DONE, S1, CTX, ext, 1);
}

static void
b_status_partial(GByteArray *b)
{
  /* B7: a reply may cover less than was asked. */
  static const uint32_t ext[] = { 512, 2, 512, 1 };

  status(b, 0, S, CTX, ext, 2);
  none(b, S);
}

/* ---- V33 --------------------------------------------------------------- */

static void
b_data_4g(GByteArray *b)
{
  header_only(b, NBD_REPLY_TYPE_OFFSET_DATA, BIG, 0xffffffffu);
}

static void
b_data_32m_plus_9(GByteArray *b)
{
  header_only(b, NBD_REPLY_TYPE_OFFSET_DATA, BIG,
              NBD_DEFAULT_MAX_PAYLOAD + 9);
}

/* ---- X17, X6 ----------------------------------------------------------- */

static void
b_any_order(GByteArray *b)
{
  sc_chunk_hole(b, 0, R, 7168, 1024);
  data(b, 0, R, 5120, 2048);
  data(b, 0, R, 4096, 512);
  sc_chunk_hole(b, 0, R, 4608, 512);
  none(b, R);
}

static void
b_many_chunks_reversed(GByteArray *b)
{
  /* 512 chunks of 8 bytes, last first: the worst order for the
   * overlap bookkeeping. */
  for (int i = 511; i >= 0; i--)
    data(b, 0, R, 4096 + 8 * i, 8);
  none(b, R);
}

static void
b_interleaved(GByteArray *b)
{
  static const uint32_t ext[] = { 65536, 3 };

  data(b, 0, R, 6144, 2048);
  status(b, 0, S, CTX, ext, 1);
  sc_simple(b, W, 0);
  data(b, 0, BIG, 65536 + 131072, 131072);
  sc_chunk_hole(b, 0, R, 4096, 2048);
  none(b, S);
  data(b, 0, BIG, 65536, 131072);
  none(b, R);
  none(b, BIG);
  sc_simple(b, F, 0);
}

/* ---- Checks ------------------------------------------------------------ */

static void
assert_pattern(const struct nbd_cmd *cmd, uint64_t off, size_t len)
{
  g_autofree uint8_t *want = g_malloc(len);

  sc_pattern(want, off, len);
  g_assert_cmpmem((uint8_t *) cmd->buf + (off - cmd->offset), len, want,
                  len);
}

static void
assert_zero(const struct nbd_cmd *cmd, uint64_t off, size_t len)
{
  const uint8_t *p = (const uint8_t *) cmd->buf + (off - cmd->offset);

  for (size_t i = 0; i < len; i++)
    g_assert_cmpuint(p[i], ==, 0);
}

static void
assert_untouched(const struct nbd_cmd *cmd)
{
  const uint8_t *p = cmd->buf;

  for (size_t i = 0; i < cmd->count; i++)
    g_assert_cmpuint(p[i], ==, 0xaa);
}

static void
check_read_data(const struct fake *f)
{
  assert_pattern(&f->cmds[R], 4096, 4096);
}

static void
check_read_untouched(const struct fake *f)
{
  assert_untouched(&f->cmds[R]);
}

static void
check_big(const struct fake *f)
{
  assert_pattern(&f->cmds[BIG], 65536, 262144);
}

static void
check_df(const struct fake *f)
{
  assert_pattern(&f->cmds[DF], 0, 1024);
}

static void
check_any_order(const struct fake *f)
{
  const struct nbd_cmd *r = &f->cmds[R];

  assert_pattern(r, 4096, 512);
  assert_zero(r, 4608, 512);
  assert_pattern(r, 5120, 2048);
  assert_zero(r, 7168, 1024);
}

static void
check_interleaved(const struct fake *f)
{
  const struct nbd_cmd *s = &f->cmds[S];

  assert_zero(&f->cmds[R], 4096, 2048);
  assert_pattern(&f->cmds[R], 6144, 2048);
  check_big(f);
  g_assert_cmpuint(s->n_extents, ==, 1);
  g_assert_cmpuint(s->extents[0].offset, ==, 8192);
  g_assert_cmpuint(s->extents[0].length, ==, 65536);
  g_assert_cmpuint(s->extents[0].flags, ==, 3);
}

static void
assert_extent(const struct nbd_extent *e, uint64_t offset, uint64_t length,
              uint32_t flags)
{
  g_assert_cmpuint(e->offset, ==, offset);
  g_assert_cmpuint(e->length, ==, length);
  g_assert_cmpuint(e->flags, ==, flags);
}

static void
check_merge(const struct fake *f)
{
  const struct nbd_cmd *s = &f->cmds[S];

  g_assert_cmpuint(s->n_extents, ==, 3);
  assert_extent(&s->extents[0], 8192, 8192, 0);
  assert_extent(&s->extents[1], 16384, 12288, 3);
  assert_extent(&s->extents[2], 28672, 45056, 0);
}

static void
check_req_one_short(const struct fake *f)
{
  const struct nbd_cmd *s = &f->cmds[S1];

  g_assert_cmpuint(s->n_extents, ==, 1);
  assert_extent(&s->extents[0], 0, 16384, NBD_STATE_HOLE);
}

static void
check_partial(const struct fake *f)
{
  const struct nbd_cmd *s = &f->cmds[S];

  g_assert_cmpuint(s->n_extents, ==, 2);
  assert_extent(&s->extents[0], 8192, 512, NBD_STATE_ZERO);
  assert_extent(&s->extents[1], 8704, 512, NBD_STATE_HOLE);
}

static void
check_no_extents(const struct fake *f)
{
  g_assert_null(f->cmds[S].extents);
  g_assert_null(f->cmds[S1].extents);
}

/* ---- The table --------------------------------------------------------- */

#define P "/nbdproto/reply/"

static const struct rp_case cases[] = {
  { P "V20/bad-magic", b_bad_magic, .rc = -EPROTO,
    .words = { "0x12345678", "V20" } },
  { P "V20/reserved-magic", b_old_reply_magic, .rc = -EPROTO,
    .words = { "V20" } },
  { P "V20/structured-without-negotiation", b_none_for_write,
    .simple = true, .rc = -EPROTO, .words = { "0x668e33ef", "V20" } },
  { P "V20/violation-after-good-reply", b_ok_then_bad_magic,
    .rc = -EPROTO, .words = { "V20" }, .done = { [W] = OK } },
  { P "V21/unknown-cookie-simple", b_unknown_cookie_simple, .rc = -EPROTO,
    .words = { "0x63", "V21" } },
  { P "V21/unknown-cookie-chunk", b_unknown_cookie_chunk, .rc = -EPROTO,
    .words = { "0xdeadbeefcafe", "V21" } },
  { P "V21/cookie-zero", b_cookie_zero, .rc = -EPROTO,
    .words = { "V21" } },
  { P "V21/chunk-after-done", b_after_done, .rc = -EPROTO,
    .words = { "V21" }, .done = { [W] = OK } },

  { P "V22/simple-data-to-read-in-structured-mode",
    b_simple_read_structured, .rc = -EPROTO, .words = { "V22" },
    .check = check_read_untouched },
  { P "V22/simple-error-to-read-in-structured-mode",
    b_simple_read_error_structured, .done = { [R] = EIO },
    .check = check_read_untouched },
  { P "V23/simple-read-data", b_simple_read, .simple = true,
    .done = { [R] = OK, [W] = OK }, .check = check_read_data },
  { P "V23/simple-read-error-has-no-payload",
    b_simple_read_error_then_write, .simple = true,
    .done = { [R] = EIO, [W] = OK } },
  { P "X16/simple-read-cut-short", b_simple_read_truncated,
    .simple = true, .words = { "closed" } },
  { P "V23/simple-read-large", b_simple_big_read, .simple = true,
    .done = { [BIG] = OK }, .check = check_big },
  { P "X3/header-cut-short", b_truncated_header, .words = { "closed" } },
  { P "X22/error-numbers-mapped", b_error_numbers,
    .done = { [W] = EINVAL, [T] = ENOSPC, [F] = EOPNOTSUPP,
              [S] = ESHUTDOWN } },

  { P "V24/data-for-write", b_data_for_write, .rc = -EPROTO,
    .words = { "NBD_REPLY_TYPE_OFFSET_DATA", "NBD_CMD_WRITE", "V24" } },
  { P "V24/hole-for-flush", b_hole_for_flush, .rc = -EPROTO,
    .words = { "NBD_CMD_FLUSH", "V24" } },
  { P "V24/status-for-read", b_status_for_read, .rc = -EPROTO,
    .words = { "NBD_CMD_READ", "V24" } },
  { P "V24/unknown-type-3", b_type_3, .rc = -EPROTO,
    .words = { "unknown chunk type 3", "V24" } },
  { P "V24/unknown-error-type-fails-request-only", b_unknown_error_type,
    .done = { [W] = EPERM, [F] = OK } },
  { P "V24/unknown-error-type-bad-message-length",
    b_unknown_error_type_bad_len, .rc = -EPROTO,
    .words = { "message longer" } },
  { P "V25/none-with-length", b_none_with_length, .rc = -EPROTO,
    .words = { "V25" } },
  { P "V25/none-without-done", b_none_without_done, .rc = -EPROTO,
    .words = { "V25" } },
  { P "V26/unknown-flags-ignored", b_unknown_flags,
    .done = { [R] = OK, [W] = OK }, .check = check_read_data },

  { P "V27/data-before-request", b_data_before_start, .rc = -EPROTO,
    .words = { "outside the request", "V27" } },
  { P "V27/data-past-request", b_data_past_end, .rc = -EPROTO,
    .words = { "outside", "V27" } },
  { P "V27/data-offset-wraps-64-bits", b_data_wraps, .rc = -EPROTO,
    .words = { "outside", "V27" }, .check = check_read_untouched },
  { P "V27/hole-size-wraps", b_hole_wraps, .rc = -EPROTO,
    .words = { "outside", "V27" }, .check = check_read_untouched },
  { P "V27/hole-size-0", b_hole_size_0, .rc = -EPROTO,
    .words = { "V27" } },
  { P "V27/hole-length-8", b_hole_length_8, .rc = -EPROTO,
    .words = { "wrong length 8", "V27" } },
  { P "V27/data-length-8", b_data_length_8, .rc = -EPROTO,
    .words = { "wrong length 8", "V27" } },
  { P "V27/overlapping-data", b_overlap, .rc = -EPROTO,
    .words = { "overlaps", "V27" } },
  { P "V27/data-overlapping-hole", b_overlap_hole, .rc = -EPROTO,
    .words = { "overlaps", "V27" } },
  { P "V27/overlap-left-neighbour", b_overlap_left, .rc = -EPROTO,
    .words = { "overlaps", "V27" } },
  { P "V27/overlap-right-neighbour", b_overlap_right, .rc = -EPROTO,
    .words = { "overlaps", "V27" } },
  { P "V27/same-chunk-twice", b_duplicate, .rc = -EPROTO,
    .words = { "overlaps", "V27" } },
  { P "V27/df-two-chunks", b_df_two_chunks, .rc = -EPROTO,
    .words = { "DF", "V27" } },
  { P "X19/df-one-chunk", b_df_one_chunk, .done = { [DF] = OK },
    .check = check_df },
  { P "V28/incomplete-coverage", b_short_coverage, .rc = -EPROTO,
    .words = { "4095 of 4096", "V28" } },
  { P "V28/none-alone-for-read", b_none_for_read, .rc = -EPROTO,
    .words = { "0 of 4096", "V28" } },
  { P "X17/done-on-data-chunk", b_data_done, .done = { [R] = OK },
    .check = check_read_data },

  { P "V29/error-0", b_error_0, .rc = -EPROTO,
    .words = { "error 0", "V29" } },
  { P "V29/message-longer-than-chunk", b_error_msg_too_long,
    .rc = -EPROTO, .words = { "message longer", "V29" } },
  { P "V29/error-length-5", b_error_length_5, .rc = -EPROTO,
    .words = { "5 bytes", "V29" } },
  { P "V29/error-offset-length-13", b_error_offset_short, .rc = -EPROTO,
    .words = { "too short", "V29" } },
  { P "V29/error-offset-message-over-offset",
    b_error_offset_msg_over_offset, .rc = -EPROTO,
    .words = { "too short", "V29" } },
  { P "V29/error-offset-outside-request", b_error_offset_outside,
    .rc = -EPROTO, .words = { "error offset 0", "V29" } },
  { P "V29/error-offset-at-request-end", b_error_offset_end,
    .rc = -EPROTO, .words = { "error offset 8192", "V29" } },
  { P "V29/error-offset-inside-fails-request", b_error_offset_inside,
    .done = { [R] = EIO, [W] = OK } },
  { P "V29/error-offset-on-flush-keeps-connection", b_error_offset_flush,
    .done = { [F] = EIO, [W] = OK } },
  { P "V29/message-over-4096", b_error_msg_4097, .rc = -EPROTO,
    .words = { "V29" } },
  { P "V33/error-chunk-oversized", b_error_huge, .rc = -EPROTO,
    .words = { "100000 bytes", "V33" } },
  { P "V35/errors-fail-requests", b_error_with_message,
    .done = { [W] = EPERM, [T] = EIO } },
  { P "X18/error-after-data-fails-read", b_data_then_error,
    .done = { [R] = EIO } },
  { P "X18/error-before-data-fails-read", b_error_then_data,
    .done = { [R] = EIO } },
  { P "V30/unknown-error-number-is-einval", b_error_unknown_number,
    .done = { [W] = EINVAL } },

  { P "V31/wrong-context-id", b_status_wrong_ctx, .rc = -EPROTO,
    .words = { "context 8", "V31" }, .check = check_no_extents },
  { P "V31/context-not-selected", b_status_merge, .no_context = true,
    .rc = -EPROTO, .words = { "context 7", "V31" },
    .check = check_no_extents },
  { P "V31/duplicate-context", b_status_twice, .rc = -EPROTO,
    .words = { "two status chunks", "V31" } },
  { P "V31/zero-length-extent", b_status_zero_extent, .rc = -EPROTO,
    .words = { "length 0", "V31" }, .check = check_no_extents },
  { P "V31/req-one-two-extents", b_status_req_one_two, .rc = -EPROTO,
    .words = { "REQ_ONE", "V31" }, .check = check_no_extents },
  { P "V31/req-one-extent-too-long", b_status_req_one_long, .rc = -EPROTO,
    .words = { "REQ_ONE", "V31" } },
  { P "V31/extents-past-request", b_status_past_request, .rc = -EPROTO,
    .words = { "run past", "V31" }, .check = check_no_extents },
  { P "V31/length-not-4-plus-8n", b_status_bad_length, .rc = -EPROTO,
    .words = { "bad length 13", "V31" } },
  { P "V31/no-extents", b_status_no_extents, .rc = -EPROTO,
    .words = { "bad length 4", "V31" } },
  { P "B10/status-chunk-oversized", b_status_huge, .rc = -EPROTO,
    .words = { "bad length", "V31" } },
  { P "V31/done-without-status", b_status_missing, .rc = -EPROTO,
    .words = { "without status", "V31" } },
  { P "V31/simple-success-to-block-status", b_status_simple_ok,
    .rc = -EPROTO, .words = { "V31" } },
  { P "B12/block-status-errors", b_status_errors,
    .done = { [S1] = EINVAL, [S] = EIO }, .check = check_no_extents },
  { P "B8/extents-clipped-and-merged", b_status_merge,
    .done = { [S] = OK }, .check = check_merge },
  { P "B7/req-one-short-extent", b_status_req_one_short,
    .done = { [S1] = OK }, .check = check_req_one_short },
  { P "B7/reply-covers-less", b_status_partial, .done = { [S] = OK },
    .check = check_partial },

  { P "V33/data-chunk-4GiB", b_data_4g, .rc = -EPROTO,
    .words = { "4294967295 bytes", "V33" } },
  { P "V33/data-chunk-over-32MiB", b_data_32m_plus_9, .rc = -EPROTO,
    .words = { "33554441 bytes", "V33" } },

  { P "X17/chunks-any-order-holes-zeroed", b_any_order,
    .done = { [R] = OK }, .check = check_any_order },
  { P "X17/many-chunks-reversed", b_many_chunks_reversed,
    .done = { [R] = OK }, .check = check_read_data },
  { P "X6/replies-interleaved", b_interleaved,
    .done = { [R] = OK, [W] = OK, [S] = OK, [BIG] = OK, [F] = OK },
    .check = check_interleaved },
};

/* ---- The runner -------------------------------------------------------- */

/* A parser over the canned bytes b, with f's commands in flight. */
static struct nbd_transport *
parser_start(struct nbd_reply_parser *p, struct fake *f, GByteArray *b,
             const struct nbd_export_info *info,
             struct scripted_feed **feed)
{
  struct nbd_transport *t = scripted_feed_new(b->data, b->len, feed);

  nbd_reply_parser_init(p, t, info);
  p->lookup = fake_lookup;
  p->retire = fake_retire;
  p->opaque = f;
  return t;
}

static void
run_case(gconstpointer opaque)
{
  const struct rp_case *c = opaque;
  g_autoptr(GByteArray) b = g_byte_array_new();
  struct nbd_export_info info = {
    .size = EXPORT,
    .structured = !c->simple,
    .block_status = !c->simple && !c->no_context,
    .alloc_ctx_id = CTX,
  };
  struct nbd_reply_parser p;
  struct scripted_feed *feed;
  struct nbd_transport *t;
  GError *error = NULL;
  struct fake f;
  int want = c->rc ? c->rc : -ECONNRESET;
  int rc, rounds = 0;

  c->bytes(b);
  fake_init(&f);
  t = parser_start(&p, &f, b, &info, &feed);

  /* Every reply or chunk needs at least 16 bytes, so a parser that
   * returns 0 more often than that is not moving. */
  do
    rc = nbd_reply_parse_one(&p, &error);
  while (rc == 0 && ++rounds <= (int) b->len / 16 + 1);

  g_assert_cmpint(rc, ==, want);
  g_assert_nonnull(error);
  g_assert_cmpint(error->code, ==, -want);
  for (int i = 0; i < 3 && c->words[i] != NULL; i++)
    if (strstr(error->message, c->words[i]) == NULL)
      g_error("message \"%s\" lacks \"%s\"", error->message, c->words[i]);

  for (int i = 1; i < N_CMDS; i++) {
    if (c->done[i] == PEND) {
      g_assert_cmpint(f.retired[i], ==, 0);
      continue;
    }
    g_assert_cmpint(f.retired[i], ==, 1);
    g_assert_cmpint(f.err[i], ==, c->done[i] == OK ? 0 : c->done[i]);
  }
  if (c->check != NULL)
    c->check(&f);

  g_clear_error(&error);
  nbd_reply_parser_clear(&p);
  nbd_transport_free(t);
  scripted_feed_free(feed);
  fake_clear(&f);
}

/* ---- Payloads spliced into a pipe (nbd_cmd.sink) ----------------------- */

#define PREFIX "header!"

struct sink_case {
  const char *path;
  void (*bytes)(GByteArray *b);
  bool simple;
  int pipe_size;             /* F_SETPIPE_SZ */
  bool stale;                /* the pipe holds a byte more than its prefix */
  bool filled;               /* the payload must end up in the pipe */
  bool emptied;              /* the pipe filled up and gave back all */
};

static void
b_big_whole(GByteArray *b)
{
  data(b, DONE, BIG, 65536, 262144);
}

static void
b_big_halves(GByteArray *b)
{
  data(b, 0, BIG, 65536, 131072);
  data(b, DONE, BIG, 65536 + 131072, 131072);
}

static size_t
pipe_queued(int fd)
{
  int n = -1;

  g_assert_cmpint(ioctl(fd, FIONREAD, &n), ==, 0);
  return n;
}

/* Reads exactly len bytes out of the pipe. */
static void
pipe_read(int fd, void *buf, size_t len)
{
  g_assert_cmpuint(pipe_queued(fd), >=, len);
  g_assert_cmpint(read(fd, buf, len), ==, (ssize_t) len);
}

/* BIG has a sink; the reply goes into the pipe only when it comes whole,
 * over a socket, into a pipe that holds just its prefix.  Otherwise buf
 * gets the bytes, and the pipe keeps what it had (or, when it filled up
 * on the way, gives everything back and ends empty). */
static void
run_sink_case(gconstpointer opaque)
{
  const struct sink_case *c = opaque;
  g_autoptr(GByteArray) b = g_byte_array_new();
  struct nbd_export_info info = {
    .size = EXPORT,
    .structured = !c->simple,
  };
  g_autofree uint8_t *got = g_malloc(262144);
  g_autofree uint8_t *want = g_malloc(262144);
  char prefix[sizeof PREFIX];
  struct nbd_reply_parser p;
  struct scripted_feed *feed;
  struct nbd_transport *t;
  struct nbd_sink sink = { .prefix = strlen(PREFIX) };
  GError *error = NULL;
  struct fake f;
  int fds[2], rc;

  g_assert_cmpint(pipe2(fds, O_NONBLOCK | O_CLOEXEC), ==, 0);
  g_assert_cmpint(fcntl(fds[1], F_SETPIPE_SZ, c->pipe_size), >=, 0);
  sink.rd = fds[0];
  sink.wr = fds[1];
  g_assert_cmpint(write(sink.wr, PREFIX, sink.prefix), ==, sink.prefix);
  if (c->stale)
    g_assert_cmpint(write(sink.wr, "x", 1), ==, 1);

  c->bytes(b);
  fake_init(&f);
  f.cmds[BIG].sink = &sink;
  t = parser_start(&p, &f, b, &info, &feed);
  do
    rc = nbd_reply_parse_one(&p, &error);
  while (rc == 0);
  g_assert_cmpint(rc, ==, -ECONNRESET);
  g_clear_error(&error);
  g_assert_cmpint(f.retired[BIG], ==, 1);
  g_assert_cmpint(f.err[BIG], ==, 0);
  g_assert_cmpint(sink.filled, ==, c->filled);

  sc_pattern(want, 65536, 262144);
  if (c->filled) {
    /* The prefix, then the payload; buf untouched. */
    g_assert_cmpuint(pipe_queued(sink.rd), ==, sink.prefix + 262144);
    pipe_read(sink.rd, prefix, sink.prefix);
    g_assert_cmpmem(prefix, sink.prefix, PREFIX, sink.prefix);
    pipe_read(sink.rd, got, 262144);
    g_assert_cmpmem(got, 262144, want, 262144);
    g_assert_cmpuint(((uint8_t *) f.cmds[BIG].buf)[0], ==, 0xaa);
  } else {
    assert_pattern(&f.cmds[BIG], 65536, 262144);
    if (c->emptied)
      g_assert_cmpuint(pipe_queued(sink.rd), ==, 0);
    else
      g_assert_cmpuint(pipe_queued(sink.rd), ==, sink.prefix + c->stale);
  }

  nbd_reply_parser_clear(&p);
  nbd_transport_free(t);
  scripted_feed_free(feed);
  fake_clear(&f);
  close(sink.rd);
  close(sink.wr);
}

#define MIB (1024 * 1024)

static const struct sink_case sink_cases[] = {
  { "/reply/sink/structured-whole", b_big_whole, .pipe_size = MIB,
    .filled = true },
  { "/reply/sink/simple-whole", b_simple_big_read, .simple = true,
    .pipe_size = MIB, .filled = true },
  { "/reply/sink/two-chunks-go-to-buf", b_big_halves, .pipe_size = MIB },
  { "/reply/sink/stale-pipe-goes-to-buf", b_big_whole, .pipe_size = MIB,
    .stale = true },
  /* One page: the buffered start of the payload overflows it. */
  { "/reply/sink/full-pipe-gives-back", b_big_whole, .pipe_size = 4096,
    .emptied = true },
  /* Room for the buffered start, not for what the splice brings. */
  { "/reply/sink/full-pipe-during-splice", b_big_whole,
    .pipe_size = 128 * 1024, .emptied = true },
};

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);

  for (size_t i = 0; i < G_N_ELEMENTS(cases); i++)
    g_test_add_data_func(cases[i].path, &cases[i], run_case);
  for (size_t i = 0; i < G_N_ELEMENTS(sink_cases); i++)
    g_test_add_data_func(sink_cases[i].path, &sink_cases[i],
                         run_sink_case);
  return g_test_run();
}
