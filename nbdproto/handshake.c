/* nbdfs: the handshake, fixed-newstyle option haggling.
 *
 * One option is in flight at a time (H10): a small helper sends it, and
 * read_reply() reads and checks each reply before a per-option loop
 * decides what it means.  The order follows H31.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <inttypes.h>

#include "internal.h"

/* V4: no legitimate option reply is longer than a SERVER reply with two
 * maximal strings; anything above this is a violation, not a buffer to
 * allocate. */
#define MAX_REPLY_LEN (4 + 2 * NBD_MAX_STRING + 64)

/* A flood of INFO or META_CONTEXT replies to one option ends here. */
#define MAX_REPLIES_PER_OPTION 64

struct reply {
  uint32_t option;
  uint32_t type;
  uint32_t len;
  uint8_t *data;         /* len bytes, owned */
};

struct session {
  struct nbd_transport *t;
  const struct nbd_handshake_opts *o;
  uint16_t gflags;
  bool no_zeroes;        /* both sides agreed (H6) */
  bool tls;              /* TLS is up on t */
  bool starttls_dropped; /* the server hung up on STARTTLS */
  GError **error;
};

static void
reply_clear(struct reply *r)
{
  g_clear_pointer(&r->data, g_free);
  r->len = 0;
}

static int
send_option(struct session *s, uint32_t option, const void *data,
            uint32_t len)
{
  struct nbd_option hdr = {
    .version = htobe64(NBD_OPTS_MAGIC),
    .option = htobe32(option),
    .optlen = htobe32(len),
  };
  struct iovec iov[2] = {
    { .iov_base = &hdr, .iov_len = sizeof hdr },
    { .iov_base = (void *) data, .iov_len = len },
  };

  return nbd_transport_writev(s->t, iov, len ? 2 : 1, s->error);
}

/* Reads one option reply to option into r and checks the framing (V3,
 * V4).  A violation is fatal for the session and returns -EPROTO. */
static int
read_reply(struct session *s, uint32_t option, struct reply *r)
{
  struct nbd_fixed_new_option_reply hdr;
  int rc;

  reply_clear(r);
  rc = nbd_transport_read(s->t, &hdr, sizeof hdr, s->error);
  if (rc < 0)
    return rc;

  r->option = be32toh(hdr.option);
  r->type = be32toh(hdr.reply);
  r->len = be32toh(hdr.replylen);

  if (be64toh(hdr.magic) != NBD_REP_MAGIC)
    return nbd_set_error(s->error, EPROTO,
                         "handshake: %s: bad option reply magic 0x%"
                         PRIx64 " (V3)", s->t->name, be64toh(hdr.magic));
  if (r->option != option)
    return nbd_set_error(s->error, EPROTO,
                         "handshake: %s: reply names %s, expected %s (V3)",
                         s->t->name, nbd_opt_name(r->option),
                         nbd_opt_name(option));
  if (r->len > MAX_REPLY_LEN)
    return nbd_set_error(s->error, EPROTO,
                         "handshake: %s: %s reply of %" PRIu32
                         " bytes is too long (V4)",
                         s->t->name, nbd_opt_name(option), r->len);

  r->data = g_malloc(r->len + 1);
  r->data[r->len] = 0;
  return nbd_transport_read(s->t, r->data, r->len, s->error);
}

/* The server's own words from an error reply, fit for a message. */
static char *
reply_message(const struct reply *r)
{
  if (r->len == 0)
    return g_strdup("");
  g_autofree char *text = nbd_sanitize(r->data, r->len, NBD_MAX_STRING);
  return g_strdup_printf(": %s", text);
}

/* An error reply the caller has no special meaning for (H30). */
static int
option_failed(struct session *s, const char *what, const struct reply *r)
{
  g_autofree char *msg = reply_message(r);
  int err = EIO;

  switch (r->type) {
    case NBD_REP_ERR_UNKNOWN: err = ENOENT; break;
    case NBD_REP_ERR_POLICY: err = EACCES; break;
    case NBD_REP_ERR_TLS_REQD: err = EACCES; break;
    case NBD_REP_ERR_UNSUP: err = ENOTSUP; break;
    case NBD_REP_ERR_SHUTDOWN: err = ESHUTDOWN; break;
  }
  return nbd_set_error(s->error, err, "%s: %s: server refused (%s)%s",
                       what, s->t->name, nbd_rep_name(r->type), msg);
}

static int
unexpected_reply(struct session *s, const struct reply *r)
{
  /* V5, H30: a non-error reply type that does not belong to this
   * option is a violation. */
  return nbd_set_error(s->error, EPROTO,
                       "handshake: %s: unexpected %s in reply to %s (V5)",
                       s->t->name, nbd_rep_name(r->type),
                       nbd_opt_name(r->option));
}

/* D1, H15: the soft way out of haggling.  The server may answer with an
 * ACK or just close (V11); either is fine, and nothing else matters. */
static void
send_abort(struct session *s)
{
  struct reply r = { 0 };
  GError **saved = s->error;

  s->error = NULL;
  if (send_option(s, NBD_OPT_ABORT, NULL, 0) == 0)
    read_reply(s, NBD_OPT_ABORT, &r);
  reply_clear(&r);
  s->error = saved;
}

static int
greet(struct session *s)
{
  struct nbd_new_greeting g;
  uint32_t cflags;
  int rc;

  rc = nbd_transport_read(s->t, &g, sizeof g, s->error);
  if (rc < 0)
    return rc;

  /* V1, H4: the two magics decide the style. */
  if (be64toh(g.nbdmagic) != NBD_MAGIC)
    return nbd_set_error(s->error, EPROTO,
                         "handshake: %s: not an NBD server (bad magic)",
                         s->t->name);
  if (be64toh(g.version) == NBD_OLD_VERSION_MAGIC)
    return nbd_set_error(s->error, EPROTONOSUPPORT,
                         "handshake: %s: server speaks the oldstyle "
                         "protocol, which nbdfs does not support; run it "
                         "in newstyle mode", s->t->name);
  if (be64toh(g.version) != NBD_OPTS_MAGIC)
    return nbd_set_error(s->error, EPROTO,
                         "handshake: %s: unknown protocol style (V1)",
                         s->t->name);

  /* H7: without fixed newstyle there is no GO, no structured replies
   * and no TLS; every server of the last decade offers it. */
  s->gflags = be16toh(g.gflags);
  if (!(s->gflags & NBD_FLAG_FIXED_NEWSTYLE))
    return nbd_set_error(s->error, EPROTONOSUPPORT,
                         "handshake: %s: server lacks fixed newstyle "
                         "negotiation, which nbdfs requires (H7)",
                         s->t->name);

  /* H6: echo only the bits the server offered; H5: ignore the rest. */
  cflags = NBD_FLAG_C_FIXED_NEWSTYLE;
  if (s->gflags & NBD_FLAG_NO_ZEROES) {
    cflags |= NBD_FLAG_C_NO_ZEROES;
    s->no_zeroes = true;
  }
  cflags = htobe32(cflags);
  return nbd_transport_write(s->t, &cflags, sizeof cflags, s->error);
}

/* The reply to STARTTLS.  A server that hangs up instead of answering
 * (old qemu did) is remembered, so that nbd_connect_*() may try once
 * more without TLS under prefer. */
static int
read_starttls_reply(struct session *s, struct reply *r)
{
  int rc;

  rc = read_reply(s, NBD_OPT_STARTTLS, r);
  if (rc == -ECONNRESET) {
    s->starttls_dropped = true;
    if (s->error != NULL)
      g_clear_error(s->error);
    return nbd_set_error(s->error, ECONNRESET,
                         "tls: %s: server closed the connection in reply "
                         "to STARTTLS", s->t->name);
  }
  return rc;
}

/* T7, T14: under prefer or require STARTTLS is the very first option,
 * so that all later haggling is protected; greet() has already refused
 * a server without fixed newstyle (T1).  Nothing stateful was sent
 * before it, so there is nothing for the server to forget (T8); the
 * options that follow are negotiated over TLS. */
static int
negotiate_tls(struct session *s)
{
  struct reply r = { 0 };
  int rc;

  /* T2: never a second STARTTLS once TLS is up. */
  if (s->o->tls == NBD_TLS_OFF || s->tls)
    return 0;
  if (s->o->tls_config == NULL)
    return nbd_set_error(s->error, EINVAL,
                         "tls: %s: no TLS credentials were loaded for "
                         "this connection", s->t->name);

  /* T3: STARTTLS carries no data. */
  rc = send_option(s, NBD_OPT_STARTTLS, NULL, 0);
  if (rc == 0)
    rc = read_starttls_reply(s, &r);
  if (rc < 0)
    goto out;

  if (r.type == NBD_REP_ACK) {
    /* The ACK is read with exact-length reads, so nothing past it sits
     * in a buffer of ours; nbd_tls_start() checks the socket (T17). */
    if (r.len != 0) {
      rc = nbd_set_error(s->error, EPROTO,
                         "tls: %s: NBD_REP_ACK to STARTTLS carries %"
                         PRIu32 " bytes of data (T17)", s->t->name, r.len);
      goto out;
    }

    /* T4, T6: the TLS handshake starts at once; if it fails there is
     * no way back to plaintext, and the caller hangs up. */
    rc = nbd_tls_start(s->t, s->o->tls_config, s->error);
    if (rc == 0)
      s->tls = true;
    goto out;
  }
  if (!(r.type & NBD_REP_FLAG_ERROR)) {
    rc = unexpected_reply(s, &r);
    goto out;
  }

  /* T5: any error reply means no TLS.  Whoever insists on TLS ends the
   * session softly (T14: this may be a downgrade attack). */
  if (s->o->tls == NBD_TLS_REQUIRE) {
    rc = nbd_set_error(s->error, ENOTSUP,
                       "tls: server refused STARTTLS (%s); not continuing "
                       "without TLS", nbd_rep_name(r.type));
    send_abort(s);
    goto out;
  }
  nbd_log(NBD_LOG_INFO, "tls: %s: server refused STARTTLS (%s); "
          "continuing without TLS", s->t->name, nbd_rep_name(r.type));

out:
  reply_clear(&r);
  return rc;
}

static int
tls_required_error(struct session *s, const char *what)
{
  return nbd_set_error(s->error, EACCES,
                       "%s: %s: the server requires TLS; connect with "
                       "nbds:// or --tls=require (T9)",
                       what, s->t->name);
}

/* NBD_REP_ERR_TLS_REQD to an option other than INFO or GO.  Before TLS
 * no option will work without it (T9): end the session softly.  Once
 * TLS is up a compliant server never sends it (T12). */
static int
tls_reqd(struct session *s, const char *what)
{
  int rc;

  if (s->tls)
    return nbd_set_error(s->error, EPROTO,
                         "%s: %s: NBD_REP_ERR_TLS_REQD after TLS was "
                         "started (T12)", what, s->t->name);
  rc = tls_required_error(s, what);
  send_abort(s); /* D1 */
  return rc;
}

/* H23: structured replies, needed for block status and sparse reads. */
/* H13, D3: a server that is shutting down gets a soft goodbye,
 * whatever option it refused. */
static int
shutting_down(struct session *s, const struct reply *r)
{
  int rc = option_failed(s, "handshake", r);

  send_abort(s);
  return rc;
}

static int
negotiate_structured(struct session *s, struct nbd_export_info *info)
{
  struct reply r = { 0 };
  int rc;

  rc = send_option(s, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
  if (rc == 0)
    rc = read_reply(s, NBD_OPT_STRUCTURED_REPLY, &r);
  if (rc < 0)
    goto out;

  if (r.type == NBD_REP_ACK) {
    info->structured = true;
  } else if (r.type == NBD_REP_ERR_TLS_REQD) {
    rc = tls_reqd(s, "handshake");
  } else if (r.type == NBD_REP_ERR_SHUTDOWN) {
    rc = shutting_down(s, &r);
  } else if (!(r.type & NBD_REP_FLAG_ERROR)) {
    rc = unexpected_reply(s, &r);
  }
  /* Any other error: simple replies only (H23 SHOULD handle). */

out:
  reply_clear(&r);
  return rc;
}

static GByteArray *
meta_context_request(const char *export_name)
{
  GByteArray *b = g_byte_array_new();
  uint32_t len = strlen(export_name);
  uint32_t qlen = strlen(NBD_CONTEXT_BASE_ALLOCATION);
  uint32_t be;

  /* H24: export name, query count, then each query with its length. */
  be = htobe32(len);
  g_byte_array_append(b, (guint8 *) &be, 4);
  g_byte_array_append(b, (const guint8 *) export_name, len);
  be = htobe32(1);
  g_byte_array_append(b, (guint8 *) &be, 4);
  be = htobe32(qlen);
  g_byte_array_append(b, (guint8 *) &be, 4);
  g_byte_array_append(b, (const guint8 *) NBD_CONTEXT_BASE_ALLOCATION,
                      qlen);
  return b;
}

/* H25, B1: select base:allocation for the export that GO names next. */
static int
negotiate_meta_context(struct session *s, struct nbd_export_info *info)
{
  g_autoptr(GByteArray) req = meta_context_request(s->o->export_name);
  struct reply r = { 0 };
  bool have = false;
  uint32_t id = 0;
  int rc;

  rc = send_option(s, NBD_OPT_SET_META_CONTEXT, req->data, req->len);
  for (unsigned n = 0; rc == 0; n++) {
    rc = read_reply(s, NBD_OPT_SET_META_CONTEXT, &r);
    if (rc < 0)
      break;

    if (r.type == NBD_REP_ACK)
      break;
    if (r.type & NBD_REP_FLAG_ERROR) {
      /* H24: an error discards whatever came before it. */
      have = false;
      if (r.type == NBD_REP_ERR_TLS_REQD)
        rc = tls_reqd(s, "handshake");
      else if (r.type == NBD_REP_ERR_SHUTDOWN)
        rc = shutting_down(s, &r);
      break;
    }
    if (r.type != NBD_REP_META_CONTEXT) {
      rc = unexpected_reply(s, &r);
      break;
    }
    if (r.len < 4 || n >= MAX_REPLIES_PER_OPTION) {
      rc = nbd_set_error(s->error, EPROTO,
                         "handshake: %s: malformed or too many "
                         "NBD_REP_META_CONTEXT replies (V6)", s->t->name);
      break;
    }

    /* B4: keep only the context we asked for; a server may not hand
     * out another, but ignoring it is harmless. */
    if (r.len - 4 == strlen(NBD_CONTEXT_BASE_ALLOCATION) &&
        memcmp(r.data + 4, NBD_CONTEXT_BASE_ALLOCATION, r.len - 4) == 0) {
      if (have)
        rc = nbd_set_error(s->error, EPROTO,
                           "handshake: %s: base:allocation selected "
                           "twice (B4)", s->t->name);
      id = nbd_get32(r.data);
      have = true;
    }
  }

  if (rc == 0 && have) {
    info->block_status = true;
    info->alloc_ctx_id = id;
  }
  reply_clear(&r);
  return rc;
}

static GByteArray *
go_request(const char *export_name)
{
  static const uint16_t infos[] = {
    NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME, NBD_INFO_DESCRIPTION,
  };
  GByteArray *b = g_byte_array_new();
  uint32_t len = strlen(export_name);
  uint32_t be32 = htobe32(len);
  uint16_t be16 = htobe16(G_N_ELEMENTS(infos));

  /* H19: name length, name, count, info codes; S2: asking for
   * BLOCK_SIZE commits us to obey it, which the scheduler does. */
  g_byte_array_append(b, (guint8 *) &be32, 4);
  g_byte_array_append(b, (const guint8 *) export_name, len);
  g_byte_array_append(b, (guint8 *) &be16, 2);
  for (size_t i = 0; i < G_N_ELEMENTS(infos); i++) {
    be16 = htobe16(infos[i]);
    g_byte_array_append(b, (guint8 *) &be16, 2);
  }
  return b;
}

static bool
is_pow2(uint32_t v)
{
  return v != 0 && (v & (v - 1)) == 0;
}

/* Reads one NBD_REP_INFO into info.  Returns 1 for NBD_INFO_EXPORT, 0
 * for anything else that is fine, or a negative errno. */
static int
parse_info(struct session *s, const struct reply *r,
           struct nbd_export_info *info)
{
  const uint8_t *p = r->data + 2;
  uint16_t type;

  if (r->len < 2)
    return nbd_set_error(s->error, EPROTO,
                         "handshake: %s: NBD_REP_INFO shorter than 2 "
                         "bytes (V6)", s->t->name);
  type = nbd_get16(r->data);

  switch (type) {
    case NBD_INFO_EXPORT:
      if (r->len != 12)
        goto bad_len;
      info->size = nbd_get64(p);
      info->tflags = nbd_get16(p + 8);
      return 1;

    case NBD_INFO_BLOCK_SIZE:
      if (r->len != 14)
        goto bad_len;
      info->min_block = nbd_get32(p);
      info->pref_block = nbd_get32(p + 4);
      info->max_payload = nbd_get32(p + 8);
      info->block_size_advertised = true;
      return 0;

    case NBD_INFO_NAME:
      g_free(info->name);
      info->name = nbd_sanitize(p, r->len - 2, NBD_MAX_STRING);
      return 0;

    case NBD_INFO_DESCRIPTION:
      g_free(info->description);
      info->description = nbd_sanitize(p, r->len - 2, NBD_MAX_STRING);
      return 0;

    default:
      /* H20: ignore info types we do not know. */
      return 0;
  }

bad_len:
  return nbd_set_error(s->error, EPROTO,
                       "handshake: %s: %s reply of %" PRIu32
                       " bytes has the wrong length (V6)",
                       s->t->name, nbd_info_name(type), r->len);
}

/* Checks the export's numbers before anything uses them (V8, V9, V10,
 * S6) and fills in the defaults of S4. */
static int
check_export(struct session *s, struct nbd_export_info *info)
{
  const char *name = s->t->name;

  if (!(info->tflags & NBD_FLAG_HAS_FLAGS))
    return nbd_set_error(s->error, EPROTO,
                         "handshake: %s: transmission flags lack "
                         "HAS_FLAGS (V9)", name);
  if (info->size > INT64_MAX)
    return nbd_set_error(s->error, EFBIG,
                         "handshake: %s: export size %" PRIu64
                         " is beyond 2^63-1 (V10)", name, info->size);

  /* V9: flags that contradict the negotiation are ignored, not used. */
  if (!info->structured)
    info->tflags &= ~NBD_FLAG_SEND_DF;
  if (!(info->tflags & NBD_FLAG_SEND_WRITE_ZEROES))
    info->tflags &= ~NBD_FLAG_SEND_FAST_ZERO;

  if (!info->block_size_advertised) {
    /* S4: the defaults a server must accept. */
    info->min_block = 1;
    info->pref_block = 4096;
    info->max_payload = NBD_DEFAULT_MAX_PAYLOAD;
    return 0;
  }

  /* S6: refuse constraints that cannot be obeyed consistently.  A
   * maximum of 0xffffffff means "no limit" (nbdkit's default), not a
   * size that must be a multiple of the minimum. */
  if (!is_pow2(info->min_block) || info->min_block > NBD_MAX_MIN_BLOCK ||
      !is_pow2(info->pref_block) || info->pref_block < info->min_block ||
      info->max_payload < info->pref_block ||
      (info->max_payload != UINT32_MAX &&
       info->max_payload % info->min_block != 0))
    return nbd_set_error(s->error, EPROTO,
                         "handshake: %s: invalid block sizes min=%" PRIu32
                         " preferred=%" PRIu32 " max=%" PRIu32 " (S6)",
                         name, info->min_block, info->pref_block,
                         info->max_payload);

  /* S13: never ask for more than 32 MiB in one command, whatever the
   * server allows; 0xffffffff means "no limit".  A preferred size
   * above that comes down with it, so that preferred <= maximum still
   * holds (S6) for whoever sizes requests from these numbers. */
  if (info->max_payload > NBD_DEFAULT_MAX_PAYLOAD)
    info->max_payload = NBD_DEFAULT_MAX_PAYLOAD;
  if (info->pref_block > info->max_payload)
    info->pref_block = info->max_payload;
  return 0;
}

static int
go_error(struct session *s, const struct reply *r)
{
  const char *exp = s->o->export_name;

  switch (r->type) {
    case NBD_REP_ERR_UNKNOWN:
      return nbd_set_error(s->error, ENOENT,
                           "open export: %s: no export named '%s' on "
                           "this server; nbdfs-info --list shows them",
                           s->t->name, exp);
    case NBD_REP_ERR_TLS_REQD:
      /* T9: for GO this means "needs TLS or does not exist". */
      if (s->tls)
        return nbd_set_error(s->error, EPROTO,
                             "open export: %s: NBD_REP_ERR_TLS_REQD after "
                             "TLS was started (T12)", s->t->name);
      return nbd_set_error(s->error, EACCES,
                           "open export: %s: export '%s' requires TLS or "
                           "does not exist; connect with nbds:// or "
                           "--tls=require (T9)", s->t->name, exp);
    default:
      return option_failed(s, "open export", r);
  }
}

/* H14: the fallback for servers without GO.  Failure is a closed
 * connection, not a reply (V11a). */
static int
export_name(struct session *s, struct nbd_export_info *info)
{
  struct nbd_export_name_reply rep;
  uint8_t zeroes[124];
  const char *exp = s->o->export_name;
  GError *local = NULL;
  int rc;

  rc = send_option(s, NBD_OPT_EXPORT_NAME, exp, strlen(exp));
  if (rc < 0)
    return rc;
  rc = nbd_transport_read(s->t, &rep, sizeof rep, &local);
  if (rc == -ECONNRESET) {
    g_clear_error(&local);
    return nbd_set_error(s->error, ENOENT,
                         "open export: %s: server closed the connection "
                         "on export '%s': it does not exist or is "
                         "refused", s->t->name, exp);
  }
  if (rc < 0) {
    g_propagate_error(s->error, local);
    return rc;
  }

  if (!s->no_zeroes) {
    rc = nbd_transport_read(s->t, zeroes, sizeof zeroes, s->error);
    if (rc < 0)
      return rc;
  }
  info->size = be64toh(rep.export_size);
  info->tflags = be16toh(rep.eflags);
  info->export_name_fallback = true;
  return 0;
}

/* GO (opt NBD_OPT_GO) enters transmission; INFO (NBD_OPT_INFO) asks
 * the same questions and stays in haggling (H19). */
static int
go(struct session *s, uint32_t opt, struct nbd_export_info *info)
{
  g_autoptr(GByteArray) req = go_request(s->o->export_name);
  struct reply r = { 0 };
  bool have_export = false;
  int rc;

  rc = send_option(s, opt, req->data, req->len);
  for (unsigned n = 0; rc == 0; n++) {
    rc = read_reply(s, opt, &r);
    if (rc < 0)
      break;

    if (r.type == NBD_REP_ACK) {
      if (!have_export)
        rc = nbd_set_error(s->error, EPROTO,
                           "open export: %s: %s acknowledged without "
                           "NBD_INFO_EXPORT (V7)", s->t->name,
                           nbd_opt_name(opt));
      break;
    }
    if (r.type == NBD_REP_ERR_UNSUP && opt == NBD_OPT_GO) {
      /* H21: an old server; EXPORT_NAME is the way in.  The INFO
       * replies before the error count for nothing, so forget what
       * they set (the S4 defaults apply again). */
      reply_clear(&r);
      nbd_export_info_clear(info);
      info->block_size_advertised = false;
      return export_name(s, info);
    }
    if (r.type & NBD_REP_FLAG_ERROR) {
      /* H13, D1, H12: an error reply is a refusal, not a violation
       * (save TLS_REQD under TLS, T12), so the session ends softly. */
      rc = go_error(s, &r);
      if (rc != -EPROTO)
        send_abort(s);
      break;
    }
    if (r.type != NBD_REP_INFO) {
      rc = unexpected_reply(s, &r);
      break;
    }
    if (n >= MAX_REPLIES_PER_OPTION) {
      rc = nbd_set_error(s->error, EPROTO,
                         "open export: %s: more than %d NBD_REP_INFO "
                         "replies", s->t->name, MAX_REPLIES_PER_OPTION);
      break;
    }
    rc = parse_info(s, &r, info);
    if (rc == 1) {
      have_export = true;
      rc = 0;
    }
  }
  reply_clear(&r);
  return rc;
}

static int
validate_name(struct session *s, const char *name)
{
  /* G1: what we send obeys the string rules too. */
  if (strlen(name) > NBD_MAX_STRING || !g_utf8_validate(name, -1, NULL))
    return nbd_set_error(s->error, EINVAL,
                         "open export: %s: export name is not valid "
                         "UTF-8 of at most %d bytes (G1)",
                         s->t->name, NBD_MAX_STRING);
  return 0;
}

int
nbd_handshake_go(struct nbd_transport *t, const struct nbd_handshake_opts *o,
                 struct nbd_export_info *info, GError **error)
{
  return nbd_handshake_go_ex(t, o, info, NULL, error);
}

/* The steps before any export is named, common to GO and INFO. */
static int
open_session(struct session *s, struct nbd_export_info *info)
{
  int rc;

  memset(info, 0, sizeof *info);
  rc = validate_name(s, s->o->export_name);
  if (rc == 0)
    rc = greet(s);
  if (rc == 0)
    rc = negotiate_tls(s);
  return rc;
}

/* Fills in what the session learnt besides the export's own replies,
 * or clears info after a failure.  Returns rc. */
static int
close_session(struct session *s, struct nbd_export_info *info, int rc)
{
  if (rc < 0) {
    nbd_export_info_clear(info);
    return rc;
  }
  info->gflags = s->gflags;
  info->tls = s->tls;
  if (s->tls)
    nbd_tls_describe(s->t, info);
  if (info->name == NULL)
    info->name = g_strdup(s->o->export_name);
  return rc;
}

int
nbd_handshake_go_ex(struct nbd_transport *t,
                    const struct nbd_handshake_opts *o,
                    struct nbd_export_info *info, bool *starttls_dropped,
                    GError **error)
{
  struct session s = { .t = t, .o = o, .error = error };
  int rc;

  rc = open_session(&s, info);
  if (rc == 0 && !o->no_structured)
    rc = negotiate_structured(&s, info);
  if (rc == 0 && info->structured && !o->no_block_status)
    rc = negotiate_meta_context(&s, info);
  if (rc == 0)
    rc = go(&s, NBD_OPT_GO, info);
  if (rc == 0)
    rc = check_export(&s, info);

  if (starttls_dropped != NULL)
    *starttls_dropped = s.starttls_dropped;
  return close_session(&s, info, rc);
}

int
nbd_handshake_info(struct nbd_transport *t,
                   const struct nbd_handshake_opts *o,
                   struct nbd_export_info *info, GError **error)
{
  struct session s = { .t = t, .o = o, .error = error };
  int rc;

  /* Structured replies and contexts matter only for transmission,
   * which INFO never reaches. */
  rc = open_session(&s, info);
  if (rc == 0)
    rc = go(&s, NBD_OPT_INFO, info);
  if (rc == 0)
    rc = check_export(&s, info);
  if (rc == 0)
    send_abort(&s); /* D1: done asking, leave softly */
  return close_session(&s, info, rc);
}

void
nbd_export_info_clear(struct nbd_export_info *info)
{
  g_clear_pointer(&info->name, g_free);
  g_clear_pointer(&info->description, g_free);
  g_clear_pointer(&info->tls_version, g_free);
  g_clear_pointer(&info->tls_cipher, g_free);
  g_clear_pointer(&info->tls_peer, g_free);
}

static void
export_entry_free(gpointer p)
{
  struct nbd_export_entry *e = p;

  g_free(e->name);
  g_free(e->description);
  g_free(e);
}

/* H16: one NBD_REP_SERVER: a name length, the name, a description. */
static int
parse_server(struct session *s, const struct reply *r, GPtrArray *list)
{
  struct nbd_export_entry *e;
  uint32_t nlen;

  if (r->len < 4 || (nlen = nbd_get32(r->data)) > r->len - 4 ||
      nlen > NBD_MAX_STRING)
    return nbd_set_error(s->error, EPROTO,
                         "list exports: %s: malformed NBD_REP_SERVER "
                         "(V6)", s->t->name);

  e = g_new0(struct nbd_export_entry, 1);
  e->name = nbd_sanitize(r->data + 4, nlen, NBD_MAX_STRING);
  e->description = nbd_sanitize(r->data + 4 + nlen, r->len - 4 - nlen,
                                NBD_MAX_STRING);
  g_ptr_array_add(list, e);
  return 0;
}

int
nbd_handshake_list(struct nbd_transport *t,
                   const struct nbd_handshake_opts *o, size_t max_entries,
                   GPtrArray **out, GError **error)
{
  return nbd_handshake_list_ex(t, o, max_entries, out, NULL, error);
}

int
nbd_handshake_list_ex(struct nbd_transport *t,
                      const struct nbd_handshake_opts *o,
                      size_t max_entries, GPtrArray **out,
                      bool *starttls_dropped, GError **error)
{
  struct session s = { .t = t, .o = o, .error = error };
  g_autoptr(GPtrArray) list = g_ptr_array_new_with_free_func(
    export_entry_free);
  struct reply r = { 0 };
  int rc;

  rc = greet(&s);
  if (rc == 0)
    rc = negotiate_tls(&s);
  if (rc == 0)
    rc = send_option(&s, NBD_OPT_LIST, NULL, 0);

  while (rc == 0) {
    rc = read_reply(&s, NBD_OPT_LIST, &r);
    if (rc < 0)
      break;
    if (r.type == NBD_REP_ACK)
      break;
    if (r.type == NBD_REP_ERR_TLS_REQD) {
      rc = tls_reqd(&s, "list exports");
      break;
    }
    if (r.type & NBD_REP_FLAG_ERROR) {
      rc = option_failed(&s, "list exports", &r);
      send_abort(&s);
      break;
    }
    if (r.type != NBD_REP_SERVER) {
      rc = unexpected_reply(&s, &r);
      break;
    }
    if (list->len >= max_entries) {
      /* A flood of exports must not exhaust memory: stop reading and
       * hang up, the stream is no longer worth keeping in step. */
      rc = nbd_set_error(error, E2BIG,
                         "list exports: %s: server lists more than %zu "
                         "exports", t->name, max_entries);
      break;
    }
    rc = parse_server(&s, &r, list);
  }
  reply_clear(&r);
  if (starttls_dropped != NULL)
    *starttls_dropped = s.starttls_dropped;

  if (rc == 0) {
    send_abort(&s);
    *out = g_steal_pointer(&list);
  }
  return rc;
}
