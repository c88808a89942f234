/* nbdfs unit tests: the handshake against a scripted server.
 *
 * Each case is one row of a table: the canned server side, what the
 * call must return (errno and key words of the message), the client
 * flags and the option sequence the client must have sent, and for
 * successes what the export looks like.  Checklist IDs in the test paths
 * name the rule each case proves.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <string.h>

#include "internal.h"
#include "scripted.h"

#define FIXED NBD_FLAG_FIXED_NEWSTYLE
#define BOTH  (NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES)
#define CFLAGS_BOTH (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)

#define GO     NBD_OPT_GO
#define SR     NBD_OPT_STRUCTURED_REPLY
#define SETMC  NBD_OPT_SET_META_CONTEXT

#define SIZE   (UINT64_C(1) << 20)
#define TF_STD (NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | \
                NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM)
#define CTX_ID 0x2a

/* The option sequences of the usual paths, as the scripted server
 * names them. */
#define SENT_GO   "STRUCTURED_REPLY SET_META_CONTEXT GO"
#define SENT_GO_ABORT SENT_GO " ABORT"

/* A row of the table.  Zero means the common value: export "disk",
 * policy off, client flags CFLAGS_BOTH. */
struct hs_case {
  const char *path;

  /* The server: either a whole script, or the common prologue up to
   * the client's GO followed by go's bytes. */
  void (*server)(struct scripted *sc);
  void (*go)(GByteArray *b);

  const char *export_name;
  size_t name_len;           /* instead: a name of this many 'x' */
  enum nbd_tls_policy tls;
  bool no_structured;
  bool no_block_status;
  bool list;
  size_t max_entries;

  int err;                   /* expected positive errno, 0 for success */
  const char *words[4];      /* must all appear in the message */
  int64_t cflags;            /* expected client flags; -1: none sent */
  const char *sent;          /* the options the client sent */

  /* Runs on the live transport after a success (stream in step). */
  void (*after)(struct nbd_transport *t);
  void (*check)(struct scripted *sc, const struct nbd_export_info *info,
                GPtrArray *list);
};

/* ---- Common server pieces ---------------------------------------------- */

/* Greeting with both flags, then STRUCTURED_REPLY and SET_META_CONTEXT
 * accepted with base:allocation as CTX_ID, up to the client's GO. */
static void
to_go(struct scripted *sc)
{
  sc_greeting(scripted_out(sc), BOTH);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_expect_option(sc, SR);
  sc_opt_reply(scripted_out(sc), SR, NBD_REP_ACK, NULL, 0);
  scripted_expect_option(sc, SETMC);
  sc_meta_context(scripted_out(sc), SETMC, CTX_ID, "base:allocation");
  sc_opt_reply(scripted_out(sc), SETMC, NBD_REP_ACK, NULL, 0);
  scripted_expect_option(sc, GO);
}

/* The same without structured replies: greeting, flags, up to GO. */
static void
to_go_simple(struct scripted *sc, uint16_t gflags, uint32_t cflags)
{
  sc_greeting(scripted_out(sc), gflags);
  scripted_expect_flags(sc, cflags);
  scripted_expect_option(sc, GO);
}

static void
go_ok(GByteArray *b)
{
  sc_info_export(b, GO, SIZE, TF_STD);
  sc_info_block_size(b, GO, 512, 4096, 1 << 20);
  sc_opt_reply(b, GO, NBD_REP_ACK, NULL, 0);
}

/* A simple reply right after the handshake: the test reads it back to
 * prove the client consumed exactly the handshake's bytes. */
static void
trailer(struct scripted *sc)
{
  sc_simple(scripted_out(sc), UINT64_C(0x1122334455667788), 0);
}

static void
after_read_trailer(struct nbd_transport *t)
{
  uint8_t got[16];

  g_assert_cmpint(nbd_transport_read(t, got, sizeof got, NULL), ==, 0);
  g_assert_cmphex(nbd_get32(got), ==, NBD_SIMPLE_REPLY_MAGIC);
  g_assert_cmphex(nbd_get64(got + 8), ==, UINT64_C(0x1122334455667788));
}

static void
expect_abort_then_ack(struct scripted *sc)
{
  scripted_expect_option(sc, NBD_OPT_ABORT);
  sc_opt_reply(scripted_out(sc), NBD_OPT_ABORT, NBD_REP_ACK, NULL, 0);
}

/* ---- Greeting: V1, H4, H7, H6 ------------------------------------------ */

static void
srv_bad_magic(struct scripted *sc)
{
  GByteArray *b = scripted_out(sc);

  g_byte_array_append(b, (const guint8 *) "NBDMAGIX", 8);
  sc_be64(b, NBD_OPTS_MAGIC);
  sc_be16(b, BOTH);
}

static void
srv_bad_style(struct scripted *sc)
{
  GByteArray *b = scripted_out(sc);

  sc_be64(b, NBD_MAGIC);
  sc_be64(b, UINT64_C(0x0102030405060708));
  sc_be16(b, BOTH);
}

static void
srv_oldstyle(struct scripted *sc)
{
  sc_old_greeting(scripted_out(sc), SIZE, NBD_FLAG_HAS_FLAGS);
}

static void
srv_not_fixed(struct scripted *sc)
{
  sc_greeting(scripted_out(sc), 0);
}

static void
srv_no_zeroes_only(struct scripted *sc)
{
  sc_greeting(scripted_out(sc), NBD_FLAG_NO_ZEROES);
}

static void
srv_truncated_greeting(struct scripted *sc)
{
  sc_be64(scripted_out(sc), NBD_MAGIC);
  sc_be32(scripted_out(sc), 0x49484156);
}

static void
srv_fixed_only(struct scripted *sc)
{
  to_go_simple(sc, FIXED, NBD_FLAG_C_FIXED_NEWSTYLE);
  go_ok(scripted_out(sc));
}

static void
srv_unknown_gflags(struct scripted *sc)
{
  /* H5, H6: bits 2..15 mean nothing to us and must not be echoed. */
  to_go_simple(sc, 0xfffd, NBD_FLAG_C_FIXED_NEWSTYLE);
  go_ok(scripted_out(sc));
}

static void
srv_all_gflags(struct scripted *sc)
{
  to_go_simple(sc, 0xffff, CFLAGS_BOTH);
  go_ok(scripted_out(sc));
}

static void
srv_slow(struct scripted *sc)
{
  g_autoptr(GByteArray) b = g_byte_array_new();

  /* T19: every message in pieces of a few bytes. */
  sc_greeting(b, BOTH);
  scripted_send_slow(sc, b->data, b->len);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_expect_option(sc, SR);
  g_byte_array_set_size(b, 0);
  sc_opt_reply(b, SR, NBD_REP_ACK, NULL, 0);
  scripted_send_slow(sc, b->data, b->len);
  scripted_expect_option(sc, SETMC);
  g_byte_array_set_size(b, 0);
  sc_meta_context(b, SETMC, CTX_ID, "base:allocation");
  sc_opt_reply(b, SETMC, NBD_REP_ACK, NULL, 0);
  scripted_send_slow(sc, b->data, b->len);
  scripted_expect_option(sc, GO);
  g_byte_array_set_size(b, 0);
  go_ok(b);
  scripted_send_slow(sc, b->data, b->len);
}

static void
srv_close_after_flags(struct scripted *sc)
{
  sc_greeting(scripted_out(sc), BOTH);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_close(sc);
}

/* ---- Option reply framing: V3, V4, V5 ---------------------------------- */

static void
srv_bad_reply_magic(struct scripted *sc)
{
  GByteArray *b;

  sc_greeting(scripted_out(sc), BOTH);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_expect_option(sc, SR);
  b = scripted_out(sc);
  sc_be64(b, NBD_REP_MAGIC ^ 1);
  sc_be32(b, SR);
  sc_be32(b, NBD_REP_ACK);
  sc_be32(b, 0);
}

static void
srv_wrong_echo(struct scripted *sc)
{
  sc_greeting(scripted_out(sc), BOTH);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_expect_option(sc, SR);
  sc_opt_reply(scripted_out(sc), GO, NBD_REP_ACK, NULL, 0);
}

static void
go_huge_len(GByteArray *b)
{
  /* V4: a header announcing almost 4 GiB, and no data behind it.  A
   * client that allocated it would die under ASan before failing. */
  sc_be64(b, NBD_REP_MAGIC);
  sc_be32(b, GO);
  sc_be32(b, NBD_REP_INFO);
  sc_be32(b, 0xfffffff0u);
}

static void
go_long_len(GByteArray *b)
{
  /* Just over the longest legitimate reply (a SERVER reply with two
   * 4096-byte strings and slack). */
  sc_be64(b, NBD_REP_MAGIC);
  sc_be32(b, GO);
  sc_be32(b, NBD_REP_INFO);
  sc_be32(b, 4 + 2 * 4096 + 65);
}

static void
go_long_name(GByteArray *b)
{
  g_autofree char *name = g_strnfill(NBD_MAX_STRING, 'n');

  /* The longest name G1 allows fits under the V4 cap. */
  sc_info_string(b, GO, NBD_INFO_NAME, name);
  go_ok(b);
}

static void
go_server_reply(GByteArray *b)
{
  sc_opt_reply(b, GO, NBD_REP_SERVER, "\0\0\0\0", 4);
}

static void
go_meta_reply(GByteArray *b)
{
  sc_meta_context(b, GO, 1, "base:allocation");
}

static void
go_unknown_reply(GByteArray *b)
{
  sc_opt_reply(b, GO, 5, NULL, 0);
}

static void
srv_info_to_sr(struct scripted *sc)
{
  sc_greeting(scripted_out(sc), BOTH);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_expect_option(sc, SR);
  sc_info_export(scripted_out(sc), SR, SIZE, TF_STD);
}

/* ---- Info lengths: V6 ------------------------------------------------- */

static void
info_raw(GByteArray *b, uint16_t type, size_t payload_len)
{
  g_autofree uint8_t *payload = g_malloc0(payload_len + 1);

  sc_be64(b, NBD_REP_MAGIC);
  sc_be32(b, GO);
  sc_be32(b, NBD_REP_INFO);
  sc_be32(b, 2 + payload_len);
  sc_be16(b, type);
  g_byte_array_append(b, payload, payload_len);
}

static void
go_export_11(GByteArray *b)
{
  info_raw(b, NBD_INFO_EXPORT, 9);
  go_ok(b);
}

static void
go_export_13(GByteArray *b)
{
  info_raw(b, NBD_INFO_EXPORT, 11);
  go_ok(b);
}

static void
go_block_size_13(GByteArray *b)
{
  info_raw(b, NBD_INFO_BLOCK_SIZE, 11);
  go_ok(b);
}

static void
go_block_size_15(GByteArray *b)
{
  info_raw(b, NBD_INFO_BLOCK_SIZE, 13);
  go_ok(b);
}

static void
go_info_1(GByteArray *b)
{
  sc_opt_reply(b, GO, NBD_REP_INFO, "\0", 1);
}

static void
srv_meta_short(struct scripted *sc)
{
  sc_greeting(scripted_out(sc), BOTH);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_expect_option(sc, SR);
  sc_opt_reply(scripted_out(sc), SR, NBD_REP_ACK, NULL, 0);
  scripted_expect_option(sc, SETMC);
  sc_opt_reply(scripted_out(sc), SETMC, NBD_REP_META_CONTEXT, "\0\0\0", 3);
}

/* ---- GO outcomes: V7, V8, V9, V10, H20 --------------------------------- */

static void
go_ack_only(GByteArray *b)
{
  sc_opt_reply(b, GO, NBD_REP_ACK, NULL, 0);
}

static void
go_ack_after_block_size(GByteArray *b)
{
  sc_info_block_size(b, GO, 512, 4096, 1 << 20);
  sc_info_string(b, GO, NBD_INFO_NAME, "disk");
  sc_opt_reply(b, GO, NBD_REP_ACK, NULL, 0);
}

static void
go_sizes(GByteArray *b, uint32_t min, uint32_t pref, uint32_t max)
{
  sc_info_export(b, GO, SIZE, TF_STD);
  sc_info_block_size(b, GO, min, pref, max);
  sc_opt_reply(b, GO, NBD_REP_ACK, NULL, 0);
}

#define SIZES(fn, min, pref, max)                                       \
  static void                                                           \
  fn(GByteArray *b)                                                     \
  {                                                                     \
    go_sizes(b, min, pref, max);                                        \
  }

/* S6: each of these breaks one rule. */
SIZES(go_min_3, 3, 4096, 1 << 20)
SIZES(go_min_0, 0, 4096, 1 << 20)
SIZES(go_min_128k, 131072, 131072, 1 << 20)
SIZES(go_pref_below_min, 4096, 512, 1 << 20)
SIZES(go_pref_not_pow2, 512, 6144, 1 << 20)
SIZES(go_max_below_pref, 512, 4096, 2048)
SIZES(go_max_not_multiple, 512, 4096, (1 << 20) + 1)
/* And these are fine. */
SIZES(go_min_64k, 65536, 65536, 1 << 20)
SIZES(go_no_limit, 1, 4096, 0xffffffffu)
SIZES(go_no_limit_min_512, 512, 4096, 0xffffffffu)
SIZES(go_pref_over_clamp, 1, 1 << 26, 0xffffffffu)

static void
go_tflags(GByteArray *b, uint64_t size, uint16_t tflags)
{
  sc_info_export(b, GO, size, tflags);
  sc_opt_reply(b, GO, NBD_REP_ACK, NULL, 0);
}

static void
go_no_has_flags(GByteArray *b)
{
  go_tflags(b, SIZE, TF_STD & ~NBD_FLAG_HAS_FLAGS);
}

static void
go_df(GByteArray *b)
{
  go_tflags(b, SIZE, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_DF);
}

static void
srv_df_without_structured(struct scripted *sc)
{
  /* V9: the server offers DF although structured replies are off. */
  sc_greeting(scripted_out(sc), BOTH);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_expect_option(sc, SR);
  sc_opt_error(scripted_out(sc), SR, NBD_REP_ERR_UNSUP, NULL);
  scripted_expect_option(sc, GO);
  go_df(scripted_out(sc));
}

static void
go_fast_zero_alone(GByteArray *b)
{
  go_tflags(b, SIZE, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FAST_ZERO);
}

static void
go_fast_zero_with_wz(GByteArray *b)
{
  go_tflags(b, SIZE, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FAST_ZERO |
            NBD_FLAG_SEND_WRITE_ZEROES);
}

static void
go_size_2_63(GByteArray *b)
{
  go_tflags(b, UINT64_C(1) << 63, TF_STD);
}

static void
go_size_max(GByteArray *b)
{
  go_tflags(b, UINT64_MAX, TF_STD);
}

static void
go_size_2_63_minus_1(GByteArray *b)
{
  go_tflags(b, INT64_MAX, TF_STD);
}

static void
go_any_order(GByteArray *b)
{
  static const uint8_t odd[] = { 0, 99, 1, 2, 3, 4, 5 };

  /* H20: unknown types are skipped, order is free, EXPORT comes
   * last. */
  sc_info_block_size(b, GO, 4096, 65536, 1 << 24);
  sc_opt_reply(b, GO, NBD_REP_INFO, odd, sizeof odd);
  sc_info_string(b, GO, NBD_INFO_DESCRIPTION, "a test disk");
  sc_info_string(b, GO, NBD_INFO_NAME, "canonical");
  sc_info_export(b, GO, 8 * SIZE, TF_STD | NBD_FLAG_READ_ONLY);
  sc_opt_reply(b, GO, NBD_REP_ACK, NULL, 0);
}

static void
go_export_twice(GByteArray *b)
{
  /* V8: a repeated info keeps its last value. */
  sc_info_export(b, GO, 2 * SIZE, TF_STD);
  sc_info_export(b, GO, 3 * SIZE, TF_STD);
  sc_opt_reply(b, GO, NBD_REP_ACK, NULL, 0);
}

static void
go_hostile_strings(GByteArray *b)
{
  /* V29-style sanitising applies to names and descriptions too: no
   * terminal escapes or newlines reach a log. */
  sc_info_string(b, GO, NBD_INFO_NAME, "a\x1b[2Jb\n");
  sc_info_string(b, GO, NBD_INFO_DESCRIPTION, "caf\xc3\xa9\xff");
  go_ok(b);
}

static void
go_info_flood(GByteArray *b)
{
  for (int i = 0; i < 65; i++)
    sc_info_string(b, GO, NBD_INFO_DESCRIPTION, "again");
  go_ok(b);
}

/* ---- GO errors and fallbacks: H21, T9, D1, H13 ------------------------- */

static void
srv_unsup_no_zeroes(struct scripted *sc)
{
  to_go(sc);
  sc_opt_error(scripted_out(sc), GO, NBD_REP_ERR_UNSUP, "no GO here");
  scripted_expect_option(sc, NBD_OPT_EXPORT_NAME);
  sc_export_name_reply(scripted_out(sc), 5 * SIZE, TF_STD, false);
}

static void
srv_unsup_padding(struct scripted *sc)
{
  to_go_simple(sc, FIXED, NBD_FLAG_C_FIXED_NEWSTYLE);
  sc_opt_error(scripted_out(sc), GO, NBD_REP_ERR_UNSUP, NULL);
  scripted_expect_option(sc, NBD_OPT_EXPORT_NAME);
  sc_export_name_reply(scripted_out(sc), 5 * SIZE, TF_STD, true);
}

static void
srv_unsup_after_info(struct scripted *sc)
{
  /* H21: INFO replies before an error count for nothing. */
  to_go(sc);
  sc_info_block_size(scripted_out(sc), GO, 4096, 4096, 1 << 20);
  sc_info_string(scripted_out(sc), GO, NBD_INFO_NAME, "stale");
  sc_opt_error(scripted_out(sc), GO, NBD_REP_ERR_UNSUP, NULL);
  scripted_expect_option(sc, NBD_OPT_EXPORT_NAME);
  sc_export_name_reply(scripted_out(sc), 5 * SIZE, TF_STD, false);
}

static void
srv_unsup_then_close(struct scripted *sc)
{
  /* V11a: EXPORT_NAME fails by closing. */
  to_go(sc);
  sc_opt_error(scripted_out(sc), GO, NBD_REP_ERR_UNSUP, NULL);
  scripted_expect_option(sc, NBD_OPT_EXPORT_NAME);
  scripted_close(sc);
}

static void
srv_unknown_ack(struct scripted *sc)
{
  to_go(sc);
  sc_opt_error(scripted_out(sc), GO, NBD_REP_ERR_UNKNOWN, "not here");
  expect_abort_then_ack(sc);
}

static void
srv_unknown_close(struct scripted *sc)
{
  /* V11: the server may close instead of acknowledging the ABORT. */
  to_go(sc);
  sc_opt_error(scripted_out(sc), GO, NBD_REP_ERR_UNKNOWN, NULL);
  scripted_expect_option(sc, NBD_OPT_ABORT);
  scripted_close(sc);
}

static void
go_error(GByteArray *b, uint32_t type, const char *msg)
{
  sc_opt_error(b, GO, type, msg);
}

static void
go_tls_reqd(GByteArray *b)
{
  go_error(b, NBD_REP_ERR_TLS_REQD, NULL);
}

static void
go_shutdown(GByteArray *b)
{
  go_error(b, NBD_REP_ERR_SHUTDOWN, "going down");
}

static void
go_policy(GByteArray *b)
{
  go_error(b, NBD_REP_ERR_POLICY, "denied");
}

static void
go_invalid(GByteArray *b)
{
  go_error(b, NBD_REP_ERR_INVALID, "bad \x1b[31mthing\n");
}

static void
go_unknown_error(GByteArray *b)
{
  /* H30: an error type nobody defined is a plain failure. */
  go_error(b, NBD_REP_FLAG_ERROR | 99, NULL);
}

static void
go_error_after_info(GByteArray *b)
{
  sc_info_export(b, GO, SIZE, TF_STD);
  go_error(b, NBD_REP_ERR_UNKNOWN, NULL);
}

static void
srv_sr_tls_reqd(struct scripted *sc)
{
  /* T11 FORCEDTLS: every option before STARTTLS gets TLS_REQD. */
  sc_greeting(scripted_out(sc), BOTH);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_expect_option(sc, SR);
  sc_opt_error(scripted_out(sc), SR, NBD_REP_ERR_TLS_REQD, "TLS first");
  expect_abort_then_ack(sc);
}

static void
srv_mc_tls_reqd(struct scripted *sc)
{
  sc_greeting(scripted_out(sc), BOTH);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_expect_option(sc, SR);
  sc_opt_reply(scripted_out(sc), SR, NBD_REP_ACK, NULL, 0);
  scripted_expect_option(sc, SETMC);
  sc_opt_error(scripted_out(sc), SETMC, NBD_REP_ERR_TLS_REQD, NULL);
  expect_abort_then_ack(sc);
}

static bool
refuse_everything(struct scripted *sc, void *user)
{
  /* A server that refuses each option: under require, whatever the
   * client tries, no export name may leave it in plaintext (T14). */
  for (;;) {
    uint8_t hdr[16];
    g_autofree uint8_t *data = NULL;
    g_autoptr(GByteArray) b = g_byte_array_new();
    uint32_t code, len;

    if (scripted_client_closed(sc))
      return true;
    if (!scripted_read(sc, hdr, sizeof hdr))
      return false;
    code = nbd_get32(hdr + 8);
    len = nbd_get32(hdr + 12);
    if (len > 65536) {
      scripted_fail(sc, "option with %u bytes", len);
      return false;
    }
    data = g_malloc(len + 1);
    if (!scripted_read(sc, data, len))
      return false;
    if (code == NBD_OPT_ABORT) {
      sc_opt_reply(b, code, NBD_REP_ACK, NULL, 0);
      return scripted_write(sc, b->data, b->len);
    }
    sc_opt_error(b, code, NBD_REP_ERR_POLICY, NULL);
    if (!scripted_write(sc, b->data, b->len))
      return false;
  }
}

static void
srv_require_refused(struct scripted *sc)
{
  sc_greeting(scripted_out(sc), BOTH);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_call(sc, refuse_everything, NULL);
}

/* ---- Structured replies and meta contexts: H23, H24, H25, B4 ---------- */

static void
srv_sr_unsup(struct scripted *sc)
{
  sc_greeting(scripted_out(sc), BOTH);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_expect_option(sc, SR);
  sc_opt_error(scripted_out(sc), SR, NBD_REP_ERR_UNSUP, NULL);
  scripted_expect_option(sc, GO);
  go_ok(scripted_out(sc));
}

static void
srv_sr_policy(struct scripted *sc)
{
  sc_greeting(scripted_out(sc), BOTH);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_expect_option(sc, SR);
  sc_opt_error(scripted_out(sc), SR, NBD_REP_ERR_POLICY, "no");
  scripted_expect_option(sc, GO);
  go_ok(scripted_out(sc));
}

static void
srv_no_structured(struct scripted *sc)
{
  to_go_simple(sc, BOTH, CFLAGS_BOTH);
  go_ok(scripted_out(sc));
}

/* Greeting and STRUCTURED_REPLY accepted, up to SET_META_CONTEXT. */
static void
to_meta(struct scripted *sc)
{
  sc_greeting(scripted_out(sc), BOTH);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_expect_option(sc, SR);
  sc_opt_reply(scripted_out(sc), SR, NBD_REP_ACK, NULL, 0);
  scripted_expect_option(sc, SETMC);
}

static void
srv_meta_id(struct scripted *sc)
{
  to_meta(sc);
  sc_meta_context(scripted_out(sc), SETMC, 0x12345678, "base:allocation");
  sc_opt_reply(scripted_out(sc), SETMC, NBD_REP_ACK, NULL, 0);
  scripted_expect_option(sc, GO);
  go_ok(scripted_out(sc));
}

static void
srv_meta_error_discards(struct scripted *sc)
{
  /* H24, H25: the context came, then an error: none is selected. */
  to_meta(sc);
  sc_meta_context(scripted_out(sc), SETMC, 7, "base:allocation");
  sc_opt_error(scripted_out(sc), SETMC, NBD_REP_ERR_TOO_BIG, NULL);
  scripted_expect_option(sc, GO);
  go_ok(scripted_out(sc));
}

static void
srv_meta_other_name(struct scripted *sc)
{
  to_meta(sc);
  sc_meta_context(scripted_out(sc), SETMC, 3, "qemu:dirty-bitmap:b");
  sc_meta_context(scripted_out(sc), SETMC, 4, "base:allocationx");
  sc_opt_reply(scripted_out(sc), SETMC, NBD_REP_ACK, NULL, 0);
  scripted_expect_option(sc, GO);
  go_ok(scripted_out(sc));
}

static void
srv_meta_twice(struct scripted *sc)
{
  to_meta(sc);
  sc_meta_context(scripted_out(sc), SETMC, 1, "base:allocation");
  sc_meta_context(scripted_out(sc), SETMC, 2, "base:allocation");
  sc_opt_reply(scripted_out(sc), SETMC, NBD_REP_ACK, NULL, 0);
}

static void
srv_meta_none(struct scripted *sc)
{
  to_meta(sc);
  sc_opt_reply(scripted_out(sc), SETMC, NBD_REP_ACK, NULL, 0);
  scripted_expect_option(sc, GO);
  go_ok(scripted_out(sc));
}

static void
srv_meta_flood(struct scripted *sc)
{
  to_meta(sc);
  for (int i = 0; i < 65; i++)
    sc_meta_context(scripted_out(sc), SETMC, i, "x-ns:thing");
  sc_opt_reply(scripted_out(sc), SETMC, NBD_REP_ACK, NULL, 0);
}

static void
srv_meta_info_reply(struct scripted *sc)
{
  to_meta(sc);
  sc_info_export(scripted_out(sc), SETMC, SIZE, TF_STD);
}

static void
srv_no_block_status(struct scripted *sc)
{
  sc_greeting(scripted_out(sc), BOTH);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_expect_option(sc, SR);
  sc_opt_reply(scripted_out(sc), SR, NBD_REP_ACK, NULL, 0);
  scripted_expect_option(sc, GO);
  go_ok(scripted_out(sc));
}

/* ---- LIST: H16, V6, V5 and floods -------------------------------------- */

/* Greeting up to the client's LIST. */
static void
to_list(struct scripted *sc)
{
  sc_greeting(scripted_out(sc), BOTH);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_expect_option(sc, NBD_OPT_LIST);
}

static void
srv_list_many(struct scripted *sc)
{
  to_list(sc);
  for (int i = 0; i < 1000; i++) {
    g_autofree char *name = g_strdup_printf("export-%04d", i);
    g_autofree char *desc = g_strdup_printf("disk number %d", i);

    sc_server(scripted_out(sc), name, i % 2 ? desc : NULL);
  }
  sc_opt_reply(scripted_out(sc), NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
  expect_abort_then_ack(sc);
}

static void
srv_list_abort_closed(struct scripted *sc)
{
  to_list(sc);
  sc_server(scripted_out(sc), "", NULL);
  sc_opt_reply(scripted_out(sc), NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
  scripted_expect_option(sc, NBD_OPT_ABORT);
  scripted_close(sc);
}

static void
srv_list_eleven(struct scripted *sc)
{
  to_list(sc);
  for (int i = 0; i < 11; i++)
    sc_server(scripted_out(sc), "e", NULL);
  sc_opt_reply(scripted_out(sc), NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
}

static bool
list_flood(struct scripted *sc, void *user)
{
  g_autoptr(GByteArray) b = g_byte_array_new();
  unsigned total = GPOINTER_TO_UINT(user);

  /* Sent in batches: the whole flood need not sit in memory. */
  for (unsigned i = 0; i < total; i++) {
    sc_server(b, "x", NULL);
    if (b->len >= 64 * 1024 || i + 1 == total) {
      if (!scripted_write(sc, b->data, b->len))
        return false;
      g_byte_array_set_size(b, 0);
    }
  }
  return true;
}

static void
srv_list_flood(struct scripted *sc)
{
  to_list(sc);
  scripted_call(sc, list_flood, GUINT_TO_POINTER(100001));
}

static void
srv_list_name_overflow(struct scripted *sc)
{
  GByteArray *b;

  to_list(sc);
  b = scripted_out(sc);
  sc_be64(b, NBD_REP_MAGIC);
  sc_be32(b, NBD_OPT_LIST);
  sc_be32(b, NBD_REP_SERVER);
  sc_be32(b, 8);
  sc_be32(b, 5); /* a name of 5 bytes in a 4-byte remainder */
  sc_be32(b, 0x61626364);
}

static void
srv_list_name_wrap(struct scripted *sc)
{
  GByteArray *b;

  to_list(sc);
  b = scripted_out(sc);
  sc_be64(b, NBD_REP_MAGIC);
  sc_be32(b, NBD_OPT_LIST);
  sc_be32(b, NBD_REP_SERVER);
  sc_be32(b, 4);
  sc_be32(b, 0xffffffffu); /* len - 4 + N would wrap in 32 bits */
}

static void
srv_list_short(struct scripted *sc)
{
  to_list(sc);
  sc_opt_reply(scripted_out(sc), NBD_OPT_LIST, NBD_REP_SERVER, "\0\0\0", 3);
}

static void
srv_list_info(struct scripted *sc)
{
  to_list(sc);
  sc_info_export(scripted_out(sc), NBD_OPT_LIST, SIZE, TF_STD);
}

static void
srv_list_tls_reqd(struct scripted *sc)
{
  to_list(sc);
  sc_opt_error(scripted_out(sc), NBD_OPT_LIST, NBD_REP_ERR_TLS_REQD, NULL);
  expect_abort_then_ack(sc);
}

static void
srv_list_policy(struct scripted *sc)
{
  to_list(sc);
  sc_opt_error(scripted_out(sc), NBD_OPT_LIST, NBD_REP_ERR_POLICY,
               "listing is off");
  expect_abort_then_ack(sc);
}

/* ---- G1 ---------------------------------------------------------------- */

static void
srv_nothing(struct scripted *sc)
{
  /* The client must fail before it reads anything; the greeting is
   * there so that a client that does read finds a server. */
  sc_greeting(scripted_out(sc), BOTH);
}

static void
srv_name_4096(struct scripted *sc)
{
  to_go(sc);
  go_ok(scripted_out(sc));
}

/* ---- Checks on successful results -------------------------------------- */

static void
check_std(struct scripted *sc, const struct nbd_export_info *info,
          GPtrArray *list)
{
  g_assert_cmpuint(info->size, ==, SIZE);
  g_assert_cmphex(info->tflags, ==, TF_STD);
  g_assert_cmphex(info->gflags, ==, BOTH);
  g_assert_true(info->block_size_advertised);
  g_assert_cmpuint(info->min_block, ==, 512);
  g_assert_cmpuint(info->pref_block, ==, 4096);
  g_assert_cmpuint(info->max_payload, ==, 1 << 20);
  g_assert_true(info->structured);
  g_assert_true(info->block_status);
  g_assert_cmpuint(info->alloc_ctx_id, ==, CTX_ID);
  g_assert_false(info->export_name_fallback);
  g_assert_false(info->tls);
  g_assert_cmpstr(info->name, ==, "disk");
  g_assert_null(info->description);
}

static void
check_request_bytes(struct scripted *sc, const struct nbd_export_info *info,
                    GPtrArray *list)
{
  static const uint8_t meta[] = {
    0, 0, 0, 4, 'd', 'i', 's', 'k', 0, 0, 0, 1, 0, 0, 0, 15,
    'b', 'a', 's', 'e', ':', 'a', 'l', 'l', 'o', 'c', 'a', 't', 'i', 'o',
    'n',
  };
  static const uint8_t go[] = {
    0, 0, 0, 4, 'd', 'i', 's', 'k', 0, 3,
    0, NBD_INFO_BLOCK_SIZE, 0, NBD_INFO_NAME, 0, NBD_INFO_DESCRIPTION,
  };
  g_autoptr(GBytes) sr = scripted_option_data(sc, 0);
  g_autoptr(GBytes) m = scripted_option_data(sc, 1);
  g_autoptr(GBytes) g = scripted_option_data(sc, 2);
  g_autoptr(GBytes) want_meta = g_bytes_new_static(meta, sizeof meta);
  g_autoptr(GBytes) want_go = g_bytes_new_static(go, sizeof go);

  /* H23: no data; H24: name, one query; H19: name, BLOCK_SIZE first
   * since S2 makes us obey it. */
  g_assert_cmpuint(g_bytes_get_size(sr), ==, 0);
  g_assert_true(g_bytes_equal(m, want_meta));
  g_assert_true(g_bytes_equal(g, want_go));
  check_std(sc, info, list);
}

static void
check_fixed_only(struct scripted *sc, const struct nbd_export_info *info,
                 GPtrArray *list)
{
  g_assert_false(info->structured);
  g_assert_false(info->block_status);
  g_assert_cmpuint(info->size, ==, SIZE);
}

static void
check_no_limit(struct scripted *sc, const struct nbd_export_info *info,
               GPtrArray *list)
{
  /* S13: "no limit" still means at most 32 MiB per command. */
  g_assert_cmpuint(info->max_payload, ==, NBD_DEFAULT_MAX_PAYLOAD);
  g_assert_cmpuint(info->pref_block, ==, 4096);
}

static void
check_pref_clamped(struct scripted *sc, const struct nbd_export_info *info,
                   GPtrArray *list)
{
  /* S6 still holds after the S13 clamp: preferred <= maximum. */
  g_assert_cmpuint(info->max_payload, ==, NBD_DEFAULT_MAX_PAYLOAD);
  g_assert_cmpuint(info->pref_block, ==, NBD_DEFAULT_MAX_PAYLOAD);
}

static void
check_min_64k(struct scripted *sc, const struct nbd_export_info *info,
              GPtrArray *list)
{
  g_assert_cmpuint(info->min_block, ==, 65536);
}

static void
check_defaults(struct scripted *sc, const struct nbd_export_info *info,
               GPtrArray *list)
{
  /* S4: nothing advertised, so the defaults every server accepts. */
  g_assert_false(info->block_size_advertised);
  g_assert_cmpuint(info->min_block, ==, 1);
  g_assert_cmpuint(info->pref_block, ==, 4096);
  g_assert_cmpuint(info->max_payload, ==, NBD_DEFAULT_MAX_PAYLOAD);
}

static void
check_df_dropped(struct scripted *sc, const struct nbd_export_info *info,
                 GPtrArray *list)
{
  g_assert_false(info->structured);
  g_assert_cmphex(info->tflags, ==, NBD_FLAG_HAS_FLAGS);
}

static void
check_df_kept(struct scripted *sc, const struct nbd_export_info *info,
              GPtrArray *list)
{
  g_assert_true(info->structured);
  g_assert_cmphex(info->tflags, ==, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_DF);
}

static void
check_fast_zero_dropped(struct scripted *sc,
                        const struct nbd_export_info *info, GPtrArray *list)
{
  g_assert_cmphex(info->tflags, ==, NBD_FLAG_HAS_FLAGS);
}

static void
check_fast_zero_kept(struct scripted *sc, const struct nbd_export_info *info,
                     GPtrArray *list)
{
  g_assert_cmphex(info->tflags, ==, NBD_FLAG_HAS_FLAGS |
                  NBD_FLAG_SEND_FAST_ZERO | NBD_FLAG_SEND_WRITE_ZEROES);
}

static void
check_size_max_ok(struct scripted *sc, const struct nbd_export_info *info,
                  GPtrArray *list)
{
  g_assert_cmpuint(info->size, ==, INT64_MAX);
}

static void
check_any_order(struct scripted *sc, const struct nbd_export_info *info,
                GPtrArray *list)
{
  g_assert_cmpuint(info->size, ==, 8 * SIZE);
  g_assert_cmphex(info->tflags, ==, TF_STD | NBD_FLAG_READ_ONLY);
  g_assert_cmpuint(info->min_block, ==, 4096);
  g_assert_cmpuint(info->pref_block, ==, 65536);
  g_assert_cmpuint(info->max_payload, ==, 1 << 24);
  g_assert_cmpstr(info->name, ==, "canonical");
  g_assert_cmpstr(info->description, ==, "a test disk");
}

static void
check_export_twice(struct scripted *sc, const struct nbd_export_info *info,
                   GPtrArray *list)
{
  g_assert_cmpuint(info->size, ==, 3 * SIZE);
}

static void
check_hostile_strings(struct scripted *sc,
                      const struct nbd_export_info *info, GPtrArray *list)
{
  g_assert_cmpstr(info->name, ==, "a?[2Jb?");
  g_assert_cmpstr(info->description, ==, "caf\xc3\xa9?");
}

static void
check_long_name(struct scripted *sc, const struct nbd_export_info *info,
                GPtrArray *list)
{
  g_assert_cmpuint(strlen(info->name), ==, NBD_MAX_STRING);
}

static void
check_fallback(struct scripted *sc, const struct nbd_export_info *info,
               GPtrArray *list)
{
  g_autoptr(GBytes) name = scripted_option_data(sc, 3);

  /* H14: the name is the whole option data, no length prefix. */
  g_assert_nonnull(name);
  g_assert_cmpmem(g_bytes_get_data(name, NULL), g_bytes_get_size(name),
                  "disk", 4);
  g_assert_true(info->export_name_fallback);
  g_assert_cmpuint(info->size, ==, 5 * SIZE);
  g_assert_cmphex(info->tflags, ==, TF_STD);
  g_assert_true(info->structured);
  g_assert_true(info->block_status);
}

static void
check_fallback_simple(struct scripted *sc,
                      const struct nbd_export_info *info, GPtrArray *list)
{
  g_assert_true(info->export_name_fallback);
  g_assert_cmpuint(info->size, ==, 5 * SIZE);
  g_assert_cmphex(info->gflags, ==, FIXED);
}

static void
check_fallback_fresh(struct scripted *sc, const struct nbd_export_info *info,
                     GPtrArray *list)
{
  /* Nothing from the INFO replies before the error survives. */
  check_defaults(sc, info, list);
  g_assert_cmpstr(info->name, ==, "disk");
  g_assert_true(info->export_name_fallback);
}

static void
check_simple(struct scripted *sc, const struct nbd_export_info *info,
             GPtrArray *list)
{
  g_assert_false(info->structured);
  g_assert_false(info->block_status);
  g_assert_cmpuint(info->size, ==, SIZE);
}

static void
check_meta_id(struct scripted *sc, const struct nbd_export_info *info,
              GPtrArray *list)
{
  g_assert_true(info->block_status);
  g_assert_cmphex(info->alloc_ctx_id, ==, 0x12345678);
}

static void
check_no_meta(struct scripted *sc, const struct nbd_export_info *info,
              GPtrArray *list)
{
  g_assert_true(info->structured);
  g_assert_false(info->block_status);
}

static void
check_list_many(struct scripted *sc, const struct nbd_export_info *info,
                GPtrArray *list)
{
  g_assert_cmpuint(list->len, ==, 1000);
  for (guint i = 0; i < list->len; i++) {
    const struct nbd_export_entry *e = list->pdata[i];
    g_autofree char *name = g_strdup_printf("export-%04u", i);
    g_autofree char *desc = g_strdup_printf("disk number %u", i);

    g_assert_cmpstr(e->name, ==, name);
    g_assert_cmpstr(e->description, ==, i % 2 ? desc : "");
  }
}

static void
check_list_default(struct scripted *sc, const struct nbd_export_info *info,
                   GPtrArray *list)
{
  const struct nbd_export_entry *e;

  g_assert_cmpuint(list->len, ==, 1);
  e = list->pdata[0];
  g_assert_cmpstr(e->name, ==, "");
  g_assert_cmpstr(e->description, ==, "");
}

static void
check_plaintext_safe(struct scripted *sc, const struct nbd_export_info *info,
                     GPtrArray *list)
{
  const char *sent = scripted_option_names(sc);

  /* T14: whatever happened, neither the export name nor any stateful
   * option went out before TLS. */
  g_assert_null(strstr(sent, "GO"));
  g_assert_null(strstr(sent, "EXPORT_NAME"));
  g_assert_null(strstr(sent, "META_CONTEXT"));
  g_assert_null(strstr(sent, "STRUCTURED_REPLY"));
}

static void
check_name_4096(struct scripted *sc, const struct nbd_export_info *info,
                GPtrArray *list)
{
  g_autoptr(GBytes) go = scripted_option_data(sc, 2);
  const uint8_t *p = g_bytes_get_data(go, NULL);

  /* H19: the whole name went out, with its length in front. */
  g_assert_cmpuint(g_bytes_get_size(go), ==, 4 + 4096 + 2 + 3 * 2);
  g_assert_cmpuint(nbd_get32(p), ==, 4096);
  g_assert_cmpuint(p[4], ==, 'x');
  g_assert_cmpuint(p[4 + 4095], ==, 'x');
  g_assert_cmpuint(strlen(info->name), ==, 4096);
}

/* ---- The table --------------------------------------------------------- */

#define P "/nbdproto/handshake/"

static const struct hs_case cases[] = {
  /* Greeting. */
  { P "V1/bad-magic", .server = srv_bad_magic, .err = EPROTO,
    .words = { "scripted", "not an NBD server" }, .cflags = -1, .sent = "" },
  { P "V1/unknown-style", .server = srv_bad_style, .err = EPROTO,
    .words = { "unknown protocol style", "V1" }, .cflags = -1,
    .sent = "" },
  { P "V1/truncated-greeting", .server = srv_truncated_greeting,
    .err = ECONNRESET, .words = { "closed" }, .cflags = -1, .sent = "" },
  { P "H4/oldstyle-refused", .server = srv_oldstyle,
    .err = EPROTONOSUPPORT, .words = { "oldstyle", "newstyle" },
    .cflags = -1, .sent = "" },
  { P "H7/non-fixed-newstyle-refused", .server = srv_not_fixed,
    .err = EPROTONOSUPPORT, .words = { "fixed newstyle", "H7" },
    .cflags = -1, .sent = "" },
  { P "H7/no-zeroes-without-fixed-refused", .server = srv_no_zeroes_only,
    .err = EPROTONOSUPPORT, .words = { "fixed newstyle" }, .cflags = -1,
    .sent = "" },
  { P "H6/no-zeroes-echoed-when-offered", .go = go_ok, .sent = SENT_GO,
    .check = check_std },
  { P "H6/no-zeroes-not-echoed-unless-offered", .server = srv_fixed_only,
    .no_structured = true, .cflags = NBD_FLAG_C_FIXED_NEWSTYLE,
    .sent = "GO", .check = check_fixed_only },
  { P "H6/unknown-flags-not-echoed", .server = srv_unknown_gflags,
    .no_structured = true, .cflags = NBD_FLAG_C_FIXED_NEWSTYLE,
    .sent = "GO" },
  { P "H6/all-flags-offered", .server = srv_all_gflags,
    .no_structured = true, .sent = "GO" },
  { P "T19/server-sends-in-pieces", .server = srv_slow, .sent = SENT_GO,
    .after = after_read_trailer, .check = check_std },
  { P "H10/server-closes-after-flags", .server = srv_close_after_flags,
    .err = ECONNRESET, .words = { "closed" },
    .sent = "STRUCTURED_REPLY" },

  /* Option reply framing. */
  { P "V3/bad-reply-magic", .server = srv_bad_reply_magic, .err = EPROTO,
    .words = { "magic", "V3" }, .sent = "STRUCTURED_REPLY" },
  { P "V3/wrong-option-echo", .server = srv_wrong_echo, .err = EPROTO,
    .words = { "NBD_OPT_GO", "NBD_OPT_STRUCTURED_REPLY", "V3" },
    .sent = "STRUCTURED_REPLY" },
  { P "V4/reply-length-4GiB-not-allocated", .go = go_huge_len,
    .err = EPROTO, .words = { "too long", "V4" }, .sent = SENT_GO },
  { P "V4/reply-length-over-cap", .go = go_long_len, .err = EPROTO,
    .words = { "8261 bytes", "V4" }, .sent = SENT_GO },
  { P "V4/longest-name-accepted", .go = go_long_name, .sent = SENT_GO,
    .check = check_long_name },
  { P "V5/server-reply-to-go", .go = go_server_reply, .err = EPROTO,
    .words = { "NBD_REP_SERVER", "V5" }, .sent = SENT_GO },
  { P "V5/meta-context-reply-to-go", .go = go_meta_reply, .err = EPROTO,
    .words = { "NBD_REP_META_CONTEXT", "V5" }, .sent = SENT_GO },
  { P "V5/unknown-reply-type", .go = go_unknown_reply, .err = EPROTO,
    .words = { "V5" }, .sent = SENT_GO },
  { P "V5/info-reply-to-structured-reply", .server = srv_info_to_sr,
    .err = EPROTO, .words = { "NBD_REP_INFO", "V5" },
    .sent = "STRUCTURED_REPLY" },
  { P "V5/info-reply-to-set-meta-context", .server = srv_meta_info_reply,
    .err = EPROTO, .words = { "V5" },
    .sent = "STRUCTURED_REPLY SET_META_CONTEXT" },

  /* Info lengths. */
  { P "V6/info-export-length-11", .go = go_export_11, .err = EPROTO,
    .words = { "NBD_INFO_EXPORT", "11 bytes", "V6" }, .sent = SENT_GO },
  { P "V6/info-export-length-13", .go = go_export_13, .err = EPROTO,
    .words = { "NBD_INFO_EXPORT", "13 bytes", "V6" }, .sent = SENT_GO },
  { P "V6/info-block-size-length-13", .go = go_block_size_13,
    .err = EPROTO, .words = { "NBD_INFO_BLOCK_SIZE", "13 bytes" },
    .sent = SENT_GO },
  { P "V6/info-block-size-length-15", .go = go_block_size_15,
    .err = EPROTO, .words = { "NBD_INFO_BLOCK_SIZE", "15 bytes" },
    .sent = SENT_GO },
  { P "V6/info-shorter-than-type", .go = go_info_1, .err = EPROTO,
    .words = { "shorter than 2", "V6" }, .sent = SENT_GO },
  { P "V6/meta-context-shorter-than-id", .server = srv_meta_short,
    .err = EPROTO, .words = { "NBD_REP_META_CONTEXT", "V6" },
    .sent = "STRUCTURED_REPLY SET_META_CONTEXT" },
  { P "V6/server-name-length-overflow", .server = srv_list_name_overflow,
    .list = true, .err = EPROTO, .words = { "NBD_REP_SERVER", "V6" },
    .sent = "LIST" },
  { P "V6/server-name-length-wraps", .server = srv_list_name_wrap,
    .list = true, .err = EPROTO, .words = { "NBD_REP_SERVER", "V6" },
    .sent = "LIST" },
  { P "V6/server-shorter-than-length", .server = srv_list_short,
    .list = true, .err = EPROTO, .words = { "NBD_REP_SERVER" },
    .sent = "LIST" },

  /* GO results. */
  { P "V7/go-ack-without-export", .go = go_ack_only, .err = EPROTO,
    .words = { "without NBD_INFO_EXPORT", "V7" }, .sent = SENT_GO },
  { P "V7/go-ack-with-other-infos-only", .go = go_ack_after_block_size,
    .err = EPROTO, .words = { "V7" }, .sent = SENT_GO },
  { P "V8/min-block-not-power-of-2", .go = go_min_3, .err = EPROTO,
    .words = { "min=3", "S6" }, .sent = SENT_GO },
  { P "V8/min-block-0", .go = go_min_0, .err = EPROTO,
    .words = { "min=0", "S6" }, .sent = SENT_GO },
  { P "V8/min-block-over-64k", .go = go_min_128k, .err = EPROTO,
    .words = { "min=131072", "S6" }, .sent = SENT_GO },
  { P "V8/preferred-below-min", .go = go_pref_below_min, .err = EPROTO,
    .words = { "preferred=512", "S6" }, .sent = SENT_GO },
  { P "V8/preferred-not-power-of-2", .go = go_pref_not_pow2,
    .err = EPROTO, .words = { "preferred=6144" }, .sent = SENT_GO },
  { P "V8/max-below-preferred", .go = go_max_below_pref, .err = EPROTO,
    .words = { "max=2048" }, .sent = SENT_GO },
  { P "V8/max-not-multiple-of-min", .go = go_max_not_multiple,
    .err = EPROTO, .words = { "max=1048577" }, .sent = SENT_GO },
  { P "V8/min-block-64k-accepted", .go = go_min_64k, .sent = SENT_GO,
    .check = check_min_64k },
  { P "S6/max-no-limit-clamped", .go = go_no_limit, .sent = SENT_GO,
    .check = check_no_limit },
  { P "S6/max-no-limit-with-min-512", .go = go_no_limit_min_512,
    .sent = SENT_GO, .check = check_no_limit },
  { P "S6/preferred-over-clamped-max", .go = go_pref_over_clamp,
    .sent = SENT_GO, .check = check_pref_clamped },
  { P "S4/defaults-without-block-size", .go = go_df, .sent = SENT_GO,
    .check = check_defaults },
  { P "V9/missing-has-flags", .go = go_no_has_flags, .err = EPROTO,
    .words = { "HAS_FLAGS", "V9" }, .sent = SENT_GO },
  { P "V9/send-df-dropped-without-structured",
    .server = srv_df_without_structured, .sent = "STRUCTURED_REPLY GO",
    .check = check_df_dropped },
  { P "V9/send-df-kept-with-structured", .go = go_df, .sent = SENT_GO,
    .check = check_df_kept },
  { P "V9/fast-zero-dropped-without-write-zeroes",
    .go = go_fast_zero_alone, .sent = SENT_GO,
    .check = check_fast_zero_dropped },
  { P "V9/fast-zero-kept-with-write-zeroes", .go = go_fast_zero_with_wz,
    .sent = SENT_GO, .check = check_fast_zero_kept },
  { P "V10/size-2^63-refused", .go = go_size_2_63, .err = EFBIG,
    .words = { "9223372036854775808", "V10" }, .sent = SENT_GO },
  { P "V10/size-2^64-1-refused", .go = go_size_max, .err = EFBIG,
    .words = { "18446744073709551615", "V10" }, .sent = SENT_GO },
  { P "V10/size-2^63-1-accepted", .go = go_size_2_63_minus_1,
    .sent = SENT_GO, .check = check_size_max_ok },
  { P "H20/unknown-info-ignored-any-order", .go = go_any_order,
    .sent = SENT_GO, .check = check_any_order },
  { P "V8/repeated-info-keeps-last", .go = go_export_twice,
    .sent = SENT_GO, .check = check_export_twice },
  { P "G1/server-strings-sanitised", .go = go_hostile_strings,
    .sent = SENT_GO, .check = check_hostile_strings },
  { P "V4/info-flood-refused", .go = go_info_flood, .err = EPROTO,
    .words = { "more than 64" }, .sent = SENT_GO },
  { P "H19/request-bytes", .go = go_ok, .sent = SENT_GO,
    .check = check_request_bytes },

  /* GO errors and fallbacks. */
  { P "H21/unsup-falls-back-to-export-name",
    .server = srv_unsup_no_zeroes, .sent = SENT_GO " EXPORT_NAME",
    .after = after_read_trailer, .check = check_fallback },
  { P "H21/unsup-fallback-with-padding", .server = srv_unsup_padding,
    .no_structured = true, .cflags = NBD_FLAG_C_FIXED_NEWSTYLE,
    .sent = "GO EXPORT_NAME", .after = after_read_trailer,
    .check = check_fallback_simple },
  { P "H21/unsup-discards-earlier-infos", .server = srv_unsup_after_info,
    .sent = SENT_GO " EXPORT_NAME", .check = check_fallback_fresh },
  { P "V11a/export-name-refused-by-close", .server = srv_unsup_then_close,
    .err = ENOENT, .words = { "closed", "'disk'" },
    .sent = SENT_GO " EXPORT_NAME" },
  { P "D1/unknown-export-named-then-abort", .server = srv_unknown_ack,
    .err = ENOENT, .words = { "no export named 'disk'", "--list" },
    .sent = SENT_GO_ABORT },
  { P "V11/abort-without-reply-accepted", .server = srv_unknown_close,
    .err = ENOENT, .words = { "'disk'" }, .sent = SENT_GO_ABORT },
  { P "H21/error-discards-infos", .go = go_error_after_info,
    .err = ENOENT, .words = { "'disk'" }, .sent = SENT_GO_ABORT },
  { P "T9/go-tls-required-under-off", .go = go_tls_reqd, .err = EACCES,
    .words = { "requires TLS", "nbds://", "--tls=require", "'disk'" },
    .sent = SENT_GO_ABORT },
  { P "T11/forced-tls-structured-reply", .server = srv_sr_tls_reqd,
    .err = EACCES, .words = { "requires TLS", "nbds://", "--tls=require" },
    .sent = "STRUCTURED_REPLY ABORT" },
  { P "T11/forced-tls-set-meta-context", .server = srv_mc_tls_reqd,
    .err = EACCES, .words = { "requires TLS", "--tls=require" },
    .sent = "STRUCTURED_REPLY SET_META_CONTEXT ABORT" },
  { P "T5/off-sends-no-starttls", .go = go_ok, .sent = SENT_GO,
    .check = check_std },
  /* Under require the client may fail at once (no credentials were
   * given here) or try STARTTLS and give up when refused; either way
   * no option that carries the name or state went out in plaintext. */
  { P "T14/require-never-sends-name-in-plaintext",
    .server = srv_require_refused, .tls = NBD_TLS_REQUIRE, .err = -1,
    .check = check_plaintext_safe },
  { P "H13/shutdown-then-abort", .go = go_shutdown, .err = ESHUTDOWN,
    .words = { "NBD_REP_ERR_SHUTDOWN", "going down" },
    .sent = SENT_GO_ABORT },
  { P "D1/policy-then-abort", .go = go_policy, .err = EACCES,
    .words = { "NBD_REP_ERR_POLICY", "denied" }, .sent = SENT_GO_ABORT },
  { P "D1/invalid-then-abort", .go = go_invalid, .err = EIO,
    .words = { "NBD_REP_ERR_INVALID", "bad ?[31mthing?" },
    .sent = SENT_GO_ABORT },
  { P "H30/unknown-error-type", .go = go_unknown_error, .err = EIO,
    .words = { "server refused" }, .sent = SENT_GO_ABORT },

  /* Structured replies and contexts. */
  { P "H23/structured-reply-unsup-gives-simple", .server = srv_sr_unsup,
    .sent = "STRUCTURED_REPLY GO", .check = check_simple },
  { P "H23/structured-reply-policy-gives-simple", .server = srv_sr_policy,
    .sent = "STRUCTURED_REPLY GO", .check = check_simple },
  { P "H23/not-asked-when-disabled", .server = srv_no_structured,
    .no_structured = true, .sent = "GO", .check = check_simple },
  { P "H25/context-id-recorded", .server = srv_meta_id, .sent = SENT_GO,
    .check = check_meta_id },
  { P "H24/error-discards-contexts", .server = srv_meta_error_discards,
    .sent = SENT_GO, .check = check_no_meta },
  { P "B4/other-contexts-ignored", .server = srv_meta_other_name,
    .sent = SENT_GO, .check = check_no_meta },
  { P "B4/same-context-twice", .server = srv_meta_twice, .err = EPROTO,
    .words = { "twice", "B4" },
    .sent = "STRUCTURED_REPLY SET_META_CONTEXT" },
  { P "H25/ack-without-context", .server = srv_meta_none, .sent = SENT_GO,
    .check = check_no_meta },
  { P "V4/meta-context-flood-refused", .server = srv_meta_flood,
    .err = EPROTO, .words = { "too many" },
    .sent = "STRUCTURED_REPLY SET_META_CONTEXT" },
  { P "B1/not-asked-when-disabled", .server = srv_no_block_status,
    .no_block_status = true, .sent = "STRUCTURED_REPLY GO",
    .check = check_no_meta },

  /* LIST. */
  { P "H16/list-many-then-abort", .server = srv_list_many, .list = true,
    .sent = "LIST ABORT", .check = check_list_many },
  { P "V11/list-abort-without-reply", .server = srv_list_abort_closed,
    .list = true, .sent = "LIST ABORT", .check = check_list_default },
  { P "V4/list-over-max-entries", .server = srv_list_eleven, .list = true,
    .max_entries = 10, .err = E2BIG, .words = { "more than 10" },
    .sent = "LIST" },
  { P "V4/list-flood-100001", .server = srv_list_flood, .list = true,
    .max_entries = 100000, .err = E2BIG, .words = { "more than 100000" },
    .sent = "LIST" },
  { P "V5/info-reply-to-list", .server = srv_list_info, .list = true,
    .err = EPROTO, .words = { "NBD_REP_INFO", "V5" }, .sent = "LIST" },
  { P "T9/list-tls-required", .server = srv_list_tls_reqd, .list = true,
    .err = EACCES, .words = { "requires TLS", "nbds://" },
    .sent = "LIST ABORT" },
  { P "D1/list-refused-then-abort", .server = srv_list_policy,
    .list = true, .err = EACCES, .words = { "listing is off" },
    .sent = "LIST ABORT" },

  /* What the client sends. */
  { P "G1/export-name-over-4096-refused", .server = srv_nothing,
    .name_len = 4097, .err = EINVAL, .words = { "4096", "G1" },
    .cflags = -1, .sent = "" },
  { P "G1/export-name-bad-utf8-refused", .server = srv_nothing,
    .export_name = "\xc3\x28", .err = EINVAL, .words = { "UTF-8" },
    .cflags = -1, .sent = "" },
  { P "G1/export-name-4096-sent", .server = srv_name_4096,
    .name_len = 4096, .sent = SENT_GO, .check = check_name_4096 },
};

/* ---- The runner -------------------------------------------------------- */

static void
run_case(gconstpointer data)
{
  const struct hs_case *c = data;
  g_autofree char *long_name = NULL;
  struct scripted *sc = scripted_new();
  struct nbd_handshake_opts o = {
    .export_name = c->export_name ? c->export_name : "disk",
    .tls = c->tls,
    .no_structured = c->no_structured,
    .no_block_status = c->no_block_status,
  };
  struct nbd_export_info info;
  g_autoptr(GPtrArray) list = NULL;
  GError *error = NULL;
  struct nbd_transport *t;
  int64_t cflags = c->cflags ? c->cflags : CFLAGS_BOTH;
  int rc;

  if (c->name_len > 0) {
    long_name = g_strnfill(c->name_len, 'x');
    o.export_name = long_name;
  }

  if (c->server != NULL) {
    c->server(sc);
  } else {
    to_go(sc);
    c->go(scripted_out(sc));
  }
  if (c->after != NULL)
    trailer(sc);

  t = scripted_start(sc);
  memset(&info, 0xa5, sizeof info);
  if (c->list)
    rc = nbd_handshake_list(t, &o, c->max_entries ? c->max_entries : 1000,
                            &list, &error);
  else
    rc = nbd_handshake_go(t, &o, &info, &error);
  if (rc == 0 && c->after != NULL)
    c->after(t);
  nbd_transport_free(t);
  scripted_finish(sc);

  if (c->err == 0) {
    g_assert_no_error(error);
    g_assert_cmpint(rc, ==, 0);
  } else if (c->err > 0) {
    g_assert_error(error, NBDPROTO_ERROR, c->err);
    g_assert_cmpint(rc, ==, -c->err);
    for (int i = 0; i < 4 && c->words[i] != NULL; i++)
      if (strstr(error->message, c->words[i]) == NULL)
        g_error("message \"%s\" lacks \"%s\"", error->message,
                c->words[i]);
  } else {
    /* Any failure will do; the check decides. */
    g_assert_nonnull(error);
    g_assert_cmpint(rc, <, 0);
    g_assert_cmpint(rc, ==, -error->code);
  }

  scripted_assert_clean(sc);
  if (c->err >= 0) {
    g_assert_cmpint(scripted_client_flags(sc), ==, cflags);
    g_assert_cmpstr(scripted_option_names(sc), ==, c->sent);
  }
  if (c->check != NULL)
    c->check(sc, &info, list);

  /* A success leaves strings to free; a failure none. */
  if (rc == 0 && !c->list)
    nbd_export_info_clear(&info);
  else if (!c->list)
    g_assert_true(info.name == NULL && info.description == NULL);
  g_clear_error(&error);
  scripted_free(sc);
}

/* Plays INFO against a server that answers it with reply (the INFO
 * replies of a success, or one error) and acknowledges the ABORT that
 * follows; returns nbd_handshake_info's result. */
static int
run_info(void (*reply)(GByteArray *b), struct nbd_export_info *info,
         GError **error)
{
  struct scripted *sc = scripted_new();
  struct nbd_handshake_opts o = { .export_name = "disk" };
  struct nbd_transport *t;
  int rc;

  sc_greeting(scripted_out(sc), BOTH);
  scripted_expect_flags(sc, CFLAGS_BOTH);
  scripted_expect_option(sc, NBD_OPT_INFO);
  reply(scripted_out(sc));
  scripted_expect_option(sc, NBD_OPT_ABORT);
  sc_opt_reply(scripted_out(sc), NBD_OPT_ABORT, NBD_REP_ACK, NULL, 0);

  t = scripted_start(sc);
  rc = nbd_handshake_info(t, &o, info, error);
  nbd_transport_free(t);
  scripted_finish(sc);

  scripted_assert_clean(sc);
  g_assert_cmpstr(scripted_option_names(sc), ==, "INFO ABORT");
  scripted_free(sc);
  return rc;
}

static void
info_ok(GByteArray *b)
{
  sc_info_block_size(b, NBD_OPT_INFO, 512, 4096, 1 << 20);
  sc_info_export(b, NBD_OPT_INFO, SIZE, TF_STD);
  sc_opt_reply(b, NBD_OPT_INFO, NBD_REP_ACK, NULL, 0);
}

static void
info_unsup(GByteArray *b)
{
  sc_opt_reply(b, NBD_OPT_INFO, NBD_REP_ERR_UNSUP, NULL, 0);
}

/* H19, H22, D1: NBD_OPT_INFO gets the export's facts without entering
 * transmission, and the session then ends with ABORT. */
static void
test_info(void)
{
  struct nbd_export_info info;
  GError *error = NULL;

  g_assert_cmpint(run_info(info_ok, &info, &error), ==, 0);
  g_assert_no_error(error);
  g_assert_cmpuint(info.size, ==, SIZE);
  g_assert_cmpuint(info.min_block, ==, 512);
  g_assert_cmpuint(info.max_payload, ==, 1 << 20);
  g_assert_false(info.structured);
  nbd_export_info_clear(&info);
}

/* H21 does not apply to INFO: a server without it is refused, with no
 * EXPORT_NAME fallback (that would enter transmission). */
static void
test_info_unsupported(void)
{
  struct nbd_export_info info;
  GError *error = NULL;

  g_assert_cmpint(run_info(info_unsup, &info, &error), ==, -ENOTSUP);
  g_assert_error(error, NBDPROTO_ERROR, ENOTSUP);
  g_assert_nonnull(strstr(error->message, "NBD_REP_ERR_UNSUP"));
  g_clear_error(&error);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);

  g_test_add_func("/nbdproto/handshake/H19/info", test_info);
  g_test_add_func("/nbdproto/handshake/H19/info-unsupported",
                  test_info_unsupported);

  for (size_t i = 0; i < G_N_ELEMENTS(cases); i++)
    g_test_add_data_func(cases[i].path, &cases[i], run_case);
  return g_test_run();
}
