/* nbdfs: the NBD client protocol module, public interface.
 *
 * nbdproto knows nothing of FUSE.  It parses NBD URIs, opens a transport,
 * negotiates an export (handshake), and then runs the transmission phase
 * on a connection with many commands in flight.
 *
 * Error convention (see HACKING.md): a function that can fail returns 0
 * (or a non-negative count) on success and a negative errno on failure;
 * when it was given a GError **, it has also set it with a message that
 * reads "operation: object: cause".  The GError's domain is NBDPROTO_ERROR
 * and its code the positive errno.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDFS_NBDPROTO_H
#define NBDFS_NBDPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <glib.h>

#include "nbd-wire.h"

#define NBDPROTO_ERROR nbdproto_error_quark()
GQuark nbdproto_error_quark(void);

/* Sets *error (if error is not NULL) to a message built from fmt, with the
 * positive errno err as its code, and returns -err. */
int nbd_set_error(GError **error, int err, const char *fmt, ...)
  G_GNUC_PRINTF(3, 4);

/* ---- Log lines (log.c) ------------------------------------------------- */

/* nbdproto reports what is no error but matters to the user (a warning:
 * verification turned off, a key file others can read) and lifecycle
 * events (info: TLS version and cipher).  When the hook is NULL,
 * warnings go to stderr and the rest is dropped. */
enum nbd_log_level {
  NBD_LOG_WARNING,
  NBD_LOG_INFO,
  NBD_LOG_DEBUG,
};

extern void (*nbd_log_hook)(enum nbd_log_level level, const char *line);
void nbd_log(enum nbd_log_level level, const char *fmt, ...)
  G_GNUC_PRINTF(2, 3);

/* ---- URIs (uri.c) ------------------------------------------------------ */

enum nbd_tls_policy {
  NBD_TLS_OFF,
  NBD_TLS_PREFER,
  NBD_TLS_REQUIRE,
};

struct nbd_uri {
  char *scheme;          /* "nbd", "nbds", "nbd+unix" or "nbds+unix" */
  bool tls_required;     /* the scheme is nbds or nbds+unix (U2) */
  bool is_unix;          /* the scheme is a +unix one */
  char *host;            /* TCP: name or address, IPv6 without brackets */
  char *port;            /* TCP: port, "10809" when absent (U7) */
  char *socket_path;     /* +unix: the socket= parameter (U10) */
  char *user;            /* userinfo, or NULL (U8) */
  char *export_name;     /* decoded path without its leading '/' (U9) */

  /* TLS query parameters, NULL when absent. */
  char *tls_certificates;
  char *tls_psk_file;
  char *tls_username;
  char *tls_hostname;
  char *tls_priority;
  char *tls_type;        /* "anon", "x509" or "psk" (U11) */
  int tls_verify_peer;   /* -1 when absent, else 0 or 1 (U13) */
};

/* Parses text into a new struct nbd_uri.  Returns 0, or -EINVAL with a
 * message naming the URI (without secrets) and what is wrong. */
int nbd_uri_parse(const char *text, struct nbd_uri **out, GError **error);
void nbd_uri_free(struct nbd_uri *uri);

/* A newly allocated string that names where the URI points, for
 * messages: "host:port", "[v6]:port" or the socket path. */
char *nbd_uri_endpoint(const struct nbd_uri *uri);

/* A newly allocated canonical form of the URI that is safe to show: it
 * carries no file contents and no key material. */
char *nbd_uri_display(const struct nbd_uri *uri);

typedef struct nbd_uri nbd_uri;
G_DEFINE_AUTOPTR_CLEANUP_FUNC(nbd_uri, nbd_uri_free)

/* ---- Transport (transport.c) ------------------------------------------ */

/* A byte stream to one server: a plain socket, later TLS over it.  All
 * protocol code reads and writes through these functions only. */
struct nbd_transport;

/* Connects to the URI's endpoint (TCP with TCP_NODELAY and keepalive, or
 * a Unix socket). */
int nbd_transport_connect(const struct nbd_uri *uri,
                          struct nbd_transport **out, GError **error);

/* Wraps an already connected file descriptor (tests, socketpairs).  The
 * transport owns fd from now on. */
struct nbd_transport *nbd_transport_new_fd(int fd, const char *name);

/* Reads exactly len bytes.  Returns 0, -ECONNRESET on end of stream, or
 * another negative errno. */
int nbd_transport_read(struct nbd_transport *t, void *buf, size_t len,
                       GError **error);

/* Reads at most len bytes, at least one.  Returns the count, 0 at end of
 * stream, or a negative errno. */
ssize_t nbd_transport_read_some(struct nbd_transport *t, void *buf,
                                size_t len, GError **error);

/* Writes all of iov.  Returns 0 or a negative errno. */
int nbd_transport_writev(struct nbd_transport *t, struct iovec *iov,
                         int iovcnt, GError **error);
int nbd_transport_write(struct nbd_transport *t, const void *buf,
                        size_t len, GError **error);

/* Makes a read or write that waits longer than ms fail with ETIMEDOUT;
 * 0 waits for ever. */
void nbd_transport_set_timeout(struct nbd_transport *t, unsigned ms);

/* Number of bytes already received and buffered below the reader, which
 * a poll() on the socket would not see. */
size_t nbd_transport_pending(struct nbd_transport *t);

/* Stops both directions so that a blocked reader returns.  Safe to call
 * from any thread, more than once. */
void nbd_transport_shutdown(struct nbd_transport *t);
void nbd_transport_free(struct nbd_transport *t);
const char *nbd_transport_name(const struct nbd_transport *t);
int nbd_transport_fd(const struct nbd_transport *t);

/* Whether nbd_transport_splice works: a plain socket, not TLS. */
bool nbd_transport_can_splice(const struct nbd_transport *t);

/* Moves at most len bytes from the socket into the pipe wr (O_NONBLOCK)
 * with splice(2), waiting for at least one.  Returns the count, 0 when
 * the pipe is full, or a negative errno: -ECONNRESET at end of stream,
 * -ETIMEDOUT past the timeout. */
ssize_t nbd_transport_splice(struct nbd_transport *t, int wr, size_t len,
                             GError **error);

/* ---- TLS (tls.c, certfetch.c, tls-options.c) ------------------------- */

/* What the command line says about TLS credentials.  NULL or -1 means
 * "not given": the URI's parameter of the same meaning applies, else the
 * default.  A command-line value overrides the URI's. */
struct nbd_tls_settings {
  char *certificates;        /* DIR or URL: ca-cert.pem, client-cert.pem,
                              * client-key.pem */
  char *ca;                  /* CA file or https:// / file:// URL */
  char *cert;                /* client certificate, file or URL */
  char *key;                 /* client key, local file only */
  char *ca_pin;              /* "sha256:HEX" of the fetched CA file */
  char *psk_file;            /* username:hexkey lines (psktool) */
  char *username;            /* PSK identity */
  char *hostname;            /* name to verify, and SNI */
  int verify_peer;           /* -1 default (yes), 0 or 1 */
  char *priority;            /* gnutls priority string */
  bool no_fetch;             /* never touch the network for credentials */

  /* Not on the command line; tests set them. */
  char *cache_dir;           /* NULL: $XDG_CACHE_HOME/nbdfs */
  unsigned fetch_timeout_s;  /* 0: 30 seconds */
  size_t fetch_max_bytes;    /* 0: 1 MiB */
};

/* Credentials, priorities and the name to verify, loaded once per
 * export and shared by all its connections and reconnects (T13: each
 * connection still decides TLS afresh).  Thread-safe; reference
 * counted. */
struct nbd_tls_config;

/* Loads what s and uri name (files read and URLs fetched now, so that
 * a bad file fails before anything connects).  Returns 0, or a
 * negative errno with a message naming the file or URL and the
 * cause. */
int nbd_tls_config_new(const struct nbd_tls_settings *s,
                       const struct nbd_uri *uri,
                       struct nbd_tls_config **out, GError **error);
struct nbd_tls_config *nbd_tls_config_ref(struct nbd_tls_config *cfg);
/* Drops one reference; NULL is accepted. */
void nbd_tls_config_free(struct nbd_tls_config *cfg);

typedef struct nbd_tls_config nbd_tls_config;
G_DEFINE_AUTOPTR_CLEANUP_FUNC(nbd_tls_config, nbd_tls_config_free)

/* The command-line options of nbdfs and nbdfs-info that fill s, as a
 * group that --help-tls and --help-all show: --tls-certificates,
 * --tls-ca, --tls-cert, --tls-key, --tls-ca-pin, --tls-psk-file,
 * --tls-username, --tls-hostname, --tls-verify-peer, --tls-priority,
 * --tls-no-fetch.  Add it with g_option_context_add_group(), which
 * takes it over; s must outlive the parse.  Call
 * nbd_tls_settings_clear() at exit. */
GOptionGroup *nbd_tls_option_group(struct nbd_tls_settings *s);
void nbd_tls_settings_clear(struct nbd_tls_settings *s);

/* The policy from --tls (NULL when not given) and the URI: off for
 * nbd://, require for nbds:// (U2), which no option can weaken. */
int nbd_tls_policy_parse(const char *text, const struct nbd_uri *uri,
                         enum nbd_tls_policy *out, GError **error);

/* ---- Handshake (handshake.c) ------------------------------------------ */

struct nbd_handshake_opts {
  const char *export_name;   /* "" selects the default export */
  enum nbd_tls_policy tls;
  struct nbd_tls_config *tls_config; /* needed unless tls is off */
  bool no_structured;        /* do not ask for structured replies */
  bool no_block_status;      /* do not ask for base:allocation */
};

struct nbd_export_info {
  uint64_t size;
  uint16_t tflags;           /* transmission flags, V9 applied */
  uint16_t gflags;           /* the server's handshake flags */
  uint32_t min_block;        /* effective values: advertised or S4 */
  uint32_t pref_block;
  uint32_t max_payload;
  bool block_size_advertised;
  char *name;                /* canonical name if the server sent one */
  char *description;         /* NULL when the server sent none */
  bool structured;           /* structured replies are on */
  bool block_status;         /* base:allocation was selected */
  uint32_t alloc_ctx_id;
  bool export_name_fallback; /* GO was unsupported (H21) */
  bool tls;
  char *tls_version;         /* "TLS1.3"; NULL without TLS */
  char *tls_cipher;          /* "AES-256-GCM" */
  char *tls_peer;            /* certificate subject, or "PSK identity
                              * NAME" */
};

void nbd_export_info_clear(struct nbd_export_info *info);

/* Negotiates o->export_name on t and enters transmission (GO, or
 * EXPORT_NAME where GO is unsupported).  On failure the session has
 * been ended softly where the rules allow (D1) and t may be freed. */
int nbd_handshake_go(struct nbd_transport *t,
                     const struct nbd_handshake_opts *o,
                     struct nbd_export_info *info, GError **error);

/* Asks about o->export_name with NBD_OPT_INFO (H19, H22): the same
 * facts as GO, without entering transmission; then ends the session
 * softly (D1).  A server without INFO answers -ENOTSUP.  GO's values are
 * the authoritative ones: some servers report a size of 0 here. */
int nbd_handshake_info(struct nbd_transport *t,
                       const struct nbd_handshake_opts *o,
                       struct nbd_export_info *info, GError **error);

struct nbd_export_entry {
  char *name;
  char *description;         /* "" when the server sent none */
};

/* Lists the server's exports (NBD_OPT_LIST) into a new GPtrArray of
 * struct nbd_export_entry (freed with the array), then ends the session
 * with NBD_OPT_ABORT.  At most max_entries entries are kept; a server
 * that sends more fails with -E2BIG. */
int nbd_handshake_list(struct nbd_transport *t,
                       const struct nbd_handshake_opts *o,
                       size_t max_entries, GPtrArray **out,
                       GError **error);

/* Connect to uri and run nbd_handshake_go() or nbd_handshake_list()
 * on the new transport.  Under prefer, a server that hangs up in reply
 * to STARTTLS (old qemu did) is tried once more without TLS, with a
 * warning.  nbd_connect_go() hands over the transport in *t. */
int nbd_connect_go(const struct nbd_uri *uri,
                   const struct nbd_handshake_opts *o,
                   struct nbd_transport **t, struct nbd_export_info *info,
                   GError **error);
int nbd_connect_list(const struct nbd_uri *uri,
                     const struct nbd_handshake_opts *o,
                     size_t max_entries, GPtrArray **out, GError **error);

/* ---- Connection: the transmission phase (conn.c) ---------------------- */

struct nbd_conn;

struct nbd_extent {
  uint64_t offset;
  uint64_t length;
  uint32_t flags;            /* NBD_STATE_* */
};

struct nbd_cmd;
typedef void (*nbd_cmd_done_fn)(struct nbd_cmd *cmd, int err);

/* A pipe that a READ's payload may be spliced into, so that the bytes
 * never pass through user space (see nbd_cmd.sink).  Both ends must be
 * O_NONBLOCK.  The owner may put prefix bytes in first (a header for
 * whoever empties the pipe). */
struct nbd_sink {
  int rd, wr;
  size_t prefix;
  bool filled;               /* set: the pipe holds prefix + count bytes */
};

/* One command.  The caller owns the memory and keeps it alive until done
 * has been called, exactly once, with err 0 or a positive errno.  done
 * runs on the connection's reader thread, or on the submitting thread
 * when the connection is already dead. */
struct nbd_cmd {
  uint16_t type;             /* NBD_CMD_* */
  uint16_t flags;            /* NBD_CMD_FLAG_* */
  uint64_t offset;
  uint32_t count;
  void *buf;                 /* READ: count bytes to fill; WRITE: source */

  /* READ, optional: when the reply brings the whole payload as one piece
   * over a plain socket, it goes into this pipe instead of buf and
   * sink->filled is set by the time done runs.  Otherwise buf is filled
   * as always, and the pipe holds what it held before, or nothing at all
   * if it filled up on the way.  On an error its contents are
   * undefined. */
  struct nbd_sink *sink;
  nbd_cmd_done_fn done;
  void *user;

  /* For whoever takes over orphans (nbd_conn_set_orphans_cb): when the
   * command was first handed back, so that one the server never answers
   * properly cannot go round for ever.  nbdproto never touches it; it
   * starts at 0. */
  gint64 lost_us;

  /* Results of BLOCK_STATUS: extents of the base:allocation context,
   * contiguous from offset, clipped to the request.  Owned by the
   * command; free with g_free() after done. */
  struct nbd_extent *extents;
  size_t n_extents;

  /* Private to conn.c. */
  struct {
    uint64_t cookie;
    uint64_t covered;        /* bytes of a READ that content chunks set */
    uint64_t first_lo;       /* the first content chunk of a READ */
    uint64_t first_hi;
    void *ranges;            /* GTree of covered ranges from the second
                              * content chunk on, else NULL */
    unsigned chunks;
    int err;                 /* first error chunk, positive errno */
    bool seen_status;
    gint64 start_us;
    bool sending;            /* the submitter is still writing it */
    bool parked;             /* completed while sending: the submitter */
    bool parked_orphan;      /* completes it, with parked_err or as an */
    int parked_err;          /* orphan, once the write is done */
  } priv;
};

/* Called once when the connection dies (protocol violation, EOF, I/O
 * error), after every command in flight was failed with EIO.  Runs on
 * the reader thread; must not free the connection. */
typedef void (*nbd_conn_dead_fn)(struct nbd_conn *conn, int err,
                                 const char *why, void *user);

/* When set, a dying connection does not fail the commands in flight:
 * it hands them to fn (on the reader thread, after resetting them), to
 * be sent again elsewhere or failed by the caller.  Commands answered
 * with NBD_ESHUTDOWN count as in flight (D7).  fn must not block on the
 * network. */
typedef void (*nbd_conn_orphans_fn)(struct nbd_conn *conn,
                                    struct nbd_cmd **cmds, size_t n,
                                    void *user);

/* Connects to uri, negotiates and starts the reader thread. */
int nbd_conn_connect(const struct nbd_uri *uri,
                     const struct nbd_handshake_opts *o,
                     struct nbd_conn **out, GError **error);

/* Takes over a transport that has finished the handshake. */
struct nbd_conn *nbd_conn_new(struct nbd_transport *t,
                              struct nbd_export_info *info);

void nbd_conn_set_dead_cb(struct nbd_conn *conn, nbd_conn_dead_fn fn,
                          void *user);
void nbd_conn_set_orphans_cb(struct nbd_conn *conn, nbd_conn_orphans_fn fn,
                             void *user);
const struct nbd_export_info *nbd_conn_info(const struct nbd_conn *conn);

/* Ends the connection at once, as a violation would (for a request
 * that timed out).  why becomes the death reason. */
void nbd_conn_abort(struct nbd_conn *conn, const char *why);

/* The submit time (g_get_monotonic_time) of the oldest command in
 * flight, or 0 when none is. */
gint64 nbd_conn_oldest_us(struct nbd_conn *conn);

/* Sends cmd.  Returns 0 when the command was sent (done will be called),
 * or a negative errno when it was refused before sending (done will not
 * be called): -EINVAL for a request the negotiation does not allow
 * (S7, X13: misaligned, empty, past the end, a flag not offered),
 * -ENOSPC for a WRITE past the end, -EOPNOTSUPP for a command the server
 * did not offer (X7), -EROFS for a write to a read-only export (O9),
 * -ENOTCONN when the connection is dead. */
int nbd_conn_submit(struct nbd_conn *conn, struct nbd_cmd *cmd);

/* Submits cmd and waits for it.  Returns 0 or a negative errno. */
int nbd_conn_run(struct nbd_conn *conn, struct nbd_cmd *cmd);

/* Batching.  After nbd_cork(), nbd_conn_submit() on this thread queues
 * each request instead of writing it, and nbd_uncork() writes them all,
 * one writev per connection, so that the server reads a batch in one
 * wake-up.  A corked thread must uncork before it waits for anything,
 * since what it queued is not yet on the wire; nbd_conn_run() and
 * nbd_conn_close() uncork first themselves. */
void nbd_cork(void);
void nbd_uncork(void);

unsigned nbd_conn_in_flight(struct nbd_conn *conn);
bool nbd_conn_is_dead(struct nbd_conn *conn);

/* The reason the connection died, or NULL while it lives. */
const char *nbd_conn_death(struct nbd_conn *conn);

/* Waits for every command in flight, sends NBD_CMD_DISC (D4, D5), waits
 * a bounded time for end of stream (D6), and frees the connection.
 * Commands still in flight after timeout_ms fail with EIO. */
void nbd_conn_close(struct nbd_conn *conn, unsigned timeout_ms);

/* When set, called with one line per completed command:
 * "ENDPOINT: NBD_CMD_READ off=.. len=.. -> ok 37us". */
extern void (*nbd_trace_hook)(const char *line);

/* Maps an NBD error value to an errno (X22, X22a). */
int nbd_errno_from_wire(uint32_t nbd_err);

#endif /* NBDFS_NBDPROTO_H */
