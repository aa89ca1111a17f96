// Hot-swap firmware: two model slots at the top of the application flash, written through
// mbed's FlashIAP, and the frame protocol of hal/arduino/hotswap_protocol.py. Compiled only
// into the hot-swap variant (TINYML_HOTSWAP in model_config.h); empty otherwise.
#include "model_config.h"

#if defined(TINYML_HOTSWAP) && TINYML_HOTSWAP

#include <Arduino.h>
#include <mbed.h>
#include <stdio.h>
#include <string.h>

#include "model_data.h"
#include "tinyml_hotswap.h"

// ---------------------------------------------------------------- layout (see the .py)
#define HS_PAGE 4096u
#define HS_HEADER_AREA 256u
#define HS_MAGIC 0x534C4D54u
#define HS_META_MAGIC 0x4D4C4D54u
#define HS_HEADER_VERSION 1u
#define HS_HEADER_BYTES 68u  // magic .. sha256, then the crc32
#define HS_ATTEMPTS_AT 128u
#define HS_MAX_ATTEMPTS 2u
#define HS_CONFIRMED_AT 144u
#define HS_REJECTED_AT 148u
#define HS_MAX_CHUNK 1024u
#define HS_MAX_PAYLOAD (4u + HS_MAX_CHUNK)
#define HS_WATCHDOG_MS 8000u  // > the longest blocking step (erasing a 128 KB slot: 2.7 s)

enum { F_HELLO = 1, F_BEGIN = 2, F_CHUNK = 3, F_COMMIT = 4, F_ACTIVATE = 5, F_ABORT = 6 };

struct __attribute__((packed)) HsHeader {
  uint32_t magic;
  uint16_t version;
  uint16_t flags;
  uint32_t generation;
  uint32_t total;
  uint32_t model_len;
  uint32_t arena_needed;
  char template_version[12];
  uint8_t sha256[32];
  uint32_t crc;
};

static mbed::FlashIAP g_flash;
static bool g_hs_ok = false;
static uint32_t g_slot_base[2];

// ------------------------------------------------------------------------ crc32 / sha256

static uint32_t crc32_update(uint32_t crc, const uint8_t* p, size_t n) {
  crc = ~crc;
  while (n--) {
    crc ^= *p++;
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

struct Sha256 {
  uint32_t h[8];
  uint8_t buf[64];
  uint64_t len;
  size_t fill;
};

static const uint32_t kK[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

static uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha_block(Sha256* s, const uint8_t* b) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++) {
    w[i] = ((uint32_t)b[4 * i] << 24) | ((uint32_t)b[4 * i + 1] << 16) |
           ((uint32_t)b[4 * i + 2] << 8) | b[4 * i + 3];
  }
  for (int i = 16; i < 64; i++) {
    const uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
    const uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = s->h[0], bb = s->h[1], c = s->h[2], d = s->h[3];
  uint32_t e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
  for (int i = 0; i < 64; i++) {
    const uint32_t t1 = h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) +
                        kK[i] + w[i];
    const uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & bb) ^ (a & c) ^ (bb & c));
    h = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = bb;
    bb = a;
    a = t1 + t2;
  }
  s->h[0] += a;
  s->h[1] += bb;
  s->h[2] += c;
  s->h[3] += d;
  s->h[4] += e;
  s->h[5] += f;
  s->h[6] += g;
  s->h[7] += h;
}

static void sha_init(Sha256* s) {
  static const uint32_t kInit[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  memcpy(s->h, kInit, sizeof(kInit));
  s->len = 0;
  s->fill = 0;
}

static void sha_update(Sha256* s, const uint8_t* p, size_t n) {
  s->len += n;
  while (n) {
    const size_t take = (64 - s->fill) < n ? (64 - s->fill) : n;
    memcpy(s->buf + s->fill, p, take);
    s->fill += take;
    p += take;
    n -= take;
    if (s->fill == 64) {
      sha_block(s, s->buf);
      s->fill = 0;
    }
  }
}

static void sha_final(Sha256* s, uint8_t out[32]) {
  const uint64_t bits = s->len * 8;
  const uint8_t one = 0x80, zero = 0;
  sha_update(s, &one, 1);
  while (s->fill != 56) sha_update(s, &zero, 1);
  uint8_t len_be[8];
  for (int i = 0; i < 8; i++) len_be[i] = (uint8_t)(bits >> (56 - 8 * i));
  sha_update(s, len_be, 8);
  for (int i = 0; i < 8; i++) {
    out[4 * i] = (uint8_t)(s->h[i] >> 24);
    out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
    out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
    out[4 * i + 3] = (uint8_t)s->h[i];
  }
}

static void sha256(const uint8_t* p, size_t n, uint8_t out[32]) {
  Sha256 s;
  sha_init(&s);
  sha_update(&s, p, n);
  sha_final(&s, out);
}

// ------------------------------------------------------------------------------ lines

static char g_reply[256];

static void reply_send(int len) {
  if (len <= 0) return;
  if (len >= (int)sizeof(g_reply)) len = sizeof(g_reply) - 1;
  Serial.write((const uint8_t*)g_reply, (size_t)len);
  Serial.write('\n');
}

static const char* error_message(const char* code) {
  if (!strcmp(code, "crc")) return "the frame's CRC did not match (corrupted on the wire)";
  if (!strcmp(code, "bad_frame")) return "unknown type or a length beyond MAX_PAYLOAD";
  if (!strcmp(code, "no_transfer")) return "CHUNK or COMMIT without a BEGIN";
  if (!strcmp(code, "order"))
    return "CHUNK offset is not the next expected one (``next`` says which)";
  if (!strcmp(code, "too_big")) return "the payload exceeds the slot";
  if (!strcmp(code, "arena")) return "the model needs a bigger arena than the firmware has";
  if (!strcmp(code, "flash")) return "erasing or programming the flash failed";
  if (!strcmp(code, "sha_mismatch")) return "the written slot's sha256 differs from BEGIN's";
  return "ACTIVATE of a slot without a valid, unrejected model";
}

static void reply_ok(const char* op, uint16_t seq, const char* extra) {
  reply_send(snprintf(g_reply, sizeof(g_reply), "{\"t\":\"hs\",\"r\":\"ok\",\"op\":\"%s\","
                      "\"seq\":%u%s}", op, (unsigned)seq, extra));
}

static void reply_err(const char* op, uint16_t seq, const char* code, const char* extra) {
  reply_send(snprintf(g_reply, sizeof(g_reply), "{\"t\":\"hs\",\"r\":\"err\",\"op\":\"%s\","
                      "\"seq\":%u,\"code\":\"%s\",\"msg\":\"%.80s\"%s}", op, (unsigned)seq,
                      code, error_message(code), extra));
}

// ------------------------------------------------------------------------------ slots

// Flash is memory mapped: an address is read in place (via uintptr_t: the host test build).
static const uint8_t* flash_at(uint32_t addr) { return (const uint8_t*)(uintptr_t)addr; }

static const HsHeader* header_at(uint8_t slot) {
  return (const HsHeader*)flash_at(g_slot_base[slot]);
}

static uint32_t word_at(uint8_t slot, uint32_t offset) {
  return *(const volatile uint32_t*)flash_at(g_slot_base[slot] + offset);
}

static bool program_word(uint32_t addr, uint32_t value) {
  return g_flash.program(&value, addr, 4) == 0;
}

// A valid header of this template whose payload matches its sha256.
static bool slot_valid(uint8_t slot) {
  const HsHeader* h = header_at(slot);
  if (h->magic != HS_MAGIC || h->version != HS_HEADER_VERSION) return false;
  if (crc32_update(0, (const uint8_t*)h + 4, HS_HEADER_BYTES - 4) != h->crc) return false;
  char tv[12] = {0};
  strncpy(tv, TINYML_TEMPLATE_VERSION, sizeof(tv));
  if (memcmp(tv, h->template_version, sizeof(tv)) != 0) return false;
  if (h->total > TINYML_SLOT_BYTES - HS_HEADER_AREA || h->model_len > h->total) return false;
  uint8_t digest[32];
  sha256(flash_at(g_slot_base[slot] + HS_HEADER_AREA), h->total, digest);
  return memcmp(digest, h->sha256, 32) == 0;
}

static bool slot_rejected(uint8_t slot) { return word_at(slot, HS_REJECTED_AT) != 0xFFFFFFFFu; }
static bool slot_confirmed(uint8_t slot) {
  return word_at(slot, HS_CONFIRMED_AT) != 0xFFFFFFFFu;
}
static uint32_t slot_attempts(uint8_t slot) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < HS_MAX_ATTEMPTS; i++) {
    if (word_at(slot, HS_ATTEMPTS_AT + 4 * i) != 0xFFFFFFFFu) n++;
  }
  return n;
}

static bool slot_bootable(uint8_t slot) { return slot_valid(slot) && !slot_rejected(slot); }

static void slot_mark(uint8_t slot, uint32_t offset) {
  if (word_at(slot, offset) == 0xFFFFFFFFu) program_word(g_slot_base[slot] + offset, 0);
}

static void burn_attempt(uint8_t slot) {
  const uint32_t n = slot_attempts(slot);
  if (!slot_confirmed(slot) && n < HS_MAX_ATTEMPTS) slot_mark(slot, HS_ATTEMPTS_AT + 4 * n);
}

// Bootable slots, newest first (at most two).
static int bootable_slots(uint8_t out[2]) {
  int n = 0;
  for (uint8_t s = 0; s < 2; s++) {
    if (slot_bootable(s)) out[n++] = s;
  }
  if (n == 2 && header_at(out[1])->generation > header_at(out[0])->generation) {
    const uint8_t t = out[0];
    out[0] = out[1];
    out[1] = t;
  }
  return n;
}

static void print_rejected(uint8_t slot, const char* reason, uint8_t now) {
  reply_send(snprintf(g_reply, sizeof(g_reply),
                      "{\"t\":\"err\",\"code\":\"slot_rejected\",\"msg\":\"the model in slot %u "
                      "did not start (%s); falling back\",\"slot\":%u,\"reason\":\"%s\","
                      "\"now\":%u}", (unsigned)slot, reason, (unsigned)slot, reason,
                      (unsigned)now));
}

static void hex16(const uint8_t* digest, char out[17]) {
  static const char kHex[] = "0123456789abcdef";
  for (int i = 0; i < 8; i++) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 15];
  }
  out[16] = 0;
}

bool tinyml_hs_load(uint8_t slot, TinymlHsModel* m) {
  memset(m, 0, sizeof(*m));
  if (slot == TINYML_HS_BUILTIN || !g_hs_ok || slot > 1 || !slot_bootable(slot)) {
    m->model = g_model;
    m->model_len = g_model_len;
    m->slot = TINYML_HS_BUILTIN;
    memcpy(m->sha, TINYML_MODEL_SHA, sizeof(m->sha));  // 16 hex digits and the NUL
    return slot == TINYML_HS_BUILTIN;
  }
  const HsHeader* h = header_at(slot);
  const uint8_t* base = flash_at(g_slot_base[slot] + HS_HEADER_AREA);
  m->model = base;
  m->model_len = h->model_len;
  m->slot = slot;
  uint8_t digest[32];
  sha256(base, h->model_len, digest);
  hex16(digest, m->sha);
  uint32_t at = (h->model_len + 3u) & ~3u;
  uint32_t meta[3];
  memcpy(meta, base + at, sizeof(meta));  // magic, (labels | vectors << 16), vector bytes
  if (meta[0] != HS_META_MAGIC) return true;  // a model without labels or vectors
  m->label_count = (uint16_t)(meta[1] & 0xFFFFu);
  m->vector_count = (uint16_t)(meta[1] >> 16);
  m->vector_bytes = meta[2];
  at += sizeof(meta);
  m->labels = (const char*)(base + at);
  for (uint16_t i = 0; i < m->label_count && at < h->total; i++) {
    while (at < h->total && base[at]) at++;
    at++;
  }
  if (m->label_count) at = (at + 3u) & ~3u;
  if (at + (uint64_t)m->vector_count * m->vector_bytes > h->total) m->vector_count = 0;
  m->vectors = base + at;
  return true;
}

void tinyml_hs_select(TinymlHsModel* m) {
  uint8_t order[2];
  const int n = g_hs_ok ? bootable_slots(order) : 0;
  for (int i = 0; i < n; i++) {
    const uint8_t s = order[i];
    if (!slot_confirmed(s) && slot_attempts(s) >= HS_MAX_ATTEMPTS) {
      slot_mark(s, HS_REJECTED_AT);  // faulted at every boot without ever running
      print_rejected(s, "faulted", i + 1 < n ? order[i + 1] : TINYML_HS_BUILTIN);
      continue;
    }
    burn_attempt(s);
    tinyml_hs_load(s, m);
    return;
  }
  tinyml_hs_load(TINYML_HS_BUILTIN, m);
}

uint8_t tinyml_hs_reject(uint8_t slot, const char* reason) {
  slot_mark(slot, HS_REJECTED_AT);
  uint8_t order[2];
  const int n = bootable_slots(order);
  const uint8_t now = n ? order[0] : TINYML_HS_BUILTIN;
  print_rejected(slot, reason, now);
  return now;
}

void tinyml_hs_confirm(uint8_t slot) {
  if (slot <= 1) slot_mark(slot, HS_CONFIRMED_AT);
}

void tinyml_hs_kick() { mbed::Watchdog::get_instance().kick(); }

uint32_t tinyml_hs_slot_bytes() { return TINYML_SLOT_BYTES; }

bool tinyml_hs_begin() {
  mbed::Watchdog::get_instance().start(HS_WATCHDOG_MS);
  if (g_flash.init() != 0) return false;
  const uint32_t top = g_flash.get_flash_start() + g_flash.get_flash_size();
  g_slot_base[1] = top - TINYML_SLOT_BYTES;
  g_slot_base[0] = top - 2 * TINYML_SLOT_BYTES;
  // FlashIAP.h's end of the program image (text + the initial values of data).
  const uint32_t image_end = FLASHIAP_APP_ROM_END_ADDR;
  g_hs_ok = image_end <= g_slot_base[0] && g_flash.get_sector_size(g_slot_base[0]) == HS_PAGE;
  return g_hs_ok;
}

// --------------------------------------------------------------------------- protocol

struct Transfer {
  bool active;
  bool committed;
  uint8_t slot;
  uint32_t total;
  uint32_t model_len;
  uint32_t arena;
  uint32_t next;
  uint8_t sha[32];
};

static Transfer g_x;
static uint8_t g_frame[7 + HS_MAX_PAYLOAD + 4];  // sync, type, seq, len, payload, crc
static size_t g_frame_fill = 0;
alignas(4) static uint8_t g_words[HS_MAX_CHUNK];

static uint16_t rd16(const uint8_t* p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t rd32(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
         ((uint32_t)p[3] << 24);
}

static uint8_t transfer_target(uint8_t running) {
  if (running <= 1) return (uint8_t)(1 - running);
  for (uint8_t s = 0; s < 2; s++) {
    if (!slot_valid(s) || slot_rejected(s)) return s;
  }
  return header_at(0)->generation <= header_at(1)->generation ? 0 : 1;
}

static uint32_t next_generation() {
  uint32_t g = 0;
  for (uint8_t s = 0; s < 2; s++) {
    const HsHeader* h = header_at(s);
    if (h->magic == HS_MAGIC && h->generation > g) g = h->generation;
  }
  return g + 1;
}

static void handle_begin(uint16_t seq, const uint8_t* p, uint16_t len, uint8_t running) {
  char extra[80];
  if (len != 44) return reply_err("begin", seq, "bad_frame", "");
  const uint32_t total = rd32(p), model_len = rd32(p + 4), arena = rd32(p + 8);
  if (total > TINYML_SLOT_BYTES - HS_HEADER_AREA || model_len == 0 || model_len > total) {
    snprintf(extra, sizeof(extra), ",\"capacity\":%lu",
             (unsigned long)(TINYML_SLOT_BYTES - HS_HEADER_AREA));
    return reply_err("begin", seq, "too_big", extra);
  }
  if (arena > TINYML_ARENA_BYTES) {
    snprintf(extra, sizeof(extra), ",\"arena\":%lu", (unsigned long)TINYML_ARENA_BYTES);
    return reply_err("begin", seq, "arena", extra);
  }
  if (g_x.active && g_x.total == total && !memcmp(g_x.sha, p + 12, 32)) {  // resume
    snprintf(extra, sizeof(extra), ",\"slot\":%u,\"next\":%lu,\"resumed\":1",
             (unsigned)g_x.slot, (unsigned long)g_x.next);
    return reply_ok("begin", seq, extra);
  }
  const uint8_t slot = transfer_target(running);
  const uint32_t pages = (HS_HEADER_AREA + total + HS_PAGE - 1) / HS_PAGE;
  for (uint32_t i = 0; i < pages; i++) {
    tinyml_hs_kick();
    if (g_flash.erase(g_slot_base[slot] + i * HS_PAGE, HS_PAGE) != 0) {
      g_x.active = false;
      return reply_err("begin", seq, "flash", "");
    }
  }
  g_x.active = true;
  g_x.committed = false;
  g_x.slot = slot;
  g_x.total = total;
  g_x.model_len = model_len;
  g_x.arena = arena;
  g_x.next = 0;
  memcpy(g_x.sha, p + 12, 32);
  snprintf(extra, sizeof(extra), ",\"slot\":%u,\"next\":0,\"pages\":%lu", (unsigned)slot,
           (unsigned long)pages);
  reply_ok("begin", seq, extra);
}

static void handle_chunk(uint16_t seq, const uint8_t* p, uint16_t len) {
  char extra[40];
  if (!g_x.active) return reply_err("chunk", seq, "no_transfer", "");
  if (len <= 4) return reply_err("chunk", seq, "bad_frame", "");
  const uint32_t offset = rd32(p);
  const uint32_t n = len - 4u;
  snprintf(extra, sizeof(extra), ",\"next\":%lu", (unsigned long)g_x.next);
  if (offset + n <= g_x.next) {  // a resend whose answer was lost: acknowledged again
    snprintf(extra, sizeof(extra), ",\"next\":%lu,\"dup\":1", (unsigned long)g_x.next);
    return reply_ok("chunk", seq, extra);
  }
  if (offset != g_x.next || (offset & 3u) || offset + n > g_x.total ||
      ((n & 3u) && offset + n != g_x.total)) {
    return reply_err("chunk", seq, "order", extra);
  }
  const uint32_t padded = (n + 3u) & ~3u;
  memset(g_words, 0xFF, padded);
  memcpy(g_words, p + 4, n);
  if (g_flash.program(g_words, g_slot_base[g_x.slot] + HS_HEADER_AREA + offset, padded) != 0) {
    return reply_err("chunk", seq, "flash", extra);
  }
  g_x.next = offset + n;
  snprintf(extra, sizeof(extra), ",\"next\":%lu", (unsigned long)g_x.next);
  reply_ok("chunk", seq, extra);
}

static void handle_commit(uint16_t seq) {
  char extra[48];
  if (!g_x.active) return reply_err("commit", seq, "no_transfer", "");
  if (g_x.next != g_x.total) {
    snprintf(extra, sizeof(extra), ",\"next\":%lu", (unsigned long)g_x.next);
    return reply_err("commit", seq, "order", extra);
  }
  const uint32_t base = g_slot_base[g_x.slot];
  if (!g_x.committed) {
    uint8_t digest[32];
    sha256(flash_at(base + HS_HEADER_AREA), g_x.total, digest);
    if (memcmp(digest, g_x.sha, 32) != 0) {
      g_x.active = false;
      return reply_err("commit", seq, "sha_mismatch", "");
    }
    alignas(4) HsHeader h;
    memset(&h, 0, sizeof(h));
    h.magic = HS_MAGIC;
    h.version = HS_HEADER_VERSION;
    h.generation = next_generation();
    h.total = g_x.total;
    h.model_len = g_x.model_len;
    h.arena_needed = g_x.arena;
    strncpy(h.template_version, TINYML_TEMPLATE_VERSION, sizeof(h.template_version));
    memcpy(h.sha256, g_x.sha, 32);
    h.crc = crc32_update(0, (const uint8_t*)&h + 4, HS_HEADER_BYTES - 4);
    // Everything but the magic first: a power cut before the magic leaves no valid slot.
    if (g_flash.program((const uint8_t*)&h + 4, base + 4, sizeof(h) - 4) != 0 ||
        !program_word(base, HS_MAGIC)) {
      g_x.active = false;
      return reply_err("commit", seq, "flash", "");
    }
    g_x.committed = true;
  }
  snprintf(extra, sizeof(extra), ",\"slot\":%u,\"gen\":%lu", (unsigned)g_x.slot,
           (unsigned long)header_at(g_x.slot)->generation);
  reply_ok("commit", seq, extra);
}

static int handle_activate(uint16_t seq, const uint8_t* p, uint16_t len) {
  if (len != 1) {
    reply_err("activate", seq, "bad_frame", "");
    return -1;
  }
  const uint8_t slot = p[0];
  if (slot == TINYML_HS_BUILTIN) {
    for (uint8_t s = 0; s < 2; s++) {
      if (slot_bootable(s)) slot_mark(s, HS_REJECTED_AT);
    }
  } else {
    if (slot > 1 || !slot_bootable(slot)) {
      reply_err("activate", seq, "bad_slot", "");
      return -1;
    }
    const uint8_t other = (uint8_t)(1 - slot);
    if (slot_bootable(other) && header_at(other)->generation > header_at(slot)->generation) {
      slot_mark(other, HS_REJECTED_AT);  // a reset must boot what the host chose
    }
    burn_attempt(slot);  // starting it counts as a boot until it ran an inference
  }
  g_x.active = false;
  char extra[16];
  snprintf(extra, sizeof(extra), ",\"slot\":%u", (unsigned)slot);
  reply_ok("activate", seq, extra);
  return slot;
}

static void handle_hello(uint16_t seq, uint8_t running) {
  TinymlHsModel m;
  tinyml_hs_load(running, &m);
  snprintf(g_reply, sizeof(g_reply),
                      "{\"t\":\"hs\",\"r\":\"hello\",\"op\":\"hello\",\"seq\":%u,\"arena\":%lu,"
                      "\"max_chunk\":%u,\"fw\":\"%s\",\"sha\":\"%s\",\"v\":1,\"slot\":%u,"
                      "\"slots\":2,\"slot_bytes\":%lu,\"opset\":\"%s\",\"ops\":[",
                      (unsigned)seq, (unsigned long)TINYML_ARENA_BYTES, HS_MAX_CHUNK,
                      TINYML_TEMPLATE_VERSION, m.sha, (unsigned)running,
                      (unsigned long)TINYML_SLOT_BYTES, TINYML_OPSET_DIGEST);
  // The op list can be longer than g_reply: it goes out as it is, then the line's end.
  Serial.print(g_reply);
  Serial.print(TINYML_OPSET_JSON);
  Serial.print("]}\n");
}

// One complete frame in g_frame (sync already matched).
static int handle_frame(uint8_t running) {
  const uint8_t type = g_frame[2];
  const uint16_t seq = rd16(g_frame + 3);
  const uint16_t len = rd16(g_frame + 5);
  const uint8_t* payload = g_frame + 7;
  char extra[32];
  if (crc32_update(0, g_frame + 2, 5u + len) != rd32(payload + len)) {
    snprintf(extra, sizeof(extra), ",\"next\":%lu", (unsigned long)(g_x.active ? g_x.next : 0));
    static const char* const kNames[] = {"?", "hello", "begin", "chunk", "commit",
                                         "activate", "abort"};
    reply_err(type <= F_ABORT ? kNames[type] : "?", seq, "crc", extra);
    return -1;
  }
  switch (type) {
    case F_HELLO:
      handle_hello(seq, running);
      return -1;
    case F_BEGIN:
      handle_begin(seq, payload, len, running);
      return -1;
    case F_CHUNK:
      handle_chunk(seq, payload, len);
      return -1;
    case F_COMMIT:
      handle_commit(seq);
      return -1;
    case F_ACTIVATE:
      return handle_activate(seq, payload, len);
    case F_ABORT:
      g_x.active = false;
      reply_ok("abort", seq, "");
      return -1;
    default:
      reply_err("?", seq, "bad_frame", "");
      return -1;
  }
}

bool tinyml_hs_transfer_active() { return g_x.active && !g_x.committed; }

int tinyml_hs_poll(uint8_t running) {
  if (!g_hs_ok) {
    while (Serial.available() > 0) Serial.read();  // no slots: input is ignored as before
    return -1;
  }
  int activate = -1;
  while (Serial.available() > 0 && activate < 0) {
    const uint8_t b = (uint8_t)Serial.read();
    if (g_frame_fill == 0 && b != 0xA5) continue;  // not a frame: ignored
    if (g_frame_fill == 1 && b != 0x5A) {
      g_frame_fill = b == 0xA5 ? 1 : 0;
      continue;
    }
    g_frame[g_frame_fill++] = b;
    if (g_frame_fill == 7) {
      const uint8_t type = g_frame[2];
      const uint16_t len = rd16(g_frame + 5);
      if (len > HS_MAX_PAYLOAD || type < F_HELLO || type > F_ABORT) {
        reply_err("?", rd16(g_frame + 3), "bad_frame", "");
        g_frame_fill = 0;  // resynchronise on the next sync
      }
    } else if (g_frame_fill > 7 && g_frame_fill == 7u + rd16(g_frame + 5) + 4u) {
      activate = handle_frame(running);
      g_frame_fill = 0;
    }
  }
  return activate;
}

#endif  // TINYML_HOTSWAP
