#include "proto.h"

#include <string.h>

#include "crc16.h"
#include "platform.h"

void dec_init(decoder_t *d) { memset(d, 0, sizeof *d); }

uint32_t dec_errors(const decoder_t *d) {
    return d->stats.crc_errors + d->stats.oversize + d->stats.unknown_ids + d->stats.bad_payloads;
}

void dec_push(decoder_t *d, uint8_t byte) {
    if (d->n >= PROTO_MAX_FRAME) {
        /* Cannot happen when dec_poll is drained after every push (it leaves at most 53
         * bytes); if a caller forgets, the oldest byte is dropped rather than overflowing. */
        d->start++;
        d->n--;
        d->stats.bytes_skipped++;
    }
    if ((size_t)d->start + d->n >= sizeof d->buf) {
        memmove(d->buf, d->buf + d->start, d->n);
        d->start = 0;
    }
    d->buf[d->start + d->n] = byte;
    d->n++;
}

/* Discard count bytes from the front (not part of a delivered frame). */
static void dec_skip(decoder_t *d, uint8_t count) {
    if (!d->discarding) {
        d->discarding = true;
        d->stats.resyncs++;
    }
    d->stats.bytes_skipped += count;
    d->start = (uint8_t)(d->start + count);
    d->n = (uint8_t)(d->n - count);
    if (d->n == 0) {
        d->start = 0;
    }
}

static bool enum_allows(const field_spec_t *f, uint8_t v) {
    for (uint8_t i = 0; i < f->enum_count; i++) {
        uint8_t allowed;
        fw_rom_copy(&allowed, &f->enum_values[i], 1);
        if (allowed == v) {
            return true;
        }
    }
    return false;
}

uint8_t proto_validate(uint8_t id, const uint8_t *payload, uint8_t len) {
    msg_spec_t spec;
    bool found = false;
    for (size_t i = 0; i < MSG_SPEC_COUNT; i++) {
        fw_rom_copy(&spec, &MSG_SPECS[i], sizeof spec);
        if (spec.id == id) {
            found = true;
            break;
        }
    }
    if (!found) {
        return NAK_UNKNOWN_MESSAGE;
    }
    if (len != spec.len) {
        return NAK_BAD_PAYLOAD;
    }
    for (uint8_t i = 0; i < spec.field_count; i++) {
        field_spec_t f;
        fw_rom_copy(&f, &spec.fields[i], sizeof f);
        const uint8_t *p = payload + f.offset;
        uint32_t v;
        switch (f.size) {
        case 1:
            v = p[0];
            break;
        case 2:
            v = get_u16(p);
            break;
        case 4:
            v = get_u32(p);
            break;
        default:
            v = 0; /* FK_VERSION: three bytes, every value allowed */
            break;
        }
        switch (f.kind) {
        case FK_UINT:
            if (v < f.lo || v > f.hi) {
                return NAK_OUT_OF_RANGE;
            }
            break;
        case FK_ENUM:
            if (!enum_allows(&f, (uint8_t)v)) {
                return NAK_OUT_OF_RANGE;
            }
            break;
        case FK_FLAG:
            if (v > 1u) {
                return NAK_OUT_OF_RANGE;
            }
            break;
        case FK_OPT_SEQ:
            if (v > 255u && v != 0xFFFFu) {
                return NAK_OUT_OF_RANGE;
            }
            break;
        default:
            break;
        }
    }
    return 0;
}

bool dec_poll(decoder_t *d, dec_event_t *ev) {
    for (;;) {
        if (d->n == 0) {
            return false;
        }
        const uint8_t *b = d->buf + d->start;
        /* 1. Find the next SYNC; everything before it is skipped. */
        if (b[0] != PROTO_SYNC) {
            uint8_t i = 1;
            while (i < d->n && b[i] != PROTO_SYNC) {
                i++;
            }
            dec_skip(d, i);
            continue;
        }
        /* 2. LEN. */
        if (d->n < 2) {
            return false;
        }
        uint8_t len = b[1];
        /* 3. Oversize: reject at once, drop only the SYNC. */
        if (len > PROTO_MAX_PAYLOAD) {
            d->stats.oversize++;
            dec_skip(d, 1);
            continue;
        }
        /* 4. The whole candidate. */
        uint8_t total = (uint8_t)(len + PROTO_HEADER + 2u);
        if (d->n < total) {
            return false;
        }
        /* 5. CRC over LEN SEQ MSG_ID PAYLOAD. */
        uint16_t crc = crc16(b + 1, (size_t)len + 3u, CRC16_INIT);
        if (crc != get_u16(b + PROTO_HEADER + len)) {
            d->stats.crc_errors++;
            dec_skip(d, 1);
            continue;
        }
        /* 6. Content. */
        uint8_t reason = proto_validate(b[3], b + PROTO_HEADER, len);
        ev->frame.seq = b[2];
        ev->frame.id = b[3];
        ev->frame.len = len;
        memcpy(ev->frame.payload, b + PROTO_HEADER, len);
        if (reason != 0) {
            if (reason == NAK_UNKNOWN_MESSAGE) {
                d->stats.unknown_ids++;
            } else {
                d->stats.bad_payloads++;
            }
            ev->kind = DEC_REJECT;
            ev->nak_reason = reason;
            dec_skip(d, 1);
            return true;
        }
        ev->kind = DEC_FRAME;
        ev->nak_reason = 0;
        d->stats.frames++;
        d->discarding = false;
        d->start = (uint8_t)(d->start + total);
        d->n = (uint8_t)(d->n - total);
        if (d->n == 0) {
            d->start = 0;
        }
        return true;
    }
}

uint8_t proto_encode(uint8_t *out, uint8_t seq, uint8_t id, const uint8_t *payload, uint8_t len) {
    if (len > PROTO_MAX_PAYLOAD) {
        return 0;
    }
    out[0] = PROTO_SYNC;
    out[1] = len;
    out[2] = seq;
    out[3] = id;
    if (len) {
        memcpy(out + PROTO_HEADER, payload, len);
    }
    uint16_t crc = crc16(out + 1, (size_t)len + 3u, CRC16_INIT);
    put_u16(out + PROTO_HEADER + len, crc);
    return (uint8_t)(len + PROTO_HEADER + 2u);
}
