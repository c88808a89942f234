/* nbdfs: NBD URIs (checklist section U).
 *
 * The accepted forms are
 *
 *   nbd[s]://[user@]host[:port][/export][?param=value&...]
 *   nbd[s]+unix://[user@]/[export]?socket=PATH[&param=value...]
 *
 * The parser is written against the RFC 3986 grammar (U1) rather than
 * on top of GLib's g_uri_split(): that function quietly accepts what the
 * RFC forbids (raw spaces and control bytes, an '@' or '[' inside a host),
 * reports errors in its own localized wording, and cannot tell a query
 * parameter given twice from one given once.  GLib still does the
 * percent-decoding and encoding.
 *
 * Choices left to the client by uri.md, made here:
 *
 * - U4: a TCP scheme without a host is an error, because guessing
 *   "localhost" would hide a typo.  A +unix scheme with a host or port
 *   is an error too, because ignoring it would mislead the user about
 *   where nbdfs connects.  A user name is allowed with +unix: it is the
 *   PSK identity (U8, U18), as in nbds+unix://alice@/?socket=PATH.
 * - U10: Linux abstract sockets (socket=%00name) are rejected with a
 *   message that says so.  struct nbd_uri keeps the path as a C string,
 *   which cannot carry a leading NUL.
 * - A fragment ("#...") is an error: uri.md gives it no meaning and
 *   dropping it silently would hide a '#' the user meant to be part of
 *   an export name.
 * - A password in the userinfo is an error, and it is never echoed in a
 *   message: the PSK belongs in a file (tls-psk-file).
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "nbdproto.h"

/* RFC 3986 §2.2 and §3.3: the character sets each component may hold,
 * besides the unreserved characters and percent-encoded octets. */
#define SUB_DELIMS "!$&'()*+,;="
#define PCHAR_EXTRA SUB_DELIMS ":@"
#define PATH_EXTRA PCHAR_EXTRA "/"
#define QUERY_EXTRA PCHAR_EXTRA "/?"
#define SCHEME_CHARS                                                       \
  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-."

/* Messages show at most this much of the URI, so a 4 KiB export name
 * does not flood a log line. */
#define SHOWN_MAX 256

#define DEFAULT_PORT G_STRINGIFY(NBD_DEFAULT_PORT)

/* A piece of the URI text, still percent-encoded. */
struct span {
  const char *s;
  size_t len;
};

struct parser {
  const char *text;
  const char *shown; /* text as messages may show it */
  GError **error;
};

static const struct scheme {
  const char *name;
  bool tls_required;
  bool is_unix;
} schemes[] = {
  /* U2 */
  { "nbd", false, false },
  { "nbds", true, false },
  { "nbd+unix", false, true },
  { "nbds+unix", true, true },
};

enum param_kind {
  PARAM_STRING,
  PARAM_TLS_TYPE,
  PARAM_BOOL,
};

/* The query parameters, in the order nbd_uri_display() writes them.
 * offset locates the char * field (PARAM_STRING, PARAM_TLS_TYPE) or the
 * int field (PARAM_BOOL) in struct nbd_uri. */
static const struct param {
  const char *name;
  enum param_kind kind;
  size_t offset;
} params[] = {
  /* U10 */
  { "socket", PARAM_STRING, offsetof(struct nbd_uri, socket_path) },
  /* U11, U12, U13 */
  { "tls-type", PARAM_TLS_TYPE, offsetof(struct nbd_uri, tls_type) },
  { "tls-hostname", PARAM_STRING, offsetof(struct nbd_uri, tls_hostname) },
  { "tls-verify-peer", PARAM_BOOL,
    offsetof(struct nbd_uri, tls_verify_peer) },
  /* U14: libnbd's extensions.  They make the client read local files;
   * the parser only records them and the caller decides whether to
   * honour them, so that the opt-in lives where the policy is set. */
  { "tls-certificates", PARAM_STRING,
    offsetof(struct nbd_uri, tls_certificates) },
  { "tls-psk-file", PARAM_STRING, offsetof(struct nbd_uri, tls_psk_file) },
  { "tls-username", PARAM_STRING, offsetof(struct nbd_uri, tls_username) },
  { "tls-priority", PARAM_STRING, offsetof(struct nbd_uri, tls_priority) },
};

static char **
string_field(struct nbd_uri *u, const struct param *param)
{
  return (char **) ((char *) u + param->offset);
}

static int *
int_field(struct nbd_uri *u, const struct param *param)
{
  return (int *) ((char *) u + param->offset);
}

static const char *
string_value(const struct nbd_uri *u, const struct param *param)
{
  return *(char *const *) ((const char *) u + param->offset);
}

static int
int_value(const struct nbd_uri *u, const struct param *param)
{
  return *(const int *) ((const char *) u + param->offset);
}

/* Returns the form of text that error messages may show: a password in
 * the userinfo becomes "***", bytes that are not printable ASCII are
 * percent-encoded so a message stays on one line, and a long URI is
 * cut short.  It works on text that fails to parse as well.
 *
 * The password starts at the first ':' of the authority and is taken to
 * end at the last '@' before any '?' or '#', not only before the first
 * '/': a password holding an unencoded '/' is then hidden too.  The
 * cost is that an error about a URI with both a port and an '@' in its
 * export name shows more "***" than needed. */
static char *
make_shown(const char *text)
{
  GString *s = g_string_new(NULL);
  const char *redact = NULL, *redact_end = NULL;
  size_t n = strcspn(text, ":/?#");

  if (strncmp(text + n, "://", 3) == 0) {
    const char *auth = text + n + 3;
    const char *at = memrchr(auth, '@', strcspn(auth, "?#"));
    const char *colon = memchr(auth, ':', strcspn(auth, "/?#"));

    if (at != NULL && colon != NULL && colon < at) {
      redact = colon + 1;
      redact_end = at;
    }
  }

  for (const char *c = text; *c != '\0'; c++) {
    unsigned char byte = *c;

    if (s->len >= SHOWN_MAX) {
      g_string_append(s, "...");
      break;
    }
    if (c == redact) {
      g_string_append(s, "***");
      c = redact_end - 1;
    } else if (byte > ' ' && byte < 0x7f) {
      g_string_append_c(s, byte);
    } else {
      g_string_append_printf(s, "%%%02X", byte);
    }
  }

  return g_string_free(s, FALSE);
}

/* Sets the error "parse URI: <shown URI>: <cause>" and returns -EINVAL. */
static int G_GNUC_PRINTF(2, 3)
fail(const struct parser *p, const char *fmt, ...)
{
  g_autofree char *cause = NULL;
  va_list ap;

  va_start(ap, fmt);
  cause = g_strdup_vprintf(fmt, ap);
  va_end(ap);

  return nbd_set_error(p->error, EINVAL, "parse URI: %s: %s", p->shown,
                       cause);
}

static bool
is_unreserved(char c)
{
  return g_ascii_isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

/* U1: checks that sp holds only the characters RFC 3986 allows in the
 * component named what: unreserved ones, '%' (decode() checks what
 * follows it) and those in extra. */
static int
check_chars(const struct parser *p, struct span sp, const char *extra,
            const char *what)
{
  for (size_t i = 0; i < sp.len; i++) {
    unsigned char c = sp.s[i];

    if (is_unreserved(c) || c == '%' || (c != '\0' && strchr(extra, c)))
      continue;
    if (g_ascii_isgraph(c))
      return fail(p, "character '%c' is not allowed in the %s; "
                  "percent-encode it as %%%02X", c, what, c);
    return fail(p, "byte 0x%02X is not allowed in the %s; "
                "percent-encode it as %%%02X", c, what, c);
  }
  return 0;
}

/* U1: percent-decodes sp into a new NUL-terminated string, setting *len
 * to its length, which can be shorter than strlen() would say when the
 * text had %00: callers decide what a NUL means for them. */
static int
decode(const struct parser *p, struct span sp, const char *what,
       char **out, size_t *len)
{
  g_autoptr(GBytes) bytes = NULL;
  const char *data;
  char *copy;

  bytes = g_uri_unescape_bytes(sp.s, sp.len, NULL, NULL);
  if (bytes == NULL)
    return fail(p, "a '%%' in the %s is not followed by two hex digits",
                what);

  data = g_bytes_get_data(bytes, len);
  copy = g_malloc(*len + 1);
  if (*len > 0)
    memcpy(copy, data, *len);
  copy[*len] = '\0';
  *out = copy;
  return 0;
}

/* Checks and decodes a component that must not hold a NUL byte. */
static int
decode_text(const struct parser *p, struct span sp, const char *extra,
            const char *what, char **out)
{
  g_autofree char *s = NULL;
  size_t len;
  int r;

  r = check_chars(p, sp, extra, what);
  if (r < 0)
    return r;
  r = decode(p, sp, what, &s, &len);
  if (r < 0)
    return r;

  if (memchr(s, '\0', len) != NULL)
    return fail(p, "the %s contains a NUL byte (%%00)", what);

  *out = g_steal_pointer(&s);
  return 0;
}

/* RFC 3986 §3.1, U2, U3. */
static int
parse_scheme(const struct parser *p, struct nbd_uri *u, const char **rest)
{
  const char *t = p->text;
  size_t n = 0;
  g_autofree char *name = NULL;

  if (g_ascii_isalpha(t[0]))
    n = 1 + strspn(t + 1, SCHEME_CHARS);
  if (n == 0 || t[n] != ':')
    return fail(p, "no scheme; an NBD URI starts with nbd://, nbds://, "
                "nbd+unix:// or nbds+unix://");

  /* Schemes are case-insensitive; the canonical form is lower case. */
  name = g_ascii_strdown(t, n);
  *rest = t + n + 1;

  for (size_t i = 0; i < G_N_ELEMENTS(schemes); i++) {
    if (strcmp(name, schemes[i].name) == 0) {
      u->scheme = g_steal_pointer(&name);
      u->tls_required = schemes[i].tls_required;
      u->is_unix = schemes[i].is_unix;
      return 0;
    }
  }

  /* U3: nbd+vsock and other transports that libnbd knows are not
   * something nbdfs can connect over; say so rather than "unknown". */
  if (g_str_has_prefix(name, "nbd+") || g_str_has_prefix(name, "nbds+"))
    return fail(p, "scheme '%s' is not supported; use nbd, nbds, "
                "nbd+unix or nbds+unix", name);
  return fail(p, "unknown scheme '%s'; use nbd, nbds, nbd+unix or "
              "nbds+unix", name);
}

/* U5, U8: the userinfo is a user name, never a password. */
static int
parse_userinfo(const struct parser *p, struct nbd_uri *u, struct span sp)
{
  if (memchr(sp.s, ':', sp.len) != NULL)
    return fail(p, "passwords in URIs are not supported; use "
                "tls-psk-file");

  /* An empty userinfo ("nbd://@host/") names no user. */
  if (sp.len == 0)
    return 0;
  return decode_text(p, sp, SUB_DELIMS, "user name", &u->user);
}

/* U6: an IP-literal, the text between '[' and ']'.  RFC 6874 adds an
 * optional zone, written "%25" then the zone name; the host keeps it as
 * "addr%zone", the form getaddrinfo() understands. */
static int
parse_ip_literal(const struct parser *p, struct nbd_uri *u, struct span sp)
{
  const char *pct = memchr(sp.s, '%', sp.len);
  size_t addr_len = pct ? (size_t) (pct - sp.s) : sp.len;
  g_autofree char *addr = g_strndup(sp.s, addr_len);
  g_autofree char *zone = NULL;
  struct in6_addr in6;
  int r;

  r = check_chars(p, (struct span) { sp.s, addr_len }, ":", "IPv6 address");
  if (r < 0)
    return r;
  if (inet_pton(AF_INET6, addr, &in6) != 1)
    return fail(p, "'%s' in brackets is not an IPv6 address", addr);

  if (pct == NULL) {
    u->host = g_steal_pointer(&addr);
    return 0;
  }

  if (sp.len - addr_len <= 3 || strncmp(pct, "%25", 3) != 0)
    return fail(p, "an IPv6 zone is written %%25 then its name, as in "
                "[fe80::1%%25eth0]");
  r = decode_text(p, (struct span) { pct + 3, sp.len - addr_len - 3 }, "",
                  "IPv6 zone", &zone);
  if (r < 0)
    return r;

  u->host = g_strdup_printf("%s%%%s", addr, zone);
  return 0;
}

/* U7: the port is decimal, 1 to 65535; an empty port means 10809. */
static int
parse_port(const struct parser *p, struct nbd_uri *u, struct span sp)
{
  g_autofree char *text = g_strndup(sp.s, sp.len);
  guint64 port;

  if (sp.len == 0)
    return 0;

  /* The port is not echoed: in "nbd://user:pass/word@host" it would be
   * part of a password that make_shown() hides. */
  if (strchr(text, ':') != NULL)
    return fail(p, "the port is not a number; write an IPv6 address in "
                "brackets, as in nbd://[::1]/");
  if (strspn(text, "0123456789") != sp.len)
    return fail(p, "the port is not a number");
  if (!g_ascii_string_to_unsigned(text, 10, 1, 65535, &port, NULL))
    return fail(p, "the port is out of range 1..65535");

  /* Canonical decimal, so that "010809" and "10809" compare equal. */
  u->port = g_strdup_printf("%u", (unsigned) port);
  return 0;
}

/* RFC 3986 §3.2: authority = [ userinfo "@" ] host [ ":" port ]. */
static int
parse_authority(const struct parser *p, struct nbd_uri *u, struct span sp)
{
  const char *end = sp.s + sp.len;
  const char *at = memrchr(sp.s, '@', sp.len);
  const char *h = at ? at + 1 : sp.s;
  const char *host_end;
  int r;

  /* The last '@' ends the userinfo: a password holding an unencoded '@'
   * is then still taken as a password and kept out of messages. */
  if (at != NULL) {
    r = parse_userinfo(p, u, (struct span) { sp.s, at - sp.s });
    if (r < 0)
      return r;
  }

  if (h < end && *h == '[') {
    const char *close = memchr(h, ']', end - h);

    if (close == NULL)
      return fail(p, "'[' in the host has no matching ']'");
    if (close + 1 < end && close[1] != ':')
      return fail(p, "only ':' and a port may follow ']' in the host");
    r = parse_ip_literal(p, u, (struct span) { h + 1, close - h - 1 });
    if (r < 0)
      return r;
    host_end = close + 1;
  } else {
    const char *colon = memchr(h, ':', end - h);

    host_end = colon ? colon : end;
    r = decode_text(p, (struct span) { h, host_end - h }, SUB_DELIMS, "host",
                    &u->host);
    if (r < 0)
      return r;

    /* U6: a ':' can only reach a host name through %3A; taking it would
     * make "host:port" in messages ambiguous and it names no host. */
    if (strchr(u->host, ':') != NULL)
      return fail(p, "the host contains ':' (%%3A); write an IPv6 address "
                  "in brackets, as in nbd://[::1]/");
  }

  if (host_end < end)
    return parse_port(p, u, (struct span) { host_end + 1,
                                            end - host_end - 1 });
  return 0;
}

/* U9: the path without one leading '/', percent-decoded.  G1: the name
 * goes on the wire, so it is UTF-8 and at most NBD_MAX_STRING bytes. */
static int
parse_export(const struct parser *p, struct nbd_uri *u, struct span sp)
{
  g_autofree char *name = NULL;
  size_t len;
  int r;

  if (sp.len > 0 && sp.s[0] == '/') {
    sp.s++;
    sp.len--;
  }

  r = check_chars(p, sp, PATH_EXTRA, "export name");
  if (r < 0)
    return r;
  r = decode(p, sp, "export name", &name, &len);
  if (r < 0)
    return r;

  if (memchr(name, '\0', len) != NULL)
    return fail(p, "the export name contains a NUL byte (%%00), which "
                "NBD export names cannot hold");
  if (len > NBD_MAX_STRING)
    return fail(p, "the export name is %zu bytes long; the limit is %d",
                len, NBD_MAX_STRING);
  if (!g_utf8_validate_len(name, len, NULL))
    return fail(p, "the export name is not valid UTF-8");

  u->export_name = g_steal_pointer(&name);
  return 0;
}

/* U13: the spec says 0 or 1; the common spellings of a boolean are
 * accepted as well, in any case. */
static int
parse_bool(const char *value)
{
  static const char *const no[] = { "0", "false", "no" };
  static const char *const yes[] = { "1", "true", "yes" };

  for (size_t i = 0; i < G_N_ELEMENTS(no); i++) {
    if (g_ascii_strcasecmp(value, no[i]) == 0)
      return 0;
    if (g_ascii_strcasecmp(value, yes[i]) == 0)
      return 1;
  }
  return -1;
}

/* Stores one decoded parameter.  Messages show raw_name and raw_value,
 * the text as written, which holds only printable URI characters where
 * the decoded text could hold a newline. */
static int
set_param(const struct parser *p, struct nbd_uri *u,
          const struct param *param, const char *raw_name,
          const char *raw_value, const char *value, size_t len)
{
  /* U10: see the top of the file for why abstract sockets are out. */
  if (len > 0 && value[0] == '\0' && strcmp(param->name, "socket") == 0)
    return fail(p, "abstract sockets (socket=%%00...) are not supported; "
                "give the path of a socket file");
  if (memchr(value, '\0', len) != NULL)
    return fail(p, "query parameter '%s' contains a NUL byte (%%00)",
                raw_name);
  if (len == 0)
    return fail(p, "query parameter '%s' has an empty value", raw_name);

  switch (param->kind) {
    case PARAM_STRING:
      *string_field(u, param) = g_strdup(value);
      return 0;

    case PARAM_TLS_TYPE:
      /* U11 */
      if (g_ascii_strcasecmp(value, "anon") != 0 &&
          g_ascii_strcasecmp(value, "x509") != 0 &&
          g_ascii_strcasecmp(value, "psk") != 0)
        return fail(p, "tls-type '%s' is not one of anon, x509, psk",
                    raw_value);
      *string_field(u, param) = g_ascii_strdown(value, -1);
      return 0;

    case PARAM_BOOL:
      *int_field(u, param) = parse_bool(value);
      if (*int_field(u, param) < 0)
        return fail(p, "%s '%s' is not 0 or 1", param->name, raw_value);
      return 0;
  }
  return fail(p, "query parameter '%s' has no known kind", raw_name);
}

static const struct param *
find_param(const char *name, size_t len)
{
  if (memchr(name, '\0', len) != NULL)
    return NULL;
  for (size_t i = 0; i < G_N_ELEMENTS(params); i++)
    if (strcmp(name, params[i].name) == 0)
      return &params[i];
  return NULL;
}

static bool
param_is_set(const struct nbd_uri *u, const struct param *param)
{
  if (param->kind == PARAM_BOOL)
    return int_value(u, param) != -1;
  return string_value(u, param) != NULL;
}

/* One "name=value" piece of the query. */
static int
parse_param(const struct parser *p, struct nbd_uri *u, struct span sp)
{
  const char *eq = memchr(sp.s, '=', sp.len);
  g_autofree char *raw_name = NULL, *raw_value = NULL;
  g_autofree char *name = NULL, *value = NULL;
  size_t name_len, value_len;
  const struct param *param;
  struct span value_sp;

  raw_name = g_strndup(sp.s, eq ? (size_t) (eq - sp.s) : sp.len);
  if (eq == NULL)
    return fail(p, "query parameter '%s' has no value", raw_name);
  value_sp = (struct span) { eq + 1, sp.s + sp.len - eq - 1 };
  raw_value = g_strndup(value_sp.s, value_sp.len);

  /* Names and values are both percent-decoded (U1). */
  if (decode(p, (struct span) { sp.s, eq - sp.s }, "query", &name,
             &name_len) < 0 ||
      decode(p, value_sp, "query", &value, &value_len) < 0)
    return -EINVAL;

  /* U16: an unknown parameter is an error, not a warning: it may be one
   * that changes security (a TLS option mistyped) and dropping it would
   * connect in a way the user did not ask for.  U15's "x-" parameters
   * are no exception, since nbdfs defines none. */
  param = find_param(name, name_len);
  if (param == NULL)
    return fail(p, "unknown query parameter '%s'", raw_name);
  if (param_is_set(u, param))
    return fail(p, "query parameter '%s' is given twice", param->name);

  return set_param(p, u, param, raw_name, raw_value, value, value_len);
}

static int
parse_query(const struct parser *p, struct nbd_uri *u, struct span sp)
{
  const char *end = sp.s + sp.len;
  int r;

  r = check_chars(p, sp, QUERY_EXTRA, "query");
  if (r < 0)
    return r;

  /* Parameters are separated by '&'; empty pieces ("a=1&&b=2", a final
   * '&') carry nothing and are skipped. */
  for (const char *s = sp.s; s < end;) {
    const char *amp = memchr(s, '&', end - s);
    const char *piece_end = amp ? amp : end;

    if (piece_end > s) {
      r = parse_param(p, u, (struct span) { s, piece_end - s });
      if (r < 0)
        return r;
    }
    s = piece_end + 1;
  }
  return 0;
}

/* U4, U10: the transport decides which of host and socket= must be
 * present. */
static int
check_endpoint(const struct parser *p, struct nbd_uri *u)
{
  if (u->is_unix) {
    if ((u->host != NULL && u->host[0] != '\0') || u->port != NULL)
      return fail(p, "%s names no host or port; write %s:///EXPORT?"
                  "socket=PATH", u->scheme, u->scheme);
    if (u->socket_path == NULL)
      return fail(p, "%s requires the socket= query parameter",
                  u->scheme);
    g_clear_pointer(&u->host, g_free);
    return 0;
  }

  if (u->socket_path != NULL)
    return fail(p, "socket= is only allowed with nbd+unix and nbds+unix");
  if (u->host == NULL || u->host[0] == '\0')
    return fail(p, "no host; write %s://HOST/EXPORT", u->scheme);

  /* U7 */
  if (u->port == NULL)
    u->port = g_strdup(DEFAULT_PORT);
  return 0;
}

int
nbd_uri_parse(const char *text, struct nbd_uri **out, GError **error)
{
  g_autofree char *shown = NULL;
  g_autoptr(nbd_uri) u = g_new0(struct nbd_uri, 1);
  struct parser p = { .text = text, .error = error };
  struct span auth = { NULL, 0 }, path, query = { NULL, 0 };
  const char *rest = NULL;
  int r;

  *out = NULL;
  u->tls_verify_peer = -1;
  if (text == NULL)
    return nbd_set_error(error, EINVAL, "parse URI: no URI given");
  shown = make_shown(text);
  p.shown = shown;

  r = parse_scheme(&p, u, &rest);
  if (r < 0)
    return r;

  /* RFC 3986 §3: split before decoding, so that an encoded delimiter
   * (%2F, %3F, %26, ...) stays part of its component. */
  if (strncmp(rest, "//", 2) == 0) {
    auth.s = rest + 2;
    auth.len = strcspn(auth.s, "/?#");
    rest = auth.s + auth.len;
  }
  path = (struct span) { rest, strcspn(rest, "?#") };
  rest += path.len;
  if (*rest == '?') {
    query.s = rest + 1;
    query.len = strcspn(query.s, "#");
    rest = query.s + query.len;
  }
  if (*rest == '#')
    return fail(&p, "a fragment ('#') has no meaning in an NBD URI; "
                "write '#' in an export name as %%23");

  if (auth.s != NULL) {
    r = parse_authority(&p, u, auth);
    if (r < 0)
      return r;
  }

  r = parse_export(&p, u, path);
  if (r < 0)
    return r;

  if (query.s != NULL) {
    r = parse_query(&p, u, query);
    if (r < 0)
      return r;
  }

  r = check_endpoint(&p, u);
  if (r < 0)
    return r;

  /* U18: the userinfo becomes the PSK identity; two different names
   * would leave the TLS code to guess which one the user meant. */
  if (u->user != NULL && u->tls_username != NULL &&
      strcmp(u->user, u->tls_username) != 0)
    return fail(&p, "the user name before '@' and tls-username differ; "
                "give only one");

  *out = g_steal_pointer(&u);
  return 0;
}

void
nbd_uri_free(struct nbd_uri *uri)
{
  if (uri == NULL)
    return;

  g_free(uri->scheme);
  g_free(uri->host);
  g_free(uri->port);
  g_free(uri->socket_path);
  g_free(uri->user);
  g_free(uri->export_name);
  g_free(uri->tls_certificates);
  g_free(uri->tls_psk_file);
  g_free(uri->tls_username);
  g_free(uri->tls_hostname);
  g_free(uri->tls_priority);
  g_free(uri->tls_type);
  g_free(uri);
}

char *
nbd_uri_endpoint(const struct nbd_uri *uri)
{
  g_return_val_if_fail(uri != NULL, NULL);

  if (uri->is_unix)
    return g_strdup(uri->socket_path);

  /* U6: a host holding ':' is an IPv6 address (parse_authority() lets
   * no other host hold one). */
  if (strchr(uri->host, ':') != NULL)
    return g_strdup_printf("[%s]:%s", uri->host, uri->port);
  return g_strdup_printf("%s:%s", uri->host, uri->port);
}

/* Writes the host as the authority needs it: an IPv6 address in
 * brackets with its zone's '%' encoded as %25 (U6, RFC 6874). */
static void
append_host(GString *s, const char *host)
{
  const char *zone;

  if (strchr(host, ':') == NULL) {
    g_string_append_uri_escaped(s, host, SUB_DELIMS, FALSE);
    return;
  }

  zone = strchr(host, '%');
  g_string_append_c(s, '[');
  if (zone == NULL) {
    g_string_append(s, host);
  } else {
    g_string_append_len(s, host, zone - host);
    g_string_append(s, "%25");
    g_string_append_uri_escaped(s, zone + 1, NULL, FALSE);
  }
  g_string_append_c(s, ']');
}

char *
nbd_uri_display(const struct nbd_uri *uri)
{
  GString *s;
  char sep = '?';

  g_return_val_if_fail(uri != NULL, NULL);

  s = g_string_new(uri->scheme);
  g_string_append(s, "://");
  if (uri->user != NULL) {
    g_string_append_uri_escaped(s, uri->user, SUB_DELIMS, FALSE);
    g_string_append_c(s, '@');
  }

  /* The default port is left out, so equal URIs display alike. */
  if (!uri->is_unix && uri->host != NULL) {
    append_host(s, uri->host);
    if (uri->port != NULL && strcmp(uri->port, DEFAULT_PORT) != 0)
      g_string_append_printf(s, ":%s", uri->port);
  }

  /* U9: one '/' is added back; a '/' inside the name stays as it is. */
  g_string_append_c(s, '/');
  if (uri->export_name != NULL)
    g_string_append_uri_escaped(s, uri->export_name, PATH_EXTRA, FALSE);

  /* Values keep only '/', ':' and '@' unencoded: a '+' is encoded too,
   * because some readers take it for a space. */
  for (size_t i = 0; i < G_N_ELEMENTS(params); i++) {
    const struct param *param = &params[i];
    const char *value;

    if (param->kind == PARAM_BOOL) {
      int v = int_value(uri, param);

      if (v == -1)
        continue;
      value = v ? "1" : "0";
    } else {
      value = string_value(uri, param);
      if (value == NULL)
        continue;
    }
    g_string_append_printf(s, "%c%s=", sep, param->name);
    g_string_append_uri_escaped(s, value, "/:@", FALSE);
    sep = '&';
  }

  return g_string_free(s, FALSE);
}
