/* nbdfs tests: a scripted NBD server.
 *
 * A test writes down what a server says and what it expects to hear, as
 * a list of steps, and plays it on one end of a socketpair; the code
 * under test gets the other end as a struct nbd_transport.  A thread
 * plays the steps, so the test drives the client from its own thread as
 * the daemon would.
 *
 * The thread never waits longer than SCRIPTED_TIMEOUT_MS for one step:
 * a client that stays silent, or says something else than the script
 * expects, fails the test instead of hanging it.  After a mismatch the
 * remaining steps are skipped.  When the steps run out the server sends
 * end of stream and keeps reading until the client closes, so every
 * byte the client sent, expected or not, is in scripted_received() and
 * a test can assert on it (for instance that an ABORT followed an
 * error).
 *
 * Usage:
 *
 *   struct scripted *sc = scripted_new();
 *   sc_greeting(scripted_out(sc), NBD_FLAG_FIXED_NEWSTYLE);
 *   scripted_expect_flags(sc, NBD_FLAG_C_FIXED_NEWSTYLE);
 *   ...
 *   t = scripted_start(sc);
 *   rc = nbd_handshake_go(t, &opts, &info, &error);
 *   nbd_transport_free(t);
 *   scripted_finish(sc);
 *   scripted_assert_clean(sc);
 *   g_assert_cmpstr(scripted_option_names(sc), ==, "STRUCTURED_REPLY GO");
 *   scripted_free(sc);
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#ifndef NBDFS_SCRIPTED_H
#define NBDFS_SCRIPTED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>

#include "nbdproto.h"

/* The longest the server thread waits for one step. */
#define SCRIPTED_TIMEOUT_MS 5000

struct scripted;

/* Checks len bytes the client sent.  Returns true when they are right;
 * otherwise appends the reason to why. */
typedef bool (*scripted_pred_fn)(const uint8_t *got, size_t len,
                                 void *user, GString *why);

/* A step run in the server thread.  It talks to the client through
 * scripted_read() and scripted_write(); returns false to stop the
 * script (after scripted_fail(), unless the client simply went away). */
typedef bool (*scripted_fn)(struct scripted *sc, void *user);

struct scripted *scripted_new(void);

/* Starts the thread; returns the client's end.  The caller frees the
 * transport (which closes it) before scripted_finish(). */
struct nbd_transport *scripted_start(struct scripted *sc);

/* Waits for the script to end and joins the thread.  Called once. */
void scripted_finish(struct scripted *sc);
void scripted_free(struct scripted *sc);

/* ---- Steps, played in the order they were added ----------------------- */

/* The bytes of a SEND step at the end of the script, created if the last
 * step is something else: consecutive sc_*() calls make one message. */
GByteArray *scripted_out(struct scripted *sc);

void scripted_send(struct scripted *sc, const void *data, size_t len);

/* The same bytes in pieces of one to seven bytes with pauses, so that
 * the client's reads come back short (T19). */
void scripted_send_slow(struct scripted *sc, const void *data, size_t len);

/* Reads len bytes; when exact is not NULL they must equal it.  what
 * names the step in the mismatch report. */
void scripted_expect(struct scripted *sc, const void *exact, size_t len,
                     const char *what);
void scripted_expect_pred(struct scripted *sc, size_t len,
                          scripted_pred_fn fn, void *user,
                          const char *what);

/* Reads the 32-bit client flags and compares them with flags (H6). */
void scripted_expect_flags(struct scripted *sc, uint32_t flags);

/* Reads one option request (H8): header and data.  Its magic must be
 * IHAVEOPT and its code option; its data must stay under 64 KiB. */
void scripted_expect_option(struct scripted *sc, uint32_t option);

/* Reads one transmission request header (X2), and its payload when it
 * is a WRITE; the type must be type. */
void scripted_expect_request(struct scripted *sc, uint16_t type);

/* Nothing may arrive for ms milliseconds. */
void scripted_expect_silence(struct scripted *sc, unsigned ms);

/* Keeps the connection open and reads until the client closes (at most
 * SCRIPTED_TIMEOUT_MS).  Ends the script. */
void scripted_expect_eof(struct scripted *sc);

/* Sends end of stream (shutdown for writing); reading goes on. */
void scripted_close(struct scripted *sc);

void scripted_sleep(struct scripted *sc, unsigned ms);
void scripted_call(struct scripted *sc, scripted_fn fn, void *user);

/* ---- For scripted_fn steps (server thread only) ------------------------ */

/* Read or write exactly len bytes within the timeout.  Return false on
 * timeout or end of stream (recorded as a mismatch) or when the client
 * hung up while we wrote (recorded in scripted_client_gone()). */
bool scripted_read(struct scripted *sc, void *buf, size_t len);
bool scripted_write(struct scripted *sc, const void *buf, size_t len);
/* Waits (within the timeout) until the client sends more or closes;
 * true when it closed with nothing more to say. */
bool scripted_client_closed(struct scripted *sc);

void scripted_fail(struct scripted *sc, const char *fmt, ...)
  G_GNUC_PRINTF(2, 3);

/* ---- Results, valid after scripted_finish() --------------------------- */

/* Every byte the client sent, in order. */
const GByteArray *scripted_received(const struct scripted *sc);

/* The mismatches, timeouts and early ends, one per line; NULL when the
 * whole script played as written. */
const char *scripted_errors(const struct scripted *sc);

/* Whether the client closed while the server was still sending. */
bool scripted_client_gone(const struct scripted *sc);

#define scripted_assert_clean(sc)                                       \
  g_assert_cmpstr(scripted_errors(sc), ==, NULL)

/* The client flags (the first four bytes received), or -1 when the
 * client sent fewer. */
int64_t scripted_client_flags(const struct scripted *sc);

/* The options the client sent after its flags, as names without the
 * NBD_OPT_ prefix, separated by single spaces ("" for none).  Bytes
 * that do not frame as an option end the list with "?". */
const char *scripted_option_names(struct scripted *sc);

/* The data of the index-th option the client sent (from 0), or NULL. */
GBytes *scripted_option_data(const struct scripted *sc, unsigned index);

/* ---- Message builders: append wire bytes to b -------------------------- */

void sc_be16(GByteArray *b, uint16_t v);
void sc_be32(GByteArray *b, uint32_t v);
void sc_be64(GByteArray *b, uint64_t v);

/* H3: NBDMAGIC, IHAVEOPT, handshake flags. */
void sc_greeting(GByteArray *b, uint16_t gflags);

/* H1: the 152 bytes of an oldstyle greeting. */
void sc_old_greeting(GByteArray *b, uint64_t size, uint32_t flags);

/* H9: an option reply header with its data. */
void sc_opt_reply(GByteArray *b, uint32_t option, uint32_t type,
                  const void *data, uint32_t len);

/* An error reply carrying a message for humans (H29). */
void sc_opt_error(GByteArray *b, uint32_t option, uint32_t type,
                  const char *msg);

/* H28: NBD_REP_INFO replies. */
void sc_info_export(GByteArray *b, uint32_t option, uint64_t size,
                    uint16_t tflags);
void sc_info_block_size(GByteArray *b, uint32_t option, uint32_t min,
                        uint32_t pref, uint32_t max);
void sc_info_string(GByteArray *b, uint32_t option, uint16_t info,
                    const char *text);

/* H27: NBD_REP_META_CONTEXT. */
void sc_meta_context(GByteArray *b, uint32_t option, uint32_t id,
                     const char *name);

/* H16: NBD_REP_SERVER. */
void sc_server(GByteArray *b, const char *name, const char *description);

/* H14: the reply to EXPORT_NAME, with or without the 124 zero bytes. */
void sc_export_name_reply(GByteArray *b, uint64_t size, uint16_t tflags,
                          bool zeroes);

/* X3: a simple reply header (add any read data yourself). */
void sc_simple(GByteArray *b, uint64_t cookie, uint32_t error);

/* X4: a structured chunk header with its payload. */
void sc_chunk(GByteArray *b, uint16_t flags, uint16_t type, uint64_t cookie,
              const void *payload, uint32_t len);

/* X15: the usual chunks. */
void sc_chunk_data(GByteArray *b, uint16_t flags, uint64_t cookie,
                   uint64_t offset, const void *data, uint32_t len);
void sc_chunk_hole(GByteArray *b, uint16_t flags, uint64_t cookie,
                   uint64_t offset, uint32_t size);
void sc_chunk_error(GByteArray *b, uint16_t flags, uint64_t cookie,
                    uint32_t error, const char *msg);
void sc_chunk_error_offset(GByteArray *b, uint16_t flags, uint64_t cookie,
                           uint32_t error, const char *msg,
                           uint64_t offset);

/* A BLOCK_STATUS chunk: context id, then n (length, status) pairs taken
 * from ext[2 * i] and ext[2 * i + 1]. */
void sc_chunk_status(GByteArray *b, uint16_t flags, uint64_t cookie,
                     uint32_t ctx, const uint32_t *ext, size_t n);

/* X2: a transmission request header, as the client sends it. */
void sc_request(GByteArray *b, uint16_t flags, uint16_t type,
                uint64_t cookie, uint64_t offset, uint32_t count);

/* Fills buf with a pattern that depends on the absolute offset of each
 * byte, so a test can tell any misplaced chunk. */
void sc_pattern(void *buf, uint64_t offset, size_t len);

/* ---- A canned byte stream --------------------------------------------- */

struct scripted_feed;

/* A transport whose peer sends exactly data, then end of stream, and
 * never reads what the client writes (the socket keeps a few hundred
 * KiB of it).  What the socket takes at once is written before this
 * returns, the rest from a thread.  Free the transport first, then the
 * feed. */
struct nbd_transport *scripted_feed_new(const void *data, size_t len,
                                        struct scripted_feed **out);
void scripted_feed_free(struct scripted_feed *f);

#endif /* NBDFS_SCRIPTED_H */
