/* Reference firmware main loop: the portable core (firmware/core) on the ATmega328P.
 * docs/firmware.md describes the board, the wiring and the budgets. */
#include <avr/interrupt.h>
#include <avr/pgmspace.h>

#include "fw.h"
#include "hw.h"

/* The build id, readable in the image (`strings build/treadmill.elf | grep treadmill-fw`). */
const char build_id[] PROGMEM = "treadmill-fw " FW_BUILD_ID;

static void send(void *ctx, const uint8_t *frame, uint8_t len) {
    (void)ctx;
    (void)hw_tx_frame(frame, len);
}

static fw_t fw;

int main(void) {
    hw_init(); /* motor disabled: enable low, PWM pin low (FW-1) */
    fw_boot_t boot = {
        .reset_cause = hw_reset_cause(),
        .boot_id = hw_next_boot_id(),
        .um_per_pulse = SENSOR_UM_PER_PULSE,
    };
    fw_io_t io = {.send = send, .drop_rx = 0, .ctx = 0};
    sei();
    fw_init(&fw, &boot, io, hw_millis());
    hw_watchdog_start();
    (void)pgm_read_byte(&build_id[0]); /* keep the string in the image */

    uint32_t last_tick_ms = hw_millis() - 1u;
    uint16_t drive_x100 = 0xFFFFu; /* the speed the PWM counts were last computed for */
    uint16_t drive_counts = 0;
    for (;;) {
        hw_watchdog_feed(); /* only here: a hung loop resets the chip into BOOT (FW-12) */
        uint32_t now_ms = hw_millis();
        if (now_ms != last_tick_ms) {
            /* Once per millisecond: time, sensor, key, self-checks, STATUS. */
            last_tick_ms = now_ms;
            uint32_t t_us;
            while (hw_pulse_pop(&t_us)) {
                fw_pulse(&fw, t_us);
            }
            fw_key_sample(&fw, hw_key_closed(), now_ms);
            fw_tick(&fw, now_ms, hw_micros());
            if (!hw_stack_guard_ok()) {
                fw_internal_fault(&fw, 1u); /* check id 1: stack guard */
            }
            if (!hw_clock_ok(now_ms)) {
                fw_internal_fault(&fw, 2u); /* check id 2: the ms tick disagrees with Timer1 */
            }
            /* LED: steady while driving, blinking about 1 Hz idle, 4 Hz in FAULT. */
            bool led;
            if (fw_motor_enable(&fw)) {
                led = true;
            } else if (fw.state == ST_FAULT) {
                led = (now_ms >> 7) & 1u;
            } else {
                led = (now_ms >> 9) & 1u;
            }
            hw_led(led);
        }
        /* Every pass: received bytes (bounded, so that a flood cannot starve the loop), then
         * the outputs, so that a STOP or ESTOP acts within the same pass. */
        for (uint8_t i = 0; i < 32u; i++) {
            int16_t c = hw_rx_pop();
            if (c < 0) {
                break;
            }
            fw_rx_byte(&fw, (uint8_t)c);
        }
        uint16_t x100 = fw_motor_enable(&fw) ? fw_commanded_x100(&fw) : 0u;
        if (x100 != drive_x100) {
            drive_x100 = x100;
            drive_counts = fw_pwm_counts_for(x100, HW_PWM_TOP);
        }
        hw_set_drive(drive_counts, fw_motor_enable(&fw));
    }
}
