/* Hardware layer of the reference firmware: ATmega328P at 16 MHz (Arduino Uno / Nano).
 * Pins as docs/firmware.md (fixed with the emulator harness):
 *   D9  PB1/OC1A  PWM to the MC2100 speed input: Timer1 fast PWM mode 14, ICR1 = 3124, 20 Hz
 *   D2  PD2/INT0  belt sensor, pull-up, one falling edge per pulse (timestamped in us)
 *   D3  PD3       safety circuit sense, pull-up: LOW = key and e-stop closed, HIGH = open
 *   D7  PD7       motor power enable (relay): HIGH = enabled
 *   D13 PB5       status LED
 *   D8  PB0       ISR-busy: HIGH while an interrupt body runs
 *   USART0 115200 8N1 (U2X, UBRR 16); Timer0 CTC 1 kHz tick; watchdog 60 ms. */
#ifndef HW_H
#define HW_H

#include <stdbool.h>
#include <stdint.h>

#define HW_PWM_TOP 3124u /* ICR1: 16 MHz / 256 / 3125 = 20 Hz */

void hw_init(void);
uint32_t hw_millis(void);
uint32_t hw_micros(void);
/* Pulse timestamps captured by INT0, oldest first; false when none is waiting. */
bool hw_pulse_pop(uint32_t *t_us);
/* A received byte, or -1. */
int16_t hw_rx_pop(void);
/* Queue a complete frame for sending; false (nothing queued) when it does not fit. */
bool hw_tx_frame(const uint8_t *data, uint8_t len);
bool hw_key_closed(void);
/* Drive outputs: PWM counts out of HW_PWM_TOP + 1 (0 = output held low) and the enable. */
void hw_set_drive(uint16_t pwm_counts, bool enable);
void hw_led(bool on);
/* MCUSR at reset (or as handed over by Optiboot in r2), mapped to RESET_*. */
uint8_t hw_reset_cause(void);
/* Next boot id: never 0, never the previous boot's (EEPROM boot counter, bijective mix). */
uint32_t hw_next_boot_id(void);
void hw_watchdog_start(void);
void hw_watchdog_feed(void);
/* False when the stack has grown into the guard above .bss (FW-12 INTERNAL). */
bool hw_stack_guard_ok(void);
/* Clock cross-check (FW-12 INTERNAL): the 1 kHz tick (Timer0) against the PWM period
 * (Timer1, 50 ms), both from the crystal. Call every main-loop pass; false when the tick
 * stopped or runs off by more than 10 %, or when Timer1 stopped. */
bool hw_clock_ok(uint32_t now_ms);

/* Diagnostics. */
extern volatile uint16_t hw_rx_overruns;
extern volatile uint16_t hw_pulse_overruns;
extern uint16_t hw_tx_dropped_frames;

#endif /* HW_H */
