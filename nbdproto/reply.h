/* nbdfs: the transmission reply parser, apart from any thread or lock so
 * that tests and fuzzers can drive it with canned bytes.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDFS_REPLY_H
#define NBDFS_REPLY_H

#include "internal.h"

/* Looks up the command in flight under cookie, or NULL. */
typedef struct nbd_cmd *(*nbd_reply_lookup_fn)(void *opaque,
                                                uint64_t cookie);

/* The reply to cmd is complete: take it out of the in-flight table and
 * complete it with err (0 or a positive errno). */
typedef void (*nbd_reply_retire_fn)(void *opaque, struct nbd_cmd *cmd,
                                    int err);

struct nbd_reply_parser {
  struct nbd_transport *t;
  bool structured;
  bool block_status;
  uint32_t alloc_ctx_id;
  uint64_t export_size;
  nbd_reply_lookup_fn lookup;
  nbd_reply_retire_fn retire;
  void *opaque;

  /* Receive buffer: bytes [start, end) are read but not yet parsed. */
  uint8_t *buf;
  size_t cap;
  size_t start;
  size_t end;
};

void nbd_reply_parser_init(struct nbd_reply_parser *p,
                           struct nbd_transport *t,
                           const struct nbd_export_info *info);
void nbd_reply_parser_clear(struct nbd_reply_parser *p);

/* Parses one simple reply or one structured chunk, completing commands
 * through retire.  Returns 0, or a negative errno when the connection
 * must end: -ECONNRESET at end of stream, -EPROTO for a violation of
 * the rules (the message names the rule), another errno for I/O. */
int nbd_reply_parse_one(struct nbd_reply_parser *p, GError **error);

/* Per-command parsing state kept in cmd->priv; released by retire. */
void nbd_reply_cmd_reset(struct nbd_cmd *cmd);

#endif /* NBDFS_REPLY_H */
