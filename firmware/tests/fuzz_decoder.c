/* Decoder fuzz (docs/protocol.md §4): random, mutated and chunked streams.
 *
 * Each stream mixes valid frames of every message type (fields drawn inside their ranges
 * from the generated table), random bytes biased toward SYNC and small LEN values, and
 * mutated copies of valid frames (bit flips, truncations, duplicated and dropped bytes). The
 * stream is fed to the streaming decoder in random chunks, and checked against a reference
 * decoder written directly from §4 that sees the whole stream at once:
 *   - the streaming decoder never crashes (ASan, UBSan) and holds at most 53 bytes;
 *   - it delivers exactly the reference's frames and rejects, in order, whatever the
 *     chunking (so no frame is lost to a chunk boundary);
 *   - every valid frame that was put into the stream is delivered, unless a CRC-valid
 *     candidate made of garbage overlapped it (1 in 65536 per candidate; counted, and each
 *     such case is checked to be exactly that).
 *
 *     build/fuzz_decoder --seed N --iterations N [--seconds S]   (make -C firmware fuzz)
 *
 * Built with -DLIBFUZZER (clang -fsanitize=fuzzer) the same checks run on libFuzzer's inputs:
 * the input is the stream, its first byte seeds the chunking. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crc16.h"
#include "fw.h"
#include "proto.h"

#define STREAM_MAX 65536
#define FRAMES_MAX 4096

typedef struct {
    uint32_t start; /* offset of the SYNC in the stream */
    uint8_t kind;   /* DEC_FRAME or DEC_REJECT */
    uint8_t seq;
    uint8_t id;
    uint8_t nak;
} rec_t;

static uint64_t rng;
static uint32_t rnd(void) {
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (uint32_t)((rng * 2685821657736338717ull) >> 32);
}

/* ------------------------------------------------------------------ reference decoder */

static int reference(const uint8_t *s, uint32_t n, rec_t *out, int max) {
    int k = 0;
    uint32_t pos = 0;
    for (;;) {
        while (pos < n && s[pos] != PROTO_SYNC) pos++;
        if (pos + 2u > n) break;
        uint8_t len = s[pos + 1];
        if (len > PROTO_MAX_PAYLOAD) {
            pos++;
            continue;
        }
        uint32_t total = len + 6u;
        if (pos + total > n) break;
        uint16_t crc = crc16(s + pos + 1, len + 3u, CRC16_INIT);
        if (crc != (uint16_t)(s[pos + 4 + len] | (s[pos + 5 + len] << 8))) {
            pos++;
            continue;
        }
        uint8_t reason = proto_validate(s[pos + 3], s + pos + 4, len);
        if (k < max) {
            out[k] = (rec_t){pos, reason ? DEC_REJECT : DEC_FRAME, s[pos + 2], s[pos + 3], reason};
        }
        k++;
        pos += reason ? 1u : total;
    }
    return k;
}

/* ------------------------------------------------------------------ streaming decoder */

static int failures;
#define FAILF(...)                                                                               \
    do {                                                                                         \
        failures++;                                                                              \
        fprintf(stderr, "fuzz: " __VA_ARGS__);                                                   \
        fputc('\n', stderr);                                                                     \
    } while (0)

static int streaming(const uint8_t *s, uint32_t n, rec_t *out, int max, uint32_t chunk_seed) {
    decoder_t d;
    dec_init(&d);
    int k = 0;
    uint32_t pos = 0;
    uint64_t saved = rng;
    rng = chunk_seed | 1u;
    while (pos < n) {
        uint32_t chunk = 1u + rnd() % (rnd() % 4 == 0 ? 200u : 8u);
        if (chunk > n - pos) chunk = n - pos;
        for (uint32_t i = 0; i < chunk; i++) {
            dec_push(&d, s[pos + i]);
            dec_event_t ev;
            while (dec_poll(&d, &ev)) {
                if (k < max) {
                    out[k] = (rec_t){0, ev.kind, ev.frame.seq, ev.frame.id, ev.nak_reason};
                }
                k++;
            }
            if (d.n > PROTO_MAX_FRAME - 1u) FAILF("decoder holds %u bytes", d.n);
        }
        pos += chunk;
    }
    rng = saved;
    return k;
}

static void compare(const uint8_t *s, uint32_t n, uint32_t chunk_seed, rec_t *ref, int *nref) {
    static rec_t got[FRAMES_MAX];
    *nref = reference(s, n, ref, FRAMES_MAX);
    int ngot = streaming(s, n, got, FRAMES_MAX, chunk_seed);
    if (ngot != *nref) {
        FAILF("streaming decoder gave %d events, reference %d", ngot, *nref);
        return;
    }
    for (int i = 0; i < ngot && i < FRAMES_MAX; i++) {
        if (got[i].kind != ref[i].kind || got[i].seq != ref[i].seq || got[i].id != ref[i].id ||
            got[i].nak != ref[i].nak) {
            FAILF("event %d differs: kind %u/%u id 0x%02x/0x%02x seq %u/%u", i, got[i].kind,
                  ref[i].kind, got[i].id, ref[i].id, got[i].seq, ref[i].seq);
            return;
        }
    }
}

#ifdef LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static rec_t ref[FRAMES_MAX];
    if (size == 0 || size > STREAM_MAX) return 0;
    int nref;
    compare(data + 1, (uint32_t)size - 1u, data[0] * 2654435761u, ref, &nref);
    if (failures) abort();
    return 0;
}
#else

/* ------------------------------------------------------------------ the whole core */

static void null_send(void *ctx, const uint8_t *frame, uint8_t len) {
    (void)ctx;
    (void)frame;
    (void)len;
}

/* The same stream into the firmware core after a real handshake and CONFIGURE, with time
 * passing: it never crashes and never commands above its ceiling. */
static void fuzz_core(const uint8_t *s, uint32_t n) {
    static fw_t fw;
    fw_boot_t b = {.reset_cause = RESET_POWER_ON, .boot_id = 1, .um_per_pulse = SENSOR_UM_PER_PULSE};
    fw_io_t io = {.send = null_send, .drop_rx = NULL, .ctx = NULL};
    uint32_t t = rnd();
    fw_init(&fw, &b, io, t);
    t += SELF_TEST_MS;
    fw_tick(&fw, t, t * 1000u);
    uint8_t hello[MSG_HELLO_LEN] = {PROTOCOL_VERSION};
    uint8_t conf[MSG_CONFIGURE_LEN] = {0x20, 0x03, 0x64, 0x00, 0x68, 0x01, 0x2c, 0x01};
    put_u16(conf + 8, crc16(conf, 8, CRC16_INIT));
    uint8_t f[PROTO_MAX_FRAME];
    uint8_t m = proto_encode(f, 0, MSG_HELLO, hello, sizeof hello);
    for (uint8_t i = 0; i < m; i++) fw_rx_byte(&fw, f[i]);
    m = proto_encode(f, 1, MSG_CONFIGURE, conf, sizeof conf);
    for (uint8_t i = 0; i < m; i++) fw_rx_byte(&fw, f[i]);
    if (!fw.configured) FAILF("core: handshake and CONFIGURE not accepted");
    for (uint32_t i = 0; i < n; i++) {
        fw_rx_byte(&fw, s[i]);
        if (i % 23u == 0u) {
            t += rnd() % 3u;
            fw_tick(&fw, t, t * 1000u);
        }
        if (fw_commanded_x100(&fw) > CEIL_SPEED_X100 || fw.target_x100 > CEIL_SPEED_X100) {
            FAILF("core: set-point above the ceiling");
            return;
        }
    }
}

/* ------------------------------------------------------------------ stream generator */

static uint8_t make_valid(uint8_t *out) {
    size_t which = rnd() % MSG_SPEC_COUNT;
    const msg_spec_t *m = &MSG_SPECS[which];
    uint8_t payload[PROTO_MAX_PAYLOAD];
    memset(payload, 0, sizeof payload);
    for (uint8_t i = 0; i < m->field_count; i++) {
        const field_spec_t *f = &m->fields[i];
        uint32_t v;
        if (f->kind == FK_ENUM) {
            v = f->enum_values[rnd() % f->enum_count];
        } else if (f->kind == FK_FLAG) {
            v = rnd() & 1u;
        } else if (f->kind == FK_OPT_SEQ) {
            v = rnd() % 4 == 0 ? 0xFFFFu : rnd() % 256u;
        } else if (f->kind == FK_VERSION) {
            v = rnd();
        } else {
            uint32_t span = f->hi - f->lo;
            v = f->lo + (span == 0xFFFFFFFFu ? rnd() : rnd() % (span + 1u));
            if (rnd() % 4 == 0) v = rnd() % 2 ? f->lo : f->hi; /* edges */
        }
        for (uint8_t b = 0; b < f->size; b++) payload[f->offset + b] = (uint8_t)(v >> (8u * b));
    }
    return proto_encode(out, (uint8_t)rnd(), m->id, payload, m->len);
}

static uint32_t gen_stream(uint8_t *s, uint32_t cap, uint32_t *starts, int *nstarts) {
    uint32_t n = 0;
    *nstarts = 0;
    uint32_t segments = 5u + rnd() % 60u;
    for (uint32_t seg = 0; seg < segments; seg++) {
        uint8_t f[PROTO_MAX_FRAME];
        uint8_t len = make_valid(f);
        if (n + 300u > cap) break;
        switch (rnd() % 6) {
        case 0: case 1: /* a valid frame */
            if (*nstarts < FRAMES_MAX) starts[(*nstarts)++] = n;
            memcpy(s + n, f, len);
            n += len;
            break;
        case 2: { /* random bytes, biased to SYNC and small LEN */
            uint32_t k = rnd() % 120u;
            for (uint32_t i = 0; i < k; i++) {
                uint32_t r = rnd() % 8;
                s[n++] = r == 0 ? PROTO_SYNC : r == 1 ? (uint8_t)(rnd() % 60u) : (uint8_t)rnd();
            }
            break;
        }
        case 3: { /* bit flips */
            uint32_t flips = 1u + rnd() % 4u;
            for (uint32_t i = 0; i < flips; i++) f[rnd() % len] ^= (uint8_t)(1u << (rnd() % 8u));
            memcpy(s + n, f, len);
            n += len;
            break;
        }
        case 4: /* truncated */
            memcpy(s + n, f, len);
            n += 1u + rnd() % (len - 1u);
            break;
        default: { /* a byte dropped or duplicated */
            uint32_t at = rnd() % len;
            for (uint32_t i = 0; i < len; i++) {
                if (i == at && rnd() % 2) continue;
                s[n++] = f[i];
                if (i == at) s[n++] = f[i];
            }
            break;
        }
        }
    }
    /* Padding that resolves every pending candidate (no SYNC in it). */
    for (int i = 0; i < 60; i++) s[n++] = 0x00;
    return n;
}

int main(int argc, char **argv) {
    uint64_t seed = 1;
    long iterations = 20000;
    double seconds = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--seed") == 0) seed = strtoull(argv[i + 1], NULL, 0);
        else if (strcmp(argv[i], "--iterations") == 0) iterations = strtol(argv[i + 1], NULL, 0);
        else if (strcmp(argv[i], "--seconds") == 0) seconds = strtod(argv[i + 1], NULL);
    }
    rng = seed * 0x9E3779B97F4A7C15ull + 1u;
    static uint8_t stream[STREAM_MAX];
    static uint32_t starts[FRAMES_MAX];
    static rec_t ref[FRAMES_MAX];
    clock_t t0 = clock();
    long it = 0;
    unsigned long long bytes = 0, planted = 0, recovered = 0, swallowed = 0, spurious = 0;
    for (; it < iterations; it++) {
        if (seconds > 0 && (double)(clock() - t0) / CLOCKS_PER_SEC > seconds) break;
        int nstarts;
        uint32_t n = gen_stream(stream, STREAM_MAX - 64u, starts, &nstarts);
        bytes += n;
        int nref;
        compare(stream, n, rnd(), ref, &nref);
        if (it % 8 == 0) fuzz_core(stream, n);
        /* Every planted frame delivered, or overlapped by a delivered garbage candidate. */
        int j = 0;
        for (int i = 0; i < nstarts; i++) {
            planted++;
            while (j < nref && (ref[j].kind != DEC_FRAME || ref[j].start < starts[i])) {
                if (ref[j].kind == DEC_FRAME) spurious++;
                j++;
            }
            if (j < nref && ref[j].start == starts[i]) {
                recovered++;
                j++;
                continue;
            }
            /* Lost: only allowed when a CRC-valid garbage frame covered its SYNC. */
            bool covered = false;
            for (int q = 0; q < nref; q++) {
                uint32_t end = ref[q].start + stream[ref[q].start + 1] + 6u;
                if (ref[q].kind == DEC_FRAME && ref[q].start < starts[i] && end > starts[i]) {
                    covered = true;
                }
            }
            if (covered) {
                swallowed++;
            } else {
                FAILF("iteration %ld: planted frame at %u not recovered", it, starts[i]);
            }
        }
        if (failures > 10) break;
    }
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    printf("fuzz_decoder: seed %llu, %ld streams, %llu bytes in %.1f s; planted frames %llu, "
           "recovered %llu, swallowed by a CRC-valid garbage frame %llu, other valid frames (garbage, mutations that kept a frame whole) "
           "%llu; %d failures\n",
           (unsigned long long)seed, it, bytes, secs, planted, recovered, swallowed, spurious,
           failures);
    return failures == 0 ? 0 : 1;
}
#endif
