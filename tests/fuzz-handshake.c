/* nbdfs fuzz harness: the handshake.
 *
 * The input is the server's whole side of a handshake: greeting, option
 * replies and whatever follows.  Its first byte picks what the client
 * does:
 *
 *   bit 0   nbd_handshake_list() instead of nbd_handshake_go()
 *   bit 1   do not ask for structured replies
 *   bit 2   do not ask for base:allocation
 *   bit 3   export "" instead of "disk"
 *
 * The client's own bytes are never read back (the socket keeps them).
 * A success is checked against what the handshake promises its callers
 * (V9, V10, S6) and a failure against the error convention.
 *
 * SPDX-License-Identifier: BSD-3-Clause
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "scripted.h"

#define MAX_LIST 1000

static void
die(const char *what)
{
  fprintf(stderr, "fuzz-handshake: %s\n", what);
  abort();
}

static bool
is_pow2(uint32_t v)
{
  return v != 0 && (v & (v - 1)) == 0;
}

/* What nbd_handshake_go() promises about a negotiated export. */
static void
check_info(const struct nbd_export_info *in)
{
  if (in->size > INT64_MAX)
    die("export size beyond 2^63-1 accepted (V10)");
  if (!(in->tflags & NBD_FLAG_HAS_FLAGS))
    die("flags without HAS_FLAGS accepted (V9)");
  if ((in->tflags & NBD_FLAG_SEND_DF) && !in->structured)
    die("SEND_DF kept without structured replies (V9)");
  if ((in->tflags & NBD_FLAG_SEND_FAST_ZERO) &&
      !(in->tflags & NBD_FLAG_SEND_WRITE_ZEROES))
    die("SEND_FAST_ZERO kept without SEND_WRITE_ZEROES (V9)");
  if (in->block_status && !in->structured)
    die("block status without structured replies (B1)");
  if (!is_pow2(in->min_block) || in->min_block > NBD_MAX_MIN_BLOCK ||
      !is_pow2(in->pref_block) || in->pref_block < in->min_block ||
      in->max_payload < in->pref_block ||
      in->max_payload > NBD_DEFAULT_MAX_PAYLOAD)
    die("block sizes that break S6");
  if (in->name == NULL)
    die("no export name");
  if (!g_utf8_validate(in->name, -1, NULL) ||
      (in->description != NULL &&
       !g_utf8_validate(in->description, -1, NULL)))
    die("unsanitised string (G1)");
}

static void
check_list(const GPtrArray *list)
{
  if (list->len > MAX_LIST)
    die("more entries than max_entries");
  for (guint i = 0; i < list->len; i++) {
    const struct nbd_export_entry *e = list->pdata[i];

    if (e->name == NULL || e->description == NULL ||
        !g_utf8_validate(e->name, -1, NULL) ||
        !g_utf8_validate(e->description, -1, NULL))
      die("bad list entry");
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct nbd_handshake_opts o = { 0 };
  struct nbd_export_info info;
  struct scripted_feed *feed;
  struct nbd_transport *t;
  GPtrArray *list = NULL;
  GError *error = NULL;
  uint8_t mode;
  int rc;

  if (size < 1)
    return 0;
  mode = data[0];
  o.no_structured = mode & 2;
  o.no_block_status = mode & 4;
  o.export_name = mode & 8 ? "" : "disk";
  o.tls = NBD_TLS_OFF;

  t = scripted_feed_new(data + 1, size - 1, &feed);
  if (mode & 1) {
    rc = nbd_handshake_list(t, &o, MAX_LIST, &list, &error);
    if (rc == 0)
      check_list(list);
  } else {
    rc = nbd_handshake_go(t, &o, &info, &error);
    if (rc == 0)
      check_info(&info);
    else if (info.name != NULL || info.description != NULL)
      die("strings left behind by a failed handshake");
    if (rc == 0)
      nbd_export_info_clear(&info);
  }

  if (rc < 0 && (error == NULL || error->code != -rc))
    die("a failure without its GError");
  if (rc == 0 && error != NULL)
    die("a success with a GError");
  if (rc > 0)
    die("a positive return");

  g_clear_error(&error);
  if (list != NULL)
    g_ptr_array_unref(list);
  nbd_transport_free(t);
  scripted_feed_free(feed);
  return 0;
}
