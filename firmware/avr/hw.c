#include "hw.h"

#include <avr/eeprom.h>
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/wdt.h>
#include <util/atomic.h>

#include "crc16.h"
#include "proto.h"

/* ---------------------------------------------------------------- reset (FW-1) */

/* Optiboot clears MCUSR before starting the application and hands its value over in r2;
 * without a bootloader r2 is 0 and MCUSR itself holds the flags. */
static uint8_t reset_r2 __attribute__((section(".noinit")));
static uint8_t reset_mcusr __attribute__((section(".noinit")));

void hw_early_r2(void) __attribute__((naked, used, section(".init0")));
void hw_early_r2(void) { __asm__ __volatile__("sts %0, r2\n" : "=m"(reset_r2)); }

/* Before anything else runs: motor outputs low, reset flags saved and cleared, watchdog off
 * (after a watchdog reset it stays armed at its shortest period and would reset the chip
 * again during start-up). It is re-enabled by hw_watchdog_start(). */
void hw_early_init(void) __attribute__((naked, used, section(".init3")));
void hw_early_init(void) {
    PORTD &= (uint8_t)~_BV(PD7);
    DDRD |= _BV(PD7);
    PORTB &= (uint8_t)~_BV(PB1);
    DDRB |= _BV(PB1);
    reset_mcusr = MCUSR;
    MCUSR = 0;
    wdt_disable();
}

uint8_t hw_reset_cause(void) {
    uint8_t f = reset_mcusr != 0 ? reset_mcusr : reset_r2;
    const uint8_t flags = _BV(PORF) | _BV(EXTRF) | _BV(BORF) | _BV(WDRF);
    if (f == 0u || (f & (uint8_t)~flags) != 0u) {
        return RESET_UNKNOWN; /* nothing recorded, or r2 not set by the bootloader */
    }
    if (f & _BV(PORF)) {
        return RESET_POWER_ON; /* power-on may also set BORF */
    }
    if ((f & _BV(EXTRF)) && (f & _BV(WDRF))) {
        /* Optiboot 8: a reset-pin (DTR) reset runs the bootloader, which leaves through its
         * own watchdog timeout; it keeps EXTRF so that the cause can be told apart. */
        return RESET_EXTERNAL;
    }
    if (f & _BV(WDRF)) {
        return RESET_WATCHDOG;
    }
    if (f & _BV(BORF)) {
        return RESET_BROWNOUT;
    }
    return RESET_EXTERNAL;
}

/* ---------------------------------------------------------------- boot id */

typedef struct {
    uint16_t magic;
    uint32_t salt;
    uint32_t counter;
    uint16_t crc;
} boot_record_t;

#define BOOT_RECORD_MAGIC 0x7B01u
static boot_record_t ee_boot EEMEM;
/* Uninitialised RAM after a power-on is noise: mixed into the salt the first time. */
static uint8_t noise[16] __attribute__((section(".noinit")));

static uint32_t fmix32(uint32_t h) { /* MurmurHash3 finaliser: a bijection on 32 bits */
    h ^= h >> 16;
    h *= 0x85EBCA6Bul;
    h ^= h >> 13;
    h *= 0xC2B2AE35ul;
    h ^= h >> 16;
    return h;
}

uint32_t hw_next_boot_id(void) {
    boot_record_t r;
    eeprom_read_block(&r, &ee_boot, sizeof r);
    if (r.magic != BOOT_RECORD_MAGIC ||
        crc16((const uint8_t *)&r, sizeof r - sizeof r.crc, CRC16_INIT) != r.crc) {
        uint16_t seed = crc16(noise, sizeof noise, CRC16_INIT);
        r.magic = BOOT_RECORD_MAGIC;
        r.salt = fmix32(((uint32_t)seed << 16) ^ TCNT0 ^ ((uint32_t)TCNT1 << 8));
        r.counter = 0;
    }
    /* Distinct counters give distinct ids (fmix32 is a bijection); skip the one giving 0. */
    uint32_t id;
    do {
        r.counter++;
        id = fmix32(r.salt + r.counter);
    } while (id == 0u);
    r.crc = crc16((const uint8_t *)&r, sizeof r - sizeof r.crc, CRC16_INIT);
    eeprom_update_block(&r, &ee_boot, sizeof r);
    return id;
}

/* ---------------------------------------------------------------- time: Timer0 1 kHz */

static volatile uint32_t ms_ticks;

#define ISR_BUSY_ON() (PORTB |= _BV(PB0))
#define ISR_BUSY_OFF() (PORTB &= (uint8_t)~_BV(PB0))

ISR(TIMER0_COMPA_vect) {
    ISR_BUSY_ON();
    ms_ticks++;
    ISR_BUSY_OFF();
}

uint32_t hw_millis(void) {
    uint32_t v;
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE) { v = ms_ticks; }
    return v;
}

/* Call with interrupts disabled. 4 us resolution (Timer0 at 250 kHz). */
static uint32_t micros_locked(void) {
    uint32_t ms = ms_ticks;
    uint8_t t = TCNT0;
    if ((TIFR0 & _BV(OCF0A)) && t < 249u) {
        ms++; /* the compare match happened, its interrupt has not run yet */
    }
    return ms * 1000ul + (uint32_t)t * 4u;
}

uint32_t hw_micros(void) {
    uint32_t v;
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE) { v = micros_locked(); }
    return v;
}

/* ---------------------------------------------------------------- belt pulses: INT0 */

#define PULSE_RING 16u
/* The interrupt stores the raw tick and counter (no multiplication in the ISR); the main loop
 * converts them to microseconds. */
static volatile uint32_t pulse_ms[PULSE_RING];
static volatile uint8_t pulse_cnt[PULSE_RING];
static volatile uint8_t pulse_head, pulse_tail;
volatile uint16_t hw_pulse_overruns;

ISR(INT0_vect) {
    ISR_BUSY_ON();
    uint8_t t = TCNT0;
    uint32_t ms = ms_ticks;
    if ((TIFR0 & _BV(OCF0A)) && t < 249u) {
        ms++; /* the tick's interrupt is pending behind this one */
    }
    uint8_t head = pulse_head;
    uint8_t next = (uint8_t)((head + 1u) & (PULSE_RING - 1u));
    if (next == pulse_tail) {
        hw_pulse_overruns++;
    } else {
        pulse_ms[head] = ms;
        pulse_cnt[head] = t;
        pulse_head = next;
    }
    ISR_BUSY_OFF();
}

bool hw_pulse_pop(uint32_t *t_us) {
    bool got = false;
    uint32_t ms = 0;
    uint8_t t = 0;
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE) {
        if (pulse_tail != pulse_head) {
            ms = pulse_ms[pulse_tail];
            t = pulse_cnt[pulse_tail];
            pulse_tail = (uint8_t)((pulse_tail + 1u) & (PULSE_RING - 1u));
            got = true;
        }
    }
    if (got) {
        *t_us = ms * 1000ul + (uint32_t)t * 4u;
    }
    return got;
}

/* ---------------------------------------------------------------- USART0 */

#define BAUD_RATE 115200ul
#define UBRR_VALUE ((F_CPU + 4ul * BAUD_RATE) / (8ul * BAUD_RATE) - 1ul) /* U2X: 16 */
#define BAUD_ACTUAL (F_CPU / (8ul * (UBRR_VALUE + 1ul)))
#define BAUD_ERR_PERMILLE                                                                        \
    ((BAUD_ACTUAL > BAUD_RATE ? BAUD_ACTUAL - BAUD_RATE : BAUD_RATE - BAUD_ACTUAL) * 1000ul /    \
     BAUD_RATE)
_Static_assert(UBRR_VALUE == 16ul, "115200 baud at 16 MHz with U2X is UBRR 16");
_Static_assert(BAUD_ERR_PERMILLE <= 25ul, "baud rate error above 2.5 %");

#define RX_RING 64u
#define TX_RING 128u
static volatile uint8_t rx_buf[RX_RING];
static volatile uint8_t rx_head, rx_tail;
static volatile uint8_t tx_buf[TX_RING];
static volatile uint8_t tx_head, tx_tail;
volatile uint16_t hw_rx_overruns;
uint16_t hw_tx_dropped_frames;

ISR(USART_RX_vect) {
    ISR_BUSY_ON();
    uint8_t status = UCSR0A;
    uint8_t b = UDR0;
    uint8_t next = (uint8_t)((rx_head + 1u) & (RX_RING - 1u));
    if (next == rx_tail || (status & _BV(DOR0))) {
        hw_rx_overruns++;
    }
    if (next != rx_tail) {
        rx_buf[rx_head] = b;
        rx_head = next;
    }
    ISR_BUSY_OFF();
}

ISR(USART_UDRE_vect) {
    ISR_BUSY_ON();
    if (tx_tail == tx_head) {
        UCSR0B &= (uint8_t)~_BV(UDRIE0);
    } else {
        UDR0 = tx_buf[tx_tail];
        tx_tail = (uint8_t)((tx_tail + 1u) & (TX_RING - 1u));
    }
    ISR_BUSY_OFF();
}

int16_t hw_rx_pop(void) {
    int16_t v = -1;
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE) {
        if (rx_tail != rx_head) {
            v = rx_buf[rx_tail];
            rx_tail = (uint8_t)((rx_tail + 1u) & (RX_RING - 1u));
        }
    }
    return v;
}

bool hw_tx_frame(const uint8_t *data, uint8_t len) {
    bool ok = false;
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE) {
        uint8_t used = (uint8_t)((uint8_t)(tx_head - tx_tail) & (uint8_t)(TX_RING - 1u));
        if ((uint16_t)used + len < TX_RING) {
            for (uint8_t i = 0; i < len; i++) {
                tx_buf[tx_head] = data[i];
                tx_head = (uint8_t)((tx_head + 1u) & (TX_RING - 1u));
            }
            UCSR0B |= _BV(UDRIE0);
            ok = true;
        }
    }
    if (!ok) {
        hw_tx_dropped_frames++; /* a late frame is skipped, never sent in a burst (FW-11) */
    }
    return ok;
}

/* ---------------------------------------------------------------- outputs, inputs */

bool hw_key_closed(void) { return (PIND & _BV(PD3)) == 0; }

void hw_set_drive(uint16_t pwm_counts, bool enable) {
    if (pwm_counts == 0u || !enable) {
        /* No drive: disconnect OC1A so the pin is held low at once (fast PWM with OCR1A = 0
         * would still give a one-count spike every period), then drop the enable. */
        TCCR1A &= (uint8_t)~_BV(COM1A1);
        PORTB &= (uint8_t)~_BV(PB1);
        OCR1A = 0;
        if (!enable) {
            PORTD &= (uint8_t)~_BV(PD7);
        } else {
            PORTD |= _BV(PD7);
        }
        return;
    }
    PORTD |= _BV(PD7);
    if (pwm_counts > HW_PWM_TOP + 1u) {
        pwm_counts = HW_PWM_TOP + 1u;
    }
    OCR1A = pwm_counts - 1u; /* high for OCR1A + 1 counts of ICR1 + 1 */
    TCCR1A |= _BV(COM1A1);
}

void hw_led(bool on) {
    if (on) {
        PORTB |= _BV(PB5);
    } else {
        PORTB &= (uint8_t)~_BV(PB5);
    }
}

/* ---------------------------------------------------------------- watchdog, stack guard */

void hw_watchdog_start(void) { wdt_enable(WDTO_60MS); }
void hw_watchdog_feed(void) { wdt_reset(); }

extern uint8_t __bss_end; /* first byte above .bss (avr-libc linker script) */
#define GUARD_BYTES 8u
#define GUARD_VALUE 0xC5u

static void stack_guard_paint(void) {
    uint8_t *p = &__bss_end;
    for (uint8_t i = 0; i < GUARD_BYTES; i++) {
        p[i] = GUARD_VALUE;
    }
}

bool hw_stack_guard_ok(void) {
    const volatile uint8_t *p = &__bss_end;
    for (uint8_t i = 0; i < GUARD_BYTES; i++) {
        if (p[i] != GUARD_VALUE) {
            return false;
        }
    }
    return true;
}

/* ---------------------------------------------------------------- clock cross-check */

#define PWM_PERIOD_MS 50u /* (ICR1 + 1) * 256 / 16 MHz */
_Static_assert((HW_PWM_TOP + 1ul) * 256ul * 1000ul / F_CPU == PWM_PERIOD_MS, "PWM period");

static uint32_t clock_last_ms;
static uint8_t clock_phase; /* 0: not started, 1: waiting for the first period, 2: checking */

bool hw_clock_ok(uint32_t now_ms) {
    if (clock_phase == 0u) {
        TIFR1 = _BV(TOV1);
        clock_last_ms = now_ms;
        clock_phase = 1;
        return true;
    }
    uint32_t elapsed = now_ms - clock_last_ms;
    if (TIFR1 & _BV(TOV1)) {
        TIFR1 = _BV(TOV1);
        clock_last_ms = now_ms;
        if (clock_phase == 1u) {
            clock_phase = 2; /* the first period was partial: start counting from here */
            return true;
        }
        /* One Timer1 period since the last one, seen by a loop that takes well under 5 ms a
         * pass: the tick must have counted 50 ms, +-10 %. A stopped tick gives 0. */
        return elapsed >= PWM_PERIOD_MS - PWM_PERIOD_MS / 10u &&
               elapsed <= PWM_PERIOD_MS + PWM_PERIOD_MS / 10u;
    }
    /* No Timer1 period for 1.5 of them by the tick: Timer1 stopped or the tick runs fast. */
    return elapsed <= PWM_PERIOD_MS + PWM_PERIOD_MS / 2u;
}

/* ---------------------------------------------------------------- init */

void hw_init(void) {
    /* Outputs: enable low, PWM pin low, LED, ISR-busy. */
    PORTD &= (uint8_t)~_BV(PD7);
    DDRD |= _BV(PD7);
    PORTB &= (uint8_t)~(_BV(PB1) | _BV(PB5) | _BV(PB0));
    DDRB |= _BV(PB1) | _BV(PB5) | _BV(PB0);
    /* Inputs with pull-ups: sensor (PD2), key circuit (PD3). */
    DDRD &= (uint8_t)~(_BV(PD2) | _BV(PD3));
    PORTD |= _BV(PD2) | _BV(PD3);

    stack_guard_paint();

    /* Timer0: CTC, prescaler 64, OCR0A 249: 16 MHz / 64 / 250 = 1 kHz. */
    TCCR0A = _BV(WGM01);
    TCCR0B = _BV(CS01) | _BV(CS00);
    OCR0A = 249;
    TIMSK0 = _BV(OCIE0A);

    /* Timer1: fast PWM mode 14 (TOP = ICR1), prescaler 256, OC1A disconnected until drive. */
    TCCR1A = _BV(WGM11);
    ICR1 = HW_PWM_TOP;
    OCR1A = 0;
    TCNT1 = 0;
    TCCR1B = _BV(WGM13) | _BV(WGM12) | _BV(CS12);

    /* INT0 on the falling edge. */
    EICRA = _BV(ISC01);
    EIFR = _BV(INTF0);
    EIMSK = _BV(INT0);

    /* USART0 115200 8N1, double speed. */
    UBRR0H = (uint8_t)(UBRR_VALUE >> 8);
    UBRR0L = (uint8_t)UBRR_VALUE;
    UCSR0A = _BV(U2X0);
    UCSR0C = _BV(UCSZ01) | _BV(UCSZ00);
    UCSR0B = _BV(RXEN0) | _BV(TXEN0) | _BV(RXCIE0);
}
