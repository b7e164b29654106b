/* The firmware core. Rule ids from docs/firmware-safety.md; the state table is
 * docs/protocol.md §6. The Python simulated firmware (firmware_bridge/sim/firmware.py) is
 * the other implementation of the same contract: what goes on the wire is kept the same. */
#include "fw.h"

#include <string.h>

#include "crc16.h"

#define FINE_PER_X100 1000u /* commanded_fine units per 0.01 km/h */
#define STATUS_LEASE_MAX_MS 10000u

/* FW-2: category 0 (cut power now); every other fault is category 1 (ramp, then cut). The
 * categories come from the wire data dictionary (firmware_bridge/wire/faults.py) through the
 * generated msg_table.h. */
static bool category_0(uint8_t fault) {
    return fault < 16u && ((FAULT_CATEGORY_0_MASK >> fault) & 1u) != 0u;
}

/* a after b, on wrapping 32-bit time */
static bool time_after(uint32_t a, uint32_t b) { return (int32_t)(a - b) > 0; }

/* ------------------------------------------------------------------ output */

static void emit(fw_t *fw, uint8_t id, const uint8_t *payload, uint8_t len) {
    uint8_t frame[PROTO_MAX_FRAME];
    uint8_t n = proto_encode(frame, fw->tx_seq, id, payload, len);
    fw->tx_seq++;
    if (fw->io.send != NULL) {
        fw->io.send(fw->io.ctx, frame, n);
    }
}

static void send_ack(fw_t *fw, uint8_t seq) { emit(fw, MSG_ACK, &seq, MSG_ACK_LEN); }

static void send_nak(fw_t *fw, uint8_t seq, uint8_t reason) {
    uint8_t p[MSG_NAK_LEN] = {seq, reason};
    emit(fw, MSG_NAK, p, MSG_NAK_LEN);
}

static uint32_t uptime_ms(const fw_t *fw) { return fw->now_ms - fw->boot_ms; }

static void send_hello(fw_t *fw) {
    uint8_t p[MSG_HELLO_LEN];
    p[0] = (uint8_t)PROTOCOL_VERSION;
    p[1] = FW_VERSION_MAJOR;
    p[2] = FW_VERSION_MINOR;
    p[3] = FW_VERSION_PATCH;
    p[4] = fw->reset_cause;
    put_u16(p + 5, CEIL_SPEED_X100);
    put_u16(p + 7, CEIL_ACCEL_X100);
    put_u32(p + 9, fw->boot_id);
    put_u32(p + 13, uptime_ms(fw));
    emit(fw, MSG_HELLO, p, MSG_HELLO_LEN);
}

uint16_t fw_commanded_x100(const fw_t *fw) { return fw->commanded_x100; }

/* Every change of the ramped set-point goes through here (one division, not one per use). */
static void set_commanded(fw_t *fw, uint32_t fine) {
    fw->commanded_fine = fine;
    uint32_t v = (fine + FINE_PER_X100 / 2u) / FINE_PER_X100;
    fw->commanded_x100 = v > 3000u ? 3000u : (uint16_t)v;
}

uint16_t fw_measured_x100(const fw_t *fw) { return fw->speed.reading_x100; }

uint16_t fw_lease_remaining_ms(const fw_t *fw) {
    if (fw->state != ST_RUNNING || !fw->lease_active) {
        return 0;
    }
    if (!time_after(fw->lease_deadline_ms, fw->now_ms)) {
        return 0;
    }
    uint32_t left = fw->lease_deadline_ms - fw->now_ms;
    return left > STATUS_LEASE_MAX_MS ? (uint16_t)STATUS_LEASE_MAX_MS : (uint16_t)left;
}

static void send_status(fw_t *fw) {
    uint8_t p[MSG_STATUS_LEN];
    put_u16(p + 0, fw_measured_x100(fw));
    put_u16(p + 2, fw_commanded_x100(fw));
    p[4] = fw->state;
    p[5] = fw->fault;
    p[6] = fw->key_closed ? 1u : 0u;
    put_u32(p + 7, uptime_ms(fw));
    put_u16(p + 11, fw->last_applied_seq);
    put_u16(p + 13, fw->configured ? fw->conf.checksum : 0u);
    put_u16(p + 15, fw_lease_remaining_ms(fw));
    fw->statuses_sent++;
    emit(fw, MSG_STATUS, p, MSG_STATUS_LEN);
}

static void send_fault(fw_t *fw, uint8_t code, uint32_t detail) {
    uint8_t p[MSG_FAULT_LEN];
    p[0] = code;
    put_u32(p + 1, detail);
    emit(fw, MSG_FAULT, p, MSG_FAULT_LEN);
}

/* ------------------------------------------------------------------ configuration */

static void conf_store(fw_t *fw, const fw_limits_t *lim) {
    fw->conf = *lim;
    fw->conf_inv.max_speed_x100 = (uint16_t)~lim->max_speed_x100;
    fw->conf_inv.max_accel_x100 = (uint16_t)~lim->max_accel_x100;
    fw->conf_inv.max_decel_x100 = (uint16_t)~lim->max_decel_x100;
    fw->conf_inv.max_lease_ms = (uint16_t)~lim->max_lease_ms;
    fw->conf_inv.checksum = (uint16_t)~lim->checksum;
    fw->configured = true;
}

static void conf_drop(fw_t *fw) {
    memset(&fw->conf, 0, sizeof fw->conf);
    memset(&fw->conf_inv, 0, sizeof fw->conf_inv);
    fw->configured = false;
}

/* FW-8: the stored copy still matches its inverted twin and its checksum. */
static bool conf_intact(const fw_t *fw) {
    const fw_limits_t *c = &fw->conf;
    const fw_limits_t *i = &fw->conf_inv;
    if ((uint16_t)(c->max_speed_x100 ^ i->max_speed_x100) != 0xFFFFu ||
        (uint16_t)(c->max_accel_x100 ^ i->max_accel_x100) != 0xFFFFu ||
        (uint16_t)(c->max_decel_x100 ^ i->max_decel_x100) != 0xFFFFu ||
        (uint16_t)(c->max_lease_ms ^ i->max_lease_ms) != 0xFFFFu ||
        (uint16_t)(c->checksum ^ i->checksum) != 0xFFFFu) {
        return false;
    }
    uint8_t raw[8];
    put_u16(raw + 0, c->max_speed_x100);
    put_u16(raw + 2, c->max_accel_x100);
    put_u16(raw + 4, c->max_decel_x100);
    put_u16(raw + 6, c->max_lease_ms);
    return crc16(raw, sizeof raw, CRC16_INIT) == c->checksum;
}

static uint16_t max_decel_x100(const fw_t *fw) {
    return fw->configured ? fw->conf.max_decel_x100 : (uint16_t)DEFAULT_DECEL_X100;
}

/* ------------------------------------------------------------------ shutdown (FW-2) */

/* The one shutdown path: latch `fault` and bring the belt to rest. Category 0 removes motor
 * power now; category 1 ramps the set-point to 0 at the configured maximum deceleration and
 * removes power at the end of the ramp. The first fault stays latched; a later one can only
 * make the stop harder. */
static void shutdown(fw_t *fw, uint8_t fault, uint32_t detail) {
    if (fw->state != ST_FAULT) {
        fw->state = ST_FAULT;
        fw->fault = fault;
        send_fault(fw, fault, detail);
    }
    fw->target_x100 = 0;
    fw->lease_active = false;
    uint16_t decel = max_decel_x100(fw);
    if (fw->ramp_x100 < decel) {
        fw->ramp_x100 = decel;
    }
    if (category_0(fault)) {
        fw->contactor = false;
        set_commanded(fw, 0);
    }
}

void fw_internal_fault(fw_t *fw, uint32_t check_id) {
    if (fw->state == ST_BOOT) {
        fw->contactor = false; /* already off in BOOT; reported once BOOT ends */
        return;
    }
    shutdown(fw, FAULT_INTERNAL, check_id);
}

void fw_motor_fault(fw_t *fw, uint32_t detail) {
    if (fw->state != ST_BOOT) {
        shutdown(fw, FAULT_MOTOR_FAULT, detail);
    }
}

/* FW-5 STOP: category 1 stop at decel; ends the lease (FW-3). */
static void do_stop(fw_t *fw, uint16_t decel_x100) {
    if (fw->state == ST_RUNNING) {
        fw->state = ST_STOPPING;
        fw->ramp_x100 = decel_x100;
    } else if (fw->state == ST_STOPPING || fw->state == ST_FAULT) {
        if (fw->ramp_x100 < decel_x100) {
            fw->ramp_x100 = decel_x100; /* a stop can only get harder */
        }
    }
    fw->target_x100 = 0;
    fw->lease_active = false;
}

/* ------------------------------------------------------------------ boot (FW-1) */

void fw_init(fw_t *fw, const fw_boot_t *boot, fw_io_t io, uint32_t now_ms) {
    memset(fw, 0, sizeof *fw);
    fw->io = io;
    fw->now_ms = now_ms;
    fw->boot_ms = now_ms;
    fw->boot_id = boot->boot_id;
    fw->reset_cause = boot->reset_cause;
    fw->state = ST_BOOT;
    fw->fault = FAULT_NONE;
    dec_init(&fw->dec);
    fw->contactor = false; /* FW-1: motor disabled at boot */
    fw->key_closed = true;
    fw->key_raw_closed = true;
    fw->ramp_x100 = DEFAULT_DECEL_X100;
    fw->last_applied_seq = FW_NO_SEQ;
    fw->next_status_ms = now_ms;
    fw->peak_bucket_ms = now_ms;
    conf_drop(fw);
    speed_init(&fw->speed, boot->um_per_pulse);
}

/* ------------------------------------------------------------------ inputs */

static void set_key(fw_t *fw, bool closed) {
    if (closed == fw->key_closed) {
        return;
    }
    fw->key_closed = closed;
    if (!closed && fw->state != ST_BOOT) {
        shutdown(fw, FAULT_SAFETY_KEY_OPEN, 0); /* FW-10 */
    }
    /* In BOOT the motor is off already; the fault latches when BOOT ends, after HELLO. */
}

void fw_key_sample(fw_t *fw, bool closed, uint32_t now_ms) {
    if (closed != fw->key_raw_closed) {
        fw->key_raw_closed = closed;
        fw->key_raw_since_ms = now_ms;
    }
    if (!closed) {
        set_key(fw, false); /* an opening acts at once */
    } else if (!fw->key_closed && now_ms - fw->key_raw_since_ms >= KEY_CLOSE_DEBOUNCE_MS) {
        set_key(fw, true);
    }
}

void fw_pulse(fw_t *fw, uint32_t t_us) { speed_pulse(&fw->speed, t_us); }

bool fw_motor_enable(const fw_t *fw) { return fw->contactor; }

static bool motor_powered(const fw_t *fw) { return fw->contactor && fw->key_closed; }

bool fw_at_rest(const fw_t *fw) {
    return fw->commanded_fine == 0u && fw->speed.reading_x100 <= STANDSTILL_X100 && fw->speed.quiet;
}

uint16_t fw_pwm_counts_for(uint16_t kmh_x100, uint16_t top) {
    if (kmh_x100 == 0u) {
        return 0;
    }
    /* counts = kmh / full_scale * 0.85 * (top + 1), rounded; at least 1 for any speed. */
    uint32_t period = (uint32_t)top + 1u;
    uint32_t num = (uint32_t)kmh_x100 * PWM_FULL_SCALE_DUTY_PERMILLE * period;
    uint32_t den = (uint32_t)PWM_FULL_SCALE_KMH_X100 * 1000u;
    uint32_t counts = (num + den / 2u) / den;
    if (counts * 1000u > PWM_FULL_SCALE_DUTY_PERMILLE * period) {
        /* unreachable: CEIL_SPEED_X100 <= PWM_FULL_SCALE_KMH_X100 */
        counts = PWM_FULL_SCALE_DUTY_PERMILLE * period / 1000u;
    }
    return counts == 0u ? 1u : (uint16_t)counts;
}

uint16_t fw_pwm_counts(const fw_t *fw, uint16_t top) {
    if (!fw->contactor) {
        return 0;
    }
    return fw_pwm_counts_for(fw_commanded_x100(fw), top);
}

/* ------------------------------------------------------------------ messages */

static void on_hello(fw_t *fw, const frame_t *f) {
    fw->hello_ok = f->payload[0] == PROTOCOL_VERSION;
    send_ack(fw, f->seq);
    send_hello(fw);
}

static void on_configure(fw_t *fw, const frame_t *f) {
    fw_limits_t lim = {
        .max_speed_x100 = get_u16(f->payload + 0),
        .max_accel_x100 = get_u16(f->payload + 2),
        .max_decel_x100 = get_u16(f->payload + 4),
        .max_lease_ms = get_u16(f->payload + 6),
        .checksum = get_u16(f->payload + 8),
    };
    uint8_t reason = 0;
    if (!fw->hello_ok) {
        reason = NAK_NO_HANDSHAKE;
    } else if (crc16(f->payload, 8, CRC16_INIT) != lim.checksum) {
        reason = NAK_CONFIG_CHECKSUM;
    } else if (lim.max_speed_x100 > CEIL_SPEED_X100 || lim.max_accel_x100 > CEIL_ACCEL_X100 ||
               lim.max_decel_x100 > CEIL_DECEL_X100 || lim.max_lease_ms > CEIL_LEASE_MS) {
        reason = NAK_ABOVE_CEILING; /* FW-4: no message can raise a ceiling */
    } else if (fw->state != ST_IDLE) {
        reason = NAK_BELT_MOVING;
    }
    if (reason != 0) {
        send_nak(fw, f->seq, reason);
        return;
    }
    conf_store(fw, &lim);
    send_ack(fw, f->seq);
}

static void on_set_speed(fw_t *fw, const frame_t *f) {
    uint16_t speed = get_u16(f->payload + 0);
    uint16_t accel = get_u16(f->payload + 2);
    uint16_t lease = get_u16(f->payload + 4);
    if (!fw->hello_ok) {
        send_nak(fw, f->seq, NAK_NO_HANDSHAKE);
        return;
    }
    if (!fw->configured) {
        send_nak(fw, f->seq, NAK_NOT_CONFIGURED); /* FW-8 */
        return;
    }
    if (!fw->key_closed) {
        send_nak(fw, f->seq, NAK_REFUSED_IN_STATE); /* FW-10 */
        return;
    }
    if (fw->state == ST_STOPPING) {
        if (speed == 0u) {
            fw->last_applied_seq = f->seq; /* agrees with the stop; keeps its ramp (FW-9) */
            return;
        }
        send_nak(fw, f->seq, NAK_REFUSED_IN_STATE); /* a stop holds until at rest */
        return;
    }
    uint16_t speed_limit = fw->conf.max_speed_x100 < CEIL_SPEED_X100 ? fw->conf.max_speed_x100
                                                                     : (uint16_t)CEIL_SPEED_X100;
    if (speed > speed_limit) {
        /* FW-4: above a ceiling is a fault, never clamped. */
        send_nak(fw, f->seq, NAK_ABOVE_CEILING);
        shutdown(fw, FAULT_SPEED_ABOVE_CEILING, speed);
        return;
    }
    /* FW-4: the target is compared with the present set-point at the wire's resolution
     * (commanded_x100, the set-point rounded to 0.01 km/h): above it the rate is an
     * acceleration, below it a deceleration, each with its own ceiling; equal to it the
     * SET_SPEED is holding (it moves the set-point by half a resolution at most), so its rate
     * is accepted within either ceiling. */
    uint16_t accel_limit = fw->conf.max_accel_x100 < CEIL_ACCEL_X100 ? fw->conf.max_accel_x100
                                                                      : (uint16_t)CEIL_ACCEL_X100;
    uint16_t decel_limit = fw->conf.max_decel_x100 < CEIL_DECEL_X100 ? fw->conf.max_decel_x100
                                                                      : (uint16_t)CEIL_DECEL_X100;
    uint16_t ramp_limit;
    if (speed < fw->commanded_x100) {
        ramp_limit = decel_limit;
    } else if (speed > fw->commanded_x100) {
        ramp_limit = accel_limit;
    } else {
        ramp_limit = accel_limit > decel_limit ? accel_limit : decel_limit;
    }
    if (accel > ramp_limit) {
        send_nak(fw, f->seq, NAK_ABOVE_CEILING);
        shutdown(fw, FAULT_ACCEL_ABOVE_CEILING, accel);
        return;
    }
    if (lease > fw->conf.max_lease_ms) {
        /* Refused and the lease is not renewed: if the host insists, the lease expires. */
        send_nak(fw, f->seq, NAK_ABOVE_CEILING);
        return;
    }
    fw->target_x100 = speed;
    fw->ramp_x100 = accel;
    fw->lease_deadline_ms = fw->now_ms + lease; /* FW-3: the lease runs from receipt */
    fw->lease_active = true;
    fw->last_applied_seq = f->seq;
    if (fw->state == ST_IDLE && speed == 0u) {
        return; /* nothing to energise */
    }
    fw->state = ST_RUNNING;
    fw->contactor = true;
}

static void on_clear_fault(fw_t *fw, const frame_t *f) {
    if (fw->state != ST_FAULT) {
        send_ack(fw, f->seq); /* nothing latched: nothing to do */
        return;
    }
    if (!fw_at_rest(fw)) {
        send_nak(fw, f->seq, NAK_BELT_MOVING); /* FW-7 */
        return;
    }
    if (!fw->key_closed) {
        send_nak(fw, f->seq, NAK_REFUSED_IN_STATE);
        return;
    }
    if (fw->fault == FAULT_NOT_CONFIGURED) {
        conf_drop(fw); /* FW-7: the configuration that failed its check is not kept */
    }
    fw->state = ST_IDLE;
    fw->fault = FAULT_NONE;
    /* FW-7: clearing never restarts the belt. */
    fw->target_x100 = 0;
    set_commanded(fw, 0);
    fw->lease_active = false;
    fw->contactor = false;
    send_ack(fw, f->seq);
}

/* rx_seq check as link.RxSequenceChecker: true when seq repeats the previous frame's. */
static bool seq_is_repeat(fw_t *fw, uint8_t seq) {
    bool repeat = fw->rx_have_last && seq == fw->rx_last_seq;
    fw->rx_have_last = true;
    fw->rx_last_seq = seq;
    return repeat;
}

static void handle_frame(fw_t *fw, const frame_t *f) {
    if (fw->state == ST_BOOT) {
        /* Self-test: only stops are answered (the motor is off anyway); everything else goes
         * unanswered and the host retransmits it. */
        if (f->id == MSG_STOP || f->id == MSG_ESTOP) {
            send_ack(fw, f->seq);
        }
        return;
    }
    bool repeat = seq_is_repeat(fw, f->seq);
    if (repeat && f->id == MSG_SET_SPEED) {
        /* FW-3: a repeated SET_SPEED does not renew the lease. Every other host message is
         * idempotent, so a retransmission is simply handled again. */
        return;
    }
    bool host_id = f->id >= MSG_HELLO && f->id <= MSG_GET_STATUS;
    if (fw->state == ST_FAULT && host_id && !(ACCEPTED_IN_FAULT_MASK & ACCEPT_IN_FAULT_BIT(f->id))) {
        send_nak(fw, f->seq, NAK_REFUSED_IN_STATE); /* FW-6 */
        return;
    }
    switch (f->id) {
    case MSG_HELLO:
        on_hello(fw, f);
        break;
    case MSG_CONFIGURE:
        on_configure(fw, f);
        break;
    case MSG_SET_SPEED:
        on_set_speed(fw, f);
        break;
    case MSG_STOP:
        send_ack(fw, f->seq);
        do_stop(fw, get_u16(f->payload)); /* FW-5 */
        break;
    case MSG_ESTOP:
        send_ack(fw, f->seq);
        shutdown(fw, FAULT_ESTOP, 0); /* FW-5 */
        break;
    case MSG_CLEAR_FAULT:
        on_clear_fault(fw, f);
        break;
    case MSG_GET_STATUS:
        send_status(fw);
        break;
    default:
        /* STATUS, FAULT, ACK, NAK come from a firmware, never from the host. */
        if (fw->state == ST_FAULT) {
            send_nak(fw, f->seq, NAK_REFUSED_IN_STATE);
        } else {
            send_nak(fw, f->seq, NAK_UNKNOWN_MESSAGE);
        }
        break;
    }
}

/* FW-5 / FW-13: a CRC-valid frame refused for its content. */
static void handle_reject(fw_t *fw, const dec_event_t *ev) {
    uint8_t seq = ev->frame.seq;
    if (ev->frame.id == MSG_STOP) {
        /* A stop with a malformed payload is still a stop, at the maximum deceleration. */
        send_ack(fw, seq);
        if (fw->state != ST_BOOT) {
            do_stop(fw, max_decel_x100(fw));
        }
        return;
    }
    if (ev->frame.id == MSG_ESTOP) {
        send_ack(fw, seq);
        if (fw->state != ST_BOOT) {
            shutdown(fw, FAULT_ESTOP, 0);
        }
        return;
    }
    if (fw->state == ST_BOOT) {
        return;
    }
    (void)seq_is_repeat(fw, seq);
    send_nak(fw, seq, ev->nak_reason);
}

/* FW-13: more than BAD_FRAME_LIMIT rejected frames within the window while RUNNING. */
static void count_bad_frames(fw_t *fw) {
    uint32_t errors = dec_errors(&fw->dec);
    while (fw->dec_errors_seen != errors) {
        fw->dec_errors_seen++;
        fw->bad_ms[fw->bad_head] = fw->now_ms;
        fw->bad_head = (uint8_t)((fw->bad_head + 1u) % (BAD_FRAME_LIMIT + 1u));
        if (fw->bad_count < BAD_FRAME_LIMIT + 1u) {
            fw->bad_count++;
        }
    }
    if (fw->state != ST_RUNNING || fw->bad_count < BAD_FRAME_LIMIT + 1u) {
        return;
    }
    /* The oldest of the last BAD_FRAME_LIMIT + 1 errors is at bad_head. */
    uint32_t oldest = fw->bad_ms[fw->bad_head];
    if (fw->now_ms - oldest <= BAD_FRAME_WINDOW_MS) {
        shutdown(fw, FAULT_BAD_FRAME_FLOOD, BAD_FRAME_LIMIT + 1u);
    }
}

void fw_rx_byte(fw_t *fw, uint8_t byte) {
    dec_push(&fw->dec, byte);
    dec_event_t ev;
    while (dec_poll(&fw->dec, &ev)) {
        if (ev.kind == DEC_FRAME) {
            if (fw->io.drop_rx != NULL && fw->io.drop_rx(fw->io.ctx)) {
                continue;
            }
            handle_frame(fw, &ev.frame);
        } else {
            handle_reject(fw, &ev);
        }
    }
    count_bad_frames(fw);
}

/* ------------------------------------------------------------------ time */

/* Sliding maximum of the set-point over the last OVERSPEED_WINDOW_MS, in buckets of
 * FW_PEAK_BUCKET_MS (no division: the main loop runs this every millisecond). */
static uint16_t peak_update(fw_t *fw, uint16_t setpoint_x100) {
    uint8_t steps = 0;
    while (fw->now_ms - fw->peak_bucket_ms >= FW_PEAK_BUCKET_MS) {
        if (++steps > FW_PEAK_BUCKETS) {
            /* A long gap: every bucket is out of the window. */
            memset(fw->peak_x100, 0, sizeof fw->peak_x100);
            fw->peak_bucket_ms = fw->now_ms;
            break;
        }
        fw->peak_bucket_ms += FW_PEAK_BUCKET_MS;
        fw->peak_index = (uint8_t)((fw->peak_index + 1u) & (FW_PEAK_BUCKETS - 1u));
        fw->peak_x100[fw->peak_index] = 0;
    }
    uint16_t *cur = &fw->peak_x100[fw->peak_index];
    if (*cur < setpoint_x100) {
        *cur = setpoint_x100;
    }
    /* Buckets covering the window (the current one is partial). */
    const uint8_t used = (OVERSPEED_WINDOW_MS + FW_PEAK_BUCKET_MS - 1u) / FW_PEAK_BUCKET_MS + 1u;
    uint16_t peak = 0;
    for (uint8_t i = 0; i < used && i < FW_PEAK_BUCKETS; i++) {
        uint16_t v = fw->peak_x100[(uint8_t)(fw->peak_index - i) & (FW_PEAK_BUCKETS - 1u)];
        if (v > peak) {
            peak = v;
        }
    }
    return peak;
}

/* FW-12: plausibility of the belt against the set-point while the motor is powered. */
static void self_checks(fw_t *fw) {
    uint16_t commanded = fw_commanded_x100(fw);
    uint16_t peak = peak_update(fw, commanded);
    if (fw->configured && motor_powered(fw) && !conf_intact(fw)) {
        conf_drop(fw);
        shutdown(fw, FAULT_NOT_CONFIGURED, 0); /* FW-8 */
        return;
    }
    if (!motor_powered(fw)) {
        fw->over_active = false;
        fw->silent_active = false;
        return;
    }
    uint16_t measured = fw_measured_x100(fw);
    /* peak <= 30.00 km/h: the product fits 16 bits (a cheap division on the AVR) */
    uint16_t margin = (uint16_t)((uint16_t)(peak * OVERSPEED_REL_PERCENT) / 100u);
    if (margin < OVERSPEED_MARGIN_X100) {
        margin = OVERSPEED_MARGIN_X100;
    }
    if ((uint32_t)measured > (uint32_t)peak + margin) {
        if (!fw->over_active) {
            fw->over_active = true;
            fw->over_since_ms = fw->now_ms;
        } else if (fw->now_ms - fw->over_since_ms >= OVERSPEED_MS) {
            /* A motor that runs away does not obey a ramp: cut its power. */
            shutdown(fw, FAULT_OVERSPEED, measured);
            return;
        }
    } else {
        fw->over_active = false;
    }
    if (commanded >= SENSOR_MIN_X100 && measured == 0u) {
        if (!fw->silent_active) {
            fw->silent_active = true;
            fw->silent_since_ms = fw->now_ms;
        } else if (fw->now_ms - fw->silent_since_ms >= SENSOR_SILENT_MS) {
            shutdown(fw, FAULT_SENSOR_FAULT, 0);
            return;
        }
    } else {
        fw->silent_active = false;
    }
}

static void update(fw_t *fw, uint32_t now_ms) {
    if (time_after(fw->now_ms, now_ms)) {
        now_ms = fw->now_ms; /* time never runs back */
    }
    uint32_t dt_ms = now_ms - fw->now_ms;
    if (dt_ms > 10000u) {
        dt_ms = 10000u;
    }
    fw->now_ms = now_ms;

    if (fw->state == ST_BOOT && now_ms - fw->boot_ms >= SELF_TEST_MS) {
        fw->state = ST_IDLE;
        fw->next_status_ms = now_ms;
        send_hello(fw); /* FW-1: unsolicited HELLO after every boot */
        if (!fw->key_closed) {
            shutdown(fw, FAULT_SAFETY_KEY_OPEN, 0);
        }
    }

    /* FW-3: the motion lease. */
    if (fw->state == ST_RUNNING && fw->lease_active && time_after(now_ms, fw->lease_deadline_ms)) {
        shutdown(fw, FAULT_LEASE_EXPIRED, now_ms - fw->lease_deadline_ms);
    }

    /* The firmware's own ramp toward the target, never steeper than the accepted rate. */
    uint32_t target = (uint32_t)fw->target_x100 * FINE_PER_X100;
    if (fw->commanded_fine != target && dt_ms > 0u) {
        uint32_t step = (uint32_t)fw->ramp_x100 * dt_ms; /* 0.01 km/h/s * ms = fine units */
        if (fw->commanded_fine < target) {
            set_commanded(fw, target - fw->commanded_fine > step ? fw->commanded_fine + step
                                                                 : target);
        } else {
            set_commanded(fw, fw->commanded_fine - target > step ? fw->commanded_fine - step
                                                                 : target);
        }
    }

    /* End of a category 1 stop: set-point at 0, then power removed (FW-2). A RUNNING belt
     * asked for 0 keeps power (the board brakes) until it is at rest. */
    if (fw->target_x100 == 0u && fw->commanded_fine == 0u) {
        if (fw->state == ST_STOPPING || fw->state == ST_FAULT) {
            fw->contactor = false;
        }
        if ((fw->state == ST_STOPPING || fw->state == ST_RUNNING) && fw_at_rest(fw)) {
            fw->state = ST_IDLE;
            fw->lease_active = false;
            fw->contactor = false;
        }
    }
    self_checks(fw);
}

void fw_tick(fw_t *fw, uint32_t now_ms, uint32_t now_us) {
    speed_update(&fw->speed, now_us);
    update(fw, now_ms);
    count_bad_frames(fw);
    if (fw->state != ST_BOOT && !time_after(fw->next_status_ms, fw->now_ms)) {
        send_status(fw);
        fw->next_status_ms += STATUS_PERIOD_MS;
        if (!time_after(fw->next_status_ms, fw->now_ms)) {
            /* Fell behind: skip, never burst (FW-11). */
            fw->statuses_skipped++;
            fw->next_status_ms = fw->now_ms + STATUS_PERIOD_MS;
        }
    }
}
