/* nbdfs interop tests: TLS against nbdkit, nbd-server and qemu-nbd.
 *
 * The matrix: every server mode the three servers can be put in (NOTLS,
 * FORCEDTLS, SELECTIVETLS, X.509 and PSK, nbdkit's tls-fallback
 * filter), each tried with --tls=off, prefer and require, each with the
 * outcome the issue sets: connected in plaintext, connected over TLS
 * (then one READ goes through), or the exact error.  Then the negative
 * cases: wrong CA, expired certificate, hostname mismatch, missing
 * client certificate, wrong PSK, servers that offer only TLS 1.0 or
 * 1.1; and nbdfs-info's report of version, cipher and peer.
 *
 * T11 (all three server modes) runs through the whole matrix; T5, T9,
 * T15 and T16a through the rows named so.  The PKI is made at test time
 * by make-pki.sh; the servers are always stopped (testlib.h).
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "nbdproto.h"
#include "testlib.h"

#define SIZE (1024 * 1024)

static char *pki;
static char *image;

enum result { PLAIN = 1, TLS, FAIL };

struct outcome {
  enum result result;
  const char *msg;          /* FAIL: must appear in the message */
};

enum server {
  NBDKIT, NBDKIT_PSK, NBD_SERVER, QEMU,
};

enum creds {
  X509,           /* client/: CA, client certificate and key */
  X509_NOCERT,    /* the CA only */
  X509_OTHER,     /* an unrelated CA */
  PSK,            /* alice's key */
  PSK_WRONG,      /* another key for alice */
  PSK_UNKNOWN,    /* bob, whom the server does not know */
  X509_OLD,       /* client/ and a priority that allows TLS 1.0, 1.1 */
};

struct row {
  const char *path;
  enum server server;
  const char *args[6];      /* nbdkit options, nbd-server [generic]
                             * lines, qemu --object */
  const char *export;       /* nbd-server: "d", "plain" or "secret" */
  const char *env;          /* GNUTLS_SYSTEM_PRIORITY_FILE text */
  enum creds creds;
  struct outcome off, prefer, require;
  uint64_t plain_size;      /* the size a plaintext client sees */
};

#define REFUSED(rep)                                                    \
  { FAIL, "tls: server refused STARTTLS (" rep "); not continuing "    \
          "without TLS" }
#define NEEDS_TLS { FAIL, "the server requires TLS; connect with nbds:// " \
                          "or --tls=require" }
#define OK_PLAIN { PLAIN, NULL }
#define OK_TLS { TLS, NULL }

static const char nbd_server_tls[] =
  "certfile = @/server/server-cert.pem\n"
  "keyfile = @/server/server-key.pem\n"
  "cacertfile = @/server/ca-cert.pem\n";

static const struct row matrix[] = {
  /* nbdkit: --tls=off is NOTLS; on is SELECTIVETLS with every export
   * open; require is FORCEDTLS. */
  { "nbdkit/notls/T5-T11", NBDKIT, { "--tls=off" }, NULL, NULL, X509,
    OK_PLAIN, OK_PLAIN, REFUSED("NBD_REP_ERR_POLICY") },
  { "nbdkit/x509-on/T11", NBDKIT,
    { "--tls=on", "--tls-certificates=@/server" }, NULL, NULL, X509,
    OK_PLAIN, OK_TLS, OK_TLS },
  { "nbdkit/x509-require/T9-T11", NBDKIT,
    { "--tls=require", "--tls-certificates=@/server" }, NULL, NULL, X509,
    NEEDS_TLS, OK_TLS, OK_TLS },
  { "nbdkit/psk-on/T11-T16a", NBDKIT_PSK,
    { "--tls=on", "--tls-psk=@/psk/keys.psk" }, NULL, NULL, PSK,
    OK_PLAIN, OK_TLS, OK_TLS },
  { "nbdkit/psk-require/T9-T11-T16a", NBDKIT_PSK,
    { "--tls=require", "--tls-psk=@/psk/keys.psk" }, NULL, NULL, PSK,
    NEEDS_TLS, OK_TLS, OK_TLS },
  { "nbdkit/tls-fallback/T11", NBDKIT,
    { "--tls=on", "--tls-certificates=@/server", "--filter=tls-fallback" },
    NULL, NULL, X509, OK_PLAIN, OK_TLS, OK_TLS, 512 },

  /* nbd-server: no keys is NOTLS; keys make TLS optional; force_tls in
   * [generic] is FORCEDTLS; force_tls on one export is SELECTIVETLS.
   * It asks every TLS client for a certificate. */
  { "nbd-server/notls/T5-T11", NBD_SERVER, { NULL }, "d", NULL, X509,
    OK_PLAIN, OK_PLAIN, REFUSED("NBD_REP_ERR_POLICY") },
  { "nbd-server/optional/T11", NBD_SERVER, { nbd_server_tls }, "d", NULL,
    X509, OK_PLAIN, OK_TLS, OK_TLS },
  { "nbd-server/force_tls/T9-T11", NBD_SERVER,
    { nbd_server_tls, "force_tls = true\n" }, "d", NULL, X509,
    NEEDS_TLS, OK_TLS, OK_TLS },
  { "nbd-server/mixed-plain-export/T11", NBD_SERVER, { nbd_server_tls },
    "plain", NULL, X509, OK_PLAIN, OK_TLS, OK_TLS },
  { "nbd-server/mixed-tls-export/T9-T11", NBD_SERVER, { nbd_server_tls },
    "secret", NULL, X509,
    { FAIL, "export 'secret' requires TLS or does not exist; connect "
            "with nbds:// or --tls=require" }, OK_TLS, OK_TLS },

  /* qemu-nbd: without --tls-creds NOTLS, with them FORCEDTLS. */
  { "qemu-nbd/notls/T5-T11", QEMU, { NULL }, NULL, NULL, X509,
    OK_PLAIN, OK_PLAIN, REFUSED("NBD_REP_ERR_POLICY") },
  { "qemu-nbd/x509/T9-T11", QEMU,
    { "tls-creds-x509,id=tls0,dir=@/server,endpoint=server,"
      "verify-peer=off" }, NULL, NULL, X509,
    NEEDS_TLS, OK_TLS, OK_TLS },
  { "qemu-nbd/x509-verify-peer/T11-T16a", QEMU,
    { "tls-creds-x509,id=tls0,dir=@/server,endpoint=server,"
      "verify-peer=on" }, NULL, NULL, X509,
    NEEDS_TLS, OK_TLS, OK_TLS },
  { "qemu-nbd/psk/T11-T16a", QEMU,
    { "tls-creds-psk,id=tls0,dir=@/psk,endpoint=server" }, NULL, NULL,
    PSK, NEEDS_TLS, OK_TLS, OK_TLS },
};

#define NO_CLIENT_CERT { FAIL, "client certificate required by the server" }
#define BAD_PSK { FAIL, "unknown PSK identity '%s' or wrong key" }
#define SKIP { 0, NULL }

static const struct row negative[] = {
  { "wrong-ca/T6-T16a", NBDKIT,
    { "--tls=require", "--tls-certificates=@/server" }, NULL, NULL,
    X509_OTHER, SKIP, SKIP,
    { FAIL, "tls: server certificate for 127.0.0.1: signer not trusted "
            "(issuer: CN=nbdfs test CA)" } },
  { "expired/T6", NBDKIT,
    { "--tls=require", "--tls-certificates=@/expired" }, NULL, NULL, X509,
    SKIP, SKIP,
    { FAIL, "tls: server certificate for 127.0.0.1: expired on "
            "2020-01-01 00:00:00 UTC" } },
  { "hostname-mismatch/T16a-U18", NBDKIT,
    { "--tls=require", "--tls-certificates=@/wrongname" }, NULL, NULL,
    X509, SKIP, SKIP,
    { FAIL, "tls: server certificate for 127.0.0.1: hostname mismatch: "
            "the certificate is for wrong.example, not 127.0.0.1" } },
  { "no-client-cert/nbdkit", NBDKIT,
    { "--tls=require", "--tls-certificates=@/server",
      "--tls-verify-peer" }, NULL, NULL, X509_NOCERT, SKIP, SKIP,
    NO_CLIENT_CERT },
  { "no-client-cert/qemu-nbd", QEMU,
    { "tls-creds-x509,id=tls0,dir=@/server,endpoint=server,"
      "verify-peer=on" }, NULL, NULL, X509_NOCERT, SKIP, SKIP,
    NO_CLIENT_CERT },
  { "no-client-cert/nbd-server", NBD_SERVER, { nbd_server_tls }, "d",
    NULL, X509_NOCERT, SKIP, SKIP, NO_CLIENT_CERT },
  { "wrong-psk/nbdkit", NBDKIT_PSK,
    { "--tls=require", "--tls-psk=@/psk/keys.psk" }, NULL, NULL,
    PSK_WRONG, SKIP, SKIP, BAD_PSK },
  { "unknown-psk-identity/nbdkit", NBDKIT_PSK,
    { "--tls=require", "--tls-psk=@/psk/keys.psk" }, NULL, NULL,
    PSK_UNKNOWN, SKIP, SKIP, BAD_PSK },
  { "wrong-psk/qemu-nbd", QEMU,
    { "tls-creds-psk,id=tls0,dir=@/psk,endpoint=server" }, NULL, NULL,
    PSK_WRONG, SKIP, SKIP, BAD_PSK },

  /* T15: servers that offer only TLS 1.0 or 1.1 are refused by name;
   * an explicit priority widens the floor. */
  { "old-version/nbdkit-tls1.1/T15", NBDKIT,
    { "--tls=require", "--tls-certificates=@/server" }, NULL,
    "[overrides]\ndisabled-version = tls1.3\ndisabled-version = tls1.2\n",
    X509, SKIP, SKIP,
    { FAIL, "the server offers only TLS 1.1, older than TLS 1.2" } },
  { "old-version/qemu-nbd-tls1.1/T15", QEMU,
    { "tls-creds-x509,id=tls0,dir=@/server,endpoint=server,"
      "verify-peer=off,priority=NORMAL:-VERS-ALL:+VERS-TLS1.1" }, NULL,
    NULL, X509, SKIP, SKIP,
    { FAIL, "the server offers only TLS 1.1, older than TLS 1.2" } },
  { "old-version/nbd-server-tls1.0/T15", NBD_SERVER,
    { nbd_server_tls, "tlsprio = NORMAL:-VERS-ALL:+VERS-TLS1.0\n" }, "d",
    NULL, X509, SKIP, SKIP,
    { FAIL, "the server offers only TLS 1.0, older than TLS 1.2" } },
  { "old-version/widened-by-priority/T15", QEMU,
    { "tls-creds-x509,id=tls0,dir=@/server,endpoint=server,"
      "verify-peer=off,priority=NORMAL:-VERS-ALL:+VERS-TLS1.1" }, NULL,
    NULL, X509_OLD, SKIP, SKIP, OK_TLS },
};

/* "@" in a template stands for the PKI directory. */
static char *
expand(const char *s)
{
  g_auto(GStrv) parts = g_strsplit(s, "@", -1);

  return g_strjoinv(pki, parts);
}

static struct tl_server *
start_server(const struct row *r, GError **error)
{
  g_autoptr(GPtrArray) args = g_ptr_array_new_with_free_func(g_free);
  g_autofree char *prio_file = NULL;
  struct tl_server *s = NULL;

  if (r->env != NULL) {
    /* nbdkit 1.32 has no --tls-priority; gnutls reads this file when
     * the server starts (our own process read its copy long ago). */
    prio_file = g_build_filename(tl_tmpdir(), "old-tls.conf", NULL);
    g_assert_true(g_file_set_contents(prio_file, r->env, -1, NULL));
    g_setenv("GNUTLS_SYSTEM_PRIORITY_FILE", prio_file, TRUE);
  }

  switch (r->server) {
    case NBDKIT:
    case NBDKIT_PSK:
      if (!tl_require("nbdkit"))
        return NULL;
      for (size_t i = 0; i < G_N_ELEMENTS(r->args) && r->args[i]; i++)
        g_ptr_array_add(args, expand(r->args[i]));
      g_ptr_array_add(args, g_strdup("memory"));
      g_ptr_array_add(args, g_strdup("1M"));
      g_ptr_array_add(args, NULL);
      s = tl_nbdkit_start_tcp((const char *const *) args->pdata, error);
      break;

    case NBD_SERVER: {
      g_autofree char *joined = NULL;
      struct tl_export exports[] = {
        { "d", image },
        { "plain", image },
        { "secret", image, false, "force_tls = true\n" },
        { NULL },
      };

      if (!tl_require("nbd-server"))
        return NULL;
      for (size_t i = 0; i < G_N_ELEMENTS(r->args) && r->args[i]; i++) {
        g_autofree char *line = expand(r->args[i]);
        char *next = g_strconcat(joined ? joined : "", line, NULL);

        g_free(joined);
        joined = next;
      }
      s = tl_nbd_server_start_with(exports, joined, error);
      break;
    }

    case QEMU: {
      g_autofree char *object = r->args[0] ? expand(r->args[0]) : NULL;
      const char *extra[] = {
        "--object", object, "--tls-creds", "tls0", NULL,
      };

      if (!tl_require("qemu-nbd"))
        return NULL;
      s = tl_qemu_nbd_start(image, "raw", "d", object ? extra : NULL,
                            error);
      break;
    }
  }

  if (r->env != NULL)
    g_unsetenv("GNUTLS_SYSTEM_PRIORITY_FILE");
  return s;
}

static void
settings_for(enum creds creds, struct nbd_tls_settings *set)
{
  memset(set, 0, sizeof *set);
  set->verify_peer = -1;
  set->no_fetch = true;
  set->cache_dir = g_build_filename(tl_tmpdir(), "cache", NULL);

  switch (creds) {
    case X509:
      set->certificates = g_build_filename(pki, "client", NULL);
      break;
    case X509_OLD:
      set->certificates = g_build_filename(pki, "client", NULL);
      set->priority = g_strdup("NORMAL:+VERS-TLS1.1:+VERS-TLS1.0");
      break;
    case X509_NOCERT:
      set->certificates = g_build_filename(pki, "client-nocert", NULL);
      break;
    case X509_OTHER:
      set->certificates = g_build_filename(pki, "client-other", NULL);
      break;
    case PSK:
      set->psk_file = g_build_filename(pki, "psk/keys.psk", NULL);
      set->username = g_strdup("alice");
      break;
    case PSK_WRONG:
      set->psk_file = g_build_filename(pki, "psk/wrong.psk", NULL);
      set->username = g_strdup("alice");
      break;
    case PSK_UNKNOWN:
      set->psk_file = g_build_filename(pki, "psk/bob.psk", NULL);
      set->username = g_strdup("bob");
      break;
  }
}

/* One connection under one policy; checks the outcome. */
static void
try_policy(const struct row *r, const struct tl_server *s,
           enum nbd_tls_policy policy, const struct outcome *want)
{
  static const char *const names[] = { "off", "prefer", "require" };
  g_autofree char *text = tl_server_uri(s, r->export ? r->export : "d");
  g_autoptr(nbd_uri) uri = NULL;
  g_autoptr(GError) error = NULL;
  struct nbd_tls_settings set;
  struct nbd_handshake_opts o = { .tls = policy };
  struct nbd_conn *conn = NULL;
  int rc;

  if (want->result == 0)
    return;
  g_test_message("%s: --tls=%s", text, names[policy]);
  g_assert_cmpint(nbd_uri_parse(text, &uri, NULL), ==, 0);
  o.export_name = uri->export_name;
  settings_for(r->creds, &set);
  if (policy != NBD_TLS_OFF)
    g_assert_cmpint(nbd_tls_config_new(&set, uri, &o.tls_config, &error),
                    ==, 0);

  rc = nbd_conn_connect(uri, &o, &conn, &error);
  if (want->result == FAIL) {
    g_auto(GStrv) parts = g_strsplit(want->msg, "%s", -1);
    g_autofree char *msg = g_strjoinv(set.username, parts);

    g_assert_cmpint(rc, <, 0);
    if (strstr(error->message, msg) == NULL)
      g_error("--tls=%s: message '%s' lacks '%s'", names[policy],
              error->message, msg);
  } else {
    const struct nbd_export_info *info;
    g_autofree uint8_t *buf = g_malloc(4096);
    struct nbd_cmd cmd = {
      .type = NBD_CMD_READ, .count = 4096, .buf = buf,
    };

    if (rc < 0)
      g_error("--tls=%s: %s", names[policy], error->message);
    info = nbd_conn_info(conn);
    g_assert_cmpint(info->tls, ==, want->result == TLS);
    if (info->tls) {
      g_assert_true(g_str_has_prefix(info->tls_version, "TLS1."));
      g_assert_nonnull(info->tls_cipher);
      g_assert_nonnull(info->tls_peer);
    } else {
      g_assert_null(info->tls_version);
    }
    g_assert_cmpuint(info->size, ==,
                     info->tls || !r->plain_size ? SIZE : r->plain_size);
    cmd.count = MIN(4096, info->size);
    g_assert_cmpint(nbd_conn_run(conn, &cmd), ==, 0);
    nbd_conn_close(conn, 5000);
  }
  nbd_tls_config_free(o.tls_config);
  nbd_tls_settings_clear(&set);
}

static void
run_row(gconstpointer data)
{
  const struct row *r = data;
  g_autoptr(GError) error = NULL;
  struct tl_server *s;

  s = start_server(r, &error);
  if (s == NULL) {
    if (error != NULL)
      g_error("%s", error->message);
    return;
  }
  try_policy(r, s, NBD_TLS_OFF, &r->off);
  try_policy(r, s, NBD_TLS_PREFER, &r->prefer);
  try_policy(r, s, NBD_TLS_REQUIRE, &r->require);
  tl_server_stop(s);
}

/* nbdfs-info reports TLS version, cipher and peer, in text and JSON;
 * --tls-verify-peer=no warns (U13). */
static void
test_info_cli(void)
{
  const char *info = g_getenv("NBDFS_INFO");
  g_autofree char *certs = g_build_filename(pki, "client", NULL);
  g_autofree char *certs_opt = g_strdup_printf("--tls-certificates=%s",
                                               certs);
  const char *args[] = { "--tls=require", "--tls-certificates=@/server",
                         "memory", "1M", NULL };
  g_autoptr(GPtrArray) nbdkit_args = g_ptr_array_new_with_free_func(
    g_free);
  g_autoptr(GError) error = NULL;
  g_autofree char *uri = NULL;
  g_autofree char *out = NULL;
  g_autofree char *err = NULL;
  struct tl_server *s;
  int status;

  if (!tl_require("nbdkit"))
    return;
  g_assert_nonnull(info);
  for (size_t i = 0; args[i]; i++)
    g_ptr_array_add(nbdkit_args, expand(args[i]));
  g_ptr_array_add(nbdkit_args, NULL);
  s = tl_nbdkit_start_tcp((const char *const *) nbdkit_args->pdata, &error);
  g_assert_no_error(error);
  uri = tl_server_uri(s, "");

  {
    const char *argv[] = { info, "--json", certs_opt, "--tls=require",
                           uri, NULL };

    g_assert_true(g_spawn_sync(NULL, (char **) argv, NULL, 0, NULL, NULL,
                               &out, &err, &status, &error));
    g_assert_cmpint(status, ==, 0);
    g_assert_nonnull(strstr(out, "\"tls\": true"));
    g_assert_nonnull(strstr(out, "\"tls_version\": \"TLS1."));
    g_assert_nonnull(strstr(out, "\"tls_cipher\": \""));
    g_assert_nonnull(strstr(out, "\"tls_peer\": \"CN=localhost\""));
    g_clear_pointer(&out, g_free);
    g_clear_pointer(&err, g_free);
  }
  {
    const char *argv[] = { info, "--tls=require", "--tls-verify-peer=no",
                           uri, NULL };

    g_assert_true(g_spawn_sync(NULL, (char **) argv, NULL, 0, NULL, NULL,
                               &out, &err, &status, &error));
    g_assert_cmpint(status, ==, 0);
    g_assert_nonnull(strstr(out, "tls peer:      CN=localhost"));
    g_assert_nonnull(strstr(out, "tls version:   TLS1."));
    g_assert_nonnull(strstr(err, "nbdfs-info: warning: tls: "));
    g_assert_nonnull(strstr(err, "NOT verified (--tls-verify-peer=no)"));
    g_clear_pointer(&out, g_free);
    g_clear_pointer(&err, g_free);
  }
  {
    const char *argv[] = { info, "--tls=require", uri, NULL };

    /* No CA given: the system trust store does not know the test CA. */
    g_assert_true(g_spawn_sync(NULL, (char **) argv, NULL, 0, NULL, NULL,
                               &out, &err, &status, &error));
    g_assert_cmpint(status, !=, 0);
    g_assert_nonnull(strstr(err, "signer not trusted"));
  }
  tl_server_stop(s);
}

static bool
have_program(const char *name)
{
  g_autofree char *path = g_find_program_in_path(name);

  return path != NULL;
}

/* certtool (gnutls-bin) or make-pki.sh is missing: skipped on a
 * laptop, failed under CI. */
static void
test_prerequisites(void)
{
  tl_require("certtool");
  if (g_getenv("MAKE_PKI") == NULL)
    g_test_fail_printf("MAKE_PKI is not set: run through meson test");
}

int
main(int argc, char **argv)
{
  const char *make_pki = g_getenv("MAKE_PKI");

  tl_init(&argc, &argv);

  if (make_pki != NULL && have_program("certtool")) {
    g_autofree char *cmd = NULL;
    g_autofree char *bob = NULL;
    g_autofree char *keys = NULL;
    g_autofree char *text = NULL;
    int status = -1;

    pki = g_build_filename(tl_tmpdir(), "pki", NULL);
    cmd = g_strdup_printf("bash %s %s", make_pki, pki);
    g_spawn_command_line_sync(cmd, NULL, NULL, &status, NULL);
    if (status != 0)
      g_error("make-pki.sh failed (status %d)", status);

    /* bob's key is alice's, under a name the servers do not know. */
    keys = g_build_filename(pki, "psk/keys.psk", NULL);
    bob = g_build_filename(pki, "psk/bob.psk", NULL);
    g_assert_true(g_file_get_contents(keys, &text, NULL, NULL));
    {
      g_autofree char *line = g_strconcat("bob", strchr(text, ':'), NULL);

      g_assert_true(g_file_set_contents(bob, line, -1, NULL));
    }
    chmod(bob, 0600);
    image = tl_make_file("disk.img", SIZE, 3);
  }

  if (pki == NULL) {
    g_test_add_func("/tls/prerequisites", test_prerequisites);
    return g_test_run();
  }
  for (size_t i = 0; i < G_N_ELEMENTS(matrix); i++) {
    g_autofree char *path = g_strdup_printf("/tls/matrix/%s",
                                            matrix[i].path);

    g_test_add_data_func(path, &matrix[i], run_row);
  }
  for (size_t i = 0; i < G_N_ELEMENTS(negative); i++) {
    g_autofree char *path = g_strdup_printf("/tls/negative/%s",
                                            negative[i].path);

    g_test_add_data_func(path, &negative[i], run_row);
  }
  g_test_add_func("/tls/nbdfs-info/reports-version-cipher-peer",
                  test_info_cli);
  return g_test_run();
}
