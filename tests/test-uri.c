/* nbdfs: unit tests for NBD URI parsing (nbdproto/uri.c).
 *
 * Each table row is one GLib test case.  The IDs in the comments (U9,
 * G1, ...) are the rules of docs/nbd-client-checklist.md that the row
 * exercises.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <string.h>

#include <glib.h>

#include "nbdproto.h"

/* ---- URIs that parse ---------------------------------------------------- */

struct good_case {
  const char *path; /* GLib test path below /nbdproto/uri/ */
  const char *uri;
  const char *scheme;
  bool tls_required;
  bool is_unix;
  const char *host;
  const char *port;
  const char *socket_path;
  const char *user;
  const char *export_name;
  const char *endpoint;
  const char *display;
};

#define TCP(s, tls, h, p) s, tls, false, h, p, NULL
#define UNIX(s, tls, sock) s, tls, true, NULL, NULL, sock

static const struct good_case good_cases[] = {
  /* U2: the four schemes, and U1: schemes ignore case. */
  { "scheme/nbd", "nbd://example.com/disk",
    TCP("nbd", false, "example.com", "10809"), NULL, "disk",
    "example.com:10809", "nbd://example.com/disk" },
  { "scheme/nbds", "nbds://example.com/disk",
    TCP("nbds", true, "example.com", "10809"), NULL, "disk",
    "example.com:10809", "nbds://example.com/disk" },
  { "scheme/nbd-unix", "nbd+unix:///disk?socket=/tmp/nbd.sock",
    UNIX("nbd+unix", false, "/tmp/nbd.sock"), NULL, "disk", "/tmp/nbd.sock",
    "nbd+unix:///disk?socket=/tmp/nbd.sock" },
  { "scheme/nbds-unix", "nbds+unix:///?socket=/run/nbd",
    UNIX("nbds+unix", true, "/run/nbd"), NULL, "", "/run/nbd",
    "nbds+unix:///?socket=/run/nbd" },
  { "scheme/upper-case", "NBDS://h/x", TCP("nbds", true, "h", "10809"),
    NULL, "x", "h:10809", "nbds://h/x" },
  { "scheme/mixed-case-unix", "Nbd+Unix:///x?socket=/s",
    UNIX("nbd+unix", false, "/s"), NULL, "x", "/s",
    "nbd+unix:///x?socket=/s" },

  /* U9: the table of the checklist, row by row. */
  { "export-name/simple", "nbd://h/disk", TCP("nbd", false, "h", "10809"),
    NULL, "disk", "h:10809", "nbd://h/disk" },
  { "export-name/root", "nbd://h/", TCP("nbd", false, "h", "10809"), NULL,
    "", "h:10809", "nbd://h/" },
  { "export-name/no-path", "nbd://h", TCP("nbd", false, "h", "10809"), NULL,
    "", "h:10809", "nbd://h/" },
  { "export-name/double-slash", "nbd://h//disk",
    TCP("nbd", false, "h", "10809"), NULL, "/disk", "h:10809",
    "nbd://h//disk" },
  { "export-name/space", "nbd://h/hello%20world",
    TCP("nbd", false, "h", "10809"), NULL, "hello world", "h:10809",
    "nbd://h/hello%20world" },

  /* U9: export names are free text, not file paths. */
  { "export-name/inner-slash", "nbd://h/a/b", TCP("nbd", false, "h", "10809"),
    NULL, "a/b", "h:10809", "nbd://h/a/b" },
  { "export-name/encoded-slash", "nbd://h/a%2Fb",
    TCP("nbd", false, "h", "10809"), NULL, "a/b", "h:10809", "nbd://h/a/b" },
  { "export-name/dot-segments", "nbd://h/a/../b",
    TCP("nbd", false, "h", "10809"), NULL, "a/../b", "h:10809",
    "nbd://h/a/../b" },
  { "export-name/utf8", "nbd://h/caf%C3%A9", TCP("nbd", false, "h", "10809"),
    NULL, "caf\xc3\xa9", "h:10809", "nbd://h/caf%C3%A9" },
  { "export-name/lower-hex", "nbd://h/%c3%a9", TCP("nbd", false, "h", "10809"),
    NULL, "\xc3\xa9", "h:10809", "nbd://h/%C3%A9" },
  { "export-name/delimiters", "nbd://h/a%3Fb%23c%26d%25",
    TCP("nbd", false, "h", "10809"), NULL, "a?b#c&d%", "h:10809",
    "nbd://h/a%3Fb%23c&d%25" },
  { "export-name/plus-is-literal", "nbd://h/a+b",
    TCP("nbd", false, "h", "10809"), NULL, "a+b", "h:10809", "nbd://h/a+b" },
  { "export-name/pchar-extras", "nbd://h/a:b@c!$'()*,;=",
    TCP("nbd", false, "h", "10809"), NULL, "a:b@c!$'()*,;=", "h:10809",
    "nbd://h/a:b@c!$'()*,;=" },
  { "export-name/unix-rootless", "nbd+unix:disk?socket=/s",
    UNIX("nbd+unix", false, "/s"), NULL, "disk", "/s",
    "nbd+unix:///disk?socket=/s" },

  /* U7: the port. */
  { "port/explicit", "nbd://h:1234/x", TCP("nbd", false, "h", "1234"), NULL,
    "x", "h:1234", "nbd://h:1234/x" },
  { "port/empty-means-default", "nbd://h:/x", TCP("nbd", false, "h", "10809"),
    NULL, "x", "h:10809", "nbd://h/x" },
  { "port/default-written", "nbd://h:10809/x",
    TCP("nbd", false, "h", "10809"), NULL, "x", "h:10809", "nbd://h/x" },
  { "port/leading-zeros", "nbd://h:0080/", TCP("nbd", false, "h", "80"),
    NULL, "", "h:80", "nbd://h:80/" },
  { "port/min", "nbd://h:1", TCP("nbd", false, "h", "1"), NULL, "", "h:1",
    "nbd://h:1/" },
  { "port/max", "nbd://h:65535", TCP("nbd", false, "h", "65535"), NULL, "",
    "h:65535", "nbd://h:65535/" },

  /* U5: the host. */
  { "host/ipv4", "nbd://192.0.2.1:7/e", TCP("nbd", false, "192.0.2.1", "7"),
    NULL, "e", "192.0.2.1:7", "nbd://192.0.2.1:7/e" },
  { "host/encoded", "nbd://ex%61mple.com/",
    TCP("nbd", false, "example.com", "10809"), NULL, "", "example.com:10809",
    "nbd://example.com/" },
  { "host/case-kept", "nbd://Example.COM/",
    TCP("nbd", false, "Example.COM", "10809"), NULL, "",
    "Example.COM:10809", "nbd://Example.COM/" },

  /* U6: IPv6 literals in brackets, with an RFC 6874 zone. */
  { "ipv6/loopback", "nbd://[::1]/", TCP("nbd", false, "::1", "10809"), NULL,
    "", "[::1]:10809", "nbd://[::1]/" },
  { "ipv6/port", "nbds://[2001:db8::5]:10810/e",
    TCP("nbds", true, "2001:db8::5", "10810"), NULL, "e",
    "[2001:db8::5]:10810", "nbds://[2001:db8::5]:10810/e" },
  { "ipv6/zone", "nbd://[fe80::1%25eth0]/",
    TCP("nbd", false, "fe80::1%eth0", "10809"), NULL, "",
    "[fe80::1%eth0]:10809", "nbd://[fe80::1%25eth0]/" },
  { "ipv6/v4-mapped", "nbd://[::ffff:192.0.2.1]:99",
    TCP("nbd", false, "::ffff:192.0.2.1", "99"), NULL, "",
    "[::ffff:192.0.2.1]:99", "nbd://[::ffff:192.0.2.1]:99/" },

  /* U5, U8: a user name in the userinfo. */
  { "userinfo/user", "nbds://alice@h/x", TCP("nbds", true, "h", "10809"),
    "alice", "x", "h:10809", "nbds://alice@h/x" },
  { "userinfo/encoded", "nbds://al%20ice@h/", TCP("nbds", true, "h", "10809"),
    "al ice", "", "h:10809", "nbds://al%20ice@h/" },
  { "userinfo/empty", "nbd://@h/", TCP("nbd", false, "h", "10809"), NULL, "",
    "h:10809", "nbd://h/" },
  { "userinfo/ipv6", "nbds://bob@[::1]:5/", TCP("nbds", true, "::1", "5"),
    "bob", "", "[::1]:5", "nbds://bob@[::1]:5/" },
  { "userinfo/unix", "nbds+unix://alice@/e?socket=/s",
    UNIX("nbds+unix", true, "/s"), "alice", "e", "/s",
    "nbds+unix://alice@/e?socket=/s" },

  /* U10: socket= is percent-decoded. */
  { "socket/encoded", "nbd+unix:///?socket=/tmp/a%20b%26c%3D.sock",
    UNIX("nbd+unix", false, "/tmp/a b&c=.sock"), NULL, "", "/tmp/a b&c=.sock",
    "nbd+unix:///?socket=/tmp/a%20b%26c%3D.sock" },
  { "socket/plus", "nbd+unix:///?socket=/a+b",
    UNIX("nbd+unix", false, "/a+b"), NULL, "", "/a+b",
    "nbd+unix:///?socket=/a%2Bb" },
  { "socket/relative", "nbd+unix:///?socket=nbd.sock",
    UNIX("nbd+unix", false, "nbd.sock"), NULL, "", "nbd.sock",
    "nbd+unix:///?socket=nbd.sock" },
  { "socket/no-authority", "nbd+unix:/x?socket=/s",
    UNIX("nbd+unix", false, "/s"), NULL, "x", "/s",
    "nbd+unix:///x?socket=/s" },
  { "socket/encoded-name", "nbd+unix:///?%73ocket=/s",
    UNIX("nbd+unix", false, "/s"), NULL, "", "/s",
    "nbd+unix:///?socket=/s" },

  /* An empty query and empty pieces of a query carry nothing. */
  { "query/empty", "nbd://h/x?", TCP("nbd", false, "h", "10809"), NULL, "x",
    "h:10809", "nbd://h/x" },
  { "query/empty-pieces", "nbd+unix:///x?&&socket=/s&",
    UNIX("nbd+unix", false, "/s"), NULL, "x", "/s",
    "nbd+unix:///x?socket=/s" },
};

static void
assert_same(const struct nbd_uri *a, const struct nbd_uri *b)
{
  g_assert_cmpstr(a->scheme, ==, b->scheme);
  g_assert_cmpint(a->tls_required, ==, b->tls_required);
  g_assert_cmpint(a->is_unix, ==, b->is_unix);
  g_assert_cmpstr(a->host, ==, b->host);
  g_assert_cmpstr(a->port, ==, b->port);
  g_assert_cmpstr(a->socket_path, ==, b->socket_path);
  g_assert_cmpstr(a->user, ==, b->user);
  g_assert_cmpstr(a->export_name, ==, b->export_name);
  g_assert_cmpstr(a->tls_certificates, ==, b->tls_certificates);
  g_assert_cmpstr(a->tls_psk_file, ==, b->tls_psk_file);
  g_assert_cmpstr(a->tls_username, ==, b->tls_username);
  g_assert_cmpstr(a->tls_hostname, ==, b->tls_hostname);
  g_assert_cmpstr(a->tls_priority, ==, b->tls_priority);
  g_assert_cmpstr(a->tls_type, ==, b->tls_type);
  g_assert_cmpint(a->tls_verify_peer, ==, b->tls_verify_peer);
}

static struct nbd_uri *
parse_ok(const char *text)
{
  g_autoptr(GError) err = NULL;
  struct nbd_uri *u = NULL;
  int r;

  r = nbd_uri_parse(text, &u, &err);
  g_assert_no_error(err);
  g_assert_cmpint(r, ==, 0);
  g_assert_nonnull(u);
  return u;
}

/* The display form parses back to the same fields and is a fixed point:
 * displaying it again gives the same text. */
static void
check_round_trip(const struct nbd_uri *u)
{
  g_autofree char *shown = nbd_uri_display(u);
  g_autoptr(nbd_uri) again = parse_ok(shown);
  g_autofree char *shown_again = nbd_uri_display(again);

  assert_same(u, again);
  g_assert_cmpstr(shown, ==, shown_again);
}

static void
test_good(gconstpointer data)
{
  const struct good_case *c = data;
  g_autoptr(nbd_uri) u = parse_ok(c->uri);
  g_autofree char *endpoint = nbd_uri_endpoint(u);
  g_autofree char *display = nbd_uri_display(u);

  g_assert_cmpstr(u->scheme, ==, c->scheme);
  g_assert_cmpint(u->tls_required, ==, c->tls_required);
  g_assert_cmpint(u->is_unix, ==, c->is_unix);
  g_assert_cmpstr(u->host, ==, c->host);
  g_assert_cmpstr(u->port, ==, c->port);
  g_assert_cmpstr(u->socket_path, ==, c->socket_path);
  g_assert_cmpstr(u->user, ==, c->user);
  g_assert_cmpstr(u->export_name, ==, c->export_name);
  g_assert_cmpstr(endpoint, ==, c->endpoint);
  g_assert_cmpstr(display, ==, c->display);

  /* No query parameter was given in these rows but socket=. */
  g_assert_null(u->tls_certificates);
  g_assert_null(u->tls_psk_file);
  g_assert_null(u->tls_username);
  g_assert_null(u->tls_hostname);
  g_assert_null(u->tls_priority);
  g_assert_null(u->tls_type);
  g_assert_cmpint(u->tls_verify_peer, ==, -1);

  check_round_trip(u);
}

/* ---- TLS query parameters ----------------------------------------------- */

struct param_case {
  const char *path;
  const char *uri;
  const char *certificates;
  const char *psk_file;
  const char *username;
  const char *hostname;
  const char *priority;
  const char *type;
  int verify_peer;
  const char *display;
};

#define NO_TLS NULL, NULL, NULL, NULL, NULL, NULL

static const struct param_case param_cases[] = {
  /* U14 */
  { "param/tls-certificates", "nbds://h/?tls-certificates=/etc/pki/nbd",
    "/etc/pki/nbd", NULL, NULL, NULL, NULL, NULL, -1,
    "nbds://h/?tls-certificates=/etc/pki/nbd" },
  { "param/tls-psk-file", "nbds://h/?tls-psk-file=keys%20dir/k.psk", NULL,
    "keys dir/k.psk", NULL, NULL, NULL, NULL, -1,
    "nbds://h/?tls-psk-file=keys%20dir/k.psk" },
  { "param/tls-priority", "nbds://h/?tls-priority=NORMAL%3A-VERS-TLS1.2",
    NULL, NULL, NULL, NULL, "NORMAL:-VERS-TLS1.2", NULL, -1,
    "nbds://h/?tls-priority=NORMAL:-VERS-TLS1.2" },
  { "param/tls-username", "nbds://h/?tls-username=bob", NULL, NULL, "bob",
    NULL, NULL, NULL, -1, "nbds://h/?tls-username=bob" },
  { "param/tls-username-same-as-user",
    "nbds://bob@h/?tls-username=bob", NULL, NULL, "bob", NULL, NULL, NULL,
    -1, "nbds://bob@h/?tls-username=bob" },

  /* U12 */
  { "param/tls-hostname", "nbds+unix:///?socket=/s&tls-hostname=nbd.test",
    NULL, NULL, NULL, "nbd.test", NULL, NULL, -1,
    "nbds+unix:///?socket=/s&tls-hostname=nbd.test" },

  /* U11 */
  { "param/tls-type/anon", "nbds://h/?tls-type=anon", NULL, NULL, NULL, NULL,
    NULL, "anon", -1, "nbds://h/?tls-type=anon" },
  { "param/tls-type/x509", "nbds://h/?tls-type=x509", NULL, NULL, NULL, NULL,
    NULL, "x509", -1, "nbds://h/?tls-type=x509" },
  { "param/tls-type/psk", "nbds://h/?tls-type=psk", NULL, NULL, NULL, NULL,
    NULL, "psk", -1, "nbds://h/?tls-type=psk" },
  { "param/tls-type/upper-case", "nbds://h/?tls-type=PSK", NULL, NULL, NULL,
    NULL, NULL, "psk", -1, "nbds://h/?tls-type=psk" },

  /* U13 */
  { "param/tls-verify-peer/0", "nbds://h/?tls-verify-peer=0", NO_TLS, 0,
    "nbds://h/?tls-verify-peer=0" },
  { "param/tls-verify-peer/1", "nbds://h/?tls-verify-peer=1", NO_TLS, 1,
    "nbds://h/?tls-verify-peer=1" },
  { "param/tls-verify-peer/false", "nbds://h/?tls-verify-peer=false",
    NO_TLS, 0, "nbds://h/?tls-verify-peer=0" },
  { "param/tls-verify-peer/true", "nbds://h/?tls-verify-peer=true", NO_TLS,
    1, "nbds://h/?tls-verify-peer=1" },
  { "param/tls-verify-peer/no", "nbds://h/?tls-verify-peer=no", NO_TLS, 0,
    "nbds://h/?tls-verify-peer=0" },
  { "param/tls-verify-peer/yes", "nbds://h/?tls-verify-peer=YES", NO_TLS, 1,
    "nbds://h/?tls-verify-peer=1" },

  /* U1: names are percent-decoded too. */
  { "param/encoded-name", "nbds://h/?tls%2Dtype=psk", NULL, NULL, NULL, NULL,
    NULL, "psk", -1, "nbds://h/?tls-type=psk" },

  /* Every parameter at once, written in another order than display's. */
  { "param/all",
    "nbds://h/e?tls-verify-peer=0&tls-priority=SECURE256&tls-type=x509"
    "&tls-username=u&tls-psk-file=/p&tls-hostname=n&tls-certificates=/c",
    "/c", "/p", "u", "n", "SECURE256", "x509", 0,
    "nbds://h/e?tls-type=x509&tls-hostname=n&tls-verify-peer=0"
    "&tls-certificates=/c&tls-psk-file=/p&tls-username=u"
    "&tls-priority=SECURE256" },
};

static void
test_param(gconstpointer data)
{
  const struct param_case *c = data;
  g_autoptr(nbd_uri) u = parse_ok(c->uri);
  g_autofree char *display = nbd_uri_display(u);

  g_assert_cmpstr(u->tls_certificates, ==, c->certificates);
  g_assert_cmpstr(u->tls_psk_file, ==, c->psk_file);
  g_assert_cmpstr(u->tls_username, ==, c->username);
  g_assert_cmpstr(u->tls_hostname, ==, c->hostname);
  g_assert_cmpstr(u->tls_priority, ==, c->priority);
  g_assert_cmpstr(u->tls_type, ==, c->type);
  g_assert_cmpint(u->tls_verify_peer, ==, c->verify_peer);
  g_assert_cmpstr(display, ==, c->display);

  check_round_trip(u);
}

/* ---- URIs that fail ----------------------------------------------------- */

struct bad_case {
  const char *path;
  const char *uri;
  const char *want[3]; /* substrings the message must hold */
  const char *forbid;  /* a secret the message must not hold */
};

/* BAD(path, uri, wanted substrings...); HIDES() adds the secret first. */
#define BAD(path, uri, ...) { path, uri, { __VA_ARGS__ }, NULL }
#define HIDES(path, uri, secret, ...) { path, uri, { __VA_ARGS__ }, secret }

static const struct bad_case bad_cases[] = {
  /* U2, U3 */
  BAD("error/no-scheme", "example.com/disk", "no scheme", "nbd://"),
  BAD("error/empty", "", "no scheme"),
  BAD("error/bad-scheme-char", "nb_d://h/", "no scheme"),
  BAD("error/unknown-scheme", "http://h/x",
      "unknown scheme 'http'", "nbd, nbds, nbd+unix or nbds+unix"),
  BAD("error/nbd-vsock", "nbd+vsock://2/x",
      "scheme 'nbd+vsock'", "not supported"),
  BAD("error/nbds-vsock", "nbds+vsock://2", "'nbds+vsock'",
      "not supported"),
  BAD("error/nbd-ssh", "NBD+SSH://h/", "'nbd+ssh'", "not supported"),

  /* U1: characters RFC 3986 does not allow unencoded. */
  BAD("error/fragment", "nbd://h/x#y", "fragment", "%23"),
  BAD("error/raw-space", "nbd://h/a b", "byte 0x20", "export name", "%20"),
  BAD("error/raw-newline", "nbd://h/a\nb",
      "byte 0x0A", "export name", "nbd://h/a%0Ab"),
  BAD("error/raw-utf8", "nbd://h/caf\xc3\xa9", "byte 0xC3", "export name"),
  BAD("error/raw-bracket-in-path", "nbd://h/a[1]",
      "character '['", "export name", "%5B"),
  BAD("error/bad-percent", "nbd://h/a%zz", "'%'", "hex digits"),
  BAD("error/short-percent", "nbd://h/a%2", "'%'", "export name"),

  /* U9, G1 */
  BAD("error/export-nul", "nbd://h/a%00b", "export name", "NUL", "%00"),
  BAD("error/export-only-nul", "nbd://h/%00", "export name", "NUL"),
  BAD("error/export-not-utf8", "nbd://h/%FF%FE", "export name", "UTF-8"),
  BAD("error/export-overlong-utf8", "nbd://h/%C0%AF", "UTF-8"),

  /* U7 */
  BAD("error/port-zero", "nbd://h:0/", "port", "out of range 1..65535"),
  BAD("error/port-too-big", "nbd://h:65536/", "port", "out of range"),
  BAD("error/port-huge", "nbd://h:99999999999999999999/", "out of range"),
  BAD("error/port-alpha", "nbd://h:abc/", "port", "not a number"),
  BAD("error/port-negative", "nbd://h:-1/", "not a number"),
  BAD("error/port-two-colons", "nbd://h:80:90/", "not a number"),
  BAD("error/port-unix", "nbd+unix://:99/?socket=/s",
      "nbd+unix", "no host or port"),

  /* U5, U6: hosts. */
  BAD("error/ipv6-unclosed", "nbd://[::1/", "'['", "no matching ']'"),
  BAD("error/ipv6-invalid", "nbd://[::g]/", "'::g'", "not an IPv6"),
  BAD("error/ipv6-is-ipv4", "nbd://[192.0.2.1]/", "not an IPv6"),
  BAD("error/ipv6-future", "nbd://[v1.x]/", "not an IPv6"),
  BAD("error/ipv6-trailing", "nbd://[::1]x/", "follow ']'"),
  BAD("error/ipv6-raw-zone", "nbd://[fe80::1%eth0]/", "zone", "%25"),
  BAD("error/ipv6-empty-zone", "nbd://[fe80::1%25]/", "zone"),
  BAD("error/ipv6-unbracketed", "nbd://::1/", "port", "brackets"),
  BAD("error/host-colon", "nbd://a%3Ab/", "host contains ':'", "brackets"),
  BAD("error/host-two-at", "nbd://a@b@h/", "character '@'", "user name"),
  BAD("error/host-bracket", "nbd://h[x]/", "character '['", "host"),
  BAD("error/host-nul", "nbd://h%00/", "host", "NUL"),

  /* U4: a TCP scheme needs a host, a +unix scheme takes none. */
  BAD("error/no-host", "nbd:///x", "no host", "nbd://HOST/EXPORT"),
  BAD("error/no-authority", "nbd:disk", "no host"),
  BAD("error/nbds-port-only", "nbds://:10809/", "no host", "nbds://"),
  BAD("error/unix-host", "nbd+unix://h/x?socket=/s",
      "nbd+unix names no host", "socket=PATH"),
  BAD("error/nbds-unix-host", "nbds+unix://alice@h/?socket=/s",
      "nbds+unix names no host"),
  BAD("error/unix-ipv6-host", "nbd+unix://[::1]/?socket=/s",
      "names no host"),

  /* U5, U8: a user name only, never a password. */
  HIDES("error/password", "nbd://alice:s3cret@h/x", "s3cret",
        "passwords in URIs are not supported", "tls-psk-file",
        "nbd://alice:***@h/x"),
  BAD("error/password-empty", "nbd://alice:@h/", "passwords"),
  HIDES("error/password-with-at", "nbd://alice:p@ssw0rd@h/", "ssw0rd",
        "passwords", "alice:***@h"),
  HIDES("error/password-with-slash", "nbd://alice:pa/ssw0rd@h/", "ssw0rd",
        "port", "alice:***@h"),
  HIDES("error/password-unix", "nbds+unix://alice:s3cret@/?socket=/s",
        "s3cret", "passwords"),
  HIDES("error/password-then-bad-param", "nbd://alice:s3cret@h/?foo=1",
        "s3cret", "passwords"),
  HIDES("error/password-fragment", "nbd://alice:s3cret@h/#x", "s3cret",
        "fragment"),
  HIDES("error/password-numeric", "nbd://u:99999/pw@h/", "99999",
        "u:***@h/", "port", "out of range"),
  BAD("error/export-colon-at-shown", "nbd://h/a:b@c?foo=1",
      "nbd://h/a:b@c?foo=1", "unknown query parameter 'foo'"),
  BAD("error/user-nul", "nbd://a%00@h/", "user name", "NUL"),
  BAD("error/user-conflict", "nbds://alice@h/?tls-username=bob",
      "tls-username", "differ", "alice@h"),

  /* U10 */
  BAD("error/unix-no-socket", "nbd+unix:///x",
      "nbd+unix requires the socket= query parameter"),
  BAD("error/nbds-unix-no-socket", "nbds+unix:///x?tls-type=psk",
      "nbds+unix requires", "socket="),
  BAD("error/socket-on-tcp", "nbd://h/?socket=/s",
      "socket= is only allowed", "nbd+unix"),
  BAD("error/socket-on-nbds", "nbds://h/?socket=/s", "socket="),
  BAD("error/socket-empty", "nbd+unix:///?socket=", "'socket'", "empty"),
  BAD("error/socket-abstract", "nbd+unix:///?socket=%00/abstract",
      "abstract sockets", "not supported"),
  BAD("error/socket-nul-inside", "nbd+unix:///?socket=/a%00b",
      "'socket'", "NUL"),
  BAD("error/socket-twice", "nbd+unix:///?socket=/a&socket=/b",
      "'socket'", "twice"),

  /* U16: unknown parameters are errors, and the rest of the query. */
  BAD("error/unknown-param", "nbd://h/x?foo=1",
      "parse URI: nbd://h/x?foo=1: unknown query parameter 'foo'"),
  BAD("error/unknown-x-param", "nbd://h/?x-foo=1", "unknown", "'x-foo'"),
  BAD("error/unknown-param-case", "nbd://h/?TLS-TYPE=psk",
      "unknown", "'TLS-TYPE'"),
  BAD("error/unknown-param-nul", "nbd://h/?socket%00x=1",
      "unknown", "'socket%00x'"),
  BAD("error/param-twice", "nbds://h/?tls-type=psk&tls-type=x509",
      "'tls-type'", "twice"),
  BAD("error/param-twice-encoded", "nbds://h/?tls-type=psk&tls%2Dtype=psk",
      "'tls-type'", "twice"),
  BAD("error/bool-twice", "nbds://h/?tls-verify-peer=0&tls-verify-peer=0",
      "'tls-verify-peer'", "twice"),
  BAD("error/param-no-value", "nbds://h/?tls-type", "'tls-type'", "no value"),
  BAD("error/param-empty", "nbds://h/?tls-hostname=",
      "'tls-hostname'", "empty value"),
  BAD("error/param-nul", "nbds://h/?tls-hostname=a%00b",
      "'tls-hostname'", "NUL"),
  BAD("error/param-bad-percent", "nbds://h/?tls-type=%G1",
      "'%'", "query", "hex digits"),
  BAD("error/param-raw-space", "nbds://h/?tls-hostname=a b",
      "byte 0x20", "query"),
  BAD("error/tls-psk-file-empty", "nbds://h/?tls-psk-file=",
      "'tls-psk-file'", "empty value"),
  BAD("error/tls-certificates-twice",
      "nbds://h/?tls-certificates=/a&tls-certificates=/a",
      "'tls-certificates'", "twice"),
  BAD("error/tls-type", "nbds://h/?tls-type=kerberos",
      "tls-type 'kerberos'", "anon, x509, psk"),
  BAD("error/tls-verify-peer", "nbds://h/?tls-verify-peer=maybe",
      "tls-verify-peer 'maybe'", "0 or 1"),
  BAD("error/tls-type-newline", "nbds://h/?tls-type=a%0Ab",
      "tls-type 'a%0Ab'"),
  BAD("error/tls-verify-peer-2", "nbds://h/?tls-verify-peer=2",
      "tls-verify-peer '2'"),
};

static void
check_message(const char *msg, const char *const *want, const char *forbid)
{
  g_assert_true(g_str_has_prefix(msg, "parse URI: "));
  for (size_t i = 0; i < 3 && want[i] != NULL; i++)
    if (strstr(msg, want[i]) == NULL)
      g_error("message \"%s\" lacks \"%s\"", msg, want[i]);
  if (forbid != NULL && strstr(msg, forbid) != NULL)
    g_error("message \"%s\" shows the secret \"%s\"", msg, forbid);

  /* A message stays on one printable line, whatever the URI held. */
  for (const char *c = msg; *c != '\0'; c++)
    g_assert_true(*c >= ' ' && *c < 0x7f);
}

static void
check_bad(const char *text, const char *const *want, const char *forbid)
{
  g_autoptr(GError) err = NULL;
  struct nbd_uri *u = (struct nbd_uri *) &u; /* must be reset to NULL */
  int r;

  r = nbd_uri_parse(text, &u, &err);
  g_assert_cmpint(r, ==, -EINVAL);
  g_assert_null(u);
  g_assert_error(err, NBDPROTO_ERROR, EINVAL);
  check_message(err->message, want, forbid);
}

static void
test_bad(gconstpointer data)
{
  const struct bad_case *c = data;

  check_bad(c->uri, c->want, c->forbid);
}

/* ---- Cases that need code rather than a row ----------------------------- */

/* G1: 4096 bytes of export name are accepted, 4097 are not. */
static void
test_export_name_max_length(void)
{
  g_autofree char *name = g_strnfill(NBD_MAX_STRING, 'a');
  g_autofree char *text = g_strdup_printf("nbd://h/%s", name);
  g_autoptr(nbd_uri) u = parse_ok(text);

  g_assert_cmpuint(strlen(u->export_name), ==, NBD_MAX_STRING);
  g_assert_cmpstr(u->export_name, ==, name);
  check_round_trip(u);
}

static void
test_export_name_too_long(void)
{
  g_autofree char *name = g_strnfill(NBD_MAX_STRING + 1, 'a');
  g_autofree char *text = g_strdup_printf("nbd://h/%s", name);
  static const char *const want[3] = { "4097 bytes", "4096", "..." };
  g_autoptr(GError) err = NULL;
  struct nbd_uri *u = NULL;

  check_bad(text, want, NULL);

  /* The URI in the message is cut short. */
  g_assert_cmpint(nbd_uri_parse(text, &u, &err), ==, -EINVAL);
  g_assert_cmpuint(strlen(err->message), <, 400);
}

/* G1: the limit counts decoded bytes, not the encoded text. */
static void
test_export_name_encoded_length(void)
{
  GString *s = g_string_new("nbd://h/");
  g_autofree char *text = NULL;
  g_autoptr(nbd_uri) u = NULL;
  static const char *const want[3] = { "4097 bytes" };

  for (int i = 0; i < NBD_MAX_STRING; i++)
    g_string_append(s, "%41");
  text = g_string_free(s, FALSE);
  u = parse_ok(text);
  g_assert_cmpuint(strlen(u->export_name), ==, NBD_MAX_STRING);

  g_free(g_steal_pointer(&text));
  s = g_string_new("nbd://h/");
  for (int i = 0; i <= NBD_MAX_STRING; i++)
    g_string_append(s, "%41");
  text = g_string_free(s, FALSE);
  check_bad(text, want, NULL);
}

static void
test_null_text(void)
{
  g_autoptr(GError) err = NULL;
  struct nbd_uri *u = NULL;

  g_assert_cmpint(nbd_uri_parse(NULL, &u, &err), ==, -EINVAL);
  g_assert_null(u);
  g_assert_error(err, NBDPROTO_ERROR, EINVAL);
  g_assert_nonnull(strstr(err->message, "no URI"));
}

/* The GError is optional: callers that only want the errno pass NULL. */
static void
test_null_error(void)
{
  struct nbd_uri *u = NULL;

  g_assert_cmpint(nbd_uri_parse("http://h/", &u, NULL), ==, -EINVAL);
  g_assert_null(u);
  g_assert_cmpint(nbd_uri_parse("nbd://h/", &u, NULL), ==, 0);
  g_assert_nonnull(u);
  nbd_uri_free(u);
}

static void
test_free_null(void)
{
  nbd_uri_free(NULL);

  /* The autoptr cleanup runs at the end of the scope, on NULL. */
  {
    g_autoptr(nbd_uri) u = NULL;

    g_assert_null(u);
  }
}

/* A string of every byte from first to last, skipping skip. */
static char *
byte_range(unsigned first, unsigned last, char skip)
{
  GString *s = g_string_new(NULL);

  for (unsigned b = first; b <= last; b++)
    if (b != (unsigned char) skip)
      g_string_append_c(s, (char) b);
  return g_string_free(s, FALSE);
}

static void
set_field(char **field, char *value)
{
  g_free(*field);
  *field = value;
}

/* Fields holding every byte that needs encoding survive display and
 * parse.  The export name stays UTF-8 (G1) and the host holds no ':',
 * which would make it an IPv6 address. */
static void
test_display_all_bytes_tcp(void)
{
  g_autoptr(nbd_uri) u = parse_ok("nbds://h/");
  g_autofree char *ascii = byte_range(1, 127, 0);
  g_autofree char *shown = NULL;

  set_field(&u->host, byte_range(1, 127, ':'));
  set_field(&u->user, byte_range(1, 255, 0));
  set_field(&u->export_name, g_strconcat("/", ascii, "\xc3\xa9", NULL));
  set_field(&u->tls_certificates, byte_range(1, 255, 0));
  set_field(&u->tls_psk_file, byte_range(1, 255, '/'));
  set_field(&u->tls_username, g_strdup(u->user));
  set_field(&u->tls_hostname, byte_range(1, 255, 0));
  set_field(&u->tls_priority, byte_range(1, 255, '&'));
  set_field(&u->tls_type, g_strdup("psk"));
  u->tls_verify_peer = 1;

  check_round_trip(u);

  /* Only URI characters come out, so the text could be typed back. */
  shown = nbd_uri_display(u);
  for (const char *c = shown; *c != '\0'; c++)
    g_assert_true(*c > ' ' && *c < 0x7f && !strchr("\"<>\\^`{|}", *c));
}

static void
test_display_all_bytes_unix(void)
{
  g_autoptr(nbd_uri) u = parse_ok("nbds+unix:///?socket=/s");

  set_field(&u->socket_path, byte_range(1, 255, 0));
  set_field(&u->export_name, byte_range(1, 127, 0));
  u->tls_verify_peer = 0;

  check_round_trip(u);
}

static void
add_table_tests(void)
{
  for (size_t i = 0; i < G_N_ELEMENTS(good_cases); i++) {
    g_autofree char *path =
      g_strconcat("/nbdproto/uri/", good_cases[i].path, NULL);
    g_test_add_data_func(path, &good_cases[i], test_good);
  }
  for (size_t i = 0; i < G_N_ELEMENTS(param_cases); i++) {
    g_autofree char *path =
      g_strconcat("/nbdproto/uri/", param_cases[i].path, NULL);
    g_test_add_data_func(path, &param_cases[i], test_param);
  }
  for (size_t i = 0; i < G_N_ELEMENTS(bad_cases); i++) {
    g_autofree char *path =
      g_strconcat("/nbdproto/uri/", bad_cases[i].path, NULL);
    g_test_add_data_func(path, &bad_cases[i], test_bad);
  }
}

int
main(int argc, char *argv[])
{
  g_test_init(&argc, &argv, NULL);

  add_table_tests();
  g_test_add_func("/nbdproto/uri/export-name/max-length",
                  test_export_name_max_length);
  g_test_add_func("/nbdproto/uri/error/export-too-long",
                  test_export_name_too_long);
  g_test_add_func("/nbdproto/uri/export-name/encoded-length",
                  test_export_name_encoded_length);
  g_test_add_func("/nbdproto/uri/api/null-text", test_null_text);
  g_test_add_func("/nbdproto/uri/api/null-error", test_null_error);
  g_test_add_func("/nbdproto/uri/api/free-null", test_free_null);
  g_test_add_func("/nbdproto/uri/display/all-bytes-tcp",
                  test_display_all_bytes_tcp);
  g_test_add_func("/nbdproto/uri/display/all-bytes-unix",
                  test_display_all_bytes_unix);

  return g_test_run();
}
