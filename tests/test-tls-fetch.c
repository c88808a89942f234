/* nbdfs interop tests: TLS credentials fetched by URL, and the
 * intermediate a server forgot, fetched from its certificate's AIA
 * caIssuers URL.
 *
 * A small HTTPS and HTTP file server (tls-httpd.py, Python's standard
 * library) serves the test PKI on loopback; nbdkit serves exports whose
 * certificates are signed by an intermediate CA it does not send.  The
 * cases: a CA by https:// and file:// URL, the sha256 pin, http://
 * refused without a pin, the size cap, the timeout, AIA in DER, PKCS#7
 * and PEM, an AIA intermediate that does not lead to a trusted root,
 * --tls-no-fetch, and the cache used offline.  T6 and T16a: every
 * refusal here ends the handshake.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "nbdproto.h"
#include "testlib.h"

static char *pki;
static GPid httpd = -1;
static int https_port, http_port;
static int cache_n;

/* ---- Log lines of nbdproto, captured ---- */

static GMutex log_lock;
static GString *log_text;

static void
capture_log(enum nbd_log_level level, const char *line)
{
  g_mutex_lock(&log_lock);
  g_string_append_printf(log_text, "%s\n", line);
  g_mutex_unlock(&log_lock);
}

static char *
take_log(void)
{
  char *s;

  g_mutex_lock(&log_lock);
  s = g_strdup(log_text->str);
  g_string_truncate(log_text, 0);
  g_mutex_unlock(&log_lock);
  return s;
}

/* ---- Helpers ---- */

static char *
https_url(const char *file)
{
  return g_strdup_printf("https://127.0.0.1:%d/%s", https_port, file);
}

static char *
pin_of(const char *file)
{
  g_autofree char *path = g_build_filename(pki, "http", file, NULL);
  g_autofree char *text = NULL;
  g_autofree char *sum = NULL;
  gsize len;

  g_assert_true(g_file_get_contents(path, &text, &len, NULL));
  sum = g_compute_checksum_for_data(G_CHECKSUM_SHA256, (guint8 *) text,
                                    len);
  return g_strdup_printf("sha256:%s", sum);
}

/* Fresh settings with a cache of their own; the test owns the strings
 * it puts in and nbd_tls_settings_clear() frees them. */
static void
settings_init(struct nbd_tls_settings *set)
{
  memset(set, 0, sizeof *set);
  set->verify_peer = -1;
  set->cache_dir = g_strdup_printf("%s/cache-%d", tl_tmpdir(), ++cache_n);
}

static int
load(struct nbd_tls_settings *set, const char *host,
     struct nbd_tls_config **cfg, GError **error)
{
  g_autofree char *text = g_strdup_printf("nbds://%s/", host);
  g_autoptr(nbd_uri) uri = NULL;

  g_assert_cmpint(nbd_uri_parse(text, &uri, NULL), ==, 0);
  return nbd_tls_config_new(set, uri, cfg, error);
}

static struct tl_server *
start_nbdkit(const char *dir)
{
  g_autofree char *certs = g_strdup_printf("--tls-certificates=%s/%s",
                                           pki, dir);
  const char *args[] = { "--tls=require", certs, "memory", "1M", NULL };
  g_autoptr(GError) error = NULL;
  struct tl_server *s;

  s = tl_nbdkit_start_tcp(args, &error);
  g_assert_no_error(error);
  return s;
}

/* Connects to s with set; returns 0 (TLS up) or the error. */
static int
try_connect(const struct tl_server *s, struct nbd_tls_settings *set,
            GError **error)
{
  g_autofree char *text = g_strdup_printf("nbds://127.0.0.1:%d/",
                                          s->port);
  g_autoptr(nbd_uri) uri = NULL;
  struct nbd_handshake_opts o = { .export_name = "",
                                  .tls = NBD_TLS_REQUIRE };
  struct nbd_conn *conn = NULL;
  int rc;

  g_assert_cmpint(nbd_uri_parse(text, &uri, NULL), ==, 0);
  rc = nbd_tls_config_new(set, uri, &o.tls_config, error);
  if (rc == 0)
    rc = nbd_conn_connect(uri, &o, &conn, error);
  if (rc == 0) {
    g_assert_true(nbd_conn_info(conn)->tls);
    nbd_conn_close(conn, 5000);
  }
  nbd_tls_config_free(o.tls_config);
  return rc;
}

#define assert_has(text, part)                                          \
  do {                                                                  \
    if (strstr((text), (part)) == NULL)                                 \
      g_error("'%s' lacks '%s'", (text), (part));                       \
  } while (0)

static unsigned
files_in(const char *dir)
{
  g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
  unsigned n = 0;

  while (d != NULL && g_dir_read_name(d) != NULL)
    n++;
  return n;
}

/* ---- Cases ---- */

/* The CA by https:// URL; the copy lands in the cache. */
static void
test_https_ca(void)
{
  struct nbd_tls_settings set;
  g_autoptr(GError) error = NULL;
  struct tl_server *s = start_nbdkit("server");

  settings_init(&set);
  set.ca = https_url("ca-cert.pem");
  g_assert_cmpint(try_connect(s, &set, &error), ==, 0);
  g_assert_cmpuint(files_in(set.cache_dir), ==, 1);
  nbd_tls_settings_clear(&set);

  /* --tls-certificates as a URL: its ca-cert.pem is fetched. */
  settings_init(&set);
  set.certificates = https_url("");
  g_assert_cmpint(try_connect(s, &set, &error), ==, 0);
  g_assert_cmpuint(files_in(set.cache_dir), ==, 1);
  tl_server_stop(s);
  nbd_tls_settings_clear(&set);
}

/* --tls-ca-pin: the right hash passes, another fails, naming both. */
static void
test_pin(void)
{
  struct nbd_tls_settings set;
  struct nbd_tls_config *cfg = NULL;
  g_autoptr(GError) error = NULL;

  settings_init(&set);
  set.ca = https_url("ca-cert.pem");
  set.ca_pin = pin_of("ca-cert.pem");
  g_assert_cmpint(load(&set, "localhost", &cfg, &error), ==, 0);
  nbd_tls_config_free(cfg);

  g_free(set.ca_pin);
  set.ca_pin = pin_of("int.pem");
  g_assert_cmpint(load(&set, "localhost", &cfg, &error), ==, -EACCES);
  assert_has(error->message, "which does not match the pin sha256:");
  assert_has(error->message, set.ca);
  nbd_tls_settings_clear(&set);
}

/* http:// proves nothing: refused unless pinned. */
static void
test_http(void)
{
  struct nbd_tls_settings set;
  struct nbd_tls_config *cfg = NULL;
  g_autoptr(GError) error = NULL;

  settings_init(&set);
  set.ca = g_strdup_printf("http://127.0.0.1:%d/ca-cert.pem", http_port);
  g_assert_cmpint(load(&set, "localhost", &cfg, &error), ==, -EACCES);
  assert_has(error->message, "http:// is not authenticated; use https:// "
                             "or give the file's hash with --tls-ca-pin");
  g_clear_error(&error);

  set.ca_pin = pin_of("ca-cert.pem");
  g_assert_cmpint(load(&set, "localhost", &cfg, &error), ==, 0);
  nbd_tls_config_free(cfg);
  nbd_tls_settings_clear(&set);
}

/* Bounded in size and in time. */
static void
test_limits(void)
{
  struct nbd_tls_settings set;
  struct nbd_tls_config *cfg = NULL;
  g_autoptr(GError) error = NULL;
  gint64 start;

  settings_init(&set);
  set.ca = https_url("big.pem");
  g_assert_cmpint(load(&set, "localhost", &cfg, &error), ==, -EFBIG);
  assert_has(error->message, "larger than 1048576 bytes");
  g_clear_error(&error);

  g_free(set.ca);
  set.ca = https_url("slow");
  set.fetch_timeout_s = 1;
  start = g_get_monotonic_time();
  g_assert_cmpint(load(&set, "localhost", &cfg, &error), <, 0);
  g_assert_cmpint(g_get_monotonic_time() - start, <, 5 * G_USEC_PER_SEC);
  assert_has(error->message, set.ca);
  nbd_tls_settings_clear(&set);
}

/* file:// URLs read a local file. */
static void
test_file_url(void)
{
  struct nbd_tls_settings set;
  g_autoptr(GError) error = NULL;
  struct tl_server *s = start_nbdkit("server");

  settings_init(&set);
  set.ca = g_strdup_printf("file://%s/ca-cert.pem", pki);
  g_assert_cmpint(try_connect(s, &set, &error), ==, 0);
  tl_server_stop(s);
  nbd_tls_settings_clear(&set);
}

/* A server that sends only its leaf: the intermediate is fetched from
 * the AIA URL, in each of the three forms, and cached. */
static void
test_aia_formats(void)
{
  static const char *const dirs[] = { "aia-der", "aia-p7", "aia-pem" };

  for (size_t i = 0; i < G_N_ELEMENTS(dirs); i++) {
    struct nbd_tls_settings set;
    g_autoptr(GError) error = NULL;
    struct tl_server *s = start_nbdkit(dirs[i]);

    g_test_message("%s", dirs[i]);
    settings_init(&set);
    set.ca = g_build_filename(pki, "ca-cert.pem", NULL);
    g_assert_cmpint(try_connect(s, &set, &error), ==, 0);
    g_assert_cmpuint(files_in(set.cache_dir), ==, 1);

    /* Once more with the same cache and --tls-no-fetch. */
    set.no_fetch = true;
    g_assert_cmpint(try_connect(s, &set, &error), ==, 0);
    tl_server_stop(s);
    nbd_tls_settings_clear(&set);
  }
}

/* --tls-no-fetch with nothing cached: the chain stays incomplete, and
 * the message says why. */
static void
test_aia_no_fetch(void)
{
  struct nbd_tls_settings set;
  g_autoptr(GError) error = NULL;
  struct tl_server *s = start_nbdkit("aia-der");

  settings_init(&set);
  set.ca = g_build_filename(pki, "ca-cert.pem", NULL);
  set.no_fetch = true;
  g_assert_cmpint(try_connect(s, &set, &error), ==, -EACCES);
  assert_has(error->message, "signer not trusted (issuer: CN=nbdfs test "
                             "intermediate CA)");
  assert_has(error->message, "was not fetched (--tls-no-fetch)");
  tl_server_stop(s);
  nbd_tls_settings_clear(&set);
}

/* An AIA intermediate of another CA does not make the chain trusted;
 * neither does a certificate without AIA. */
static void
test_aia_untrusted(void)
{
  struct nbd_tls_settings set;
  g_autoptr(GError) error = NULL;
  struct tl_server *s = start_nbdkit("aia-other");
  g_autofree char *url = https_url("other-int.der");

  settings_init(&set);
  set.ca = g_build_filename(pki, "ca-cert.pem", NULL);
  g_assert_cmpint(try_connect(s, &set, &error), ==, -EACCES);
  assert_has(error->message, "signer not trusted");
  assert_has(error->message, url);
  g_assert_cmpuint(files_in(set.cache_dir), ==, 0);
  tl_server_stop(s);
  g_clear_error(&error);

  s = start_nbdkit("int");
  g_assert_cmpint(try_connect(s, &set, &error), ==, -EACCES);
  assert_has(error->message, "signer not trusted");
  tl_server_stop(s);
  nbd_tls_settings_clear(&set);
}

/* Offline: the file server is gone; what was fetched before is used
 * from the cache, with a warning when the fetch was tried. */
static void
test_offline(void)
{
  struct nbd_tls_settings set, aia;
  struct nbd_tls_config *cfg = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *log = NULL;
  struct tl_server *s;

  settings_init(&set);
  set.ca = https_url("ca-cert.pem");
  g_assert_cmpint(load(&set, "localhost", &cfg, &error), ==, 0);
  nbd_tls_config_free(cfg);
  settings_init(&aia);
  aia.ca = g_build_filename(pki, "ca-cert.pem", NULL);
  s = start_nbdkit("aia-der");
  g_assert_cmpint(try_connect(s, &aia, &error), ==, 0);

  kill(httpd, SIGTERM);
  waitpid(httpd, NULL, 0);
  httpd = -1;
  g_free(take_log());

  g_assert_cmpint(load(&set, "localhost", &cfg, &error), ==, 0);
  nbd_tls_config_free(cfg);
  log = take_log();
  assert_has(log, "using the copy cached on");

  set.no_fetch = true;
  g_assert_cmpint(load(&set, "localhost", &cfg, &error), ==, 0);
  nbd_tls_config_free(cfg);

  /* The intermediate, from the disk cache, in a new configuration. */
  g_assert_cmpint(try_connect(s, &aia, &error), ==, 0);
  tl_server_stop(s);

  g_free(set.ca);
  set.ca = https_url("never-fetched.pem");
  g_assert_cmpint(load(&set, "localhost", &cfg, &error), ==, -ENOENT);
  assert_has(error->message, "not in the cache");
  nbd_tls_settings_clear(&set);
  nbd_tls_settings_clear(&aia);
}

/* ---- Setup ---- */

static bool
start_httpd(const char *script)
{
  g_autofree char *dir = g_build_filename(pki, "http", NULL);
  g_autofree char *cert = g_build_filename(dir, "server-cert.pem", NULL);
  g_autofree char *key = g_build_filename(dir, "server-key.pem", NULL);
  g_autofree char *ports = g_build_filename(tl_tmpdir(), "httpd.ports",
                                            NULL);
  g_autofree char *parent = g_strdup_printf("%d", (int) getpid());
  const char *argv[] = { "python3", script, dir, cert, key, ports, parent,
                         NULL };
  gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;

  if (!g_spawn_async(NULL, (char **) argv, NULL,
                     G_SPAWN_SEARCH_PATH | G_SPAWN_DO_NOT_REAP_CHILD, NULL,
                     NULL, &httpd, NULL))
    return false;
  while (g_get_monotonic_time() < deadline) {
    g_autofree char *text = NULL;

    if (g_file_get_contents(ports, &text, NULL, NULL) &&
        sscanf(text, "%d %d", &https_port, &http_port) == 2)
      return true;
    g_usleep(50000);
  }
  return false;
}

static void
stop_httpd(void)
{
  if (httpd > 0) {
    kill(httpd, SIGTERM);
    waitpid(httpd, NULL, 0);
    httpd = -1;
  }
}

static bool
make_pki(const char *make_pki_sh)
{
  static const char *const leaves[][2] = {
    { "aia-der", "int.der" }, { "aia-p7", "int.p7c" },
    { "aia-pem", "int.pem" }, { "aia-other", "other-int.der" },
  };
  g_autofree char *cmd = NULL;
  int status = -1;

  pki = g_build_filename(tl_tmpdir(), "pki", NULL);
  cmd = g_strdup_printf("bash %s %s", make_pki_sh, pki);
  g_spawn_command_line_sync(cmd, NULL, NULL, &status, NULL);
  if (status != 0)
    return false;

  {
    g_autofree char *bundle = g_build_filename(pki, "ca-cert.pem", NULL);

    g_setenv("CURL_CA_BUNDLE", bundle, TRUE);
  }
  if (!start_httpd(g_getenv("TLS_HTTPD")))
    return false;

  /* The leaves name the server's port, known only now. */
  for (size_t i = 0; i < G_N_ELEMENTS(leaves); i++) {
    g_autofree char *url = https_url(leaves[i][1]);

    g_free(cmd);
    cmd = g_strdup_printf("bash %s %s aia %s %s", make_pki_sh, pki, url,
                          leaves[i][0]);
    g_spawn_command_line_sync(cmd, NULL, NULL, &status, NULL);
    if (status != 0)
      return false;
  }
  return true;
}

static bool
have_program(const char *name)
{
  g_autofree char *path = g_find_program_in_path(name);

  return path != NULL;
}

static void
test_prerequisites(void)
{
  tl_require("certtool");
  tl_require("python3");
  tl_require("nbdkit");
  if (g_getenv("MAKE_PKI") == NULL || g_getenv("TLS_HTTPD") == NULL)
    g_test_fail_printf("MAKE_PKI or TLS_HTTPD is not set: run through "
                       "meson test");
  else
    g_test_fail_printf("the PKI or the file server could not be set up "
                       "(see above)");
}

int
main(int argc, char **argv)
{
  const char *make_pki_sh = g_getenv("MAKE_PKI");
  bool ready = false;
  int rc;

  tl_init(&argc, &argv);
  log_text = g_string_new(NULL);
  nbd_log_hook = capture_log;

  if (make_pki_sh != NULL && g_getenv("TLS_HTTPD") != NULL &&
      have_program("certtool") &&
      have_program("python3") &&
      have_program("nbdkit"))
    ready = make_pki(make_pki_sh);

  if (!ready) {
    g_test_add_func("/tls/fetch/prerequisites", test_prerequisites);
  } else {
    g_test_add_func("/tls/fetch/https-ca/connects", test_https_ca);
    g_test_add_func("/tls/fetch/pin/match-and-mismatch", test_pin);
    g_test_add_func("/tls/fetch/http/refused-without-pin", test_http);
    g_test_add_func("/tls/fetch/limits/size-and-time", test_limits);
    g_test_add_func("/tls/fetch/file-url", test_file_url);
    g_test_add_func("/tls/fetch/aia/der-pkcs7-pem/T16a", test_aia_formats);
    g_test_add_func("/tls/fetch/aia/no-fetch/T6", test_aia_no_fetch);
    g_test_add_func("/tls/fetch/aia/untrusted-intermediate/T6",
                    test_aia_untrusted);
    /* Last: it stops the file server. */
    g_test_add_func("/tls/fetch/offline/cache-reuse", test_offline);
  }
  rc = g_test_run();
  stop_httpd();
  return rc;
}
