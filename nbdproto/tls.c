/* nbdfs: TLS with gnutls, as the transport's second recv/sendv pair.
 *
 * nbd_tls_start() runs the handshake on the socket right after the
 * server acknowledged STARTTLS and then swaps the transport's pair;
 * nothing above asks whether the stream is encrypted.  The server's
 * certificate is checked here, in the handshake's verify callback, so
 * that a failure can name its cause and so that a missing intermediate
 * can be fetched from the AIA URL of the certificate (certfetch.c).
 *
 * Threads: after the handshake one reader thread receives while
 * submitters send, one at a time, under the connection's send lock.
 * gnutls allows one sender and one receiver at once (a TLS 1.3 key
 * update that the reader receives is answered by gnutls on the next
 * send, not from the reader); the push and pull functions and the
 * fields below are split so that the two sides never write the same
 * memory (errno is per thread, so neither side calls
 * gnutls_transport_set_errno(), which would write the session).
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tls-internal.h"

/* T15: TLS 1.2 at the least, 1.3 where the server has it.  PSK needs
 * its key exchanges named. */
#define PRIORITY_X509 "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"
#define PRIORITY_PSK_KX ":+ECDHE-PSK:+DHE-PSK:+PSK"

/* Bounds the handshake even where the caller set no socket timeout. */
#define HANDSHAKE_TIMEOUT_MS 30000

/* Header plus payload start go out in one record of at most this. */
#define RECORD_MAX 16384

/* Bytes read from the socket ahead of what gnutls asked for. */
#define PULL_AHEAD (64 * 1024)

struct tls_conn {
  gnutls_session_t session;
  struct nbd_tls_config *cfg;       /* a reference */
  int fd;
  const char *name;                 /* the transport's, for messages */
  int *big_sends;                   /* the transport's */
  bool established;

  /* Receiving side (the handshake, then the reader thread). */
  uint8_t first[12];                /* the server's first TLS bytes */
  size_t first_len;
  bool received;                    /* any data after the handshake */
  int pull_errno;                   /* why the socket read failed */
  uint8_t *ahead;                   /* PULL_AHEAD bytes: [ahead_start, */
  size_t ahead_start, ahead_end;    /* ahead_end) are read, not pulled */
  char *recv_why;

  /* Sending side (the handshake, then whoever holds the send lock). */
  bool closing;                     /* gnutls_bye: do not block */
  int push_errno;                   /* why the socket write failed */
  uint8_t *gather;                  /* RECORD_MAX bytes */
  char *send_why;

  /* Set during the handshake only. */
  char *verify_why;
  char *peer;
};

/* ---- Push and pull: the raw socket ---- */

static ssize_t
pull_socket(struct tls_conn *tc, void *buf, size_t len)
{
  for (;;) {
    /* poll() ignores SO_RCVTIMEO, but sends are large only in the
     * transmission phase, which has no timeout. */
    ssize_t n = nbd_socket_recv(tc->fd, buf, len, tc->established &&
                                g_atomic_int_get(tc->big_sends));

    if (n > 0 && !tc->established && tc->first_len < sizeof tc->first) {
      size_t k = MIN((size_t) n, sizeof tc->first - tc->first_len);

      /* The first bytes tell which TLS version a server that we
       * refuse offered (T15), for the message. */
      memcpy(tc->first + tc->first_len, buf, k);
      tc->first_len += k;
    }
    if (n >= 0)
      return n;
    if (errno == EINTR)
      continue;

    /* A blocking socket says EAGAIN only when its SO_RCVTIMEO ran out:
     * that is a timeout, not a reason for gnutls to try again. */
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      errno = ETIMEDOUT;
    tc->pull_errno = errno;
    return -1;
  }
}

/* gnutls pulls each record in two reads, its 5-byte header and then
 * its body: two system calls per 16 KiB.  Reading ahead serves a burst
 * of records from one recv() at the price of a copy (paired fio runs
 * in the commit that added it). */
static ssize_t
tls_pull(gnutls_transport_ptr_t p, void *buf, size_t len)
{
  struct tls_conn *tc = p;
  size_t k;

  if (tc->ahead_start == tc->ahead_end) {
    ssize_t n;

    if (len >= PULL_AHEAD)
      return pull_socket(tc, buf, len);
    n = pull_socket(tc, tc->ahead, PULL_AHEAD);
    if (n <= 0)
      return n;
    tc->ahead_start = 0;
    tc->ahead_end = n;
  }
  k = MIN(len, tc->ahead_end - tc->ahead_start);
  memcpy(buf, tc->ahead + tc->ahead_start, k);
  tc->ahead_start += k;
  return k;
}

static int
tls_pull_timeout(gnutls_transport_ptr_t p, unsigned int ms)
{
  struct tls_conn *tc = p;
  struct pollfd pfd = { .fd = tc->fd, .events = POLLIN };
  int n;

  if (tc->ahead_start < tc->ahead_end)
    return 1;

  do
    n = poll(&pfd, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : (int) ms);
  while (n < 0 && errno == EINTR);
  return n;
}

static ssize_t
tls_push(gnutls_transport_ptr_t p, const giovec_t *iov, int iovcnt)
{
  struct tls_conn *tc = p;
  struct msghdr msg = {
    .msg_iov = (struct iovec *) iov,
    .msg_iovlen = iovcnt,
  };

  /* MSG_NOSIGNAL: a vanished server is an error, not SIGPIPE.  While
   * closing, never wait for a server that stopped reading (T18). */
  for (;;) {
    ssize_t n = sendmsg(tc->fd, &msg,
                        MSG_NOSIGNAL | (tc->closing ? MSG_DONTWAIT : 0));

    if (n >= 0)
      return n;
    if (errno == EINTR)
      continue;
    if (!tc->closing && (errno == EAGAIN || errno == EWOULDBLOCK))
      errno = ETIMEDOUT;
    tc->push_errno = errno;
    return -1;
  }
}

/* ---- Naming what went wrong ---- */

static const char *
version_name(uint8_t major, uint8_t minor)
{
  if (major == 3 && minor == 0)
    return "SSL 3.0";
  if (major == 3 && minor == 1)
    return "TLS 1.0";
  if (major == 3 && minor == 2)
    return "TLS 1.1";
  return NULL;
}

/* The version in the server's ServerHello, when its first record was
 * one and named a version older than TLS 1.2; else NULL. */
static const char *
offered_old_version(const struct tls_conn *tc)
{
  const uint8_t *b = tc->first;

  /* Record: type 22 (handshake), version, length; then the handshake
   * header: type 2 (ServerHello), 3-byte length, legacy_version. */
  if (tc->first_len < 11 || b[0] != 22 || b[5] != 2)
    return NULL;
  return version_name(b[9], b[10]);
}

/* The socket error behind a failed gnutls call, else 0. */
static int
socket_errno(const struct tls_conn *tc, int rc)
{
  if (rc == GNUTLS_E_PULL_ERROR)
    return tc->pull_errno;
  if (rc == GNUTLS_E_PUSH_ERROR)
    return tc->push_errno;
  return 0;
}

static int
errno_of(const struct tls_conn *tc, int rc)
{
  switch (rc) {
    case GNUTLS_E_PREMATURE_TERMINATION:
      return ECONNRESET;
    case GNUTLS_E_PUSH_ERROR:
    case GNUTLS_E_PULL_ERROR:
      return socket_errno(tc, rc) == ETIMEDOUT ? ETIMEDOUT : ECONNRESET;
    case GNUTLS_E_CERTIFICATE_ERROR:
    case GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR:
    case GNUTLS_E_CERTIFICATE_REQUIRED:
      return EACCES;
    case GNUTLS_E_UNSUPPORTED_VERSION_PACKET:
    case GNUTLS_E_NO_PRIORITIES_WERE_SET:
    case GNUTLS_E_INSUFFICIENT_CREDENTIALS:
      return EPROTONOSUPPORT;
    case GNUTLS_E_FATAL_ALERT_RECEIVED:
      return EACCES;
    default:
      return EPROTO;
  }
}

static char *
describe_alert(const struct tls_conn *tc, gnutls_alert_description_t a)
{
  const struct nbd_tls_config *cfg = tc->cfg;
  bool asked = gnutls_certificate_client_get_request_status(tc->session);
  const char *name = gnutls_alert_get_name(a);

  if (a == GNUTLS_A_PROTOCOL_VERSION)
    return g_strdup("the server accepts neither TLS 1.3 nor TLS 1.2 "
                    "(alert: protocol version); nbdfs refuses older "
                    "versions unless --tls-priority allows them (T15)");

  if (cfg->psk) {
    if (a == GNUTLS_A_UNKNOWN_PSK_IDENTITY)
      return g_strdup_printf("unknown PSK identity '%s': the server has "
                             "no key for it; check --tls-username",
                             cfg->username);
    if (a == GNUTLS_A_DECRYPT_ERROR || a == GNUTLS_A_BAD_RECORD_MAC ||
        a == GNUTLS_A_ILLEGAL_PARAMETER ||
        a == GNUTLS_A_HANDSHAKE_FAILURE)
      return g_strdup_printf("wrong key for PSK identity '%s' (or the "
                             "server does not know it; alert: %s)",
                             cfg->username, name);
  } else if (asked && !cfg->client_cert) {
    /* The server asked for a certificate and we had none to give. */
    return g_strdup_printf("client certificate required by the server "
                           "(alert: %s); give one with --tls-certificates "
                           "DIR or --tls-cert and --tls-key", name);
  } else if (asked && (a == GNUTLS_A_BAD_CERTIFICATE ||
                       a == GNUTLS_A_UNKNOWN_CA ||
                       a == GNUTLS_A_CERTIFICATE_UNKNOWN ||
                       a == GNUTLS_A_ACCESS_DENIED ||
                       a == GNUTLS_A_CERTIFICATE_EXPIRED ||
                       a == GNUTLS_A_DECRYPT_ERROR)) {
    return g_strdup_printf("the server rejected our client certificate "
                           "(alert: %s)", name);
  }
  return g_strdup_printf("the server sent a fatal alert: %s", name);
}

/* The likely reason a server hung up without an alert, or NULL.  The
 * servers nbdfs meets (nbdkit, qemu-nbd, nbd-server) send none when a
 * client certificate is missing or a PSK does not match; they close. */
static char *
hangup_hint(const struct tls_conn *tc, bool handshake)
{
  const struct nbd_tls_config *cfg = tc->cfg;

  if (!cfg->psk && !cfg->client_cert &&
      gnutls_certificate_client_get_request_status(tc->session))
    return g_strdup("client certificate required by the server (it "
                    "asked for one and we have none); give one with "
                    "--tls-certificates DIR or --tls-cert and --tls-key");
  if (cfg->psk && handshake)
    return g_strdup_printf("the server closed the connection during the "
                           "TLS handshake: unknown PSK identity '%s' or "
                           "wrong key (the server does not say which); "
                           "check --tls-username and --tls-psk-file",
                           cfg->username);
  return NULL;
}

/* A message for a failed gnutls call on tc, without the "tls: HOST: "
 * prefix.  rc is the gnutls error code. */
static char *
describe(const struct tls_conn *tc, int rc, bool handshake)
{
  int err = socket_errno(tc, rc);
  const char *old;
  char *hint;

  if ((rc == GNUTLS_E_PREMATURE_TERMINATION ||
       ((rc == GNUTLS_E_PULL_ERROR || rc == GNUTLS_E_PUSH_ERROR) &&
        err != ETIMEDOUT)) &&
      (hint = hangup_hint(tc, handshake)) != NULL)
    return hint;

  switch (rc) {
    case GNUTLS_E_FATAL_ALERT_RECEIVED:
      return describe_alert(tc, gnutls_alert_get(tc->session));

    case GNUTLS_E_CERTIFICATE_REQUIRED:
      return describe_alert(tc, GNUTLS_A_CERTIFICATE_REQUIRED);

    case GNUTLS_E_UNSUPPORTED_VERSION_PACKET:
      old = offered_old_version(tc);
      if (old != NULL)
        return g_strdup_printf("the server offers only %s, older than "
                               "TLS 1.2, the oldest version nbdfs accepts; "
                               "--tls-priority can allow it if you accept "
                               "the risk (T15)", old);
      return g_strdup("the server chose a TLS version nbdfs does not "
                      "accept (T15)");

    case GNUTLS_E_PREMATURE_TERMINATION:
      return g_strdup(handshake
                      ? "the server closed the connection during the TLS "
                        "handshake"
                      : "the server closed the connection without a TLS "
                        "close_notify (T19)");

    case GNUTLS_E_PULL_ERROR:
    case GNUTLS_E_PUSH_ERROR:
      if (err == ETIMEDOUT)
        return g_strdup("the server did not answer in time");
      if (handshake && (err == ECONNRESET || err == EPIPE))
        return g_strdup("the server closed the connection during the TLS "
                        "handshake");
      return g_strdup_printf("%s%s", handshake ? "during the TLS "
                                                 "handshake: " : "",
                             g_strerror(err));

    case GNUTLS_E_UNEXPECTED_PACKET:
    case GNUTLS_E_UNEXPECTED_PACKET_LENGTH:
      return g_strdup_printf("the server sent data that is not valid TLS "
                             "(%s)", gnutls_strerror(rc));

    default:
      return g_strdup_printf("%s", gnutls_strerror(rc));
  }
}

/* ---- The transport's TLS pair ---- */

/* T19: gnutls may return GNUTLS_E_AGAIN or GNUTLS_E_INTERRUPTED; the
 * call is then repeated with the same arguments.  On a blocking socket
 * AGAIN is rare, so wait for the socket instead of spinning. */
static void
wait_socket(const struct tls_conn *tc, short events)
{
  struct pollfd pfd = { .fd = tc->fd, .events = events };

  if ((events & POLLIN) && tc->ahead_start < tc->ahead_end)
    return;
  poll(&pfd, 1, 1000);
}

static ssize_t
tls_recv(struct nbd_transport *t, void *buf, size_t len)
{
  struct tls_conn *tc = t->tls;

  for (;;) {
    ssize_t n = gnutls_record_recv(tc->session, buf, len);

    /* 0 is the server's close_notify: a clean end of stream, unless
     * the server hangs up before it said anything at all. */
    if (n == 0 && !tc->received) {
      g_free(tc->recv_why);
      tc->recv_why = hangup_hint(tc, false);
      if (tc->recv_why != NULL)
        return -ECONNRESET;
    }
    if (n >= 0) {
      tc->received = true;
      return n;
    }
    if (n == GNUTLS_E_INTERRUPTED)
      continue;
    if (n == GNUTLS_E_AGAIN) {
      wait_socket(tc, POLLIN);
      continue;
    }

    /* A TLS 1.2 renegotiation request; declining it by ignoring it is
     * allowed, and nbdfs never renegotiates. */
    if (n == GNUTLS_E_REHANDSHAKE)
      continue;

    g_free(tc->recv_why);
    tc->recv_why = describe(tc, n, false);
    return -errno_of(tc, n);
  }
}

static ssize_t
tls_sendv(struct nbd_transport *t, struct iovec *iov, int iovcnt)
{
  struct tls_conn *tc = t->tls;
  const void *p = iov[0].iov_base;
  size_t len = iov[0].iov_len;

  /* Gather a request header and the start of its payload into one
   * record; a large single element goes out as it is. */
  if (iovcnt > 1 && len < RECORD_MAX) {
    len = 0;
    for (int i = 0; i < iovcnt && len < RECORD_MAX; i++) {
      size_t k = MIN(iov[i].iov_len, RECORD_MAX - len);

      memcpy(tc->gather + len, iov[i].iov_base, k);
      len += k;
    }
    p = tc->gather;
  }

  for (;;) {
    ssize_t n = gnutls_record_send(tc->session, p, len);

    if (n >= 0)
      return n;
    if (n == GNUTLS_E_INTERRUPTED)
      continue;
    if (n == GNUTLS_E_AGAIN) {
      wait_socket(tc, POLLOUT);
      continue;
    }
    g_free(tc->send_why);
    tc->send_why = describe(tc, n, false);
    return -errno_of(tc, n);
  }
}

static size_t
tls_pending(struct nbd_transport *t)
{
  struct tls_conn *tc = t->tls;

  /* T19: decrypted bytes, and bytes read ahead, that poll() on the
   * socket cannot see. */
  return gnutls_record_check_pending(tc->session) +
         (tc->ahead_end - tc->ahead_start);
}

static void
tls_conn_free(struct tls_conn *tc)
{
  if (tc == NULL)
    return;
  if (tc->session != NULL)
    gnutls_deinit(tc->session);
  nbd_tls_config_free(tc->cfg);
  g_free(tc->gather);
  g_free(tc->ahead);
  g_free(tc->recv_why);
  g_free(tc->send_why);
  g_free(tc->verify_why);
  g_free(tc->peer);
  g_free(tc);
}

static void
tls_close(struct nbd_transport *t)
{
  struct tls_conn *tc = t->tls;

  /* T18: close_notify before the socket closes, soft or hard
   * disconnect alike; SHUT_WR and a non-blocking push, so that a
   * server which stopped reading cannot hold us. */
  tc->closing = true;
  if (tc->established)
    gnutls_bye(tc->session, GNUTLS_SHUT_WR);
  tls_conn_free(tc);
  t->tls = NULL;
}

static const char *
tls_why(struct nbd_transport *t, bool sending)
{
  struct tls_conn *tc = t->tls;

  return sending ? tc->send_why : tc->recv_why;
}

static const struct nbd_transport_ops tls_ops = {
  .recv = tls_recv,
  .sendv = tls_sendv,
  .pending = tls_pending,
  .close = tls_close,
  .why = tls_why,
  .what = "tls",
};

/* ---- Verifying the server ---- */

static char *
crt_dn(gnutls_x509_crt_t crt, bool issuer)
{
  gnutls_datum_t d = { NULL, 0 };
  char *s;
  int rc;

  rc = issuer ? gnutls_x509_crt_get_issuer_dn3(crt, &d, 0)
              : gnutls_x509_crt_get_dn3(crt, &d, 0);
  if (rc < 0)
    return g_strdup("?");
  s = nbd_sanitize(d.data, d.size, 1024);
  gnutls_free(d.data);
  return s;
}

static char *
format_time(time_t t)
{
  g_autoptr(GDateTime) dt = g_date_time_new_from_unix_utc(t);

  return dt ? g_date_time_format(dt, "%Y-%m-%d %H:%M:%S UTC")
            : g_strdup("?");
}

/* The names a certificate is for: its DNS and IP subject alternative
 * names, else its common name. */
static char *
crt_names(gnutls_x509_crt_t crt)
{
  g_autoptr(GString) out = g_string_new(NULL);

  for (unsigned i = 0; i < 64; i++) {
    char buf[256];
    size_t size = sizeof buf;
    unsigned crit;
    int type = gnutls_x509_crt_get_subject_alt_name(crt, i, buf, &size,
                                                    &crit);

    if (type == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
      break;
    if (type == GNUTLS_SAN_DNSNAME) {
      g_autofree char *name = nbd_sanitize(buf, size, 255);

      g_string_append_printf(out, "%s%s", out->len ? ", " : "", name);
    } else if (type == GNUTLS_SAN_IPADDRESS && (size == 4 || size == 16)) {
      char addr[INET6_ADDRSTRLEN];

      if (inet_ntop(size == 4 ? AF_INET : AF_INET6, buf, addr,
                    sizeof addr) != NULL)
        g_string_append_printf(out, "%s%s", out->len ? ", " : "", addr);
    }
  }
  if (out->len == 0) {
    char buf[256];
    size_t size = sizeof buf;

    if (gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0,
                                      0, buf, &size) == 0)
      g_string_append_len(out, buf, strnlen(buf, size));
    else
      g_string_append(out, "(no name)");
  }
  return g_string_free(g_steal_pointer(&out), FALSE);
}

unsigned
nbd_tls_verify_chain(struct nbd_tls_config *cfg, gnutls_x509_crt_t *chain,
                     unsigned n)
{
  gnutls_x509_trust_list_t tl;
  gnutls_typed_vdata_st data[2] = {
    { .type = GNUTLS_DT_DNS_HOSTNAME,
      .data = (unsigned char *) cfg->hostname },
    { .type = GNUTLS_DT_KEY_PURPOSE_OID,
      .data = (unsigned char *) GNUTLS_KP_TLS_WWW_SERVER },
  };
  unsigned status = 0;

  gnutls_certificate_get_trust_list(cfg->x509, &tl);
  if (gnutls_x509_trust_list_verify_crt2(tl, chain, n, data, 2, 0,
                                         &status, NULL) < 0)
    return GNUTLS_CERT_INVALID;
  return status;
}

/* Why status rejects chain, as a message without the "tls: " prefix.
 * aia_why says what became of a missing intermediate, if anything. */
static char *
explain_status(struct tls_conn *tc, unsigned status,
               gnutls_x509_crt_t *chain, unsigned n, const char *aia_why)
{
  const char *host = tc->cfg->hostname;
  time_t now = time(NULL);

  if (status & (GNUTLS_CERT_EXPIRED | GNUTLS_CERT_NOT_ACTIVATED)) {
    for (unsigned i = 0; i < n; i++) {
      time_t end = gnutls_x509_crt_get_expiration_time(chain[i]);
      time_t start = gnutls_x509_crt_get_activation_time(chain[i]);
      g_autofree char *who = crt_dn(chain[i], false);

      if (end != (time_t) -1 && end < now) {
        g_autofree char *when = format_time(end);

        return g_strdup_printf("server certificate for %s: expired on %s "
                               "(%s)", host, when, who);
      }
      if (start != (time_t) -1 && start > now) {
        g_autofree char *when = format_time(start);

        return g_strdup_printf("server certificate for %s: not valid "
                               "before %s (%s)", host, when, who);
      }
    }
  }
  if (status & GNUTLS_CERT_SIGNER_NOT_FOUND) {
    g_autofree char *issuer = crt_dn(chain[n - 1], true);

    return g_strdup_printf("server certificate for %s: signer not trusted "
                           "(issuer: %s); give its CA with --tls-ca or "
                           "--tls-certificates%s%s", host, issuer,
                           aia_why ? "; " : "", aia_why ? aia_why : "");
  }
  if (status & GNUTLS_CERT_UNEXPECTED_OWNER) {
    g_autofree char *names = crt_names(chain[0]);

    return g_strdup_printf("server certificate for %s: hostname "
                           "mismatch: the certificate is for %s, not %s; "
                           "if that name is right, use --tls-hostname",
                           host, names, host);
  }
  if (status & GNUTLS_CERT_REVOKED)
    return g_strdup_printf("server certificate for %s: revoked", host);
  if (status & GNUTLS_CERT_INSECURE_ALGORITHM)
    return g_strdup_printf("server certificate for %s: signed with an "
                           "insecure algorithm", host);

  {
    gnutls_datum_t out = { NULL, 0 };
    char *s;

    gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509,
                                                 &out, 0);
    s = g_strdup_printf("server certificate for %s: %s", host,
                        out.data ? (char *) out.data : "not trusted");
    gnutls_free(out.data);
    return s;
  }
}

/* The handshake's certificate check (T6, T16a).  Returns 0 to go on,
 * or a negative gnutls code that fails the handshake, leaving the
 * reason in tc->verify_why. */
static int
verify_server(gnutls_session_t session)
{
  struct tls_conn *tc = gnutls_session_get_ptr(session);
  struct nbd_tls_config *cfg = tc->cfg;
  gnutls_x509_crt_t chain[NBD_TLS_MAX_CHAIN + NBD_TLS_MAX_FETCHED];
  g_autoptr(GString) aia_why = g_string_new(NULL);
  const gnutls_datum_t *raw;
  unsigned n = 0, have = 0, status;
  int rc = GNUTLS_E_CERTIFICATE_ERROR;

  raw = gnutls_certificate_get_peers(session, &have);
  if (raw == NULL || have == 0) {
    tc->verify_why = g_strdup_printf("server %s sent no certificate",
                                     cfg->hostname);
    return rc;
  }
  have = MIN(have, NBD_TLS_MAX_CHAIN);
  for (; n < have; n++) {
    gnutls_x509_crt_init(&chain[n]);
    if (gnutls_x509_crt_import(chain[n], &raw[n], GNUTLS_X509_FMT_DER) < 0) {
      gnutls_x509_crt_deinit(chain[n]);
      tc->verify_why = g_strdup_printf("server certificate for %s: "
                                       "cannot be parsed", cfg->hostname);
      goto out;
    }
  }
  tc->peer = crt_dn(chain[0], false);

  /* U13: verification is on unless the user turned it off by name, and
   * then every connection says so. */
  if (!cfg->verify) {
    nbd_log(NBD_LOG_WARNING, "tls: %s: server certificate NOT verified "
            "(--tls-verify-peer=no): anyone on the path can read and "
            "change the data", tc->name);
    rc = 0;
    goto out;
  }

  status = nbd_tls_verify_chain(cfg, chain, n);

  /* A server that forgot to send its intermediate: complete the chain
   * from the AIA caIssuers URL, as browsers do, and accept it only if
   * it then ends in a trusted root. */
  if ((status & GNUTLS_CERT_SIGNER_NOT_FOUND) &&
      !(status & (GNUTLS_CERT_EXPIRED | GNUTLS_CERT_UNEXPECTED_OWNER))) {
    unsigned longer, st2 = 0;

    longer = nbd_aia_complete(cfg, chain, n, &st2, aia_why);
    if (longer > n) {
      n = longer;
      status = st2;
    }
  }

  if (status == 0)
    rc = 0;
  else
    tc->verify_why = explain_status(tc, status, chain, n,
                                    aia_why->len ? aia_why->str : NULL);

out:
  for (unsigned i = 0; i < n; i++)
    gnutls_x509_crt_deinit(chain[i]);
  return rc;
}

/* ---- Starting TLS ---- */

/* T17: the server must say nothing between its ACK and our
 * ClientHello (the client speaks first in TLS).  Anything already
 * waiting is plaintext that a man in the middle may have injected; it
 * must not be taken for TLS data. */
static int
check_no_plaintext(struct nbd_transport *t, GError **error)
{
  uint8_t byte;
  ssize_t n;

  if (nbd_transport_pending(t) != 0)
    return nbd_set_error(error, EPROTO, "tls: %s: bytes left over from "
                         "before STARTTLS (T17)", t->name);
  n = recv(t->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0)
    return nbd_set_error(error, EPROTO, "tls: %s: the server sent "
                         "plaintext after accepting STARTTLS; refusing to "
                         "take it for TLS data (T17)", t->name);
  if (n == 0)
    return nbd_set_error(error, ECONNRESET, "tls: %s: the server closed "
                         "the connection after accepting STARTTLS",
                         t->name);
  return 0;
}

static int
session_new(struct tls_conn *tc, GError **error)
{
  struct nbd_tls_config *cfg = tc->cfg;
  int rc;

  rc = gnutls_init(&tc->session, GNUTLS_CLIENT);
  if (rc == 0)
    rc = gnutls_priority_set(tc->session, cfg->prio);
  if (rc == 0 && cfg->psk)
    rc = gnutls_credentials_set(tc->session, GNUTLS_CRD_PSK, cfg->psk_cred);
  else if (rc == 0)
    rc = gnutls_credentials_set(tc->session, GNUTLS_CRD_CERTIFICATE,
                                cfg->x509);

  /* U18: SNI carries the name we verify; RFC 6066 forbids addresses. */
  if (rc == 0 && cfg->sni)
    rc = gnutls_server_name_set(tc->session, GNUTLS_NAME_DNS,
                                cfg->hostname, strlen(cfg->hostname));
  if (rc < 0)
    return nbd_set_error(error, EINVAL, "tls: %s: cannot set up a "
                         "session: %s", tc->name, gnutls_strerror(rc));

  gnutls_session_set_ptr(tc->session, tc);
  gnutls_transport_set_ptr(tc->session, tc);
  gnutls_transport_set_pull_function(tc->session, tls_pull);
  gnutls_transport_set_pull_timeout_function(tc->session,
                                             tls_pull_timeout);
  gnutls_transport_set_vec_push_function(tc->session, tls_push);
  gnutls_handshake_set_timeout(tc->session, HANDSHAKE_TIMEOUT_MS);
  return 0;
}

int
nbd_tls_start(struct nbd_transport *t, struct nbd_tls_config *cfg,
              GError **error)
{
  struct tls_conn *tc;
  int rc;

  rc = check_no_plaintext(t, error);
  if (rc < 0)
    return rc;

  tc = g_new0(struct tls_conn, 1);
  tc->cfg = nbd_tls_config_ref(cfg);
  tc->fd = t->fd;
  tc->name = t->name;
  tc->big_sends = &t->big_sends;
  tc->gather = g_malloc(RECORD_MAX);
  tc->ahead = g_malloc(PULL_AHEAD);
  rc = session_new(tc, error);
  if (rc < 0)
    goto fail;

  /* T4: the handshake starts at once, on the same socket, with nothing
   * buffered (T17). */
  do
    rc = gnutls_handshake(tc->session);
  while (rc < 0 && !gnutls_error_is_fatal(rc));

  if (rc < 0) {
    g_autofree char *why = NULL;

    /* T6: no way back to plaintext; the caller hangs up. */
    if ((rc == GNUTLS_E_CERTIFICATE_ERROR ||
         rc == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) &&
        tc->verify_why != NULL)
      rc = nbd_set_error(error, EACCES, "tls: %s", tc->verify_why);
    else {
      why = describe(tc, rc, true);
      rc = nbd_set_error(error, errno_of(tc, rc), "tls: %s: %s", t->name,
                         why);
    }
    goto fail;
  }

  tc->established = true;
  t->tls = tc;
  t->ops = &tls_ops;
  nbd_log(NBD_LOG_INFO, "tls: %s: %s, %s, peer %s", t->name,
          gnutls_protocol_get_name(gnutls_protocol_get_version(tc->session)),
          gnutls_cipher_get_name(gnutls_cipher_get(tc->session)),
          tc->peer ? tc->peer : cfg->username);
  return 0;

fail:
  tls_conn_free(tc);
  return rc;
}

void
nbd_tls_describe(struct nbd_transport *t, struct nbd_export_info *info)
{
  struct tls_conn *tc = t->tls;
  gnutls_session_t s;

  if (t->ops != &tls_ops || tc == NULL)
    return;
  s = tc->session;
  g_free(info->tls_version);
  g_free(info->tls_cipher);
  g_free(info->tls_peer);
  info->tls_version = g_strdup(
    gnutls_protocol_get_name(gnutls_protocol_get_version(s)));
  info->tls_cipher = g_strdup(gnutls_cipher_get_name(gnutls_cipher_get(s)));
  if (tc->cfg->psk)
    info->tls_peer = g_strdup_printf("PSK identity %s", tc->cfg->username);
  else
    info->tls_peer = g_strdup(tc->peer);
}

/* ---- Loading the configuration ---- */

/* A key that others may read is no secret: say so, with the fix. */
static void
check_private(const char *path)
{
  struct stat st;

  if (stat(path, &st) == 0 && (st.st_mode & 077) != 0)
    nbd_log(NBD_LOG_WARNING, "tls: %s: readable by group or others; "
            "fix with: chmod 600 %s", path, path);
}

static const char *
pick(const char *cli, const char *uri)
{
  return cli != NULL ? cli : uri;
}

static bool
is_ip_literal(const char *host)
{
  return g_hostname_is_ip_address(host);
}

static void
fetch_opts_init(struct nbd_fetch_opts *fo, const struct nbd_tls_config *cfg,
                const struct nbd_tls_settings *s, const char *what)
{
  memset(fo, 0, sizeof *fo);
  fo->cache_dir = cfg->cache_dir;
  fo->timeout_s = cfg->fetch_timeout_s;
  fo->max_bytes = cfg->fetch_max_bytes;
  fo->no_fetch = s->no_fetch;
  fo->what = what;
}

/* Reads a credential named by a path or a URL.  Local paths that do
 * not exist fail with ENOENT, which optional files tolerate. */
static int
load_bytes(const char *where, const struct nbd_fetch_opts *fo,
           GBytes **out, GError **error)
{
  g_autoptr(GError) local = NULL;
  char *text = NULL;
  gsize len;

  if (nbd_fetch_is_url(where))
    return nbd_fetch(where, fo, out, error);
  if (!g_file_get_contents(where, &text, &len, &local)) {
    int err = local->code == G_FILE_ERROR_NOENT ? ENOENT : EIO;

    return nbd_set_error(error, err, "tls: %s: %s", where, local->message);
  }
  *out = g_bytes_new_take(text, len);
  return 0;
}

static int
load_ca(struct nbd_tls_config *cfg, const struct nbd_tls_settings *s,
        const char *ca, GError **error)
{
  struct nbd_fetch_opts fo;
  g_autoptr(GBytes) bytes = NULL;
  gnutls_datum_t d;
  int rc;

  fetch_opts_init(&fo, cfg, s, "--tls-ca");
  fo.pin = s->ca_pin;
  rc = load_bytes(ca, &fo, &bytes, error);
  if (rc < 0)
    return rc;

  d.data = (unsigned char *) g_bytes_get_data(bytes, NULL);
  d.size = g_bytes_get_size(bytes);
  rc = gnutls_certificate_set_x509_trust_mem(cfg->x509, &d,
                                             GNUTLS_X509_FMT_PEM);
  if (rc <= 0)
    rc = gnutls_certificate_set_x509_trust_mem(cfg->x509, &d,
                                               GNUTLS_X509_FMT_DER);
  if (rc <= 0)
    return nbd_set_error(error, EINVAL, "tls: %s: no CA certificate in "
                         "it (%s)", ca,
                         rc < 0 ? gnutls_strerror(rc) : "empty");
  return 0;
}

static int
load_client_cert(struct nbd_tls_config *cfg,
                 const struct nbd_tls_settings *s, const char *cert,
                 const char *key, GError **error)
{
  struct nbd_fetch_opts fo;
  g_autoptr(GBytes) cbytes = NULL;
  g_autoptr(GBytes) kbytes = NULL;
  gnutls_datum_t c, k;
  int rc;

  if (nbd_fetch_is_url(key))
    return nbd_set_error(error, EINVAL, "tls: %s: a private key is never "
                         "fetched; give a local file to --tls-key", key);
  fetch_opts_init(&fo, cfg, s, "--tls-cert");
  rc = load_bytes(cert, &fo, &cbytes, error);
  if (rc == 0)
    rc = load_bytes(key, &fo, &kbytes, error);
  if (rc < 0)
    return rc;
  check_private(key);

  c.data = (unsigned char *) g_bytes_get_data(cbytes, NULL);
  c.size = g_bytes_get_size(cbytes);
  k.data = (unsigned char *) g_bytes_get_data(kbytes, NULL);
  k.size = g_bytes_get_size(kbytes);
  rc = gnutls_certificate_set_x509_key_mem(cfg->x509, &c, &k,
                                           GNUTLS_X509_FMT_PEM);
  gnutls_memset(k.data, 0, k.size);
  if (rc < 0)
    return nbd_set_error(error, EINVAL, "tls: %s, %s: cannot use this "
                         "certificate and key: %s", cert, key,
                         gnutls_strerror(rc));
  cfg->client_cert = true;
  return 0;
}

/* A path inside DIR, which may be a URL. */
static char *
in_dir(const char *dir, const char *file)
{
  if (nbd_fetch_is_url(dir))
    return g_strdup_printf("%s%s%s", dir,
                           g_str_has_suffix(dir, "/") ? "" : "/", file);
  return g_build_filename(dir, file, NULL);
}

static int
load_x509(struct nbd_tls_config *cfg, const struct nbd_tls_settings *s,
          const struct nbd_uri *uri, GError **error)
{
  const char *dir = pick(s->certificates, uri->tls_certificates);
  g_autofree char *ca = NULL;
  g_autofree char *cert = NULL;
  g_autofree char *key = NULL;
  int rc;

  rc = gnutls_certificate_allocate_credentials(&cfg->x509);
  if (rc < 0)
    return nbd_set_error(error, ENOMEM, "tls: credentials: %s",
                         gnutls_strerror(rc));
  gnutls_certificate_set_verify_function(cfg->x509, verify_server);

  /* The CA: given, in the directory, or the system's trust store. */
  ca = g_strdup(s->ca);
  if (ca == NULL && dir != NULL)
    ca = in_dir(dir, "ca-cert.pem");
  if (ca != NULL) {
    rc = load_ca(cfg, s, ca, error);
    if (rc < 0)
      return rc;
  } else {
    rc = gnutls_certificate_set_x509_system_trust(cfg->x509);
    if (rc <= 0 && cfg->verify)
      return nbd_set_error(error, ENOENT, "tls: no CA given and the "
                           "system trust store is empty; use --tls-ca or "
                           "--tls-certificates");
  }

  /* The client certificate: optional; both halves or neither.  From a
   * directory URL only the certificate is fetched, and only when a
   * local key was given. */
  cert = g_strdup(s->cert);
  key = g_strdup(s->key);
  if (dir != NULL && cert == NULL) {
    g_autofree char *c = in_dir(dir, "client-cert.pem");

    if (!nbd_fetch_is_url(dir) ? g_file_test(c, G_FILE_TEST_EXISTS)
                               : key != NULL)
      cert = g_steal_pointer(&c);
  }
  if (dir != NULL && key == NULL && !nbd_fetch_is_url(dir)) {
    g_autofree char *k = in_dir(dir, "client-key.pem");

    if (g_file_test(k, G_FILE_TEST_EXISTS))
      key = g_steal_pointer(&k);
  }
  if ((cert == NULL) != (key == NULL))
    return nbd_set_error(error, EINVAL, "tls: %s: a client certificate "
                         "needs its key and a key its certificate "
                         "(--tls-cert and --tls-key)",
                         cert ? cert : key);
  if (cert != NULL)
    return load_client_cert(cfg, s, cert, key, error);
  return 0;
}

/* Finds name's key in a psktool file ("name:hexkey" lines).  The key
 * is never copied into a message. */
static int
load_psk(struct nbd_tls_config *cfg, const char *file, GError **error)
{
  g_autoptr(GError) local = NULL;
  g_autofree char *text = NULL;
  gnutls_datum_t key = { NULL, 0 };
  size_t ulen = strlen(cfg->username);
  gsize len = 0;
  int rc;

  if (!g_file_get_contents(file, &text, &len, &local))
    return nbd_set_error(error, ENOENT, "tls: %s", local->message);
  check_private(file);

  for (char *line = text, *next; line != NULL && *line; line = next) {
    next = strchr(line, '\n');
    if (next != NULL)
      *next++ = '\0';
    if (strncmp(line, cfg->username, ulen) == 0 && line[ulen] == ':') {
      char *hex = line + ulen + 1;

      hex[strcspn(hex, "\r \t")] = '\0';
      key.data = (unsigned char *) hex;
      key.size = strlen(hex);
      break;
    }
  }

  if (key.data == NULL || key.size == 0 || key.size % 2 != 0 ||
      strspn((char *) key.data, "0123456789abcdefABCDEF") != key.size) {
    gnutls_memset(text, 0, len);
    if (key.data != NULL)
      return nbd_set_error(error, EINVAL, "tls: %s: the key of '%s' is "
                           "not hexadecimal", file, cfg->username);
    return nbd_set_error(error, ENOENT, "tls: %s: no key for user '%s'; "
                         "make one with: psktool -u %s -p %s", file,
                         cfg->username, cfg->username, file);
  }

  rc = gnutls_psk_allocate_client_credentials(&cfg->psk_cred);
  if (rc == 0)
    rc = gnutls_psk_set_client_credentials(cfg->psk_cred, cfg->username,
                                           &key, GNUTLS_PSK_KEY_HEX);
  gnutls_memset(text, 0, len);
  if (rc < 0)
    return nbd_set_error(error, EINVAL, "tls: %s: cannot use the key of "
                         "'%s': %s", file, cfg->username,
                         gnutls_strerror(rc));
  return 0;
}

static int
set_priority(struct nbd_tls_config *cfg, const char *custom,
             GError **error)
{
  g_autofree char *text = NULL;
  const char *err_pos = NULL;
  int rc;

  /* T15: an explicit --tls-priority may widen the versions; the
   * default never goes below TLS 1.2. */
  text = g_strdup_printf("%s%s", custom ? custom : PRIORITY_X509,
                         cfg->psk ? PRIORITY_PSK_KX : "");
  rc = gnutls_priority_init(&cfg->prio, text, &err_pos);
  if (rc < 0)
    return nbd_set_error(error, EINVAL, "tls: priority string '%s': "
                         "invalid at '%s'", text,
                         err_pos ? err_pos : "?");
  return 0;
}

int
nbd_tls_config_new(const struct nbd_tls_settings *s,
                   const struct nbd_uri *uri, struct nbd_tls_config **out,
                   GError **error)
{
  struct nbd_tls_config *cfg = g_new0(struct nbd_tls_config, 1);
  const char *type = uri->tls_type;
  const char *psk_file = pick(s->psk_file, uri->tls_psk_file);
  const char *host;
  int rc;

  cfg->refs = 1;
  g_mutex_init(&cfg->lock);
  cfg->aia = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                   (GDestroyNotify) g_bytes_unref);
  cfg->fetch = !s->no_fetch;
  cfg->cache_dir = s->cache_dir
    ? g_strdup(s->cache_dir)
    : g_build_filename(g_get_user_cache_dir(), "nbdfs", NULL);
  cfg->fetch_timeout_s = s->fetch_timeout_s ? s->fetch_timeout_s : 30;
  cfg->fetch_max_bytes = s->fetch_max_bytes ? s->fetch_max_bytes
                                            : 1024 * 1024;

  /* U11: tls-type picks the method; else a PSK file means PSK. */
  cfg->psk = type ? strcmp(type, "psk") == 0 : psk_file != NULL;
  cfg->verify = s->verify_peer >= 0 ? s->verify_peer
              : uri->tls_verify_peer >= 0 ? uri->tls_verify_peer : true;
  if (type != NULL && strcmp(type, "anon") == 0 && cfg->verify) {
    rc = nbd_set_error(error, EINVAL, "tls: tls-type=anon authenticates "
                       "no one; add --tls-verify-peer=no (or "
                       "tls-verify-peer=0) to accept that");
    goto fail;
  }

  /* U12, U18: the name to verify and to send as SNI.  A Unix socket
   * has no host name; its server is on this machine. */
  host = pick(s->hostname, uri->tls_hostname);
  if (host == NULL)
    host = uri->is_unix ? "localhost" : uri->host;
  cfg->hostname = g_strdup(host);
  cfg->sni = !is_ip_literal(host);

  if (s->ca_pin != NULL) {
    rc = nbd_fetch_check_pin(s->ca_pin, "--tls-ca-pin", error);
    if (rc < 0)
      goto fail;
  }

  if (cfg->psk) {
    /* U8: the identity is the URI's user, else the local user. */
    cfg->username = g_strdup(pick(s->username, uri->tls_username));
    if (cfg->username == NULL)
      cfg->username = g_strdup(uri->user ? uri->user : g_get_user_name());
    if (psk_file == NULL) {
      rc = nbd_set_error(error, EINVAL, "tls: PSK needs a key file; give "
                         "--tls-psk-file FILE");
      goto fail;
    }
    rc = load_psk(cfg, psk_file, error);
  } else {
    rc = load_x509(cfg, s, uri, error);
  }
  if (rc == 0)
    rc = set_priority(cfg, pick(s->priority, uri->tls_priority), error);
  if (rc < 0)
    goto fail;

  *out = cfg;
  return 0;

fail:
  nbd_tls_config_free(cfg);
  return rc;
}

struct nbd_tls_config *
nbd_tls_config_ref(struct nbd_tls_config *cfg)
{
  g_atomic_int_inc(&cfg->refs);
  return cfg;
}

void
nbd_tls_config_free(struct nbd_tls_config *cfg)
{
  if (cfg == NULL || !g_atomic_int_dec_and_test(&cfg->refs))
    return;
  if (cfg->x509 != NULL)
    gnutls_certificate_free_credentials(cfg->x509);
  if (cfg->psk_cred != NULL)
    gnutls_psk_free_client_credentials(cfg->psk_cred);
  if (cfg->prio != NULL)
    gnutls_priority_deinit(cfg->prio);
  g_hash_table_destroy(cfg->aia);
  g_mutex_clear(&cfg->lock);
  g_free(cfg->hostname);
  g_free(cfg->username);
  g_free(cfg->cache_dir);
  g_free(cfg);
}
