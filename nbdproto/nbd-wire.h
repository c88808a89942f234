/* nbdfs: the NBD wire format, every constant and layout in one place.
 *
 * Every multi-byte integer on the wire is big-endian.  The packed structs
 * below mirror the wire byte for byte; code that fills or reads them
 * converts with the htobe and betoh families.  Section letters and
 * numbers (H14, X4, ...) refer to docs/nbd-client-checklist.md in the
 * shared project documents.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDFS_NBD_WIRE_H
#define NBDFS_NBD_WIRE_H

#include <stddef.h>
#include <stdint.h>

/* Greeting (H1, H3). */
#define NBD_MAGIC              UINT64_C(0x4e42444d41474943) /* NBDMAGIC */
#define NBD_OPTS_MAGIC         UINT64_C(0x49484156454F5054) /* IHAVEOPT */
#define NBD_OLD_VERSION_MAGIC  UINT64_C(0x0000420281861253)
#define NBD_DEFAULT_PORT       10809

/* Handshake flags, sent by the server (H5). */
#define NBD_FLAG_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_NO_ZEROES      (1u << 1)

/* Client flags (H6). */
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES      (1u << 1)

/* Options (H14..H26). */
#define NBD_OPT_EXPORT_NAME       1
#define NBD_OPT_ABORT             2
#define NBD_OPT_LIST              3
#define NBD_OPT_PEEK_EXPORT       4 /* withdrawn, never sent (H17) */
#define NBD_OPT_STARTTLS          5
#define NBD_OPT_INFO              6
#define NBD_OPT_GO                7
#define NBD_OPT_STRUCTURED_REPLY  8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT  10
#define NBD_OPT_EXTENDED_HEADERS  11 /* experimental, not sent */

/* Option reply magic and types (H9, H27, H29). */
#define NBD_REP_MAGIC        UINT64_C(0x0003e889045565a9)
#define NBD_REP_ACK          1
#define NBD_REP_SERVER       2
#define NBD_REP_INFO         3
#define NBD_REP_META_CONTEXT 4
#define NBD_REP_FLAG_ERROR   0x80000000u
#define NBD_REP_ERR_UNSUP           (NBD_REP_FLAG_ERROR + 1)
#define NBD_REP_ERR_POLICY          (NBD_REP_FLAG_ERROR + 2)
#define NBD_REP_ERR_INVALID         (NBD_REP_FLAG_ERROR + 3)
#define NBD_REP_ERR_PLATFORM        (NBD_REP_FLAG_ERROR + 4)
#define NBD_REP_ERR_TLS_REQD        (NBD_REP_FLAG_ERROR + 5)
#define NBD_REP_ERR_UNKNOWN         (NBD_REP_FLAG_ERROR + 6)
#define NBD_REP_ERR_SHUTDOWN        (NBD_REP_FLAG_ERROR + 7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (NBD_REP_FLAG_ERROR + 8)
#define NBD_REP_ERR_TOO_BIG         (NBD_REP_FLAG_ERROR + 9)
#define NBD_REP_ERR_EXT_HEADER_REQD (NBD_REP_FLAG_ERROR + 10)

/* Info types inside NBD_REP_INFO (H28). */
#define NBD_INFO_EXPORT      0
#define NBD_INFO_NAME        1
#define NBD_INFO_DESCRIPTION 2
#define NBD_INFO_BLOCK_SIZE  3

/* Transmission flags (X7). */
#define NBD_FLAG_HAS_FLAGS            (1u << 0)
#define NBD_FLAG_READ_ONLY            (1u << 1)
#define NBD_FLAG_SEND_FLUSH           (1u << 2)
#define NBD_FLAG_SEND_FUA             (1u << 3)
#define NBD_FLAG_ROTATIONAL           (1u << 4)
#define NBD_FLAG_SEND_TRIM            (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES    (1u << 6)
#define NBD_FLAG_SEND_DF              (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN       (1u << 8)
#define NBD_FLAG_SEND_RESIZE          (1u << 9)
#define NBD_FLAG_SEND_CACHE           (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO       (1u << 11)
#define NBD_FLAG_BLOCK_STATUS_PAYLOAD (1u << 12)

/* Commands (X8..X12e). */
#define NBD_CMD_READ         0
#define NBD_CMD_WRITE        1
#define NBD_CMD_DISC         2
#define NBD_CMD_FLUSH        3
#define NBD_CMD_TRIM         4
#define NBD_CMD_CACHE        5
#define NBD_CMD_WRITE_ZEROES 6
#define NBD_CMD_BLOCK_STATUS 7

/* Command flags (X13). */
#define NBD_CMD_FLAG_FUA       (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE   (1u << 1)
#define NBD_CMD_FLAG_DF        (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE   (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1u << 4)

/* Transmission magics (X2..X4). */
#define NBD_REQUEST_MAGIC          0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC     0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu

/* Structured reply flags and chunk types (X14, X15). */
#define NBD_REPLY_FLAG_DONE          (1u << 0)
#define NBD_REPLY_TYPE_NONE          0
#define NBD_REPLY_TYPE_OFFSET_DATA   1
#define NBD_REPLY_TYPE_OFFSET_HOLE   2
#define NBD_REPLY_TYPE_BLOCK_STATUS  5
#define NBD_REPLY_TYPE_ERROR         0x8001
#define NBD_REPLY_TYPE_ERROR_OFFSET  0x8002
#define NBD_REPLY_TYPE_IS_ERR(t)     (((t) & 0x8000) != 0)

/* Error values (X21). */
#define NBD_EPERM     1
#define NBD_EIO       5
#define NBD_ENOMEM    12
#define NBD_EINVAL    22
#define NBD_ENOSPC    28
#define NBD_EOVERFLOW 75
#define NBD_ENOTSUP   95
#define NBD_ESHUTDOWN 108

/* base:allocation status bits (B11). */
#define NBD_STATE_HOLE (1u << 0)
#define NBD_STATE_ZERO (1u << 1)
#define NBD_CONTEXT_BASE_ALLOCATION "base:allocation"

/* Limits. */
#define NBD_MAX_STRING       4096     /* G1 */
#define NBD_MAX_MIN_BLOCK    65536    /* S6 */
#define NBD_DEFAULT_MAX_PAYLOAD (32u * 1024 * 1024) /* S4 */
#define NBD_MAX_EXTENTS      (1u << 20) /* B10 */

/* Wire layouts.  All fields big-endian. */

struct nbd_new_greeting {      /* H3: 18 bytes */
  uint64_t nbdmagic;
  uint64_t version;            /* IHAVEOPT or the oldstyle magic */
  uint16_t gflags;
} __attribute__((packed));

struct nbd_old_greeting_tail { /* H1: follows the 16 magic bytes */
  uint64_t export_size;
  uint32_t flags;
  uint8_t zeroes[124];
} __attribute__((packed));

struct nbd_option {            /* H8: 16 bytes, then data */
  uint64_t version;            /* IHAVEOPT */
  uint32_t option;
  uint32_t optlen;
} __attribute__((packed));

struct nbd_fixed_new_option_reply { /* H9: 20 bytes, then data */
  uint64_t magic;              /* NBD_REP_MAGIC */
  uint32_t option;
  uint32_t reply;
  uint32_t replylen;
} __attribute__((packed));

struct nbd_export_name_reply { /* H14: 10 bytes, then maybe 124 zeroes */
  uint64_t export_size;
  uint16_t eflags;
} __attribute__((packed));

struct nbd_request {           /* X2: 28 bytes */
  uint32_t magic;              /* NBD_REQUEST_MAGIC */
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint32_t count;
} __attribute__((packed));

struct nbd_simple_reply {      /* X3: 16 bytes */
  uint32_t magic;              /* NBD_SIMPLE_REPLY_MAGIC */
  uint32_t error;
  uint64_t cookie;
} __attribute__((packed));

struct nbd_structured_reply {  /* X4: 20 bytes */
  uint32_t magic;              /* NBD_STRUCTURED_REPLY_MAGIC */
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint32_t length;
} __attribute__((packed));

struct nbd_block_descriptor {  /* X15: one extent of a status chunk */
  uint32_t length;
  uint32_t status_flags;
} __attribute__((packed));

_Static_assert(sizeof(struct nbd_new_greeting) == 18, "H3");
_Static_assert(sizeof(struct nbd_old_greeting_tail) == 136, "H1");
_Static_assert(sizeof(struct nbd_option) == 16, "H8");
_Static_assert(sizeof(struct nbd_fixed_new_option_reply) == 20, "H9");
_Static_assert(sizeof(struct nbd_export_name_reply) == 10, "H14");
_Static_assert(sizeof(struct nbd_request) == 28, "X2");
_Static_assert(sizeof(struct nbd_simple_reply) == 16, "X3");
_Static_assert(sizeof(struct nbd_structured_reply) == 20, "X4");

/* Names for logs: each returns a static string such as "NBD_OPT_GO", or
 * "unknown" for a value outside its group.  Never NULL. */
const char *nbd_opt_name(uint32_t option);
const char *nbd_rep_name(uint32_t reply);
const char *nbd_info_name(uint16_t info);
const char *nbd_cmd_name(uint16_t type);
const char *nbd_reply_type_name(uint16_t type);
const char *nbd_err_name(uint32_t error);

/* Writes the names of the set transmission flags into buf, separated by
 * spaces ("HAS_FLAGS READ_ONLY ..."), unknown bits as "bit12".  Returns
 * buf. */
char *nbd_tflags_string(uint16_t flags, char *buf, size_t len);

#endif /* NBDFS_NBD_WIRE_H */
