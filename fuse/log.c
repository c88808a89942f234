/* nbdfs: log lines.  Errors always; -v adds lifecycle events; -d adds
 * one line per request.  Before daemonizing lines go to stderr, after
 * it to syslog.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>

#include "nbdfs.h"

enum log_level log_max = LOG_LEVEL_WARNING;
static bool use_syslog;

void
log_to_syslog(void)
{
  openlog("nbdfs", LOG_PID, LOG_DAEMON);
  use_syslog = true;
}

void
log_msg(enum log_level level, const char *fmt, ...)
{
  static const int prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
  g_autofree char *msg = NULL;
  va_list ap;

  if (level > log_max)
    return;
  va_start(ap, fmt);
  msg = g_strdup_vprintf(fmt, ap);
  va_end(ap);

  if (use_syslog)
    syslog(prio[level], "%s", msg);
  else
    fprintf(stderr, "nbdfs: %s\n", msg);
}
