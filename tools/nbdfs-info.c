/* nbdfs-info: show what an NBD server offers.
 *
 *   nbdfs-info [--json] URI           one export's size, flags, limits
 *   nbdfs-info --list [--json] URI    every export the server lists
 *
 * Exit status: 0 on success, 1 when the server or export cannot be
 * reached or negotiated, 2 for bad usage.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <locale.h>
#include <stdlib.h>

#include "config.h"
#include "nbdproto.h"

/* A server may list many exports; a flood beyond this is refused. */
#define MAX_LIST_ENTRIES 100000

static gboolean opt_list;
static gboolean opt_json;
static gboolean opt_version;
static char *opt_tls;
static struct nbd_tls_settings tls_settings;

static GOptionEntry entries[] = {
  { "list", 'l', 0, G_OPTION_ARG_NONE, &opt_list,
    "List the server's exports", NULL },
  { "json", 'j', 0, G_OPTION_ARG_NONE, &opt_json,
    "Print JSON instead of text", NULL },
  { "tls", 0, 0, G_OPTION_ARG_STRING, &opt_tls,
    "TLS policy: off, prefer or require", "POLICY" },
  { "version", 'V', 0, G_OPTION_ARG_NONE, &opt_version,
    "Print the version and exit", NULL },
  { NULL },
};

/* Appends s to out as a JSON string literal. */
static void
json_string(GString *out, const char *s)
{
  g_string_append_c(out, '"');
  for (; *s; s++) {
    unsigned char c = *s;

    if (c == '"' || c == '\\')
      g_string_append_printf(out, "\\%c", c);
    else if (c < 0x20)
      g_string_append_printf(out, "\\u%04x", c);
    else
      g_string_append_c(out, c);
  }
  g_string_append_c(out, '"');
}

static void
print_info_text(const struct nbd_export_info *in)
{
  char flags[256];

  printf("export:        %s\n", in->name);
  if (in->description != NULL)
    printf("description:   %s\n", in->description);
  printf("size:          %" PRIu64 "\n", in->size);
  printf("flags:         %s\n",
         nbd_tflags_string(in->tflags, flags, sizeof flags));
  printf("read-only:     %s\n",
         in->tflags & NBD_FLAG_READ_ONLY ? "yes" : "no");
  printf("multi-conn:    %s\n",
         in->tflags & NBD_FLAG_CAN_MULTI_CONN ? "yes" : "no");
  printf("block sizes:   minimum %" PRIu32 ", preferred %" PRIu32
         ", maximum %" PRIu32 "%s\n", in->min_block, in->pref_block,
         in->max_payload,
         in->block_size_advertised ? "" : " (defaults)");
  printf("structured:    %s\n", in->structured ? "yes" : "no");
  printf("block status:  %s\n", in->block_status ? "base:allocation"
                                                 : "no");
  printf("tls:           %s\n", in->tls ? "yes" : "no");
  if (in->tls) {
    printf("tls version:   %s\n", in->tls_version);
    printf("tls cipher:    %s\n", in->tls_cipher);
    printf("tls peer:      %s\n", in->tls_peer ? in->tls_peer : "?");
  }
  if (in->export_name_fallback)
    printf("negotiation:   NBD_OPT_EXPORT_NAME (server lacks GO)\n");
}

static void
print_info_json(const struct nbd_export_info *in)
{
  g_autoptr(GString) out = g_string_new("{\n  \"export\": ");
  char flags[256];
  g_auto(GStrv) names = NULL;

  json_string(out, in->name);
  g_string_append(out, ",\n  \"description\": ");
  if (in->description != NULL)
    json_string(out, in->description);
  else
    g_string_append(out, "null");
  g_string_append_printf(out, ",\n  \"size\": %" PRIu64, in->size);

  g_string_append(out, ",\n  \"flags\": [");
  names = g_strsplit(nbd_tflags_string(in->tflags, flags, sizeof flags),
                     " ", -1);
  for (int i = 0; names[i] != NULL; i++) {
    if (i > 0)
      g_string_append(out, ", ");
    json_string(out, names[i]);
  }
  g_string_append_printf(out,
                         "],\n  \"read_only\": %s,\n"
                         "  \"multi_conn\": %s,\n"
                         "  \"minimum_block_size\": %" PRIu32 ",\n"
                         "  \"preferred_block_size\": %" PRIu32 ",\n"
                         "  \"maximum_payload\": %" PRIu32 ",\n"
                         "  \"block_sizes_advertised\": %s,\n"
                         "  \"structured_replies\": %s,\n"
                         "  \"block_status\": %s,\n"
                         "  \"tls\": %s",
                         in->tflags & NBD_FLAG_READ_ONLY ? "true" : "false",
                         in->tflags & NBD_FLAG_CAN_MULTI_CONN ? "true"
                                                              : "false",
                         in->min_block, in->pref_block, in->max_payload,
                         in->block_size_advertised ? "true" : "false",
                         in->structured ? "true" : "false",
                         in->block_status ? "true" : "false",
                         in->tls ? "true" : "false");
  if (in->tls) {
    g_string_append(out, ",\n  \"tls_version\": ");
    json_string(out, in->tls_version ? in->tls_version : "");
    g_string_append(out, ",\n  \"tls_cipher\": ");
    json_string(out, in->tls_cipher ? in->tls_cipher : "");
    g_string_append(out, ",\n  \"tls_peer\": ");
    json_string(out, in->tls_peer ? in->tls_peer : "");
  }
  g_string_append(out, "\n}\n");
  fputs(out->str, stdout);
}

static void
print_list(GPtrArray *list)
{
  g_autoptr(GString) out = g_string_new(opt_json ? "[" : "");

  for (guint i = 0; i < list->len; i++) {
    const struct nbd_export_entry *e = list->pdata[i];

    if (!opt_json) {
      /* The default export has an empty name; show it as "". */
      g_string_append_printf(out, "%s%s%s\n",
                             *e->name ? e->name : "\"\"",
                             *e->description ? "\t" : "",
                             e->description);
      continue;
    }
    g_string_append(out, i ? ",\n  {\"name\": " : "\n  {\"name\": ");
    json_string(out, e->name);
    g_string_append(out, ", \"description\": ");
    json_string(out, e->description);
    g_string_append(out, "}");
  }
  if (opt_json)
    g_string_append(out, list->len ? "\n]\n" : "]\n");
  fputs(out->str, stdout);
}

static void
log_line(enum nbd_log_level level, const char *line)
{
  if (level == NBD_LOG_WARNING)
    fprintf(stderr, "nbdfs-info: warning: %s\n", line);
}

/* Shows the export or the list.  Returns the exit status: 0, 1 when the
 * server, the export or the credentials fail, 2 for a malformed URI or
 * option value. */
static int
run(const char *text, GError **error)
{
  g_autoptr(nbd_uri) uri = NULL;
  struct nbd_handshake_opts o = { 0 };
  struct nbd_transport *t = NULL;
  int rc;

  /* A malformed URI or option value is bad usage (2), like an unknown
   * option; what fails after it is the server's or the credentials'. */
  rc = nbd_uri_parse(text, &uri, error);
  if (rc == 0)
    rc = nbd_tls_policy_parse(opt_tls, uri, &o.tls, error);
  if (rc < 0)
    return 2;
  if (o.tls != NBD_TLS_OFF)
    rc = nbd_tls_config_new(&tls_settings, uri, &o.tls_config, error);
  if (rc < 0)
    return 1;
  o.export_name = uri->export_name;

  if (opt_list) {
    g_autoptr(GPtrArray) list = NULL;

    rc = nbd_connect_list(uri, &o, MAX_LIST_ENTRIES, &list, error);
    if (rc == 0)
      print_list(list);
  } else {
    struct nbd_export_info info;

    rc = nbd_connect_go(uri, &o, &t, &info, error);
    if (rc == 0) {
      struct nbd_conn *c = nbd_conn_new(t, &info);

      t = NULL;
      if (opt_json)
        print_info_json(nbd_conn_info(c));
      else
        print_info_text(nbd_conn_info(c));
      nbd_conn_close(c, 5000);
    }
  }
  nbd_transport_free(t);
  nbd_tls_config_free(o.tls_config);
  return rc < 0 ? 1 : 0;
}

int
main(int argc, char **argv)
{
  g_autoptr(GOptionContext) ctx = g_option_context_new("URI");
  g_autoptr(GError) error = NULL;
  int status;

  setlocale(LC_ALL, "");
  g_option_context_add_main_entries(ctx, entries, NULL);
  g_option_context_add_group(ctx, nbd_tls_option_group(&tls_settings));
  nbd_log_hook = log_line;
  g_option_context_set_summary(ctx,
    "Show the size, flags and limits of an NBD export, or list the\n"
    "exports of a server.  URI is nbd://HOST[:PORT]/EXPORT,\n"
    "nbds://..., nbd+unix:///EXPORT?socket=PATH or nbds+unix://...");
  if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
    fprintf(stderr, "nbdfs-info: parse options: %s\n", error->message);
    return 2;
  }
  if (opt_version) {
    printf("nbdfs-info %s\n", NBDFS_VERSION);
    return 0;
  }
  if (argc != 2) {
    fprintf(stderr, "nbdfs-info: usage: nbdfs-info [--list] [--json] "
                    "URI (see --help)\n");
    return 2;
  }

  status = run(argv[1], &error);
  if (status != 0)
    fprintf(stderr, "nbdfs-info: %s\n", error->message);
  nbd_tls_settings_clear(&tls_settings);
  return status;
}
