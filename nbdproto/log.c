/* nbdfs: nbdproto's log lines, handed to whoever embeds it.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

void (*nbd_log_hook)(enum nbd_log_level level, const char *line);

void
nbd_log(enum nbd_log_level level, const char *fmt, ...)
{
  void (*hook)(enum nbd_log_level, const char *) = nbd_log_hook;
  g_autofree char *line = NULL;
  va_list ap;

  /* Without a hook only warnings are worth a line on stderr. */
  if (hook == NULL && level != NBD_LOG_WARNING)
    return;

  va_start(ap, fmt);
  line = g_strdup_vprintf(fmt, ap);
  va_end(ap);

  if (hook != NULL)
    hook(level, line);
  else
    fprintf(stderr, "warning: %s\n", line);
}
