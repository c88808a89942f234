/* nbdfs fuzz harness: the transmission reply parser.
 *
 * The input is what a server sends after the handshake.  Its first byte
 * sets the negotiation: bit 7 clear means structured replies, and the
 * low seven bits are the id of the base:allocation context.  The rest is
 * parsed, one reply or chunk at a time, until the parser stops, with six
 * commands in flight under cookies 1 to 6 (see cmds below, the same
 * commands that capture-seeds sends to real servers in this order).
 *
 * Beyond "no crash, no leak, no hang", every completion is checked
 * against what the parser promises its caller: done exactly once, a
 * positive errno or 0, and extents that are contiguous, non-empty and
 * inside the request (B7).
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reply.h"
#include "scripted.h"

#define EXPORT_SIZE (UINT64_C(1) << 20)
#define N_CMDS      7

/* Index = cookie; 0 is unused. */
static const struct nbd_cmd templates[N_CMDS] = {
  [1] = { .type = NBD_CMD_READ, .offset = 0, .count = 32768 },
  [2] = { .type = NBD_CMD_WRITE, .offset = 0, .count = 512 },
  [3] = { .type = NBD_CMD_BLOCK_STATUS, .flags = NBD_CMD_FLAG_REQ_ONE,
          .offset = 0, .count = 65536 },
  [4] = { .type = NBD_CMD_BLOCK_STATUS, .offset = 0,
          .count = EXPORT_SIZE },
  [5] = { .type = NBD_CMD_FLUSH },
  [6] = { .type = NBD_CMD_READ, .flags = NBD_CMD_FLAG_DF, .offset = 0,
          .count = 4096 },
};

static uint8_t read_buf[32768];
static uint8_t df_buf[4096];

struct table {
  struct nbd_cmd cmds[N_CMDS];
  bool live[N_CMDS];
};

static void
die(const char *what, const struct nbd_cmd *cmd)
{
  fprintf(stderr, "fuzz-reply: %s (%s off=%llu len=%u)\n", what,
          nbd_cmd_name(cmd->type), (unsigned long long) cmd->offset,
          cmd->count);
  abort();
}

static struct nbd_cmd *
lookup(void *opaque, uint64_t cookie)
{
  struct table *tb = opaque;

  if (cookie == 0 || cookie >= N_CMDS || !tb->live[cookie])
    return NULL;
  return &tb->cmds[cookie];
}

/* The promises of a successful BLOCK_STATUS (B6, B7, B8, B11). */
static void
check_extents(const struct nbd_cmd *cmd)
{
  uint64_t pos = cmd->offset;
  uint64_t end = cmd->offset + cmd->count;

  if (cmd->n_extents == 0 || cmd->extents == NULL)
    die("BLOCK_STATUS succeeded without extents", cmd);
  for (size_t i = 0; i < cmd->n_extents; i++) {
    const struct nbd_extent *e = &cmd->extents[i];

    if (e->offset != pos || e->length == 0 || e->length > end - pos)
      die("extent not contiguous or outside the request", cmd);
    if (e->flags & ~(uint32_t) (NBD_STATE_HOLE | NBD_STATE_ZERO))
      die("extent with unknown status bits", cmd);
    if (i > 0 && e->flags == cmd->extents[i - 1].flags)
      die("equal neighbouring extents not merged", cmd);
    pos += e->length;
  }
}

static void
retire(void *opaque, struct nbd_cmd *cmd, int err)
{
  struct table *tb = opaque;
  size_t i = cmd - tb->cmds;

  if (i == 0 || i >= N_CMDS || !tb->live[i])
    die("retired a command not in flight", cmd);
  if (err < 0)
    die("negative errno", cmd);
  if (err == 0 && cmd->type == NBD_CMD_BLOCK_STATUS)
    check_extents(cmd);
  if (err == 0 && cmd->type != NBD_CMD_BLOCK_STATUS &&
      cmd->extents != NULL)
    die("extents on a command that is not BLOCK_STATUS", cmd);
  tb->live[i] = false;
  nbd_reply_cmd_reset(cmd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct nbd_export_info info = { .size = EXPORT_SIZE };
  struct nbd_reply_parser p;
  struct scripted_feed *feed;
  struct nbd_transport *t;
  struct table tb;
  GError *error = NULL;
  size_t rounds = 0;
  int rc;

  if (size < 1)
    return 0;
  info.structured = !(data[0] & 0x80);
  info.block_status = info.structured;
  info.alloc_ctx_id = data[0] & 0x7f;
  data++;
  size--;

  memset(&tb, 0, sizeof tb);
  for (int i = 1; i < N_CMDS; i++) {
    tb.cmds[i] = templates[i];
    tb.cmds[i].priv.cookie = i;
    tb.live[i] = true;
  }
  tb.cmds[1].buf = read_buf;
  tb.cmds[6].buf = df_buf;

  t = scripted_feed_new(data, size, &feed);
  nbd_reply_parser_init(&p, t, &info);
  p.lookup = lookup;
  p.retire = retire;
  p.opaque = &tb;

  /* Each successful step consumes a 16-byte header at least, so more
   * steps than that means the parser is spinning. */
  do {
    rc = nbd_reply_parse_one(&p, &error);
    if (rc == 0 && ++rounds > size / 16 + 1) {
      fprintf(stderr, "fuzz-reply: parser does not advance\n");
      abort();
    }
  } while (rc == 0);

  /* The error convention: a negative errno and a message. */
  if (rc >= 0 || error == NULL || error->code != -rc)
    abort();
  g_clear_error(&error);

  for (int i = 1; i < N_CMDS; i++) {
    if (tb.live[i])
      nbd_reply_cmd_reset(&tb.cmds[i]);
    g_free(tb.cmds[i].extents);
  }
  nbd_reply_parser_clear(&p);
  nbd_transport_free(t);
  scripted_feed_free(feed);
  return 0;
}
