/* Native unit tests of the firmware core (firmware/core) under ASan and UBSan. Time is
 * driven explicitly, one millisecond at a time; the belt is the shared belt model, so the
 * speed checks see real sensor pulses. Test names carry the rule they check
 * (docs/firmware-safety.md FW-n, docs/protocol.md §n).
 *
 *     build/test_core ../docs/protocol.md     (make -C firmware test) */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "belt_model.h"
#include "crc16.h"
#include "fw.h"
#include "proto.h"
#include "test_util.h"

static int tests_run;
static const char *g_protocol_md;

/* ================================================================== fixture */

#define OUT_MAX 8192

typedef struct {
    fw_t fw;
    belt_t belt;
    decoder_t rx; /* decodes what the firmware sends */
    frame_t out[OUT_MAX];
    int n_out;
    int rejected_out; /* frames the firmware sent that the decoder refused: must stay 0 */
    uint32_t t0_ms;
    uint32_t t_ms;
    uint8_t host_seq;
    bool key_closed;
    double max_step_fine; /* largest set-point change in one ms seen */
    uint16_t max_commanded_x100;
    bool sim_belt;
} fx_t;

static fx_t F;

static void cap_send(void *ctx, const uint8_t *frame, uint8_t len) {
    fx_t *f = ctx;
    for (uint8_t i = 0; i < len; i++) {
        dec_push(&f->rx, frame[i]);
        dec_event_t ev;
        while (dec_poll(&f->rx, &ev)) {
            if (ev.kind != DEC_FRAME) {
                f->rejected_out++;
            } else if (f->n_out < OUT_MAX) {
                f->out[f->n_out++] = ev.frame;
            }
        }
    }
}

static void on_pulse(void *ctx, uint64_t t_us) {
    fx_t *f = ctx;
    fw_pulse(&f->fw, (uint32_t)((uint64_t)f->t0_ms * 1000u + t_us));
}

static void fx_boot(uint32_t t0_ms, uint8_t cause, uint32_t boot_id) {
    memset(&F, 0, sizeof F);
    F.t0_ms = t0_ms;
    F.t_ms = t0_ms;
    F.key_closed = true;
    F.sim_belt = true;
    dec_init(&F.rx);
    belt_params_t bp;
    belt_default_params(&bp);
    belt_init(&F.belt, &bp, 0);
    fw_boot_t b = {.reset_cause = cause, .boot_id = boot_id, .um_per_pulse = SENSOR_UM_PER_PULSE};
    fw_io_t io = {.send = cap_send, .drop_rx = NULL, .ctx = &F};
    fw_init(&F.fw, &b, io, t0_ms);
}

/* Advance time by ms, one millisecond at a time. */
static void fx_run(uint32_t ms) {
    for (uint32_t i = 0; i < ms; i++) {
        uint32_t before = F.fw.commanded_fine;
        F.t_ms++;
        uint64_t rel_us = (uint64_t)(uint32_t)(F.t_ms - F.t0_ms) * 1000u;
        if (F.sim_belt) {
            belt_advance(&F.belt, rel_us, on_pulse, &F);
        }
        fw_key_sample(&F.fw, F.key_closed, F.t_ms);
        fw_tick(&F.fw, F.t_ms, (uint32_t)(F.t_ms * 1000u));
        double step = (double)F.fw.commanded_fine - (double)before;
        if (step < 0) step = -step;
        if (step > F.max_step_fine) F.max_step_fine = step;
        if (fw_commanded_x100(&F.fw) > F.max_commanded_x100) {
            F.max_commanded_x100 = fw_commanded_x100(&F.fw);
        }
        belt_set_key(&F.belt, F.key_closed);
        belt_set_drive(&F.belt, fw_pwm_counts(&F.fw, 3124) / 3125.0, fw_motor_enable(&F.fw));
    }
}

static void fx_clear(void) { F.n_out = 0; }

static void fx_bytes(const uint8_t *data, size_t len) {
    for (size_t i = 0; i < len; i++) {
        fw_rx_byte(&F.fw, data[i]);
    }
}

static uint8_t fx_send_seq(uint8_t seq, uint8_t id, const uint8_t *payload, uint8_t len) {
    uint8_t buf[PROTO_MAX_FRAME];
    uint8_t n = proto_encode(buf, seq, id, payload, len);
    fx_bytes(buf, n);
    return seq;
}

static uint8_t fx_send(uint8_t id, const uint8_t *payload, uint8_t len) {
    return fx_send_seq(F.host_seq++, id, payload, len);
}

static uint8_t fx_hello(uint8_t version) {
    uint8_t p[MSG_HELLO_LEN] = {0};
    p[0] = version;
    return fx_send(MSG_HELLO, p, sizeof p);
}

static void limits_payload(uint8_t *p, uint16_t speed, uint16_t accel, uint16_t decel,
                           uint16_t lease) {
    put_u16(p, speed);
    put_u16(p + 2, accel);
    put_u16(p + 4, decel);
    put_u16(p + 6, lease);
    put_u16(p + 8, crc16(p, 8, CRC16_INIT));
}

static uint8_t fx_configure(uint16_t speed, uint16_t accel, uint16_t decel, uint16_t lease) {
    uint8_t p[MSG_CONFIGURE_LEN];
    limits_payload(p, speed, accel, decel, lease);
    return fx_send(MSG_CONFIGURE, p, sizeof p);
}

static uint8_t fx_set_speed(uint16_t speed, uint16_t accel, uint16_t lease) {
    uint8_t p[MSG_SET_SPEED_LEN];
    put_u16(p, speed);
    put_u16(p + 2, accel);
    put_u16(p + 4, lease);
    return fx_send(MSG_SET_SPEED, p, sizeof p);
}

static uint8_t fx_stop(uint16_t decel) {
    uint8_t p[2];
    put_u16(p, decel);
    return fx_send(MSG_STOP, p, 2);
}

static uint8_t fx_empty(uint8_t id) { return fx_send(id, NULL, 0); }

static int fx_count(uint8_t id) {
    int n = 0;
    for (int i = 0; i < F.n_out; i++) n += F.out[i].id == id;
    return n;
}

static const frame_t *fx_last(uint8_t id) {
    for (int i = F.n_out - 1; i >= 0; i--) {
        if (F.out[i].id == id) return &F.out[i];
    }
    return NULL;
}

/* The answer (ACK or NAK) quoting seq: 0 none, MSG_ACK, or 0x100 + NAK reason. */
static int fx_answer(uint8_t seq) {
    for (int i = 0; i < F.n_out; i++) {
        if (F.out[i].id == MSG_ACK && F.out[i].payload[0] == seq) return MSG_ACK;
        if (F.out[i].id == MSG_NAK && F.out[i].payload[0] == seq) return 0x100 + F.out[i].payload[1];
    }
    return 0;
}
#define NAKED(r) (0x100 + (r))

/* Boot, handshake and configure with the controller's defaults (8 km/h, 1.0 km/h/s,
 * 3.6 km/h/s, 300 ms). */
static void fx_ready(void) {
    fx_boot(1000, RESET_POWER_ON, 0x1234u);
    fx_run(SELF_TEST_MS + 5);
    fx_hello(PROTOCOL_VERSION);
    fx_configure(800, 100, 360, 300);
    fx_run(1);
    fx_clear();
}

/* Send SET_SPEED every 20 ms for ms. */
static void fx_drive(uint16_t speed, uint16_t accel, uint32_t ms) {
    for (uint32_t t = 0; t < ms; t += 20) {
        fx_set_speed(speed, accel, 300);
        fx_run(20);
    }
}

static uint8_t st_state(void) { return F.fw.state; }

static bool category_0_check(uint8_t fault) {
    return fault == FAULT_ESTOP || fault == FAULT_SAFETY_KEY_OPEN || fault == FAULT_OVERSPEED ||
           fault == FAULT_SENSOR_FAULT || fault == FAULT_MOTOR_FAULT || fault == FAULT_INTERNAL;
}

/* ================================================================== CRC, framing (§3, §4) */

static void test_crc_check_value(void) {
    CHECK_EQ(crc16((const uint8_t *)"123456789", 9, CRC16_INIT), 0x29B1);
    const uint8_t worked[] = {0x06, 0x02, 0x03, 0xfa, 0x00, 0x1e, 0x00, 0x2c, 0x01};
    CHECK_EQ(crc16(worked, sizeof worked, CRC16_INIT), 0xE837);
}

/* Every ```hex block of docs/protocol.md §11 (generated from firmware_bridge.wire.messages):
 * decoded as one valid frame, and re-encoding its fields gives the same bytes. */
static void test_protocol_doc_vectors(void) {
    if (g_protocol_md == NULL) {
        fprintf(stderr, "     (no docs/protocol.md given: vectors skipped)\n");
        return;
    }
    FILE *fp = fopen(g_protocol_md, "r");
    CHECK(fp != NULL);
    if (fp == NULL) return;
    char line[1024];
    bool in_hex = false;
    uint8_t bytes[256];
    size_t n = 0;
    int blocks = 0;
    bool seen[256] = {false};
    while (fgets(line, sizeof line, fp) != NULL) {
        if (strncmp(line, "```hex", 6) == 0) {
            in_hex = true;
            n = 0;
            continue;
        }
        if (in_hex && strncmp(line, "```", 3) == 0) {
            in_hex = false;
            blocks++;
            decoder_t d;
            dec_init(&d);
            int frames = 0;
            dec_event_t ev;
            for (size_t i = 0; i < n; i++) {
                dec_push(&d, bytes[i]);
                while (dec_poll(&d, &ev)) {
                    CHECK_EQ(ev.kind, DEC_FRAME);
                    frames++;
                    seen[ev.frame.id] = true;
                    uint8_t again[PROTO_MAX_FRAME];
                    uint8_t m = proto_encode(again, ev.frame.seq, ev.frame.id, ev.frame.payload,
                                             ev.frame.len);
                    CHECK_EQ(m, n);
                    CHECK(memcmp(again, bytes, n) == 0);
                }
            }
            CHECK_EQ(frames, 1);
            CHECK_EQ(d.stats.bytes_skipped, 0);
            continue;
        }
        if (in_hex) {
            char *s = line;
            while (*s) {
                char *end;
                unsigned long v = strtoul(s, &end, 16);
                if (end == s) break;
                if (n < sizeof bytes) bytes[n++] = (uint8_t)v;
                s = end;
            }
        }
    }
    fclose(fp);
    CHECK(blocks >= 12);
    const uint8_t ids[] = {MSG_HELLO, MSG_CONFIGURE, MSG_SET_SPEED, MSG_STOP, MSG_ESTOP, MSG_CLEAR_FAULT,
                           MSG_GET_STATUS, MSG_STATUS, MSG_FAULT, MSG_ACK, MSG_NAK};
    for (size_t i = 0; i < sizeof ids; i++) CHECK(seen[ids[i]]);
}

/* The firmware's own frames are built exactly as the reference: the STATUS of the vector. */
static void test_encode_status_vector(void) {
    const uint8_t want[] = {0xa5, 0x11, 0x07, 0x81, 0xf8, 0x00, 0xfa, 0x00, 0x02, 0x00, 0x01, 0x60,
                            0xea, 0x00, 0x00, 0x02, 0x00, 0x93, 0x8e, 0x18, 0x01, 0x5b, 0xb2};
    uint8_t p[17];
    put_u16(p, 248);
    put_u16(p + 2, 250);
    p[4] = ST_RUNNING;
    p[5] = FAULT_NONE;
    p[6] = 1;
    put_u32(p + 7, 60000);
    put_u16(p + 11, 2);
    put_u16(p + 13, 0x8E93);
    put_u16(p + 15, 280);
    uint8_t out[PROTO_MAX_FRAME];
    CHECK_EQ(proto_encode(out, 7, MSG_STATUS, p, 17), sizeof want);
    CHECK(memcmp(out, want, sizeof want) == 0);
}

static int decode_all(decoder_t *d, const uint8_t *data, size_t n, dec_event_t *evs, int max) {
    int k = 0;
    for (size_t i = 0; i < n; i++) {
        dec_push(d, data[i]);
        dec_event_t ev;
        while (dec_poll(d, &ev)) {
            if (k < max) evs[k] = ev;
            k++;
        }
    }
    return k;
}

static void test_decoder_resync_after_garbage_and_lost_bytes(void) {
    uint8_t buf[200];
    size_t n = 0;
    const uint8_t garbage[] = {0x00, 0xA5, 0x30, 0x11, 0xA5, 0xFF, 0x12};
    memcpy(buf, garbage, sizeof garbage);
    n += sizeof garbage;
    uint8_t p[6] = {0xfa, 0, 0x1e, 0, 0x2c, 0x01};
    uint8_t frame[PROTO_MAX_FRAME];
    uint8_t m = proto_encode(frame, 2, MSG_SET_SPEED, p, 6);
    memcpy(buf + n, frame, m - 3); /* a frame that lost its last 3 bytes */
    n += m - 3u;
    for (int i = 0; i < 3; i++) {
        memcpy(buf + n, frame, m);
        n += m;
    }
    decoder_t d;
    dec_init(&d);
    dec_event_t ev[8];
    int k = decode_all(&d, buf, n, ev, 8);
    /* The candidate A5 30 claims 48 bytes and holds back the frames behind it until its
     * length has arrived; then all three whole frames come out. */
    for (int j = 0; j < 60; j++) {
        dec_push(&d, 0x00);
        dec_event_t e;
        while (dec_poll(&d, &e)) {
            if (k < 8) ev[k] = e;
            k++;
        }
    }
    CHECK_EQ(k, 3);
    for (int i = 0; i < k && i < 8; i++) {
        CHECK_EQ(ev[i].kind, DEC_FRAME);
        CHECK_EQ(ev[i].frame.seq, 2);
    }
    CHECK_EQ(d.stats.frames, 3);
    CHECK(d.stats.crc_errors >= 1);
    CHECK(d.stats.oversize >= 1);
}

static void test_decoder_rejects_content(void) {
    decoder_t d;
    dec_init(&d);
    uint8_t out[PROTO_MAX_FRAME];
    dec_event_t ev[4];
    /* unknown id */
    uint8_t m = proto_encode(out, 9, 0x42, NULL, 0);
    CHECK_EQ(decode_all(&d, out, m, ev, 4), 1);
    CHECK_EQ(ev[0].kind, DEC_REJECT);
    CHECK_EQ(ev[0].nak_reason, NAK_UNKNOWN_MESSAGE);
    CHECK_EQ(ev[0].frame.seq, 9);
    /* wrong length */
    uint8_t p[8] = {0};
    m = proto_encode(out, 10, MSG_SET_SPEED, p, 5);
    CHECK_EQ(decode_all(&d, out, m, ev, 4), 1);
    CHECK_EQ(ev[0].nak_reason, NAK_BAD_PAYLOAD);
    /* a field out of range: speed 30.01 km/h */
    put_u16(p, 3001);
    put_u16(p + 2, 10);
    put_u16(p + 4, 300);
    m = proto_encode(out, 11, MSG_SET_SPEED, p, 6);
    CHECK_EQ(decode_all(&d, out, m, ev, 4), 1);
    CHECK_EQ(ev[0].nak_reason, NAK_OUT_OF_RANGE);
    /* boundaries at the wire's resolution: 30.00 accepted, accel 0 refused, lease 10001 */
    put_u16(p, 3000);
    m = proto_encode(out, 12, MSG_SET_SPEED, p, 6);
    CHECK_EQ(decode_all(&d, out, m, ev, 4), 1);
    CHECK_EQ(ev[0].kind, DEC_FRAME);
    CHECK_EQ(proto_validate(MSG_SET_SPEED, (const uint8_t[]){0, 0, 0, 0, 1, 0}, 6),
             NAK_OUT_OF_RANGE);
    CHECK_EQ(proto_validate(MSG_SET_SPEED, (const uint8_t[]){0, 0, 1, 0, 0x11, 0x27}, 6),
             NAK_OUT_OF_RANGE);
    CHECK_EQ(proto_validate(MSG_SET_SPEED, (const uint8_t[]){0, 0, 1, 0, 0x10, 0x27}, 6), 0);
    /* STATUS from a host: flag bits 1..7 reserved, opt seq 0xFFFF or 0..255 */
    uint8_t s[17] = {0};
    s[6] = 2;
    CHECK_EQ(proto_validate(MSG_STATUS, s, 17), NAK_OUT_OF_RANGE);
    s[6] = 1;
    put_u16(s + 11, 0xFFFF);
    CHECK_EQ(proto_validate(MSG_STATUS, s, 17), 0);
    put_u16(s + 11, 256);
    CHECK_EQ(proto_validate(MSG_STATUS, s, 17), NAK_OUT_OF_RANGE);
    /* HELLO reset cause: 0..4 and 255 only */
    uint8_t h[17] = {1};
    h[4] = 5;
    CHECK_EQ(proto_validate(MSG_HELLO, h, 17), NAK_OUT_OF_RANGE);
    h[4] = 255;
    CHECK_EQ(proto_validate(MSG_HELLO, h, 17), 0);
    h[0] = 0;
    CHECK_EQ(proto_validate(MSG_HELLO, h, 17), NAK_OUT_OF_RANGE);
}

/* ================================================================== FW-1 */

static void test_FW_1_motor_disabled_at_boot_then_hello(void) {
    fx_boot(5000, RESET_WATCHDOG, 0xCAFEu);
    CHECK(!fw_motor_enable(&F.fw));
    CHECK_EQ(fw_pwm_counts(&F.fw, 3124), 0);
    fx_run(SELF_TEST_MS - 1);
    CHECK_EQ(F.n_out, 0); /* nothing during the self-test */
    CHECK_EQ(st_state(), ST_BOOT);
    fx_run(1);
    CHECK_EQ(st_state(), ST_IDLE);
    CHECK(F.n_out >= 1);
    CHECK_EQ(F.out[0].id, MSG_HELLO);
    const uint8_t *p = F.out[0].payload;
    CHECK_EQ(p[0], PROTOCOL_VERSION);
    CHECK_EQ(p[1], FW_VERSION_MAJOR);
    CHECK_EQ(p[4], RESET_WATCHDOG);
    CHECK_EQ(get_u16(p + 5), CEIL_SPEED_X100);
    CHECK_EQ(get_u16(p + 7), CEIL_ACCEL_X100);
    CHECK_EQ(get_u32(p + 9), 0xCAFEu);
    CHECK_EQ(get_u32(p + 13), SELF_TEST_MS);
    CHECK_EQ(F.out[0].seq, 0); /* the firmware's SEQ starts at 0 every boot */
    CHECK_EQ(F.rejected_out, 0);
    CHECK(!fw_motor_enable(&F.fw));
}

static void test_FW_1_boot_answers_only_stops(void) {
    fx_boot(0, RESET_POWER_ON, 7);
    fx_run(10);
    uint8_t a = fx_hello(PROTOCOL_VERSION);
    uint8_t b = fx_set_speed(100, 10, 300);
    uint8_t c = fx_stop(100);
    uint8_t d = fx_empty(MSG_ESTOP);
    CHECK_EQ(fx_answer(a), 0);
    CHECK_EQ(fx_answer(b), 0);
    CHECK_EQ(fx_answer(c), MSG_ACK);
    CHECK_EQ(fx_answer(d), MSG_ACK);
    fx_run(SELF_TEST_MS);
    CHECK_EQ(st_state(), ST_IDLE); /* an ESTOP in BOOT latches nothing: the motor was off */
    CHECK(!fw_motor_enable(&F.fw));
}

static void test_FW_1_reboot_mid_run_forgets_everything(void) {
    fx_ready();
    fx_drive(300, 100, 2000);
    CHECK(fw_motor_enable(&F.fw));
    /* A watchdog reset: the core starts again from fw_init. */
    fw_boot_t b = {.reset_cause = RESET_WATCHDOG, .boot_id = 0x55u, .um_per_pulse = SENSOR_UM_PER_PULSE};
    fw_io_t io = {.send = cap_send, .drop_rx = NULL, .ctx = &F};
    fw_init(&F.fw, &b, io, F.t_ms);
    CHECK(!fw_motor_enable(&F.fw));
    fx_clear();
    fx_run(SELF_TEST_MS + 1);
    CHECK_EQ(st_state(), ST_IDLE);
    uint8_t s = fx_set_speed(300, 100, 300);
    CHECK_EQ(fx_answer(s), NAKED(NAK_NO_HANDSHAKE));
    fx_hello(PROTOCOL_VERSION);
    s = fx_set_speed(300, 100, 300);
    CHECK_EQ(fx_answer(s), NAKED(NAK_NOT_CONFIGURED));
    CHECK(!fw_motor_enable(&F.fw));
    const frame_t *st = fx_last(MSG_STATUS);
    CHECK(st != NULL);
    if (st) {
        CHECK_EQ(get_u16(st->payload + 11), 0xFFFF); /* no SET_SPEED applied this boot */
        CHECK_EQ(get_u16(st->payload + 13), 0);      /* no configuration */
    }
}

/* ================================================================== FW-2 */

/* The categories the shutdown path takes from the generated table (msg_table.h, from the wire
 * data dictionary) are the contract's (docs/firmware-safety.md FW-2, category_0_check). */
static void test_FW_2_generated_categories_match_the_contract(void) {
    for (uint8_t code = 0u; code < 16u; code++) {
        CHECK_EQ(((FAULT_CATEGORY_0_MASK >> code) & 1u) != 0u, category_0_check(code));
    }
}

static void test_FW_2_category_0_cuts_power_at_once(void) {
    fx_ready();
    fx_drive(400, 100, 5000);
    CHECK(fw_motor_enable(&F.fw));
    uint8_t s = fx_empty(MSG_ESTOP);
    CHECK_EQ(fx_answer(s), MSG_ACK);
    CHECK(!fw_motor_enable(&F.fw));
    CHECK_EQ(fw_pwm_counts(&F.fw, 3124), 0);
    CHECK_EQ(F.fw.commanded_fine, 0);
    CHECK_EQ(st_state(), ST_FAULT);
    CHECK_EQ(F.fw.fault, FAULT_ESTOP);
    CHECK_EQ(fx_count(MSG_FAULT), 1);
}

static void test_FW_2_category_1_ramps_then_cuts_and_first_fault_stays(void) {
    fx_ready();
    fx_drive(400, 100, 5000);
    fx_clear();
    /* SPEED_ABOVE_CEILING is category 1: ramp at max_decel (3.6 km/h/s) then cut. */
    uint8_t s = fx_set_speed(801, 100, 300);
    CHECK_EQ(fx_answer(s), NAKED(NAK_ABOVE_CEILING));
    CHECK_EQ(F.fw.fault, FAULT_SPEED_ABOVE_CEILING);
    CHECK(fw_motor_enable(&F.fw));
    uint16_t c0 = fw_commanded_x100(&F.fw);
    fx_run(100);
    CHECK_EQ(c0 - fw_commanded_x100(&F.fw), 36); /* 3.6 km/h/s for 100 ms */
    /* A second, category 0 fault: harder stop, first code kept, no second FAULT message. */
    F.key_closed = false;
    fx_run(1);
    CHECK(!fw_motor_enable(&F.fw));
    CHECK_EQ(F.fw.fault, FAULT_SPEED_ABOVE_CEILING);
    CHECK_EQ(fx_count(MSG_FAULT), 1);
    const frame_t *fault = fx_last(MSG_FAULT);
    CHECK(fault != NULL && fault->payload[0] == FAULT_SPEED_ABOVE_CEILING);
    CHECK(fault != NULL && get_u32(fault->payload + 1) == 801);
}

static void test_FW_2_category_1_power_removed_at_end_of_ramp(void) {
    fx_ready();
    fx_drive(200, 100, 3000);
    fx_clear();
    while (F.fw.fault == FAULT_NONE) fx_run(1); /* the lease runs out */
    CHECK_EQ(F.fw.fault, FAULT_LEASE_EXPIRED);
    CHECK(fw_motor_enable(&F.fw));
    /* 2.00 km/h at 3.60 km/h/s: 556 ms of ramp. */
    fx_run(540);
    CHECK(fw_motor_enable(&F.fw));
    fx_run(30);
    CHECK_EQ(F.fw.commanded_fine, 0);
    CHECK(!fw_motor_enable(&F.fw));
}

/* ================================================================== FW-3 */

static void test_FW_3_lease_expires_exactly_after_lease_ms(void) {
    fx_ready();
    fx_drive(300, 100, 2000);
    fx_clear();
    fx_set_speed(300, 100, 300);
    fx_run(300);
    CHECK_EQ(st_state(), ST_RUNNING);
    const frame_t *st = fx_last(MSG_STATUS);
    CHECK(st != NULL && get_u16(st->payload + 15) <= 20);
    fx_run(1);
    CHECK_EQ(st_state(), ST_FAULT);
    CHECK_EQ(F.fw.fault, FAULT_LEASE_EXPIRED);
    const frame_t *fault = fx_last(MSG_FAULT);
    CHECK(fault != NULL && fault->payload[0] == FAULT_LEASE_EXPIRED);
}

static void test_FW_3_repeated_seq_does_not_renew(void) {
    fx_ready();
    fx_drive(300, 100, 1000);
    uint8_t seq = fx_set_speed(300, 100, 300);
    fx_run(200);
    fx_send_seq(seq, MSG_SET_SPEED, (const uint8_t[]){0x2c, 0x01, 100, 0, 0x2c, 0x01}, 6);
    fx_run(101);
    CHECK_EQ(F.fw.fault, FAULT_LEASE_EXPIRED);
}

static void test_FW_3_lease_above_max_refused_and_not_renewed(void) {
    fx_ready();
    fx_drive(300, 100, 1000);
    fx_set_speed(300, 100, 300);
    fx_run(200);
    fx_clear();
    uint8_t s = fx_set_speed(300, 100, 301);
    CHECK_EQ(fx_answer(s), NAKED(NAK_ABOVE_CEILING));
    CHECK_EQ(st_state(), ST_RUNNING); /* no fault */
    fx_run(101);
    CHECK_EQ(F.fw.fault, FAULT_LEASE_EXPIRED);
}

static void test_FW_3_lease_across_time_wrap(void) {
    fx_boot(0xFFFFFFFFu - 1500u, RESET_POWER_ON, 3);
    fx_run(SELF_TEST_MS + 5);
    fx_hello(PROTOCOL_VERSION);
    fx_configure(800, 100, 360, 300);
    fx_drive(300, 100, 2000); /* crosses 2^32 ms */
    CHECK_EQ(st_state(), ST_RUNNING);
    CHECK_EQ(F.fw.fault, FAULT_NONE);
    fx_set_speed(300, 100, 300);
    fx_run(300);
    CHECK_EQ(st_state(), ST_RUNNING);
    fx_run(1);
    CHECK_EQ(F.fw.fault, FAULT_LEASE_EXPIRED);
}

static void test_FW_3_stop_ends_lease(void) {
    fx_ready();
    fx_drive(300, 100, 2000);
    fx_clear();
    uint8_t s = fx_stop(360);
    CHECK_EQ(fx_answer(s), MSG_ACK);
    CHECK_EQ(st_state(), ST_STOPPING);
    fx_run(3000);
    CHECK_EQ(st_state(), ST_IDLE); /* no LEASE_EXPIRED after a STOP */
    CHECK_EQ(fx_count(MSG_FAULT), 0);
    CHECK(!fw_motor_enable(&F.fw));
}

/* ================================================================== FW-4 */

static void test_FW_4_configure_above_any_ceiling_refused(void) {
    const uint16_t ok[4] = {CEIL_SPEED_X100, CEIL_ACCEL_X100, CEIL_DECEL_X100, CEIL_LEASE_MS};
    for (int which = 0; which < 4; which++) {
        fx_boot(0, RESET_POWER_ON, 1);
        fx_run(SELF_TEST_MS + 1);
        fx_hello(PROTOCOL_VERSION);
        uint16_t v[4] = {ok[0], ok[1], ok[2], ok[3]};
        v[which] = (uint16_t)(v[which] + 1u);
        fx_clear();
        uint8_t s = fx_configure(v[0], v[1], v[2], v[3]);
        CHECK_EQ(fx_answer(s), NAKED(NAK_ABOVE_CEILING));
        CHECK(!F.fw.configured);
        s = fx_configure(ok[0], ok[1], ok[2], ok[3]); /* exactly at the ceilings */
        CHECK_EQ(fx_answer(s), MSG_ACK);
        CHECK(F.fw.configured);
    }
}

static void test_FW_4_set_speed_above_limit_is_fault_not_clamp(void) {
    /* Exhaustive around the limit at the wire's resolution. */
    for (uint16_t speed = 795; speed <= 805; speed++) {
        fx_ready();
        uint8_t s = fx_set_speed(speed, 100, 300);
        if (speed <= 800) {
            CHECK_EQ(fx_answer(s), 0);
            CHECK_EQ(st_state(), ST_RUNNING);
            CHECK_EQ(F.fw.target_x100, speed);
        } else {
            CHECK_EQ(fx_answer(s), NAKED(NAK_ABOVE_CEILING));
            CHECK_EQ(F.fw.fault, FAULT_SPEED_ABOVE_CEILING);
            CHECK_EQ(F.fw.target_x100, 0);
            CHECK(!fw_motor_enable(&F.fw));
        }
    }
}

static void test_FW_4_accel_and_decel_ceilings(void) {
    fx_ready();
    uint8_t s = fx_set_speed(300, 101, 300); /* accel above 1.00 */
    CHECK_EQ(fx_answer(s), NAKED(NAK_ABOVE_CEILING));
    CHECK_EQ(F.fw.fault, FAULT_ACCEL_ABOVE_CEILING);

    fx_ready();
    fx_drive(300, 100, 4000);
    CHECK_EQ(fw_commanded_x100(&F.fw), 300);
    fx_clear();
    s = fx_set_speed(100, 360, 300); /* a deceleration: checked against max_decel 3.60 */
    CHECK_EQ(fx_answer(s), 0);
    CHECK_EQ(st_state(), ST_RUNNING);
    s = fx_set_speed(50, 361, 300);
    CHECK_EQ(fx_answer(s), NAKED(NAK_ABOVE_CEILING));
    CHECK_EQ(F.fw.fault, FAULT_ACCEL_ABOVE_CEILING);
    const frame_t *fault = fx_last(MSG_FAULT);
    CHECK(fault != NULL && get_u32(fault->payload + 1) == 361);
}

/* FW-4: rising, falling or holding is decided on the wire value: the target against the
 * set-point rounded to 0.01 km/h. Equal is holding, accepted within either ceiling (accel
 * 1.00, decel 3.60 here); one resolution step either way is checked as accel or decel. */
static void test_FW_4_holding_at_the_wire_resolution(void) {
    fx_ready();
    fx_drive(100, 100, 2000);
    CHECK_EQ(fw_commanded_x100(&F.fw), 100);
    fx_clear();
    uint8_t s = fx_set_speed(100, 360, 300); /* holding at the decel rate: accepted */
    CHECK_EQ(fx_answer(s), 0);
    s = fx_set_speed(100, 50, 300); /* holding at a slow rate: accepted */
    CHECK_EQ(fx_answer(s), 0);
    s = fx_set_speed(99, 360, 300); /* one step below: a deceleration within 3.60 */
    CHECK_EQ(fx_answer(s), 0);
    CHECK_EQ(st_state(), ST_RUNNING);
    CHECK_EQ(F.fw.fault, FAULT_NONE);
    s = fx_set_speed(100, 361, 300); /* holding above both ceilings: a fault */
    CHECK_EQ(fx_answer(s), NAKED(NAK_ABOVE_CEILING));
    CHECK_EQ(F.fw.fault, FAULT_ACCEL_ABOVE_CEILING);

    /* one step above the set-point is an acceleration: the decel rate is too fast */
    fx_ready();
    fx_drive(100, 100, 2000);
    s = fx_set_speed(101, 360, 300);
    CHECK_EQ(fx_answer(s), NAKED(NAK_ABOVE_CEILING));
    CHECK_EQ(F.fw.fault, FAULT_ACCEL_ABOVE_CEILING);

    /* a set-point between two wire values counts as its rounding (half up): a ramp at
     * 0.01 km/h/s (1 fine unit per ms) stopped at 1.004 km/h holds at 1.00, at 1.005 at 1.01,
     * where 1.01 at 3.60 km/h/s is holding (not an acceleration against 1.00) */
    for (uint32_t ms = 400u; ms <= 500u; ms += 100u) {
        fx_ready();
        fx_drive(100, 100, 2000);
        fx_drive(101, 1, ms);
        uint16_t wire = (uint16_t)(F.fw.commanded_fine < 100500u ? 100 : 101);
        CHECK(F.fw.commanded_fine >= 100000u + ms - 20u && F.fw.commanded_fine <= 100000u + ms);
        CHECK_EQ(fw_commanded_x100(&F.fw), wire);
        s = fx_set_speed(wire, 360, 300);
        CHECK_EQ(fx_answer(s), 0);
        CHECK_EQ(F.fw.fault, FAULT_NONE);
    }
    /* exactly half way: 1.005 km/h is 1.01 on the wire */
    fx_ready();
    fx_drive(100, 100, 2000);
    fx_drive(101, 1, 480);
    while (F.fw.commanded_fine < 100500u) fx_run(1);
    CHECK_EQ(F.fw.commanded_fine, 100500u);
    CHECK_EQ(fw_commanded_x100(&F.fw), 101);
    s = fx_set_speed(101, 360, 300);
    CHECK_EQ(fx_answer(s), 0);
    CHECK_EQ(F.fw.fault, FAULT_NONE);
}

static void test_FW_4_ramp_never_exceeds_accepted_rate(void) {
    fx_ready();
    F.max_step_fine = 0;
    fx_drive(800, 37, 4000);
    /* 0.37 km/h/s = 37 fine units per ms */
    CHECK(F.max_step_fine <= 37.0);
    CHECK_EQ(fw_commanded_x100(&F.fw), 148); /* 4 s x 0.37 */
}

/* ================================================================== FW-5 */

static void test_FW_5_stop_and_estop_acked_in_every_state(void) {
    for (int state = ST_BOOT; state <= ST_FAULT; state++) {
        for (int which = 0; which < 2; which++) {
            fx_boot(0, RESET_POWER_ON, 9);
            if (state != ST_BOOT) {
                fx_run(SELF_TEST_MS + 1);
                fx_hello(PROTOCOL_VERSION);
                fx_configure(800, 100, 360, 300);
            }
            if (state == ST_RUNNING || state == ST_STOPPING || state == ST_FAULT) {
                fx_drive(300, 100, 1000);
            }
            if (state == ST_STOPPING) fx_stop(100);
            if (state == ST_FAULT) fx_empty(MSG_ESTOP);
            CHECK_EQ(st_state(), state);
            fx_clear();
            /* out of order SEQ, after a gap */
            F.host_seq = (uint8_t)(F.host_seq + 77u);
            uint8_t s = which == 0 ? fx_stop(360) : fx_empty(MSG_ESTOP);
            CHECK_EQ(fx_answer(s), MSG_ACK);
            if (which == 1 && state != ST_BOOT) {
                CHECK_EQ(st_state(), ST_FAULT);
                CHECK(!fw_motor_enable(&F.fw));
            }
            if (which == 0 && state == ST_RUNNING) CHECK_EQ(st_state(), ST_STOPPING);
        }
    }
}

static void test_FW_5_malformed_stop_still_stops(void) {
    fx_ready();
    fx_drive(300, 100, 2000);
    fx_clear();
    uint8_t s = fx_send(MSG_STOP, (const uint8_t[]){0, 0}, 2); /* decel 0: out of range */
    CHECK_EQ(fx_answer(s), MSG_ACK);
    CHECK_EQ(st_state(), ST_STOPPING);
    CHECK_EQ(F.fw.ramp_x100, 360); /* at the configured max_decel */
    fx_ready();
    fx_drive(300, 100, 2000);
    fx_clear();
    s = fx_send(MSG_ESTOP, (const uint8_t[]){1}, 1); /* ESTOP with a payload */
    CHECK_EQ(fx_answer(s), MSG_ACK);
    CHECK_EQ(F.fw.fault, FAULT_ESTOP);
    CHECK(!fw_motor_enable(&F.fw));
}

static void test_FW_5_stop_can_only_get_harder(void) {
    fx_ready();
    fx_drive(300, 100, 2000);
    fx_stop(200);
    CHECK_EQ(F.fw.ramp_x100, 200);
    fx_stop(100);
    CHECK_EQ(F.fw.ramp_x100, 200);
    fx_stop(500);
    CHECK_EQ(F.fw.ramp_x100, 500);
}

/* ================================================================== FW-6, FW-7 */

static void test_FW_6_only_safe_messages_while_faulted(void) {
    fx_ready();
    fx_empty(MSG_ESTOP);
    fx_clear();
    uint8_t a = fx_configure(800, 100, 360, 300);
    uint8_t b = fx_set_speed(100, 10, 300);
    uint8_t c = fx_hello(PROTOCOL_VERSION);
    uint8_t d = fx_empty(MSG_GET_STATUS);
    CHECK_EQ(fx_answer(a), NAKED(NAK_REFUSED_IN_STATE));
    CHECK_EQ(fx_answer(b), NAKED(NAK_REFUSED_IN_STATE));
    CHECK_EQ(fx_answer(c), MSG_ACK);
    CHECK_EQ(fx_count(MSG_STATUS), 1);
    (void)d;
    CHECK_EQ(st_state(), ST_FAULT);
    fx_run(100);
    const frame_t *st = fx_last(MSG_STATUS);
    CHECK(st != NULL && st->payload[4] == ST_FAULT && st->payload[5] == FAULT_ESTOP);
}

static void test_FW_7_clear_fault_only_at_rest_never_restarts(void) {
    fx_ready();
    fx_drive(400, 100, 5000);
    fx_empty(MSG_ESTOP);
    fx_clear();
    uint8_t s = fx_empty(MSG_CLEAR_FAULT);
    CHECK_EQ(fx_answer(s), NAKED(NAK_BELT_MOVING));
    fx_run(3000); /* belt coasts to rest, the reading goes stale */
    CHECK(fw_at_rest(&F.fw));
    F.key_closed = false;
    fx_run(1);
    fx_clear();
    s = fx_empty(MSG_CLEAR_FAULT);
    CHECK_EQ(fx_answer(s), NAKED(NAK_REFUSED_IN_STATE)); /* key open: cause not gone */
    F.key_closed = true;
    fx_run(KEY_CLOSE_DEBOUNCE_MS + 1);
    fx_clear();
    s = fx_empty(MSG_CLEAR_FAULT);
    CHECK_EQ(fx_answer(s), MSG_ACK);
    CHECK_EQ(st_state(), ST_IDLE);
    CHECK_EQ(F.fw.fault, FAULT_NONE);
    fx_run(1000);
    CHECK(!fw_motor_enable(&F.fw));
    CHECK_EQ(F.fw.commanded_fine, 0);
    CHECK(F.fw.configured); /* the configuration of this boot is kept */
    s = fx_empty(MSG_CLEAR_FAULT); /* outside FAULT: ACK, nothing */
    CHECK_EQ(fx_answer(s), MSG_ACK);
}

/* ================================================================== FW-8 */

static void test_FW_8_no_motion_before_handshake_and_configure(void) {
    fx_boot(0, RESET_POWER_ON, 5);
    fx_run(SELF_TEST_MS + 1);
    uint8_t s = fx_configure(800, 100, 360, 300);
    CHECK_EQ(fx_answer(s), NAKED(NAK_NO_HANDSHAKE));
    s = fx_set_speed(100, 10, 300);
    CHECK_EQ(fx_answer(s), NAKED(NAK_NO_HANDSHAKE));
    fx_hello(PROTOCOL_VERSION + 1u); /* another version: still no handshake */
    s = fx_set_speed(100, 10, 300);
    CHECK_EQ(fx_answer(s), NAKED(NAK_NO_HANDSHAKE));
    fx_hello(PROTOCOL_VERSION);
    s = fx_set_speed(100, 10, 300);
    CHECK_EQ(fx_answer(s), NAKED(NAK_NOT_CONFIGURED));
    uint8_t p[MSG_CONFIGURE_LEN];
    limits_payload(p, 800, 100, 360, 300);
    p[8] ^= 1; /* wrong checksum */
    s = fx_send(MSG_CONFIGURE, p, sizeof p);
    CHECK_EQ(fx_answer(s), NAKED(NAK_CONFIG_CHECKSUM));
    CHECK(!fw_motor_enable(&F.fw));
    s = fx_configure(800, 100, 360, 300);
    CHECK_EQ(fx_answer(s), MSG_ACK);
    fx_run(25);
    const frame_t *st = fx_last(MSG_STATUS);
    limits_payload(p, 800, 100, 360, 300);
    CHECK(st != NULL && get_u16(st->payload + 13) == get_u16(p + 8));
    fx_drive(300, 100, 500);
    s = fx_configure(800, 100, 360, 300); /* outside IDLE */
    CHECK_EQ(fx_answer(s), NAKED(NAK_BELT_MOVING));
}

static void test_FW_8_corrupted_configuration_latches_not_configured(void) {
    fx_ready();
    fx_drive(300, 100, 1000);
    F.fw.conf.max_speed_x100 = 1200; /* a bit flip in RAM */
    fx_run(1);
    CHECK_EQ(F.fw.fault, FAULT_NOT_CONFIGURED);
    CHECK(!F.fw.configured);
    fx_run(3000);
    fx_clear();
    uint8_t s = fx_empty(MSG_CLEAR_FAULT);
    CHECK_EQ(fx_answer(s), MSG_ACK);
    s = fx_set_speed(100, 10, 300);
    CHECK_EQ(fx_answer(s), NAKED(NAK_NOT_CONFIGURED));
}

/* ================================================================== FW-9 */

static void test_FW_9_stop_holds_until_rest(void) {
    fx_ready();
    fx_drive(300, 100, 2000);
    fx_stop(100);
    fx_clear();
    uint8_t s = fx_set_speed(300, 100, 300);
    CHECK_EQ(fx_answer(s), NAKED(NAK_REFUSED_IN_STATE));
    s = fx_set_speed(0, 100, 300);
    CHECK_EQ(fx_answer(s), 0);
    CHECK_EQ(F.fw.last_applied_seq, s);
    CHECK_EQ(F.fw.ramp_x100, 100); /* keeps the stop's ramp */
    CHECK_EQ(st_state(), ST_STOPPING);
    fx_run(6000);
    CHECK_EQ(st_state(), ST_IDLE);
    CHECK(!fw_motor_enable(&F.fw));
}

static void test_FW_9_running_to_zero_goes_idle_at_rest(void) {
    fx_ready();
    fx_drive(200, 100, 2500);
    fx_drive(0, 100, 2500);
    fx_drive(0, 100, 2500);
    CHECK_EQ(st_state(), ST_IDLE);
    CHECK(!fw_motor_enable(&F.fw));
    uint8_t s = fx_set_speed(0, 100, 300); /* 0 in IDLE: applied, nothing energised */
    CHECK_EQ(F.fw.last_applied_seq, s);
    CHECK(!fw_motor_enable(&F.fw));
}

/* ================================================================== FW-10 */

static void test_FW_10_key_open_latches_in_every_state(void) {
    /* IDLE */
    fx_ready();
    F.key_closed = false;
    fx_run(1);
    CHECK_EQ(F.fw.fault, FAULT_SAFETY_KEY_OPEN);
    /* RUNNING: category 0 */
    fx_ready();
    fx_drive(300, 100, 2000);
    F.key_closed = false;
    fx_run(1);
    CHECK_EQ(F.fw.fault, FAULT_SAFETY_KEY_OPEN);
    CHECK(!fw_motor_enable(&F.fw));
    const frame_t *st = fx_last(MSG_STATUS);
    fx_run(20);
    st = fx_last(MSG_STATUS);
    CHECK(st != NULL && st->payload[6] == 0);
    /* BOOT: latched after the HELLO */
    fx_boot(0, RESET_POWER_ON, 4);
    F.key_closed = false;
    fx_run(SELF_TEST_MS + 1);
    CHECK_EQ(F.out[0].id, MSG_HELLO);
    CHECK_EQ(F.fw.fault, FAULT_SAFETY_KEY_OPEN);
}

static void test_FW_10_set_speed_refused_while_key_open(void) {
    fx_ready();
    fx_empty(MSG_ESTOP);
    F.key_closed = false;
    fx_run(5);
    /* In FAULT, FW-6 answers first; the key check is shown from a state that takes SET_SPEED */
    fx_ready();
    F.fw.key_closed = false; /* reading open without the fault path, to isolate the check */
    uint8_t s = fx_set_speed(100, 10, 300);
    CHECK_EQ(fx_answer(s), NAKED(NAK_REFUSED_IN_STATE));
    CHECK(!fw_motor_enable(&F.fw));
}

static void test_FW_10_key_close_debounced_open_immediate(void) {
    fx_ready();
    F.key_closed = false;
    fx_run(1);
    CHECK(!F.fw.key_closed);
    F.key_closed = true;
    fx_run(KEY_CLOSE_DEBOUNCE_MS);
    CHECK(!F.fw.key_closed);
    fx_run(1);
    CHECK(F.fw.key_closed);
}

/* ================================================================== FW-11 */

static void test_FW_11_status_at_50_hz_skipped_not_burst(void) {
    fx_ready();
    fx_run(1000);
    CHECK_EQ(fx_count(MSG_STATUS), 50);
    fx_clear();
    /* the loop stalls 200 ms: one STATUS, then the normal rate again */
    F.t_ms += 200;
    fw_tick(&F.fw, F.t_ms, F.t_ms * 1000u);
    CHECK_EQ(fx_count(MSG_STATUS), 1);
    fx_run(100);
    CHECK_EQ(fx_count(MSG_STATUS), 6);
}

static void test_FW_11_every_frame_answered_at_once(void) {
    fx_ready();
    uint8_t s = fx_hello(PROTOCOL_VERSION);
    CHECK_EQ(fx_answer(s), MSG_ACK); /* within the call: no time passes */
    CHECK_EQ(F.out[F.n_out - 1].id, MSG_HELLO);
    s = fx_send(MSG_STATUS, (const uint8_t[17]){0}, 17);
    CHECK_EQ(fx_answer(s), NAKED(NAK_UNKNOWN_MESSAGE));
    s = fx_send(0x60, NULL, 0);
    CHECK_EQ(fx_answer(s), NAKED(NAK_UNKNOWN_MESSAGE));
}

/* ================================================================== FW-12 */

static void test_FW_12_overspeed_latches_category_0(void) {
    fx_ready();
    fx_drive(300, 100, 4000);
    belt_set_runaway(&F.belt, 3.0);
    uint32_t t = 0;
    while (F.fw.fault == FAULT_NONE && t < 5000) {
        fx_drive(300, 100, 20);
        t += 20;
    }
    CHECK_EQ(F.fw.fault, FAULT_OVERSPEED);
    CHECK(!fw_motor_enable(&F.fw));
    const frame_t *fault = fx_last(MSG_FAULT);
    CHECK(fault != NULL && get_u32(fault->payload + 1) > 350);
}

static void test_FW_12_sensor_silent_while_driving(void) {
    fx_ready();
    F.sim_belt = false; /* no pulses at all: a broken sensor wire */
    uint32_t t = 0;
    while (F.fw.fault == FAULT_NONE && t < 10000) {
        fx_drive(300, 100, 20);
        t += 20;
    }
    CHECK_EQ(F.fw.fault, FAULT_SENSOR_FAULT);
    CHECK(!fw_motor_enable(&F.fw));
    /* commanded reaches 1.00 km/h after 1 s at 1 km/h/s; then 2.5 s */
    CHECK(t >= 3400 && t <= 3600);
}

static void test_FW_12_no_false_trip_in_normal_run(void) {
    fx_ready();
    fx_drive(800, 100, 12000);
    fx_drive(100, 360, 1900); /* 8.00 -> 1.00 km/h at 3.60 km/h/s takes 1944 ms */
    fx_drive(100, 100, 1000); /* holding at the accel rate */
    fx_drive(100, 360, 1000); /* holding at the decel rate: within either ceiling (FW-4) */
    fx_drive(0, 100, 3000);
    CHECK_EQ(F.fw.fault, FAULT_NONE);
    CHECK_EQ(fx_count(MSG_FAULT), 0);
    CHECK_EQ(st_state(), ST_IDLE);
}

static void test_FW_12_internal_self_check(void) {
    fx_ready();
    fx_drive(300, 100, 1000);
    fw_internal_fault(&F.fw, 1);
    CHECK_EQ(F.fw.fault, FAULT_INTERNAL);
    CHECK(!fw_motor_enable(&F.fw));
    const frame_t *fault = fx_last(MSG_FAULT);
    CHECK(fault != NULL && get_u32(fault->payload + 1) == 1);
}

/* ================================================================== FW-13, FW-14 */

static void corrupt_frame(void) {
    uint8_t buf[PROTO_MAX_FRAME];
    uint8_t n = proto_encode(buf, 200, MSG_SET_SPEED, (const uint8_t[]){0xFF, 0, 10, 0, 1, 1}, 6);
    buf[n - 1] ^= 0x40;
    fx_bytes(buf, n);
}

static void test_FW_13_corrupt_frames_never_act_nor_answered(void) {
    fx_ready();
    fx_clear();
    corrupt_frame();
    CHECK_EQ(F.n_out, 0);
    CHECK_EQ(st_state(), ST_IDLE);
    CHECK_EQ(F.fw.dec.stats.crc_errors, 1);
}

static void test_FW_13_flood_while_running(void) {
    fx_ready();
    fx_drive(300, 100, 1000);
    for (int i = 0; i < (int)BAD_FRAME_LIMIT; i++) corrupt_frame();
    fx_run(1);
    CHECK_EQ(F.fw.fault, FAULT_NONE); /* exactly the limit: no flood */
    corrupt_frame();
    CHECK_EQ(F.fw.fault, FAULT_BAD_FRAME_FLOOD);
    CHECK(fw_motor_enable(&F.fw)); /* category 1: ramps first */
    /* spread over more than the window: no flood */
    fx_ready();
    fx_drive(300, 100, 1000);
    for (int i = 0; i < 40; i++) {
        corrupt_frame();
        fx_set_speed(300, 100, 300);
        fx_run(60);
    }
    CHECK_EQ(F.fw.fault, FAULT_NONE);
}

static void test_FW_14_out_of_range_refused_no_state_change(void) {
    fx_ready();
    fx_drive(300, 100, 1000);
    uint16_t before = F.fw.target_x100;
    uint8_t p[6];
    put_u16(p, 3001);
    put_u16(p + 2, 100);
    put_u16(p + 4, 300);
    uint8_t s = fx_send(MSG_SET_SPEED, p, 6);
    CHECK_EQ(fx_answer(s), NAKED(NAK_OUT_OF_RANGE));
    CHECK_EQ(F.fw.target_x100, before);
    CHECK_EQ(st_state(), ST_RUNNING);
    s = fx_send(MSG_SET_SPEED, p, 4);
    CHECK_EQ(fx_answer(s), NAKED(NAK_BAD_PAYLOAD));
}

/* ================================================================== FW-15 */

static void test_FW_15_speed_from_pulse_periods(void) {
    speed_est_t s;
    speed_init(&s, 12500);
    /* 0.5 km/h: a pulse every 90 ms */
    uint32_t t = 1000000;
    speed_pulse(&s, t);
    speed_update(&s, t + 1000);
    CHECK_EQ(s.reading_x100, 0);
    CHECK(!s.quiet); /* one pulse: moving, no period yet */
    for (int i = 1; i <= 5; i++) speed_pulse(&s, t + (uint32_t)i * 90000u);
    speed_update(&s, t + 5u * 90000u + 1000u);
    CHECK_EQ(s.reading_x100, 50);
    /* no pulse for longer than a period: bounded by the time since the last one */
    speed_update(&s, t + 5u * 90000u + 180000u);
    CHECK_EQ(s.reading_x100, 25);
    /* stale after 3 periods: reads 0, quiet */
    speed_update(&s, t + 5u * 90000u + 270001u);
    CHECK_EQ(s.reading_x100, 0);
    CHECK(s.quiet);
    /* 12 km/h: 3.75 ms periods, averaged over the 100 ms gate */
    speed_init(&s, 12500);
    for (int i = 0; i < 40; i++) speed_pulse(&s, t + (uint32_t)i * 3750u + (i % 2 ? 200u : 0u));
    speed_update(&s, t + 39u * 3750u + 100u);
    CHECK(s.reading_x100 >= 1195 && s.reading_x100 <= 1205);
    /* coarse sensor: 250.9 mm, stale cap 2 s */
    speed_init(&s, 250900);
    speed_pulse(&s, t);
    speed_pulse(&s, t + 1806000u);
    speed_update(&s, t + 1806000u + 1000u);
    CHECK_EQ(s.reading_x100, 50);
    speed_update(&s, t + 1806000u + 2000001u);
    CHECK(s.quiet);
    CHECK_EQ(speed_from_period(300000, 31, 1), 0xFFFF); /* saturates, no overflow */
}

static void test_FW_15_reading_tracks_belt_in_closed_loop(void) {
    fx_ready();
    fx_drive(50, 100, 3000); /* stage 1 start speed */
    double belt = belt_speed_kmh(&F.belt) * 100.0;
    CHECK(fw_measured_x100(&F.fw) >= belt - 3 && fw_measured_x100(&F.fw) <= belt + 3);
    fx_drive(800, 100, 9000);
    belt = belt_speed_kmh(&F.belt) * 100.0;
    CHECK(fw_measured_x100(&F.fw) >= belt - 5 && fw_measured_x100(&F.fw) <= belt + 5);
}

/* ================================================================== PWM, belt model */

static void test_pwm_mapping(void) {
    CHECK_EQ(fw_pwm_counts_for(0, 3124), 0);
    CHECK_EQ(fw_pwm_counts_for(PWM_FULL_SCALE_KMH_X100, 3124), 2656); /* 85 % of 3125 */
    CHECK_EQ(fw_pwm_counts_for(1, 3124), 2);
    uint16_t prev = 0;
    for (uint16_t v = 0; v <= CEIL_SPEED_X100; v++) {
        uint16_t c = fw_pwm_counts_for(v, 3124);
        CHECK(c >= prev);
        CHECK(c <= 2656);
        prev = c;
    }
}

static void test_belt_model_follows_duty_with_lag(void) {
    belt_params_t p;
    belt_default_params(&p);
    belt_t b;
    belt_init(&b, &p, 0);
    belt_set_drive(&b, 0.85 * 500.0 / 1290.0, true);
    belt_advance(&b, 5000000u, NULL, NULL);
    CHECK(belt_speed_kmh(&b) > 4.99 && belt_speed_kmh(&b) < 5.01);
    CHECK_EQ(belt_pulses(&b), (uint64_t)(belt_distance_m(&b) * 1000.0 / 12.5));
    belt_set_key(&b, false); /* the key cuts power whatever the enable */
    belt_advance(&b, 6000000u, NULL, NULL);
    CHECK(belt_speed_kmh(&b) == 0.0);
}

static void count_pulse(void *ctx, uint64_t t_us) {
    (void)t_us;
    (*(int *)ctx)++;
}

static void test_belt_model_faults(void) {
    belt_params_t p;
    belt_default_params(&p);
    belt_t b;
    belt_init(&b, &p, 0);
    belt_set_drive(&b, 0.85 * 300.0 / 1290.0, true);
    belt_advance(&b, 5000000u, NULL, NULL);
    /* sensor_freeze: pulses go on at the frozen speed whatever the belt does */
    belt_set_sensor_frozen(&b, true);
    belt_set_drive(&b, 0.0, false);
    int pulses = 0;
    belt_advance(&b, 6000000u, count_pulse, &pulses);
    /* 3.00 km/h = 0.833 mm/ms: 66.7 pulses of 12.5 mm per second */
    CHECK(pulses >= 66 && pulses <= 67);
    CHECK(belt_speed_kmh(&b) < 1.0); /* the belt itself stopped */
    belt_set_sensor_frozen(&b, false);
    pulses = 0;
    belt_advance(&b, 8000000u, count_pulse, &pulses);
    CHECK(pulses <= 2);
    /* frozen at rest: no pulses */
    belt_set_sensor_frozen(&b, true);
    belt_set_drive(&b, 0.5, true);
    pulses = 0;
    belt_advance(&b, 9000000u, count_pulse, &pulses);
    CHECK_EQ(pulses, 0);
    CHECK(belt_speed_kmh(&b) > 3.0);
    belt_set_sensor_frozen(&b, false);
    /* runaway climbs whatever the duty; stuck holds; neither without power */
    belt_init(&b, &p, 0);
    belt_set_drive(&b, 0.85 * 200.0 / 1290.0, true);
    belt_advance(&b, 3000000u, NULL, NULL);
    belt_set_runaway(&b, 2.0);
    belt_advance(&b, 4000000u, NULL, NULL);
    CHECK(belt_motor_kmh(&b) > 3.9 && belt_motor_kmh(&b) < 4.1);
    belt_set_runaway(&b, 0.0);
    belt_set_stuck(&b, true);
    belt_set_drive(&b, 0.0, true);
    belt_advance(&b, 5000000u, NULL, NULL);
    CHECK(belt_motor_kmh(&b) > 3.9);
    belt_set_key(&b, false);
    belt_advance(&b, 6000000u, NULL, NULL);
    CHECK(belt_motor_kmh(&b) == 0.0);
}

/* ================================================================== random operations */

static uint32_t rng_state = 12345u;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

/* Random host traffic and time: the invariants of FW-1/2/4/7 hold after every step. */
static void test_FW_random_operations_keep_invariants(void) {
    for (int run = 0; run < 200; run++) {
        fx_ready();
        for (int step = 0; step < 400; step++) {
            uint32_t r = rnd() % 12;
            uint8_t prev_state = st_state();
            switch (r) {
            case 0: case 1: case 2: case 3:
                fx_set_speed((uint16_t)(rnd() % 900), (uint16_t)(1 + rnd() % 400),
                             (uint16_t)(1 + rnd() % 400));
                break;
            case 4: fx_stop((uint16_t)(1 + rnd() % 500)); break;
            case 5: if (rnd() % 8 == 0) fx_empty(MSG_ESTOP); break;
            case 6: fx_empty(MSG_CLEAR_FAULT); break;
            case 7: fx_configure((uint16_t)(1 + rnd() % 1300), (uint16_t)(1 + rnd() % 250),
                                 (uint16_t)(1 + rnd() % 1100), (uint16_t)(1 + rnd() % 1100));
                break;
            case 8: { /* junk, then zeros: a junk candidate that claims a long payload must
                       * not hold back the next step's frame (that frame would be carried out
                       * later, together with the one after it) */
                      uint8_t junk[20 + PROTO_MAX_FRAME] = {0};
                      for (int i = 0; i < 20; i++) junk[i] = (uint8_t)rnd();
                      fx_bytes(junk, sizeof junk); } break;
            case 9: F.key_closed = rnd() % 10 != 0; break;
            default: break;
            }
            fx_run(1 + rnd() % 60);
            CHECK(F.max_commanded_x100 <= CEIL_SPEED_X100);
            CHECK(F.fw.commanded_fine <= (uint32_t)CEIL_SPEED_X100 * 1000u);
            if (F.fw.state == ST_IDLE) CHECK(!fw_motor_enable(&F.fw));
            if (F.fw.state == ST_FAULT && category_0_check(F.fw.fault)) CHECK(!fw_motor_enable(&F.fw));
            if (!F.fw.key_closed && F.fw.state != ST_BOOT) CHECK_EQ(F.fw.state, ST_FAULT);
            if (prev_state == ST_FAULT) CHECK(st_state() != ST_RUNNING); /* FW-7 */
            CHECK_EQ(F.rejected_out, 0);
        }
    }
}

int main(int argc, char **argv) {
    g_protocol_md = argc > 1 ? argv[1] : NULL;
    RUN(test_crc_check_value);
    RUN(test_protocol_doc_vectors);
    RUN(test_encode_status_vector);
    RUN(test_decoder_resync_after_garbage_and_lost_bytes);
    RUN(test_decoder_rejects_content);
    RUN(test_FW_1_motor_disabled_at_boot_then_hello);
    RUN(test_FW_1_boot_answers_only_stops);
    RUN(test_FW_1_reboot_mid_run_forgets_everything);
    RUN(test_FW_2_generated_categories_match_the_contract);
    RUN(test_FW_2_category_0_cuts_power_at_once);
    RUN(test_FW_2_category_1_ramps_then_cuts_and_first_fault_stays);
    RUN(test_FW_2_category_1_power_removed_at_end_of_ramp);
    RUN(test_FW_3_lease_expires_exactly_after_lease_ms);
    RUN(test_FW_3_repeated_seq_does_not_renew);
    RUN(test_FW_3_lease_above_max_refused_and_not_renewed);
    RUN(test_FW_3_lease_across_time_wrap);
    RUN(test_FW_3_stop_ends_lease);
    RUN(test_FW_4_configure_above_any_ceiling_refused);
    RUN(test_FW_4_set_speed_above_limit_is_fault_not_clamp);
    RUN(test_FW_4_accel_and_decel_ceilings);
    RUN(test_FW_4_holding_at_the_wire_resolution);
    RUN(test_FW_4_ramp_never_exceeds_accepted_rate);
    RUN(test_FW_5_stop_and_estop_acked_in_every_state);
    RUN(test_FW_5_malformed_stop_still_stops);
    RUN(test_FW_5_stop_can_only_get_harder);
    RUN(test_FW_6_only_safe_messages_while_faulted);
    RUN(test_FW_7_clear_fault_only_at_rest_never_restarts);
    RUN(test_FW_8_no_motion_before_handshake_and_configure);
    RUN(test_FW_8_corrupted_configuration_latches_not_configured);
    RUN(test_FW_9_stop_holds_until_rest);
    RUN(test_FW_9_running_to_zero_goes_idle_at_rest);
    RUN(test_FW_10_key_open_latches_in_every_state);
    RUN(test_FW_10_set_speed_refused_while_key_open);
    RUN(test_FW_10_key_close_debounced_open_immediate);
    RUN(test_FW_11_status_at_50_hz_skipped_not_burst);
    RUN(test_FW_11_every_frame_answered_at_once);
    RUN(test_FW_12_overspeed_latches_category_0);
    RUN(test_FW_12_sensor_silent_while_driving);
    RUN(test_FW_12_no_false_trip_in_normal_run);
    RUN(test_FW_12_internal_self_check);
    RUN(test_FW_13_corrupt_frames_never_act_nor_answered);
    RUN(test_FW_13_flood_while_running);
    RUN(test_FW_14_out_of_range_refused_no_state_change);
    RUN(test_FW_15_speed_from_pulse_periods);
    RUN(test_FW_15_reading_tracks_belt_in_closed_loop);
    RUN(test_pwm_mapping);
    RUN(test_belt_model_follows_duty_with_lag);
    RUN(test_belt_model_faults);
    RUN(test_FW_random_operations_keep_invariants);
    fprintf(stderr, "%d tests, %d checks, %d failed\n", tests_run, g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
