/* nbdfs under sustained load: verified fio jobs in parallel on two
 * exports of one mount, four connections each, for a bounded time.
 *
 * Each export is an nbdkit memory server (it advertises CAN_MULTI_CONN,
 * so -C 4 is what nbdfs would pick anyway).  Four fio jobs write random
 * blocks of 4 KiB to 256 KiB into their own 32 MiB of each export with
 * crc32c checksums and read every block back soon after
 * (verify_backlog), stopping at the first mismatch.  The jobs on the
 * first export fsync as they go; those on the second never do, which
 * leaves flushing to nbdfs when its replay log reaches --replay-limit.
 * The run lasts LOAD_SECONDS (60) or $NBDFS_LOAD_SECONDS.
 *
 * The test asserts that fio ends with status 0 and no job reports an
 * error, that data was both written and verified, that the daemon's
 * peak resident size stays under PEAK_LIMIT_KIB, and that it is still
 * healthy: it unmounts with status 0.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "fusemount.h"
#include "testlib.h"

#define LOAD_SECONDS 60
#define JOBS_PER_EXPORT 4
#define JOB_REGION_MIB 32
#define EXPORT_SIZE "256M"

/* What nbdfs may hold at once, per export: up to --replay-limit (64 MiB)
 * of acknowledged, unflushed writes kept for replay (the second export
 * fills it); plus, in flight, 4 jobs x iodepth 16 x 256 KiB = 16 MiB of
 * write data.  Two exports: at most 160 MiB.  The FUSE threads'
 * buffers, the connections' receive buffers and the allocator's
 * per-thread arenas come on top; 96 MiB is ample for those. */
#define PEAK_LIMIT_KIB (256 * 1024)

/* Under AddressSanitizer (meson test --setup asan) freed memory waits in
 * a quarantine of 256 MiB before reuse, and every allocation carries
 * redzones and shadow: the same bound, doubled, plus the quarantine. */
#define ASAN_PEAK_LIMIT_KIB (2 * PEAK_LIMIT_KIB + 256 * 1024)

static long
peak_limit_kib(void)
{
  return g_getenv("ASAN_OPTIONS") != NULL ? ASAN_PEAK_LIMIT_KIB
                                          : PEAK_LIMIT_KIB;
}

/* The run time: $NBDFS_LOAD_SECONDS when set to a positive number. */
static int
load_seconds(void)
{
  const char *s = g_getenv("NBDFS_LOAD_SECONDS");
  int n = s != NULL ? atoi(s) : 0;

  return n > 0 ? n : LOAD_SECONDS;
}

/* A fio job file: JOBS_PER_EXPORT jobs on each of the files, each on
 * its own region, so that no job overwrites another's checksums. */
static char *
write_job_file(const char *const *files, size_t nfiles, int seconds)
{
  g_autoptr(GString) jobs = g_string_new(NULL);
  char *path = g_build_filename(tl_tmpdir(), "load.fio", NULL);
  g_autoptr(GError) error = NULL;

  g_string_append_printf(jobs,
                         "[global]\n"
                         "ioengine=libaio\n"
                         "direct=1\n"
                         "iodepth=16\n"
                         "rw=randwrite\n"
                         "bsrange=4k-256k\n"
                         "size=%dM\n"
                         "verify=crc32c\n"
                         "verify_backlog=64\n"
                         "verify_fatal=1\n"
                         "time_based=1\n"
                         "runtime=%d\n"
                         "randseed=20\n",
                         JOB_REGION_MIB, seconds);
  for (size_t f = 0; f < nfiles; f++)
    for (int j = 0; j < JOBS_PER_EXPORT; j++) {
      g_string_append_printf(jobs,
                             "\n[e%zu-j%d]\n"
                             "filename=%s\n"
                             "offset=%dM\n",
                             f, j, files[f], j * JOB_REGION_MIB);

      /* The first export's jobs make nbdfs flush; the second's leave
       * it to the replay limit, the case that holds the most memory. */
      if (f == 0)
        g_string_append(jobs, "fsync=32\n");
    }

  if (!g_file_set_contents(path, jobs->str, jobs->len, &error))
    g_error("%s: %s", path, error->message);
  return path;
}

/* Checks fio's terse (v3) lines: one per job, field 5 the job's error,
 * fields 6 and 47 the KiB it read and wrote.  Returns the totals. */
static void
check_fio_output(const char *out, guint64 *read_kib, guint64 *written_kib)
{
  g_auto(GStrv) lines = g_strsplit(out, "\n", -1);
  unsigned jobs = 0;

  *read_kib = *written_kib = 0;
  for (char **l = lines; *l != NULL; l++) {
    g_auto(GStrv) f = NULL;

    if (!g_str_has_prefix(*l, "3;"))
      continue;
    f = g_strsplit(*l, ";", -1);
    g_assert_cmpuint(g_strv_length(f), >, 47);
    if (strcmp(f[4], "0") != 0)
      g_error("fio job %s ended with error %s", f[2], f[4]);
    *read_kib += g_ascii_strtoull(f[5], NULL, 10);
    *written_kib += g_ascii_strtoull(f[46], NULL, 10);
    jobs++;
  }
  g_assert_cmpuint(jobs, ==, 2 * JOBS_PER_EXPORT);
}

static void
test_parallel_verified(void)
{
  struct tl_server *servers[2];
  g_autofree char *uri_a = NULL;
  g_autofree char *uri_b = NULL;
  g_autofree char *file_a = NULL;
  g_autofree char *file_b = NULL;
  g_autofree char *jobs = NULL;
  g_autofree char *out = NULL;
  g_autofree char *err = NULL;
  g_autoptr(fm_mount) m = NULL;
  int seconds = load_seconds();
  guint64 read_kib, written_kib;
  gint64 start;
  long peak;
  int rc;

  if (!fm_nbdfs() || !tl_require("nbdkit") || !tl_require("fio"))
    return;

  for (int i = 0; i < 2; i++)
    servers[i] = fm_start_nbdkit((const char *const[]){
                                   "memory", "size=" EXPORT_SIZE, NULL });
  uri_a = tl_server_uri(servers[0], "a");
  uri_b = tl_server_uri(servers[1], "b");
  m = fm_mounted((const char *const[]){ "-C", "4", uri_a, uri_b, NULL });
  file_a = fm_path(m, "a");
  file_b = fm_path(m, "b");
  jobs = write_job_file((const char *const[]){ file_a, file_b }, 2,
                        seconds);

  /* fio's own time limit is the job's; this one only stops a hang. */
  g_test_message("%d fio jobs on 2 exports for %d s",
                 2 * JOBS_PER_EXPORT, seconds);
  start = g_get_monotonic_time();
  rc = fm_run((const char *const[]){ "fio", "--output-format=terse",
                                     "--terse-version=3", jobs, NULL },
              seconds + 120, &out, &err);
  g_test_message("fio took %" G_GINT64_FORMAT " s",
                 (g_get_monotonic_time() - start) / G_USEC_PER_SEC);
  if (rc != 0)
    g_test_message("fio output:\n%s\n%s", out, err);
  g_assert_cmpint(rc, ==, 0);
  check_fio_output(out, &read_kib, &written_kib);
  g_test_message("fio wrote %" G_GUINT64_FORMAT " MiB and verified %"
                 G_GUINT64_FORMAT " MiB", written_kib / 1024,
                 read_kib / 1024);
  g_assert_cmpuint(written_kib, >, 0);
  g_assert_cmpuint(read_kib, >, 0);

  /* VmHWM: the daemon's peak over the whole run. */
  g_assert_true(tl_process_running(m->daemon));
  peak = fm_peak_rss_kib(m->daemon);
  g_test_message("nbdfs peak RSS (VmHWM): %ld KiB (%ld MiB), limit %ld "
                 "MiB", peak, peak / 1024, peak_limit_kib() / 1024);
  g_assert_cmpint(peak, >, 0);
  g_assert_cmpint(peak, <, peak_limit_kib());

  g_assert_cmpint(fm_unmount(m, NULL), ==, 0);
  for (int i = 0; i < 2; i++)
    tl_server_stop(servers[i]);
}

int
main(int argc, char **argv)
{
  tl_init(&argc, &argv);
  fm_init();

  g_test_add_func("/load/two-exports/four-connections/fio-verify",
                  test_parallel_verified);
  return g_test_run();
}
