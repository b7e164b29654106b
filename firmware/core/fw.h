/* The firmware core: the contract of docs/firmware-safety.md (FW-1..FW-15) as a state
 * machine driven by explicit time. Portable C11: no registers, no clock, no allocation.
 *
 * The hardware layer (firmware/avr) and the native host (firmware/host) do the same:
 *
 *     fw_init(&fw, &boot, io, now_ms);              at reset: motor disabled (FW-1)
 *     loop:
 *         fw_key_sample(&fw, key_closed, now_ms);    the key circuit (FW-10)
 *         fw_pulse(&fw, t_us);                       for each sensor edge (FW-15)
 *         fw_tick(&fw, now_ms, now_us);              time: boot, lease, ramp, checks, STATUS
 *         fw_rx_byte(&fw, byte);                     for each received byte
 *         drive the outputs: fw_motor_enable(&fw), fw_pwm_counts(&fw, top)
 *
 * Everything the firmware sends goes through io.send, one complete frame per call. */
#ifndef FW_H
#define FW_H

#include <stdbool.h>
#include <stdint.h>

#include "fw_config.h"
#include "proto.h"
#include "speed.h"

typedef struct {
    void (*send)(void *ctx, const uint8_t *frame, uint8_t len);
    /* Test hook of the native host's simulated line (NULL on the chip): true when this
     * valid received frame is lost on the line (`inject drop_frames`). */
    bool (*drop_rx)(void *ctx);
    void *ctx;
} fw_io_t;

typedef struct {
    uint8_t reset_cause;   /* RESET_* (HELLO reset_cause) */
    uint32_t boot_id;      /* non-zero, different from the previous boot's (FW-1) */
    uint32_t um_per_pulse; /* sensor resolution (FW-15) */
} fw_boot_t;

typedef struct {
    uint16_t max_speed_x100;
    uint16_t max_accel_x100;
    uint16_t max_decel_x100;
    uint16_t max_lease_ms;
    uint16_t checksum;
} fw_limits_t;

#define FW_PEAK_BUCKETS 16u
#define FW_PEAK_BUCKET_MS 100u
#define FW_NO_SEQ 0xFFFFu

typedef struct {
    fw_io_t io;
    /* time */
    uint32_t now_ms;
    uint32_t boot_ms;
    /* identity of this boot */
    uint32_t boot_id;
    uint8_t reset_cause;
    /* state (FW-2) */
    uint8_t state;
    uint8_t fault;
    /* link */
    decoder_t dec;
    uint32_t dec_errors_seen;
    bool rx_have_last;
    uint8_t rx_last_seq;
    uint8_t tx_seq;
    bool hello_ok;
    /* configuration (FW-8), kept with an inverted copy as its integrity check */
    bool configured;
    fw_limits_t conf;
    fw_limits_t conf_inv;
    /* motion */
    bool contactor; /* motor power enable output (D7) */
    bool key_closed;
    bool key_raw_closed;
    uint32_t key_raw_since_ms;
    uint16_t target_x100;
    uint32_t commanded_fine; /* ramped set-point, 0.00001 km/h (0.01 km/h / 1000) */
    uint16_t commanded_x100; /* the same rounded to 0.01 km/h (kept, not divided each time) */
    uint16_t ramp_x100;
    bool lease_active;
    uint32_t lease_deadline_ms;
    uint16_t last_applied_seq;
    uint32_t next_status_ms;
    /* self-supervision (FW-12, FW-13) */
    uint16_t peak_x100[FW_PEAK_BUCKETS];
    uint32_t peak_bucket_ms; /* start of the current bucket */
    uint8_t peak_index;      /* the current bucket */
    bool over_active;
    uint32_t over_since_ms;
    bool silent_active;
    uint32_t silent_since_ms;
    uint32_t bad_ms[BAD_FRAME_LIMIT + 1u];
    uint8_t bad_head;
    uint8_t bad_count;
    speed_est_t speed;
    /* counters for diagnostics */
    uint32_t statuses_sent;
    uint32_t statuses_skipped;
} fw_t;

void fw_init(fw_t *fw, const fw_boot_t *boot, fw_io_t io, uint32_t now_ms);
void fw_rx_byte(fw_t *fw, uint8_t byte);
void fw_pulse(fw_t *fw, uint32_t t_us);
void fw_tick(fw_t *fw, uint32_t now_ms, uint32_t now_us);
/* Raw reading of the key circuit: an opening acts at once, a closing after
 * KEY_CLOSE_DEBOUNCE_MS of steady readings (contact bounce). */
void fw_key_sample(fw_t *fw, bool closed, uint32_t now_ms);
/* A failed self-check of the hardware layer (stack guard, clock): INTERNAL, category 0. */
void fw_internal_fault(fw_t *fw, uint32_t check_id);
/* The motor driver reported a fault (boards that have such a signal): MOTOR_FAULT. */
void fw_motor_fault(fw_t *fw, uint32_t detail);

/* Outputs. */
bool fw_motor_enable(const fw_t *fw);
uint16_t fw_commanded_x100(const fw_t *fw);
uint16_t fw_measured_x100(const fw_t *fw);
bool fw_at_rest(const fw_t *fw);
uint16_t fw_lease_remaining_ms(const fw_t *fw);
/* Timer counts of PWM high time for the present drive, out of (top + 1): 0 = no drive. */
uint16_t fw_pwm_counts(const fw_t *fw, uint16_t top);
/* Same mapping for any speed: PWM_FULL_SCALE_KMH_X100 maps to 85 % duty. */
uint16_t fw_pwm_counts_for(uint16_t kmh_x100, uint16_t top);

#define KEY_CLOSE_DEBOUNCE_MS 10u

#endif /* FW_H */
