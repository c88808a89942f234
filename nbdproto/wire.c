/* nbdfs: names of wire constants, the error domain, errno mapping.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "nbdproto.h"

G_DEFINE_QUARK(nbdproto-error-quark, nbdproto_error)

int
nbd_set_error(GError **error, int err, const char *fmt, ...)
{
  va_list ap;

  if (err <= 0)
    err = EIO;
  if (error != NULL && *error == NULL) {
    g_autofree char *msg = NULL;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error_literal(error, NBDPROTO_ERROR, err, msg);
  }
  return -err;
}

struct name {
  uint32_t value;
  const char *name;
};

static const char *
lookup(const struct name *table, size_t n, uint32_t value)
{
  for (size_t i = 0; i < n; i++)
    if (table[i].value == value)
      return table[i].name;
  return "unknown";
}

#define N(x) { x, #x }

static const struct name opt_names[] = {
  N(NBD_OPT_EXPORT_NAME), N(NBD_OPT_ABORT), N(NBD_OPT_LIST),
  N(NBD_OPT_PEEK_EXPORT), N(NBD_OPT_STARTTLS), N(NBD_OPT_INFO),
  N(NBD_OPT_GO), N(NBD_OPT_STRUCTURED_REPLY),
  N(NBD_OPT_LIST_META_CONTEXT), N(NBD_OPT_SET_META_CONTEXT),
  N(NBD_OPT_EXTENDED_HEADERS),
};

static const struct name rep_names[] = {
  N(NBD_REP_ACK), N(NBD_REP_SERVER), N(NBD_REP_INFO),
  N(NBD_REP_META_CONTEXT), N(NBD_REP_ERR_UNSUP), N(NBD_REP_ERR_POLICY),
  N(NBD_REP_ERR_INVALID), N(NBD_REP_ERR_PLATFORM),
  N(NBD_REP_ERR_TLS_REQD), N(NBD_REP_ERR_UNKNOWN),
  N(NBD_REP_ERR_SHUTDOWN), N(NBD_REP_ERR_BLOCK_SIZE_REQD),
  N(NBD_REP_ERR_TOO_BIG), N(NBD_REP_ERR_EXT_HEADER_REQD),
};

static const struct name info_names[] = {
  N(NBD_INFO_EXPORT), N(NBD_INFO_NAME), N(NBD_INFO_DESCRIPTION),
  N(NBD_INFO_BLOCK_SIZE),
};

static const struct name cmd_names[] = {
  N(NBD_CMD_READ), N(NBD_CMD_WRITE), N(NBD_CMD_DISC), N(NBD_CMD_FLUSH),
  N(NBD_CMD_TRIM), N(NBD_CMD_CACHE), N(NBD_CMD_WRITE_ZEROES),
  N(NBD_CMD_BLOCK_STATUS),
};

static const struct name reply_type_names[] = {
  N(NBD_REPLY_TYPE_NONE), N(NBD_REPLY_TYPE_OFFSET_DATA),
  N(NBD_REPLY_TYPE_OFFSET_HOLE), N(NBD_REPLY_TYPE_BLOCK_STATUS),
  N(NBD_REPLY_TYPE_ERROR), N(NBD_REPLY_TYPE_ERROR_OFFSET),
};

static const struct name err_names[] = {
  N(NBD_EPERM), N(NBD_EIO), N(NBD_ENOMEM), N(NBD_EINVAL), N(NBD_ENOSPC),
  N(NBD_EOVERFLOW), N(NBD_ENOTSUP), N(NBD_ESHUTDOWN),
};

static const char *const tflag_names[16] = {
  "HAS_FLAGS", "READ_ONLY", "SEND_FLUSH", "SEND_FUA", "ROTATIONAL",
  "SEND_TRIM", "SEND_WRITE_ZEROES", "SEND_DF", "CAN_MULTI_CONN",
  "SEND_RESIZE", "SEND_CACHE", "SEND_FAST_ZERO", "BLOCK_STATUS_PAYLOAD",
};

#undef N
#define LOOKUP(table, v) lookup(table, G_N_ELEMENTS(table), v)

const char *
nbd_opt_name(uint32_t option)
{
  return LOOKUP(opt_names, option);
}

const char *
nbd_rep_name(uint32_t reply)
{
  return LOOKUP(rep_names, reply);
}

const char *
nbd_info_name(uint16_t info)
{
  return LOOKUP(info_names, info);
}

const char *
nbd_cmd_name(uint16_t type)
{
  return LOOKUP(cmd_names, type);
}

const char *
nbd_reply_type_name(uint16_t type)
{
  return LOOKUP(reply_type_names, type);
}

const char *
nbd_err_name(uint32_t error)
{
  return LOOKUP(err_names, error);
}

char *
nbd_tflags_string(uint16_t flags, char *buf, size_t len)
{
  size_t used = 0;

  if (len == 0)
    return buf;
  buf[0] = '\0';
  for (unsigned bit = 0; bit < 16; bit++) {
    char unknown[8];
    const char *name = tflag_names[bit];
    int n;

    if (!(flags & (1u << bit)))
      continue;
    if (name == NULL) {
      snprintf(unknown, sizeof unknown, "bit%u", bit);
      name = unknown;
    }
    n = snprintf(buf + used, len - used, "%s%s", used ? " " : "", name);
    if (n < 0 || (size_t) n >= len - used)
      break;
    used += n;
  }
  return buf;
}

int
nbd_errno_from_wire(uint32_t nbd_err)
{
  /* X22a: map explicitly, the values only happen to match on Linux.
   * X22: an unknown value counts as EINVAL and is not fatal. */
  switch (nbd_err) {
    case NBD_EPERM:     return EPERM;
    case NBD_EIO:       return EIO;
    case NBD_ENOMEM:    return ENOMEM;
    case NBD_EINVAL:    return EINVAL;
    case NBD_ENOSPC:    return ENOSPC;
    case NBD_EOVERFLOW: return EOVERFLOW;
    case NBD_ENOTSUP:   return EOPNOTSUPP;
    case NBD_ESHUTDOWN: return ESHUTDOWN;
    default:            return EINVAL;
  }
}
