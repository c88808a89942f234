/* The command lines as a user first meets them: --help fits a screen,
 * --version answers, the man pages document every option the programs
 * accept, and the systemd unit is well formed.
 *
 * The programs, the built man pages and the systemd unit come from the
 * environment (NBDFS, NBDFS_INFO, MAN_NBDFS, MAN_NBDFS_INFO,
 * SYSTEMD_UNIT), set by tests/meson.build.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include "config.h"

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include <glib.h>

#include "testlib.h"

/* A terminal that nobody has resized. */
#define SCREEN_LINES 24
#define SCREEN_COLUMNS 80

/* The value of environment variable NAME, or NULL after failing the
 * test: these are set by meson, so a missing one is a broken setup and
 * never a reason to skip.
 */
static const char *
env_path(const char *name)
{
  const char *v = g_getenv(name);

  if (v == NULL || *v == '\0') {
    g_test_fail_printf("%s is not set: run through meson test", name);
    return NULL;
  }
  return v;
}

/* Runs PROGRAM ARG and returns what it printed on stdout; its exit
 * status goes to *STATUS.
 */
static char *
run(const char *program, const char *arg, int *status)
{
  g_autoptr(GError) error = NULL;
  const char *argv[] = { program, arg, NULL };
  char *out = NULL;
  int ws = 0;

  if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_STDERR_TO_DEV_NULL,
                    NULL, NULL, &out, NULL, &ws, &error))
    g_error("run %s %s: %s", program, arg, error->message);
  *status = WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
  return out;
}

/* Fails the test for every line of TEXT wider than the screen. */
static void
assert_width(const char *what, const char *text)
{
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);

  for (size_t i = 0; lines[i] != NULL; i++) {
    glong width = g_utf8_strlen(lines[i], -1);

    if (width > SCREEN_COLUMNS)
      g_test_fail_printf("%s: line %zu is %ld columns wide: %s", what,
                         i + 1, width, lines[i]);
  }
}

/* Lines as a terminal shows them: the final newline ends the last line
 * rather than starting an empty one.
 */
static guint
count_lines(const char *text)
{
  guint n = 0;

  for (const char *p = text; *p; p++)
    if (*p == '\n')
      n++;
  if (*text != '\0' && text[strlen(text) - 1] != '\n')
    n++;
  return n;
}

static void
test_help_fits_screen(void)
{
  const char *nbdfs = env_path("NBDFS");
  g_autofree char *out = NULL;
  int status;

  if (nbdfs == NULL)
    return;

  out = run(nbdfs, "--help", &status);
  g_assert_cmpint(status, ==, 0);
  g_test_message("nbdfs --help:\n%s", out);
  if (count_lines(out) > SCREEN_LINES)
    g_test_fail_printf("nbdfs --help prints %u lines; a screen has %d",
                       count_lines(out), SCREEN_LINES);
  assert_width("nbdfs --help", out);
}

/* --help-all may be longer than a screen, but not wider. */
static void
test_help_all_width(gconstpointer data)
{
  const char *program = env_path(data);
  g_autofree char *out = NULL;
  int status;

  if (program == NULL)
    return;

  out = run(program, "--help-all", &status);
  g_assert_cmpint(status, ==, 0);
  assert_width(data, out);
}

static void
test_version(gconstpointer data)
{
  const char *program = env_path(data);
  g_autofree char *base = NULL;
  g_autofree char *want = NULL;
  g_autofree char *out = NULL;
  int status;

  if (program == NULL)
    return;

  base = g_path_get_basename(program);
  want = g_strdup_printf("%s %s\n", base, NBDFS_VERSION);
  out = run(program, "--version", &status);
  g_assert_cmpint(status, ==, 0);
  g_assert_cmpstr(out, ==, want);
}

struct man_case {
  const char *program_env;
  const char *man_env;
};

/* Every long option that --help-all lists has an entry in the man page
 * (scdoc writes it in bold: \fB--name\fR), and the page has the
 * sections a reader looks for.
 */
static void
test_man_documents_options(gconstpointer data)
{
  const struct man_case *c = data;
  const char *program = env_path(c->program_env);
  const char *man = env_path(c->man_env);
  static const char *const sections[] = {
    ".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION", ".SH OPTIONS",
    ".SH EXIT STATUS", ".SH SEE ALSO",
  };
  g_autoptr(GError) error = NULL;
  g_autoptr(GRegex) re = NULL;
  g_autoptr(GMatchInfo) match = NULL;
  g_autofree char *help = NULL;
  g_autofree char *page = NULL;
  guint found = 0;
  int status;

  if (program == NULL || man == NULL)
    return;

  if (!g_file_get_contents(man, &page, NULL, &error))
    g_error("%s: %s (is scdoc installed?)", man, error->message);
  for (size_t i = 0; i < G_N_ELEMENTS(sections); i++)
    if (strstr(page, sections[i]) == NULL)
      g_test_fail_printf("%s: no %s", man, sections[i]);

  help = run(program, "--help-all", &status);
  g_assert_cmpint(status, ==, 0);
  re = g_regex_new("^  (?:-[a-zA-Z?], )?(--[a-z][a-z0-9-]*)",
                   G_REGEX_MULTILINE, 0, NULL);
  g_regex_match(re, help, 0, &match);
  for (; g_match_info_matches(match); g_match_info_next(match, NULL)) {
    g_autofree char *opt = g_match_info_fetch(match, 1);
    g_autofree char *bold = g_strdup_printf("\\fB%s\\fR", opt);

    /* GOption's own help switches need no entry each. */
    if (g_str_has_prefix(opt, "--help"))
      continue;
    found++;
    if (strstr(page, bold) == NULL)
      g_test_fail_printf("%s: %s is not documented", man, opt);
  }
  g_assert_cmpuint(found, >=, 3);
}

/* groff reads the pages without a warning.  Its absence only matters
 * when the pages are read, so it is a prerequisite like any program.
 */
static void
test_man_renders(gconstpointer data)
{
  const char *man = env_path(data);
  g_autoptr(GError) error = NULL;
  g_autofree char *err = NULL;
  int ws;

  if (man == NULL || !tl_require("groff"))
    return;

  const char *argv[] = { "groff", "-man", "-Tutf8", "-ww", "-z", man, NULL };

  if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL,
                    NULL, NULL, &err, &ws, &error))
    g_error("groff: %s", error->message);
  g_assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
  g_assert_cmpstr(err, ==, "");
}

/* The systemd user unit template passes systemd-analyze verify.  Its
 * ExecStart= names the installed nbdfs, which the checker wants to
 * exist, so a copy names the one under test instead.
 */
static void
test_systemd_unit(void)
{
  const char *unit = env_path("SYSTEMD_UNIT");
  const char *nbdfs = env_path("NBDFS");
  g_autoptr(GError) error = NULL;
  g_autoptr(GRegex) re = NULL;
  g_autofree char *text = NULL;
  g_autofree char *copy = NULL;
  g_autofree char *path = NULL;
  g_autofree char *repl = NULL;
  g_autofree char *err = NULL;
  int ws;

  if (unit == NULL || nbdfs == NULL || !tl_require("systemd-analyze"))
    return;

  g_assert_true(g_file_get_contents(unit, &text, NULL, NULL));
  re = g_regex_new("^ExecStart=\\S+", G_REGEX_MULTILINE, 0, NULL);
  repl = g_strdup_printf("ExecStart=%s", nbdfs);
  copy = g_regex_replace_literal(re, text, -1, 0, repl, 0, NULL);
  g_assert_nonnull(strstr(copy, repl));
  path = g_build_filename(tl_tmpdir(), "nbdfs@test.service", NULL);
  g_assert_true(g_file_set_contents(path, copy, -1, NULL));

  const char *argv[] = { "systemd-analyze", "verify", "--man=no", path,
                         NULL };

  if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL,
                    NULL, NULL, &err, &ws, &error))
    g_error("systemd-analyze: %s", error->message);
  /* A line it cannot parse is only a warning, with exit status 0. */
  if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0 || *err != '\0')
    g_test_fail_printf("systemd-analyze verify: %s", err);
}

int
main(int argc, char **argv)
{
  static const struct man_case nbdfs_man = { "NBDFS", "MAN_NBDFS" };
  static const struct man_case info_man = { "NBDFS_INFO", "MAN_NBDFS_INFO" };

  tl_init(&argc, &argv);

  g_test_add_func("/cli/nbdfs/help/fits-screen", test_help_fits_screen);
  g_test_add_data_func("/cli/nbdfs/help-all/fits-width", "NBDFS",
                       test_help_all_width);
  g_test_add_data_func("/cli/nbdfs-info/help-all/fits-width", "NBDFS_INFO",
                       test_help_all_width);
  g_test_add_data_func("/cli/nbdfs/version", "NBDFS", test_version);
  g_test_add_data_func("/cli/nbdfs-info/version", "NBDFS_INFO",
                       test_version);
  g_test_add_data_func("/cli/nbdfs/man/documents-every-option", &nbdfs_man,
                       test_man_documents_options);
  g_test_add_data_func("/cli/nbdfs-info/man/documents-every-option",
                       &info_man, test_man_documents_options);
  g_test_add_data_func("/cli/nbdfs/man/renders", "MAN_NBDFS",
                       test_man_renders);
  g_test_add_data_func("/cli/nbdfs-info/man/renders", "MAN_NBDFS_INFO",
                       test_man_renders);
  g_test_add_func("/cli/systemd/unit-verifies", test_systemd_unit);
  return g_test_run();
}
