/* nbdfs: the TLS command-line options, shared by nbdfs and nbdfs-info.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>

#include "internal.h"

static gboolean
parse_verify_peer(const char *name, const char *value, gpointer data,
                  GError **error)
{
  struct nbd_tls_settings *cli = data;

  if (g_ascii_strcasecmp(value, "yes") == 0 || strcmp(value, "1") == 0 ||
      g_ascii_strcasecmp(value, "on") == 0) {
    cli->verify_peer = 1;
    return TRUE;
  }
  if (g_ascii_strcasecmp(value, "no") == 0 || strcmp(value, "0") == 0 ||
      g_ascii_strcasecmp(value, "off") == 0) {
    cli->verify_peer = 0;
    return TRUE;
  }
  g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
              "%s=%s: expected yes or no", name, value);
  return FALSE;
}

GOptionGroup *
nbd_tls_option_group(struct nbd_tls_settings *s)
{
  GOptionGroup *g = g_option_group_new("tls", "TLS options:",
                                       "Show the TLS options", s, NULL);
  GOptionEntry e[13];
  size_t i = 0;

  s->verify_peer = -1;

#define ENTRY(long_name, type, where, help, arg)                          \
  e[i++] = (GOptionEntry) { long_name, 0, 0, type, where, help, arg }

  ENTRY("tls-certificates", G_OPTION_ARG_FILENAME, &s->certificates,
        "Directory or URL of ca-cert.pem, client-*.pem", "DIR");
  ENTRY("tls-ca", G_OPTION_ARG_FILENAME, &s->ca,
        "CA certificates: file, https:// or file:// URL", "FILE");
  ENTRY("tls-cert", G_OPTION_ARG_FILENAME, &s->cert,
        "Client certificate: file or URL", "FILE");
  ENTRY("tls-key", G_OPTION_ARG_FILENAME, &s->key,
        "Client private key (a local file)", "FILE");
  ENTRY("tls-ca-pin", G_OPTION_ARG_STRING, &s->ca_pin,
        "sha256 of the --tls-ca file fetched by URL", "sha256:HEX");
  ENTRY("tls-psk-file", G_OPTION_ARG_FILENAME, &s->psk_file,
        "PSK keys, username:hexkey lines (psktool)", "FILE");
  ENTRY("tls-username", G_OPTION_ARG_STRING, &s->username,
        "PSK identity (default: URI user, else yours)", "NAME");
  ENTRY("tls-hostname", G_OPTION_ARG_STRING, &s->hostname,
        "Name the server certificate must carry", "NAME");
  ENTRY("tls-verify-peer", G_OPTION_ARG_CALLBACK,
        (gpointer) parse_verify_peer,
        "Verify the server (default yes; no is unsafe)", "yes|no");
  ENTRY("tls-priority", G_OPTION_ARG_STRING, &s->priority,
        "gnutls priorities (default: TLS 1.2 and 1.3)",
        "STRING");
  ENTRY("tls-no-fetch", G_OPTION_ARG_NONE, &s->no_fetch,
        "Fetch nothing by URL; use cached copies", NULL);
#undef ENTRY

  e[i] = (GOptionEntry) { NULL };
  g_option_group_add_entries(g, e);
  return g;
}

void
nbd_tls_settings_clear(struct nbd_tls_settings *s)
{
  g_clear_pointer(&s->certificates, g_free);
  g_clear_pointer(&s->ca, g_free);
  g_clear_pointer(&s->cert, g_free);
  g_clear_pointer(&s->key, g_free);
  g_clear_pointer(&s->ca_pin, g_free);
  g_clear_pointer(&s->psk_file, g_free);
  g_clear_pointer(&s->username, g_free);
  g_clear_pointer(&s->hostname, g_free);
  g_clear_pointer(&s->priority, g_free);
  g_clear_pointer(&s->cache_dir, g_free);
}

int
nbd_tls_policy_parse(const char *text, const struct nbd_uri *uri,
                     enum nbd_tls_policy *out, GError **error)
{
  if (text == NULL)
    *out = uri->tls_required ? NBD_TLS_REQUIRE : NBD_TLS_OFF;
  else if (strcmp(text, "off") == 0)
    *out = NBD_TLS_OFF;
  else if (strcmp(text, "prefer") == 0)
    *out = NBD_TLS_PREFER;
  else if (strcmp(text, "require") == 0)
    *out = NBD_TLS_REQUIRE;
  else
    return nbd_set_error(error, EINVAL, "parse options: --tls=%s: "
                         "expected off, prefer or require", text);

  /* U2: nbds:// means TLS is required, whatever else was said. */
  if (uri->tls_required && *out != NBD_TLS_REQUIRE)
    return nbd_set_error(error, EINVAL, "parse options: --tls=%s: %s:// "
                         "URIs always require TLS", text, uri->scheme);
  return 0;
}
