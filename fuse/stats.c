/* nbdfs: live statistics of one export: NBD commands and bytes by type,
 * errors, and latency percentiles from a log2 histogram.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <inttypes.h>

#include "nbdfs.h"

void
stats_record(struct stats *st, uint16_t type, uint32_t bytes, int err,
             gint64 us)
{
  unsigned b = 0;

  if (type < STATS_TYPES) {
    st->commands[type]++;
    st->bytes[type] += bytes;
  }
  if (err != 0)
    st->errors++;

  /* Bucket b holds latencies below 2^b microseconds. */
  while (b + 1 < STATS_BUCKETS && (UINT64_C(1) << b) <= (uint64_t) us)
    b++;
  st->latency[b]++;
  st->samples++;
}

/* The upper bound, in microseconds, of the bucket that holds the
 * permille-th sample. */
static uint64_t
percentile(const struct stats *st, unsigned permille)
{
  uint64_t want = (st->samples * permille + 999) / 1000;
  uint64_t seen = 0;

  for (unsigned b = 0; b < STATS_BUCKETS; b++) {
    seen += st->latency[b];
    if (seen >= want && seen > 0)
      return UINT64_C(1) << b;
  }
  return 0;
}

void
stats_format(const struct stats *st, unsigned inflight, unsigned reconnects,
             GString *out)
{
  static const struct {
    uint16_t type;
    const char *name;
  } shown[] = {
    { NBD_CMD_READ, "read" }, { NBD_CMD_WRITE, "write" },
    { NBD_CMD_FLUSH, "flush" }, { NBD_CMD_TRIM, "trim" },
    { NBD_CMD_WRITE_ZEROES, "zero" }, { NBD_CMD_BLOCK_STATUS, "status" },
  };

  for (size_t i = 0; i < G_N_ELEMENTS(shown); i++)
    g_string_append_printf(out, "%s=%" PRIu64 "/%" PRIu64 "B ",
                           shown[i].name, st->commands[shown[i].type],
                           st->bytes[shown[i].type]);
  g_string_append_printf(out,
                         "errors=%" PRIu64 " spliced=%" PRIu64
                         " reconnects=%u inflight=%u "
                         "latency_us_p50<%" PRIu64 " p90<%" PRIu64
                         " p99<%" PRIu64,
                         st->errors, st->spliced, reconnects, inflight,
                         percentile(st, 500), percentile(st, 900),
                         percentile(st, 990));
}
