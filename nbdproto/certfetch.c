/* nbdfs: credentials by URL, and intermediates a server forgot to send.
 *
 * nbd_fetch() gets a CA or certificate from an https:// or file:// URL
 * (http:// only with a sha256 pin, or for AIA, whose content is proven
 * by the chain it completes), bounded in size and time, and keeps a
 * copy under $XDG_CACHE_HOME/nbdfs so that a mount works offline after
 * the first fetch.  nbd_aia_complete() follows a certificate's
 * caIssuers URL to the intermediate that signed it.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <sys/stat.h>

#include <curl/curl.h>
#include <gnutls/pkcs7.h>
#include <glib/gstdio.h>

#include "config.h"
#include "tls-internal.h"

#define CONNECT_TIMEOUT_S 10
#define MAX_REDIRECTS 3

bool
nbd_fetch_is_url(const char *s)
{
  return g_str_has_prefix(s, "https://") || g_str_has_prefix(s, "http://") ||
         g_str_has_prefix(s, "file://");
}

int
nbd_fetch_check_pin(const char *pin, const char *what, GError **error)
{
  const char *hex = pin + strlen("sha256:");

  if (!g_str_has_prefix(pin, "sha256:") || strlen(hex) != 64 ||
      strspn(hex, "0123456789abcdefABCDEF") != 64)
    return nbd_set_error(error, EINVAL, "tls: %s=%s: expected sha256: and "
                         "64 hexadecimal digits", what, pin);
  return 0;
}

static int
check_pin(const char *url, GBytes *data, const char *pin, GError **error)
{
  g_autofree char *sum = NULL;

  if (pin == NULL)
    return 0;
  sum = g_compute_checksum_for_bytes(G_CHECKSUM_SHA256, data);
  if (g_ascii_strcasecmp(sum, pin + strlen("sha256:")) != 0)
    return nbd_set_error(error, EACCES, "tls: %s: content has sha256:%s, "
                         "which does not match the pin %s", url, sum, pin);
  return 0;
}

/* ---- The cache ---- */

static char *
cache_path(const char *dir, const char *url)
{
  g_autofree char *sum = g_compute_checksum_for_string(G_CHECKSUM_SHA256,
                                                       url, -1);

  return g_strdup_printf("%s/%s.crt", dir, sum);
}

static void
cache_store(const char *dir, const char *url, GBytes *data)
{
  g_autofree char *path = cache_path(dir, url);
  g_autoptr(GError) local = NULL;

  /* Failing to cache costs only the offline copy: warn, go on. */
  if (g_mkdir_with_parents(dir, 0700) < 0 ||
      !g_file_set_contents_full(path, g_bytes_get_data(data, NULL),
                                g_bytes_get_size(data),
                                G_FILE_SET_CONTENTS_CONSISTENT, 0600,
                                &local))
    nbd_log(NBD_LOG_WARNING, "tls: cache %s: cannot store %s: %s", dir, url,
            local ? local->message : g_strerror(errno));
}

static GBytes *
cache_load(const char *dir, const char *url, char **when)
{
  g_autofree char *path = cache_path(dir, url);
  char *text = NULL;
  gsize len;
  GStatBuf st;

  if (!g_file_get_contents(path, &text, &len, NULL))
    return NULL;
  if (when != NULL) {
    g_autoptr(GDateTime) dt = NULL;

    if (g_stat(path, &st) == 0)
      dt = g_date_time_new_from_unix_utc(st.st_mtime);
    *when = dt ? g_date_time_format(dt, "%Y-%m-%d %H:%M UTC")
               : g_strdup("?");
  }
  return g_bytes_new_take(text, len);
}

/* ---- Fetching ---- */

struct sink {
  GByteArray *buf;
  size_t max;
  bool too_big;
};

static size_t
sink_write(char *data, size_t size, size_t nmemb, void *user)
{
  struct sink *k = user;
  size_t n = size * nmemb;

  if (k->buf->len + n > k->max) {
    k->too_big = true;
    return 0; /* makes curl stop with CURLE_WRITE_ERROR */
  }
  g_byte_array_append(k->buf, (guint8 *) data, n);
  return n;
}

static gpointer
curl_init_once(gpointer unused)
{
  curl_global_init(CURL_GLOBAL_DEFAULT);
  return NULL;
}

/* A local file by path or file:// URL, within the size cap. */
static int
read_local(const char *url, const char *path, size_t max, GBytes **out,
           GError **error)
{
  g_autoptr(GError) local = NULL;
  char *text = NULL;
  gsize len;

  if (!g_file_get_contents(path, &text, &len, &local))
    return nbd_set_error(error, ENOENT, "tls: %s: %s", url, local->message);
  if (len > max) {
    g_free(text);
    return nbd_set_error(error, EFBIG, "tls: %s: larger than %zu bytes",
                         url, max);
  }
  *out = g_bytes_new_take(text, len);
  return 0;
}

static int
fetch_network(const char *url, const struct nbd_fetch_opts *o,
              GBytes **out, GError **error)
{
  static GOnce once = G_ONCE_INIT;
  char errbuf[CURL_ERROR_SIZE] = "";
  struct sink k = { .buf = g_byte_array_new(), .max = o->max_bytes };
  const char *bundle = g_getenv("CURL_CA_BUNDLE");
  long status = 0;
  CURLcode cc;
  CURL *c;

  g_once(&once, curl_init_once, NULL);
  c = curl_easy_init();
  if (c == NULL) {
    g_byte_array_unref(k.buf);
    return nbd_set_error(error, ENOMEM, "tls: %s: cannot start libcurl",
                         url);
  }

  if (bundle == NULL)
    bundle = g_getenv("SSL_CERT_FILE");
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR,
                   o->allow_http || o->pin ? "https,http" : "https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR,
                   o->allow_http || o->pin ? "https,http" : "https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, (long) MAX_REDIRECTS);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long) CONNECT_TIMEOUT_S);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, (long) o->timeout_s);
  curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) o->max_bytes);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "nbdfs/" NBDFS_VERSION);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &k);
  if (bundle != NULL)
    curl_easy_setopt(c, CURLOPT_CAINFO, bundle);

  cc = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(c);

  if (k.too_big || cc == CURLE_FILESIZE_EXCEEDED) {
    g_byte_array_unref(k.buf);
    return nbd_set_error(error, EFBIG, "tls: %s: larger than %zu bytes",
                         url, o->max_bytes);
  }
  if (cc != CURLE_OK) {
    g_byte_array_unref(k.buf);
    return nbd_set_error(error, cc == CURLE_OPERATION_TIMEDOUT ? ETIMEDOUT
                                                               : EIO,
                         "tls: %s: %s", url,
                         *errbuf ? errbuf : curl_easy_strerror(cc));
  }
  *out = g_byte_array_free_to_bytes(k.buf);
  return 0;
}

int
nbd_fetch(const char *url, const struct nbd_fetch_opts *o, GBytes **out,
          GError **error)
{
  g_autoptr(GError) net = NULL;
  g_autoptr(GBytes) data = NULL;
  g_autofree char *when = NULL;
  int rc;

  if (g_str_has_prefix(url, "file://")) {
    g_autofree char *path = g_filename_from_uri(url, NULL, NULL);

    if (path == NULL)
      return nbd_set_error(error, EINVAL, "tls: %s: not a valid file URL",
                           url);
    rc = read_local(url, path, o->max_bytes, &data, error);
    if (rc == 0)
      rc = check_pin(url, data, o->pin, error);
    if (rc == 0)
      *out = g_steal_pointer(&data);
    return rc;
  }

  /* Plain http proves nothing about what arrives; a pin does. */
  if (g_str_has_prefix(url, "http://") && o->pin == NULL && !o->allow_http)
    return nbd_set_error(error, EACCES, "tls: %s: http:// is not "
                         "authenticated; use https:// or give the file's "
                         "hash with --tls-ca-pin sha256:HEX", url);

  if (!o->no_fetch) {
    rc = fetch_network(url, o, &data, &net);
    if (rc == 0) {
      rc = check_pin(url, data, o->pin, error);
      if (rc < 0)
        return rc;
      cache_store(o->cache_dir, url, data);
      *out = g_steal_pointer(&data);
      return 0;
    }
    if (rc == -EFBIG) {
      g_propagate_error(error, g_steal_pointer(&net));
      return rc;
    }
  }

  /* Offline, or the server is away: the copy from an earlier fetch. */
  data = cache_load(o->cache_dir, url, &when);
  if (data == NULL) {
    if (net != NULL) {
      g_propagate_error(error, g_steal_pointer(&net));
      return -EIO;
    }
    return nbd_set_error(error, ENOENT, "tls: %s: not in the cache %s, "
                         "and fetching is off (--tls-no-fetch)", url,
                         o->cache_dir);
  }
  rc = check_pin(url, data, o->pin, error);
  if (rc < 0)
    return rc;
  if (net != NULL)
    nbd_log(NBD_LOG_WARNING, "%s; using the copy cached on %s",
            net->message, when);
  *out = g_steal_pointer(&data);
  return 0;
}

/* ---- Certificates in DER, PEM or PKCS#7 ---- */

void
nbd_certs_free(gnutls_x509_crt_t *list, unsigned n)
{
  for (unsigned i = 0; i < n; i++)
    gnutls_x509_crt_deinit(list[i]);
  gnutls_free(list);
}

static int
parse_pkcs7(const gnutls_datum_t *d, gnutls_x509_crt_t **out)
{
  gnutls_pkcs7_t p7;
  gnutls_x509_crt_t *list = NULL;
  int count, n = 0;

  if (gnutls_pkcs7_init(&p7) < 0)
    return -1;
  if (gnutls_pkcs7_import(p7, d, GNUTLS_X509_FMT_DER) < 0 &&
      gnutls_pkcs7_import(p7, d, GNUTLS_X509_FMT_PEM) < 0) {
    gnutls_pkcs7_deinit(p7);
    return -1;
  }
  count = gnutls_pkcs7_get_crt_count(p7);
  if (count > 0 && count <= NBD_TLS_MAX_CHAIN)
    list = gnutls_calloc(count, sizeof *list);
  for (int i = 0; list != NULL && i < count; i++) {
    gnutls_datum_t raw = { NULL, 0 };

    if (gnutls_pkcs7_get_crt_raw2(p7, i, &raw) < 0)
      continue;
    gnutls_x509_crt_init(&list[n]);
    if (gnutls_x509_crt_import(list[n], &raw, GNUTLS_X509_FMT_DER) == 0)
      n++;
    else
      gnutls_x509_crt_deinit(list[n]);
    gnutls_free(raw.data);
  }
  gnutls_pkcs7_deinit(p7);
  if (n == 0) {
    gnutls_free(list);
    return -1;
  }
  *out = list;
  return n;
}

int
nbd_certs_parse(GBytes *data, gnutls_x509_crt_t **out, GError **error)
{
  gnutls_datum_t d = {
    .data = (unsigned char *) g_bytes_get_data(data, NULL),
    .size = g_bytes_get_size(data),
  };
  unsigned n = 0;
  int rc;

  /* AIA servers publish DER (RFC 5280 says so), PEM or a "certs-only"
   * PKCS#7; try them in that order. */
  rc = gnutls_x509_crt_list_import2(out, &n, &d, GNUTLS_X509_FMT_DER, 0);
  if (rc < 0 || n == 0)
    rc = gnutls_x509_crt_list_import2(out, &n, &d, GNUTLS_X509_FMT_PEM, 0);
  if (rc >= 0 && n > 0)
    return n;
  rc = parse_pkcs7(&d, out);
  if (rc > 0)
    return rc;
  return nbd_set_error(error, EINVAL, "no certificate in DER, PEM or "
                       "PKCS#7 form");
}

/* ---- AIA: the intermediate a server forgot ---- */

/* The first caIssuers URL of crt, or NULL. */
static char *
ca_issuers_url(gnutls_x509_crt_t crt)
{
  for (unsigned seq = 0; seq < 16; seq++) {
    gnutls_datum_t d = { NULL, 0 };
    unsigned critical;
    int rc = gnutls_x509_crt_get_authority_info_access(
      crt, seq, GNUTLS_IA_CAISSUERS_URI, &d, &critical);
    char *url;

    if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
      return NULL;
    if (rc < 0)
      continue; /* another access method (OCSP) */
    url = g_strndup((char *) d.data, d.size);
    gnutls_free(d.data);
    if (g_str_has_prefix(url, "http://") ||
        g_str_has_prefix(url, "https://"))
      return url;
    g_free(url);
  }
  return NULL;
}

/* The bytes at url: remembered in this process, cached on disk, or
 * fetched (unless --tls-no-fetch).  *fetched tells which. */
static GBytes *
aia_get(struct nbd_tls_config *cfg, const char *url, bool *fresh,
        GString *why)
{
  struct nbd_fetch_opts fo = {
    .cache_dir = cfg->cache_dir,
    .timeout_s = cfg->fetch_timeout_s,
    .max_bytes = MIN(cfg->fetch_max_bytes, 64 * 1024),
    .allow_http = true,
    .what = "AIA",
  };
  g_autoptr(GError) local = NULL;
  GBytes *data;

  *fresh = false;
  g_mutex_lock(&cfg->lock);
  data = g_hash_table_lookup(cfg->aia, url);
  if (data != NULL)
    g_bytes_ref(data);
  g_mutex_unlock(&cfg->lock);
  if (data != NULL)
    return data;

  data = cache_load(cfg->cache_dir, url, NULL);
  if (data != NULL)
    return data;

  if (!cfg->fetch) {
    g_string_append_printf(why, "the missing intermediate at %s was not "
                           "fetched (--tls-no-fetch)", url);
    return NULL;
  }
  if (fetch_network(url, &fo, &data, &local) < 0) {
    g_string_append_printf(why, "fetching the missing intermediate "
                           "failed: %s", local->message);
    return NULL;
  }
  *fresh = true;
  return data;
}

unsigned
nbd_aia_complete(struct nbd_tls_config *cfg, gnutls_x509_crt_t *chain,
                 unsigned n, unsigned *status, GString *why)
{
  unsigned start = n;

  for (unsigned depth = 0; depth < NBD_TLS_MAX_FETCHED; depth++) {
    g_autofree char *url = ca_issuers_url(chain[n - 1]);
    g_autoptr(GBytes) data = NULL;
    g_autoptr(GError) local = NULL;
    gnutls_x509_crt_t *list = NULL;
    bool fresh, found = false;
    int count;

    /* No URL: a plain wrong CA, most likely; nothing to add. */
    if (url == NULL)
      break;
    data = aia_get(cfg, url, &fresh, why);
    if (data == NULL)
      break;

    count = nbd_certs_parse(data, &list, &local);
    if (count < 0) {
      g_string_append_printf(why, "%s: %s", url, local->message);
      break;
    }

    /* Keep only a certificate that really issued the last one. */
    for (int i = 0; i < count; i++) {
      if (!found && gnutls_x509_crt_check_issuer(chain[n - 1], list[i])) {
        chain[n++] = list[i];
        list[i] = NULL;
        found = true;
      }
    }
    for (int i = 0; i < count; i++)
      if (list[i] != NULL)
        gnutls_x509_crt_deinit(list[i]);
    gnutls_free(list);
    if (!found) {
      g_string_append_printf(why, "%s holds no issuer of the server's "
                             "certificate", url);
      break;
    }

    /* Accepted only when the chain now ends in a trusted root. */
    *status = nbd_tls_verify_chain(cfg, chain, n);
    if (*status == 0) {
      g_mutex_lock(&cfg->lock);
      g_hash_table_replace(cfg->aia, g_strdup(url), g_bytes_ref(data));
      g_mutex_unlock(&cfg->lock);
      if (fresh)
        cache_store(cfg->cache_dir, url, data);
      g_string_truncate(why, 0);
      return n;
    }
    if (!(*status & GNUTLS_CERT_SIGNER_NOT_FOUND) ||
        depth + 1 == NBD_TLS_MAX_FETCHED) {
      g_string_append_printf(why, "the intermediate fetched from %s does "
                             "not lead to a trusted root", url);
      break;
    }
  }

  /* Not trusted after all: hand back the server's own chain. */
  if (n > start && why->len == 0)
    g_string_append(why, "the fetched intermediate does not lead to a "
                         "trusted root");
  for (unsigned i = start; i < n; i++)
    gnutls_x509_crt_deinit(chain[i]);
  return 0;
}
