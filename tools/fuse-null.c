/* fuse-null: a FUSE filesystem that moves no data, for tools/bench.
 *
 *   fuse-null MOUNTPOINT
 *
 * Shows one file, "disk", of 1 GiB.  Reads return zeros and writes are
 * acknowledged and dropped, both at once on the one thread that reads
 * /dev/fuse.  What fio measures through it is therefore the kernel's
 * FUSE round trip alone: the floor under any FUSE client on this
 * machine, nbdfs included.  It asks the kernel for the settings that
 * nbdfs asks for (fuse/conn-settings.h), so that both pay the same
 * path.
 *
 * Runs in the foreground until unmounted or sent SIGINT or SIGTERM.
 * Exit status: 0 after an unmount, 1 when it cannot mount, 2 for bad
 * usage.  Not installed: it serves the benchmark only.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#define FUSE_USE_VERSION 312

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fuse_lowlevel.h>

#include "conn-settings.h"

#define FILE_INO 2
#define FILE_NAME "disk"
#define FILE_SIZE (1024LL * 1024 * 1024)

/* Every read is answered from these zeros. */
static const char zeros[MAX_IO];

static void
fill_attr(fuse_ino_t ino, struct stat *st)
{
  memset(st, 0, sizeof(*st));
  st->st_ino = ino;
  st->st_uid = getuid();
  st->st_gid = getgid();
  if (ino == FUSE_ROOT_ID) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    return;
  }
  st->st_mode = S_IFREG | 0644;
  st->st_nlink = 1;
  st->st_size = FILE_SIZE;
  st->st_blksize = 4096;
  st->st_blocks = FILE_SIZE / 512;
}

static void
null_init(void *userdata, struct fuse_conn_info *conn)
{
  conn_settings(conn);
}

static void
null_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  struct fuse_entry_param ep = { 0 };

  if (parent != FUSE_ROOT_ID || strcmp(name, FILE_NAME) != 0) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  ep.ino = FILE_INO;
  ep.attr_timeout = 60;
  ep.entry_timeout = 60;
  fill_attr(FILE_INO, &ep.attr);
  fuse_reply_entry(req, &ep);
}

static void
null_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct stat st;

  if (ino != FUSE_ROOT_ID && ino != FILE_INO) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fill_attr(ino, &st);
  fuse_reply_attr(req, &st, 60);
}

static void
null_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  if (ino != FILE_INO) {
    fuse_reply_err(req, EISDIR);
    return;
  }

  /* As nbdfs does: O_DIRECT skips the page cache. */
  fi->direct_io = (fi->flags & O_DIRECT) != 0;
  fi->keep_cache = 0;
  fi->noflush = 1;
  fuse_reply_open(req, fi);
}

static void
null_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
          struct fuse_file_info *fi)
{
  if (off >= FILE_SIZE)
    size = 0;
  else if ((off_t)size > FILE_SIZE - off)
    size = FILE_SIZE - off;
  fuse_reply_buf(req, zeros, size < MAX_IO ? size : MAX_IO);
}

static void
null_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
           off_t off, struct fuse_file_info *fi)
{
  fuse_reply_write(req, size);
}

static void
null_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
           struct fuse_file_info *fi)
{
  fuse_reply_err(req, 0);
}

static void
null_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
             struct fuse_file_info *fi)
{
  char buf[512];
  size_t used = 0;
  struct stat st = { .st_ino = FILE_INO, .st_mode = S_IFREG };

  if (ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  if (off == 0)
    used = fuse_add_direntry(req, buf, sizeof(buf), FILE_NAME, &st, 1);
  fuse_reply_buf(req, buf, used <= size ? used : 0);
}

static const struct fuse_lowlevel_ops ops = {
  .init = null_init,
  .lookup = null_lookup,
  .getattr = null_getattr,
  .open = null_open,
  .read = null_read,
  .write = null_write,
  .fsync = null_fsync,
  .readdir = null_readdir,
};

int
main(int argc, char **argv)
{
  char *fuse_argv[] = { argv[0], "-o", "fsname=fuse-null", NULL };
  struct fuse_args args = FUSE_ARGS_INIT(3, fuse_argv);
  struct fuse_session *se;
  int rc;

  if (argc != 2 || argv[1][0] == '-') {
    fprintf(stderr, "usage: fuse-null MOUNTPOINT\n");
    return 2;
  }

  se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
  if (se == NULL) {
    fprintf(stderr, "fuse-null: start: %s: libfuse refused the session\n",
            argv[1]);
    return 1;
  }
  if (fuse_set_signal_handlers(se) != 0 ||
      fuse_session_mount(se, argv[1]) != 0) {
    fprintf(stderr, "fuse-null: mount: %s: see libfuse's message above "
            "(is /dev/fuse usable and fusermount3 installed?)\n", argv[1]);
    fuse_session_destroy(se);
    return 1;
  }

  rc = fuse_session_loop(se);

  fuse_session_unmount(se);
  fuse_remove_signal_handlers(se);
  fuse_session_destroy(se);
  return rc == 0 ? 0 : 1;
}
