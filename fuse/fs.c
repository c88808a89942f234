/* nbdfs: the FUSE operations.
 *
 * The mount is one directory (inode 1) holding one file per export
 * (inode 2 + index).  Handlers that need the server hand the request to
 * the export's scheduler and return; the reply is sent when the last NBD
 * reply arrives.  Every request is answered exactly once.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <linux/falloc.h>

#include "nbdfs.h"
#include "conn-settings.h"

#define ROOT_INO 1
#define ATTR_TIMEOUT 60.0
#define SPLICE_MIN (128 * 1024)  /* smallest read reply worth a splice */
#define XATTR_PREFIX "user.nbd."

static struct fs *
fs_of(fuse_req_t req)
{
  return fuse_req_userdata(req);
}

static struct export *
export_of(fuse_req_t req, fuse_ino_t ino)
{
  struct fs *fs = fs_of(req);

  if (ino < 2 || ino - 2 >= fs->exports->len)
    return NULL;
  return fs->exports->pdata[ino - 2];
}

static uint64_t
export_size(struct export *e)
{
  uint32_t mb = e->info.min_block ? e->info.min_block : 1;

  /* S8: the tail past the last whole minimum block is out of reach. */
  return e->info.size - e->info.size % mb;
}

static void
fill_attr(struct fs *fs, fuse_ino_t ino, struct stat *st)
{
  memset(st, 0, sizeof *st);
  st->st_ino = ino;
  st->st_uid = fs->uid;
  st->st_gid = fs->gid;
  st->st_atim = st->st_mtim = st->st_ctim = fs->mounted;

  if (ino == ROOT_INO) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    return;
  }

  struct export *e = fs->exports->pdata[ino - 2];

  st->st_mode = S_IFREG | (e->readonly ? 0444 : 0644);
  st->st_nlink = 1;
  st->st_size = export_size(e);
  st->st_blksize = MAX(e->info.pref_block, 512);
  st->st_blocks = (st->st_size + 511) / 512;
}

static void
fs_init(void *userdata, struct fuse_conn_info *conn)
{
  struct fs *fs = userdata;

  conn_settings(conn);

  /* O_TRUNC arrives with open instead of as a truncate, so that it can
   * be ignored as a block device ignores it: cp onto the file works.
   * With writeback the kernel would then cut its own idea of the size
   * to 0, so there O_TRUNC stays a truncate, which is refused. */
  if ((conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) &&
      fs->cache != CACHE_WRITEBACK)
    conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  else
    conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC; /* libfuse sets it itself */
  if (fs->cache == CACHE_WRITEBACK &&
      (conn->capable & FUSE_CAP_WRITEBACK_CACHE))
    conn->want |= FUSE_CAP_WRITEBACK_CACHE;
  else
    conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
}

static void
fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  struct fs *fs = fs_of(req);
  struct fuse_entry_param ep = { 0 };

  if (parent != ROOT_INO) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  for (guint i = 0; i < fs->exports->len; i++) {
    struct export *e = fs->exports->pdata[i];

    if (strcmp(e->file_name, name) == 0) {
      ep.ino = i + 2;
      ep.attr_timeout = ATTR_TIMEOUT;
      ep.entry_timeout = ATTR_TIMEOUT;
      fill_attr(fs, ep.ino, &ep.attr);
      fuse_reply_entry(req, &ep);
      return;
    }
  }
  fuse_reply_err(req, ENOENT);
}

static void
fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct stat st;

  if (ino != ROOT_INO && export_of(req, ino) == NULL) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fill_attr(fs_of(req), ino, &st);
  fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void
fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
           struct fuse_file_info *fi)
{
  struct export *e = export_of(req, ino);
  struct stat st;

  if (e == NULL) {
    fuse_reply_err(req, ino == ROOT_INO ? EPERM : ENOENT);
    return;
  }

  /* The server fixes the size; truncating to it is harmless, anything
   * else is refused.  Times are accepted and forgotten so that tools
   * which set them (touch, cp -p) do not fail. */
  if ((to_set & FUSE_SET_ATTR_SIZE) &&
      (uint64_t) attr->st_size != export_size(e)) {
    log_info("truncate: %s: the export's size is fixed by the server",
             e->file_name);
    fuse_reply_err(req, EPERM);
    return;
  }
  if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
    fuse_reply_err(req, EPERM);
    return;
  }
  fill_attr(fs_of(req), ino, &st);
  fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void
fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
           struct fuse_file_info *fi)
{
  struct fs *fs = fs_of(req);
  g_autofree char *buf = NULL;
  size_t used = 0;
  guint n = fs->exports->len + 2;

  if (ino != ROOT_INO) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }

  /* Entry k is ".", "..", then the exports; off is the next k. */
  buf = g_malloc(size);
  for (guint k = off; k < n; k++) {
    struct stat st = { 0 };
    const char *name;
    size_t len;

    if (k < 2) {
      name = k == 0 ? "." : "..";
      st.st_ino = ROOT_INO;
      st.st_mode = S_IFDIR;
    } else {
      name = ((struct export *) fs->exports->pdata[k - 2])->file_name;
      st.st_ino = k;
      st.st_mode = S_IFREG;
    }
    len = fuse_add_direntry(req, buf + used, size - used, name, &st, k + 1);
    if (len > size - used)
      break;
    used += len;
  }
  fuse_reply_buf(req, buf, used);
}

/* Answers an open once the export is connected. */
static void
open_connected(fuse_req_t req, struct export *e, struct fuse_file_info *fi)
{
  struct fs *fs = fs_of(req);
  g_autoptr(GError) error = NULL;

  /* --all: an export is connected when it is first opened; one that
   * cannot be reached fails the open. */
  if (export_connect(e, &error) < 0) {
    log_error("%s", error->message);
    fuse_reply_err(req, EIO);
    return;
  }

  /* O_DIRECT asks for what CACHE_NONE gives everyone: no page cache,
   * and requests that the kernel sends on without waiting. */
  fi->direct_io = fs->cache == CACHE_NONE || (fi->flags & O_DIRECT);
  fi->keep_cache = 0; /* see the server's changes after each open */
  fi->noflush = 1;    /* close(2) promises no durability */
  fi->fh = (fi->flags & (O_SYNC | O_DSYNC)) != 0;
  fuse_reply_open(req, fi);
}

struct open_job {
  fuse_req_t req;
  struct export *e;
  struct fuse_file_info fi;
};

static gpointer
open_main(gpointer data)
{
  struct open_job *j = data;

  open_connected(j->req, j->e, &j->fi);
  g_free(j);
  return NULL;
}

static void
fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct export *e = export_of(req, ino);
  struct open_job *j;
  bool connected;

  if (e == NULL) {
    fuse_reply_err(req, ino == ROOT_INO ? EISDIR : ENOENT);
    return;
  }
  if ((fi->flags & O_ACCMODE) != O_RDONLY && e->readonly) {
    fuse_reply_err(req, EROFS);
    return;
  }

  g_mutex_lock(&e->lock);
  connected = e->connected;
  g_mutex_unlock(&e->lock);
  if (connected) {
    open_connected(req, e, fi);
    return;
  }

  /* Connecting takes round trips, and the one loop that reads FUSE
   * requests (loop.c) must not wait for them. */
  j = g_new(struct open_job, 1);
  j->req = req;
  j->e = e;
  j->fi = *fi;
  g_thread_unref(g_thread_new("nbdfs-open", open_main, j));
}

static void
reply_read(struct op *op, int err, const void *data, uint64_t len,
           void *user)
{
  fuse_req_t req = user;

  if (err != 0)
    fuse_reply_err(req, err);
  else
    fuse_reply_buf(req, data, len);
}

static void
reply_read_spliced(struct op *op, int err, const void *data, uint64_t len,
                   void *user)
{
  splice_reply(user, err, data, len);
}

static void
fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
        struct fuse_file_info *fi)
{
  struct export *e = export_of(req, ino);
  uint64_t end = sched_size(e->sched);
  uint64_t len = (uint64_t) off < end ? MIN(size, end - off) : 0;
  struct nbd_sink *sink = NULL;

  /* Below SPLICE_MIN the copy costs less than the extra system calls;
   * over TLS the bytes are decrypted in this process anyway. */
  if (len >= SPLICE_MIN && !e->info.tls)
    sink = splice_sink_new(req, len);
  if (sink != NULL)
    sched_read(e->sched, off, size, sink, reply_read_spliced, sink);
  else
    sched_submit(e->sched, OP_READ, off, size, NULL, false, 0, reply_read,
                 req);
}

struct write_req {
  fuse_req_t req;
  size_t len;
};

static void
reply_write(struct op *op, int err, const void *data, uint64_t result,
            void *user)
{
  struct write_req *w = user;

  if (err != 0)
    fuse_reply_err(w->req, err);
  else
    fuse_reply_write(w->req, w->len);
  g_free(w);
}

static void
fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
         off_t off, struct fuse_file_info *fi)
{
  struct export *e = export_of(req, ino);
  struct write_req *w;
  bool sync;

  if (e->readonly) {
    fuse_reply_err(req, EROFS);
    return;
  }

  /* libfuse reuses buf for the next request once we return, unless
   * the loop gives it up (loop_take_payload); the replay log shares
   * what the scheduler keeps. */
  w = g_new(struct write_req, 1);
  w->req = req;
  w->len = size;
  sync = fi->fh || (fi->flags & (O_SYNC | O_DSYNC));
  sched_submit(e->sched, OP_WRITE, off, size, loop_take_payload(buf, size),
               sync, 0, reply_write, w);
}

static void
reply_status(struct op *op, int err, const void *data, uint64_t result,
             void *user)
{
  fuse_reply_err(user, err);
}

static void
fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
         struct fuse_file_info *fi)
{
  struct export *e = export_of(req, ino);

  /* O2: the scheduler holds the FLUSH until every earlier write has
   * been acknowledged. */
  sched_submit(e->sched, OP_FLUSH, 0, 0, NULL, false, 0, reply_status,
               req);
}

static void
fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  fuse_reply_err(req, 0);
}

static void
fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct export *e = export_of(req, ino);

  /* O5: close(2) promises no durability, so it does not wait; but a file
   * its writer has closed should not stay at risk, nor hold the replay
   * log's memory, until some later fsync. */
  if (e != NULL && e->sched != NULL && (fi->flags & O_ACCMODE) != O_RDONLY)
    sched_flush_behind(e->sched);
  fuse_reply_err(req, 0);
}

static void
fs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
             off_t len, struct fuse_file_info *fi)
{
  struct export *e = export_of(req, ino);
  enum op_kind kind;

  if (e->readonly) {
    fuse_reply_err(req, EROFS);
    return;
  }
  if (off < 0 || len <= 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }

  if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
    kind = OP_PUNCH;
  } else if ((mode & ~FALLOC_FL_KEEP_SIZE) == FALLOC_FL_ZERO_RANGE) {
    kind = OP_ZERO;
  } else if ((mode & ~FALLOC_FL_KEEP_SIZE) == 0) {
    /* Plain allocation: the export's space already exists; only a
     * request past its end cannot be met. */
    fuse_reply_err(req, (uint64_t) off + len > export_size(e) ? ENOSPC : 0);
    return;
  } else {
    fuse_reply_err(req, EOPNOTSUPP);
    return;
  }
  sched_submit(e->sched, kind, off, len, NULL, false, 0, reply_status, req);
}

static void
reply_lseek(struct op *op, int err, const void *data, uint64_t result,
            void *user)
{
  if (err != 0)
    fuse_reply_err(user, err);
  else
    fuse_reply_lseek(user, result);
}

static void
fs_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
         struct fuse_file_info *fi)
{
  struct export *e = export_of(req, ino);

  if (whence != SEEK_DATA && whence != SEEK_HOLE) {
    fuse_reply_err(req, EINVAL);
    return;
  }

  /* With writeback, data may still sit in the kernel's dirty pages,
   * which block status cannot see; ENOSYS makes the kernel call the
   * whole file data, which is always safe (B13). */
  if (fs_of(req)->cache == CACHE_WRITEBACK) {
    fuse_reply_err(req, ENOSYS);
    return;
  }
  if (off < 0) {
    fuse_reply_err(req, ENXIO);
    return;
  }
  sched_submit(e->sched, OP_SEEK, off, 0, NULL, false, whence, reply_lseek,
               req);
}

static void
fs_statfs(fuse_req_t req, fuse_ino_t ino)
{
  struct fs *fs = fs_of(req);
  struct statvfs sv = { 0 };
  uint64_t total = 0;

  for (guint i = 0; i < fs->exports->len; i++)
    total += export_size(fs->exports->pdata[i]);

  /* The files fill the filesystem: nothing is free, nothing can be
   * created. */
  sv.f_bsize = 4096;
  sv.f_frsize = 4096;
  sv.f_blocks = total / sv.f_frsize;
  sv.f_files = fs->exports->len + 1;
  sv.f_namemax = 255;
  fuse_reply_statfs(req, &sv);
}

/* The value of user.nbd.NAME for e, or NULL when there is none. */
static char *
xattr_value(struct export *e, const char *name)
{
  char flags[256];

  if (strcmp(name, "uri") == 0)
    return nbd_uri_display(e->uri);
  if (strcmp(name, "export") == 0)
    return g_strdup(e->uri->export_name);
  if (strcmp(name, "description") == 0) {
    const char *d = e->info.description ? e->info.description
                                        : e->list_description;
    return d && *d ? g_strdup(d) : NULL;
  }
  if (strcmp(name, "size") == 0)
    return g_strdup_printf("%" PRIu64, e->info.size);
  if (strcmp(name, "block_size") == 0)
    return g_strdup_printf("%" PRIu32 " %" PRIu32 " %" PRIu32,
                           e->info.min_block, e->info.pref_block,
                           e->info.max_payload);
  if (strcmp(name, "flags") == 0)
    return g_strdup(nbd_tflags_string(e->info.tflags, flags, sizeof flags));
  if (strcmp(name, "tls") == 0)
    return g_strdup(e->info.tls ? "yes" : "no");
  if (strcmp(name, "connections") == 0)
    return g_strdup_printf("%u", e->pool ? pool_size(e->pool) : 0);
  if (strcmp(name, "stats") == 0 && e->sched != NULL) {
    GString *out = g_string_new(NULL);

    sched_stats(e->sched, out);
    return g_string_free(out, FALSE);
  }
  return NULL;
}

static const char *const xattr_names[] = {
  "uri", "export", "description", "size", "block_size", "flags", "tls",
  "connections", "stats",
};

static void
reply_xattr_value(fuse_req_t req, const char *value, size_t len,
                  size_t size)
{
  if (size == 0)
    fuse_reply_xattr(req, len);
  else if (size < len)
    fuse_reply_err(req, ERANGE);
  else
    fuse_reply_buf(req, value, len);
}

static void
fs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
  struct export *e = export_of(req, ino);
  g_autofree char *value = NULL;

  if (e == NULL || !g_str_has_prefix(name, XATTR_PREFIX) ||
      (value = xattr_value(e, name + strlen(XATTR_PREFIX))) == NULL) {
    fuse_reply_err(req, ENODATA);
    return;
  }
  reply_xattr_value(req, value, strlen(value), size);
}

static void
fs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
  struct export *e = export_of(req, ino);
  g_autoptr(GString) list = g_string_new(NULL);

  for (size_t i = 0; e != NULL && i < G_N_ELEMENTS(xattr_names); i++) {
    g_autofree char *v = xattr_value(e, xattr_names[i]);

    if (v != NULL) {
      g_string_append_printf(list, XATTR_PREFIX "%s", xattr_names[i]);
      g_string_append_c(list, '\0');
    }
  }
  reply_xattr_value(req, list->str, list->len, size);
}

const struct fuse_lowlevel_ops nbdfs_ops = {
  .init = fs_init,
  .lookup = fs_lookup,
  .getattr = fs_getattr,
  .setattr = fs_setattr,
  .readdir = fs_readdir,
  .open = fs_open,
  .read = fs_read,
  .write = fs_write,
  .flush = fs_flush,
  .release = fs_release,
  .fsync = fs_fsync,
  .statfs = fs_statfs,
  .getxattr = fs_getxattr,
  .listxattr = fs_listxattr,
  .fallocate = fs_fallocate,
  .lseek = fs_lseek,
};
