/* nbdfs: what the daemon asks of the kernel's FUSE connection.
 *
 * Shared with tools/fuse-null, so that the FUSE floor the benchmark
 * measures there is the path nbdfs itself takes.  Include it after
 * FUSE_USE_VERSION is defined (nbdfs.h does it for the daemon).
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDFS_CONN_SETTINGS_H
#define NBDFS_CONN_SETTINGS_H

#include <fuse_lowlevel.h>

/* The largest FUSE request: the kernel sends up to this much in one
 * read or write. */
#define MAX_IO (1024 * 1024)

/* Deep queues: the kernel may keep many requests in flight, and each
 * may be MAX_IO; nbdfs's scheduler splits them to the server's limits.
 * Reads and direct I/O may be asynchronous; the page cache is never
 * dropped on a size or mtime change, since both stay fixed. */
static inline void
conn_settings(struct fuse_conn_info *conn)
{
  conn->max_write = MAX_IO;
  conn->max_readahead = MAX_IO;
  conn->max_background = 128;
  conn->congestion_threshold = 96;

  if (conn->capable & FUSE_CAP_ASYNC_DIO)
    conn->want |= FUSE_CAP_ASYNC_DIO;
  if (conn->capable & FUSE_CAP_ASYNC_READ)
    conn->want |= FUSE_CAP_ASYNC_READ;
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
}

#endif
