/*
 * treadmill-emu: the AVR firmware ELF running in simavr on an emulated treadmill.
 *
 * Usage: treadmill-emu [--fast] [--distance-per-pulse-mm MM] FIRMWARE.elf
 *
 * What it does (pins and process interface: docs/firmware.md, "Running the firmware in
 * simavr"):
 *   - loads the ELF into an emulated ATmega328P at 16 MHz and throttles it to real time
 *     (--fast: as fast as the host allows, for quick checks only);
 *   - serves USART0 on a pseudo-terminal of its own and prints `PTY <path>` as the first
 *     line on stdout (no fixed /tmp/simavr-uart0 link, so parallel runs never clash, and the
 *     cable can be unplugged and plugged in again);
 *   - models the MC2100 and the belt with the shared belt model (firmware/host/belt_model.h):
 *     the drive follows the PWM duty read from the Timer1 registers (OCR1A / (ICR1 + 1) while
 *     OC1A is connected: simavr 1.6 garbles the OC1A waveform when OCR1A changes at run time,
 *     the registers are what the timer hardware would output), motor power needs PD7 HIGH
 *     and the key circuit closed;
 *   - feeds one falling edge per mm_per_pulse of belt travel to PD2/INT0;
 *   - drives PD3 (the key and e-stop circuit: LOW closed, HIGH open);
 *   - times the ISR-busy pin PB0 (worst-case time in interrupts, in cycles) and the main
 *     loop's passes (the gap between two WDR instructions: the loop alone feeds the watchdog);
 *   - stamps in emulated time when ESTOP and SET_SPEED frames arrive, when the PWM duty
 *     starts to fall and reaches 0 and when PD7 drops, so that the reaction times can be
 *     measured in emulated time;
 *   - answers control commands on stdin, one a line, one-line answer `OK ...`/`ERR ...`:
 *       inject sensor_freeze | runaway [KMH_S] | stuck_speed | reboot | hang | disconnect
 *       clear  sensor_freeze | runaway | stuck_speed | disconnect
 *       key open | key closed | status | help
 *     (`inject hang` stops the main loop with interrupts off so the chip's own watchdog
 *     has to reset it; `reboot` is a reset with the watchdog flag set in MCUSR.)
 *
 * SIGTERM/SIGINT or EOF on stdin followed by a signal end it with exit 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "avr_ioport.h"
#include "avr_uart.h"
#include "avr_watchdog.h"
#include "sim_avr.h"
#include "sim_cycle_timers.h"
#include "sim_elf.h"
#include "sim_irq.h"
#include "sim_time.h"

#include "belt_model.h"

/* ---------------------------------------------------------------- ATmega328P data space */
enum {
    REG_PINB = 0x23, REG_DDRB = 0x24, REG_PORTB = 0x25,
    REG_PIND = 0x29, REG_DDRD = 0x2A, REG_PORTD = 0x2B,
    REG_MCUSR = 0x54,
    REG_TCCR1A = 0x80, REG_TCCR1B = 0x81,
    REG_ICR1L = 0x86, REG_ICR1H = 0x87, REG_OCR1AL = 0x88, REG_OCR1AH = 0x89,
};
enum { PIN_ISR_BUSY = 0, PIN_PWM = 1, PIN_LED = 5 };        /* port B */
enum { PIN_BELT = 2, PIN_KEY = 3, PIN_MOTOR_EN = 7 };       /* port D */
#define MCUSR_WDRF 0x08u
#define CPU_HZ 16000000u
#define CYCLES_PER_MS (CPU_HZ / 1000u)
#define BELT_STEP_CYCLES (CYCLES_PER_MS)                    /* belt model step: 1 ms */
#define PULSE_LOW_CYCLES (CPU_HZ / 10000u)                  /* 100 us low per pulse */
#define BAUD 115200u
#define RX_BYTE_CYCLES ((CPU_HZ * 10u + BAUD - 1u) / BAUD)  /* 10 bit times per byte */
#define BUF_SIZE 8192u
#define STANDSTILL_KMH 0.1

/* ---------------------------------------------------------------- small helpers */

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) { (void)sig; g_stop = 1; }

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Answers and the PTY line go here; fd 1 itself is pointed at stderr so that whatever
 * simavr prints (it announces the ELF it loaded on stdout) cannot garble the protocol. */
static FILE *g_out;

static void reply(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(g_out, fmt, ap);
    va_end(ap);
    fputc('\n', g_out);
    fflush(g_out);
}

static uint16_t crc16_ccitt_false(const uint8_t *data, size_t len)
{
    uint16_t crc = 0xFFFF;
    while (len--) {
        crc ^= (uint16_t)(*data++) << 8;
        for (int i = 0; i < 8; i++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

typedef struct {
    uint8_t data[BUF_SIZE];
    size_t head, len;
} ring_t;

static bool ring_put(ring_t *r, uint8_t b)
{
    if (r->len == BUF_SIZE)
        return false;
    r->data[(r->head + r->len) % BUF_SIZE] = b;
    r->len++;
    return true;
}

static int ring_get(ring_t *r)
{
    if (!r->len)
        return -1;
    uint8_t b = r->data[r->head];
    r->head = (r->head + 1) % BUF_SIZE;
    r->len--;
    return b;
}

/* ---------------------------------------------------------------- frame snooper
 * A minimal decoder of the link's frames (docs/protocol.md §2, §4) on both directions,
 * only to timestamp ESTOP / SET_SPEED arrivals and to read the firmware's STATUS state.
 * It never changes a byte. */

enum { SYNC = 0xA5, MAX_PAYLOAD = 48 };
enum { ID_SET_SPEED = 0x03, ID_ESTOP = 0x05, ID_STATUS = 0x81 };

typedef struct {
    uint8_t buf[MAX_PAYLOAD + 6];
    size_t len;
} snoop_t;

typedef void (*frame_cb)(uint8_t msg_id, const uint8_t *payload, uint8_t len);

static void snoop_feed(snoop_t *s, uint8_t byte, frame_cb cb)
{
    if (s->len == 0 && byte != SYNC)
        return;
    s->buf[s->len++] = byte;
    for (;;) {
        if (s->len >= 2 && s->buf[1] > MAX_PAYLOAD) {
            goto resync;
        }
        if (s->len < 2 || s->len < (size_t)s->buf[1] + 6u)
            return;
        {
            uint8_t plen = s->buf[1];
            size_t end = (size_t)plen + 4u;
            uint16_t want = (uint16_t)(s->buf[end] | (s->buf[end + 1] << 8));
            if (crc16_ccitt_false(s->buf + 1, end - 1) == want) {
                cb(s->buf[3], s->buf + 4, plen);
                s->len = 0;
                return;
            }
        }
    resync:
        /* drop the SYNC and rescan from the next 0xA5 (protocol.md §4) */
        {
            size_t i = 1;
            while (i < s->len && s->buf[i] != SYNC)
                i++;
            memmove(s->buf, s->buf + i, s->len - i);
            s->len -= i;
            if (s->len == 0)
                return;
        }
    }
}

/* ---------------------------------------------------------------- the emulated rig */

typedef struct {
    avr_t *avr;
    bool fast;
    double mm_per_pulse;

    /* pty */
    int master_fd, slave_fd;
    char pty_path[128];
    ring_t rx, tx;                 /* host -> chip, chip -> host */
    bool uart_xoff;
    uint64_t rx_dropped, tx_dropped;

    /* pins */
    bool key_closed;
    bool belt_pin_low;
    bool motor_enabled;
    bool isr_busy;
    uint64_t isr_start, isr_max_cycles, isr_count, isr_total_cycles;
    uint64_t wdr_last, loop_max_cycles, wdr_count; /* main-loop passes, by the WDR instruction */

    /* drive */
    double duty;                   /* 0..1 as the timer outputs it */
    bool duty_falling;

    /* belt */
    belt_t belt;
    uint64_t pulses;

    /* resets */
    unsigned resets;
    bool timers_lost;
    void (*mcu_reset)(struct avr_t *);

    /* time */
    uint64_t cycle_base, last_cycle;
    uint64_t behind_max_us;

    /* snoop + stamps (emulated microseconds since start; 0 = never) */
    snoop_t snoop_rx, snoop_tx;
    uint64_t t_estop_us, t_set_speed_us, t_duty_drop_us, t_duty_zero_us, t_enable_off_us;
    uint64_t t_belt_rest_us;       /* the belt model came to rest (<= 0.1 km/h) */
    bool belt_moving;
    uint32_t last_lease_ms;
    double last_set_speed_kmh;
    uint64_t status_frames, t_last_status_us, status_gap_max_us;
    int fw_state, fw_fault;
    double fw_measured_kmh;
} emu_t;

static emu_t E;

static uint64_t now_cycles(void)
{
    uint64_t c = E.avr->cycle;
    if (c < E.last_cycle)                      /* a core that restarts its count on reset */
        E.cycle_base += E.last_cycle;
    E.last_cycle = c;
    return E.cycle_base + c;
}

static uint64_t now_us(void) { return now_cycles() / (CPU_HZ / 1000000u); }

/* ---------------------------------------------------------------- drive: PWM duty */

static void update_duty(void)
{
    avr_t *avr = E.avr;
    uint8_t tccr1a = avr->data[REG_TCCR1A];
    uint8_t tccr1b = avr->data[REG_TCCR1B];
    bool pwm_out = (avr->data[REG_DDRB] >> PIN_PWM) & 1;
    double duty;
    if (!pwm_out) {
        duty = 0.0;
    } else if ((tccr1a & 0xC0) == 0x80 && (tccr1b & 0x07) != 0) {
        /* OC1A non-inverting fast PWM, TOP = ICR1 (mode 14), timer clocked: the pin is high
         * from BOTTOM through the compare match, OCR1A + 1 of the TOP + 1 counts (so even
         * OCR1A = 0 leaves a one-count spike, as on the chip) */
        unsigned top = avr->data[REG_ICR1L] | (avr->data[REG_ICR1H] << 8);
        unsigned ocr = avr->data[REG_OCR1AL] | (avr->data[REG_OCR1AH] << 8);
        duty = ocr >= top ? 1.0 : (double)(ocr + 1u) / (double)(top + 1u);
    } else if ((tccr1a & 0xC0) == 0) {
        duty = ((avr->data[REG_PORTB] >> PIN_PWM) & 1) ? 1.0 : 0.0;   /* plain output pin */
    } else {
        duty = 0.0;   /* inverting or toggle modes are not what the firmware uses: no drive */
    }
    if (duty == E.duty)
        return;
    uint64_t t = now_us();
    if (duty < E.duty) {
        if (!E.duty_falling)
            E.t_duty_drop_us = t;
        E.duty_falling = true;
    } else {
        E.duty_falling = false;
    }
    if (duty == 0.0)
        E.t_duty_zero_us = t;
    E.duty = duty;
}

static void on_timer_reg_write(struct avr_t *avr, avr_io_addr_t addr, uint8_t v, void *param)
{
    (void)param;
    avr->data[addr] = v;      /* the timer's own handler stored it already; harmless again */
    update_duty();
}

/* ---------------------------------------------------------------- pins */

static avr_irq_t *port_irq(char port, int pin)
{
    return avr_io_getirq(E.avr, AVR_IOCTL_IOPORT_GETIRQ(port), pin);
}

/* Drive an input pin of port D from outside: the external level wins over the pull-up. */
static void drive_pd(int pin, bool high)
{
    static uint8_t mask, value;
    mask |= (uint8_t)(1u << pin);
    value = (uint8_t)((value & ~(1u << pin)) | (high ? 1u << pin : 0u));
    avr_ioport_external_t ext = {.name = 'D', .mask = mask, .value = value};
    avr_ioctl(E.avr, AVR_IOCTL_IOPORT_SET_EXTERNAL('D'), &ext);
    avr_raise_irq(port_irq('D', pin), high ? 1 : 0);
    /* after a reset the PIN register was cleared without an IRQ: set the bit as well */
    if (high)
        E.avr->data[REG_PIND] |= (uint8_t)(1u << pin);
    else
        E.avr->data[REG_PIND] &= (uint8_t)~(1u << pin);
}

static void on_isr_pin(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq; (void)param;
    bool high = value & 1u;                   /* simavr sets 0x100 on output pins */
    if (high == E.isr_busy)
        return;
    E.isr_busy = high;
    uint64_t c = now_cycles();
    if (high) {
        E.isr_start = c;
    } else {
        uint64_t d = c - E.isr_start;
        E.isr_count++;
        E.isr_total_cycles += d;
        if (d > E.isr_max_cycles)
            E.isr_max_cycles = d;
    }
}

static void on_pwm_pin(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq; (void)value; (void)param;
    update_duty();                            /* PORTB1 as a plain output, or DDRB changes */
}

static void on_enable_pin(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq; (void)param;
    bool dd_out = (E.avr->data[REG_DDRD] >> PIN_MOTOR_EN) & 1;
    bool en = dd_out && (value & 1u);
    if (en == E.motor_enabled)
        return;
    E.motor_enabled = en;
    if (!en)
        E.t_enable_off_us = now_us();
}

/* The firmware feeds the watchdog once per main-loop pass and nowhere else (FW-12): the
 * gap between two WDR instructions is one pass. A probe module sees every ioctl first and
 * lets it through to the watchdog. */
static int probe_ioctl(struct avr_io_t *io, uint32_t ctl, void *param)
{
    (void)io; (void)param;
    if (ctl == AVR_IOCTL_WATCHDOG_RESET) {
        uint64_t c = now_cycles();
        if (E.wdr_count && c - E.wdr_last > E.loop_max_cycles)
            E.loop_max_cycles = c - E.wdr_last;
        E.wdr_last = c;
        E.wdr_count++;
    }
    return -1;
}

static avr_io_t g_probe = {.kind = "treadmill-probe", .ioctl = probe_ioctl};

/* ---------------------------------------------------------------- belt and sensor */

static bool motor_powered(void) { return belt_motor_powered(&E.belt); }

static avr_cycle_count_t belt_pin_release(struct avr_t *avr, avr_cycle_count_t when, void *p)
{
    (void)avr; (void)p; (void)when;
    E.belt_pin_low = false;
    drive_pd(PIN_BELT, true);
    return 0;
}

static avr_cycle_count_t belt_pulse(struct avr_t *avr, avr_cycle_count_t when, void *p)
{
    (void)p;
    E.pulses++;
    E.belt_pin_low = true;
    drive_pd(PIN_BELT, false);                /* falling edge: INT0 */
    avr_cycle_timer_register(avr, PULSE_LOW_CYCLES, belt_pin_release, NULL);
    (void)when;
    return 0;
}

static void on_belt_pulse(void *ctx, uint64_t t_us)
{
    (void)ctx;
    uint64_t at = t_us * (CPU_HZ / 1000000u);
    uint64_t now = now_cycles();
    avr_cycle_timer_register(E.avr, at > now ? at - now : 1u, belt_pulse, NULL);
}

/* Every millisecond: the drive the chip outputs now goes to the belt model, which runs one
 * millisecond ahead; the pulses it gives are scheduled at their exact cycle. */
static avr_cycle_count_t belt_step(struct avr_t *avr, avr_cycle_count_t when, void *p)
{
    (void)avr; (void)p;
    update_duty();
    belt_set_drive(&E.belt, E.duty, E.motor_enabled);
    belt_set_key(&E.belt, E.key_closed);
    belt_advance(&E.belt, now_us() + BELT_STEP_CYCLES / (CPU_HZ / 1000000u), on_belt_pulse, NULL);
    bool moving = belt_speed_kmh(&E.belt) > STANDSTILL_KMH;
    if (E.belt_moving && !moving)
        E.t_belt_rest_us = now_us() + BELT_STEP_CYCLES / (CPU_HZ / 1000000u);
    E.belt_moving = moving;
    return when + BELT_STEP_CYCLES;
}

/* ---------------------------------------------------------------- UART */

static void on_tx_frame(uint8_t msg_id, const uint8_t *pl, uint8_t len)
{
    if (msg_id != ID_STATUS || len != 17)
        return;
    uint64_t t = now_us();
    if (E.status_frames && t > E.t_last_status_us && t - E.t_last_status_us > E.status_gap_max_us)
        E.status_gap_max_us = t - E.t_last_status_us;
    E.t_last_status_us = t;
    E.status_frames++;
    E.fw_measured_kmh = (pl[0] | (pl[1] << 8)) / 100.0;
    E.fw_state = pl[4];
    E.fw_fault = pl[5];
}

static void on_rx_frame(uint8_t msg_id, const uint8_t *pl, uint8_t len)
{
    /* stamped when the frame's last byte is in the chip's receiver */
    uint64_t t = now_us() + RX_BYTE_CYCLES / (CPU_HZ / 1000000u);
    if (msg_id == ID_ESTOP) {
        E.t_estop_us = t;
    } else if (msg_id == ID_SET_SPEED && len == 6) {
        E.t_set_speed_us = t;
        E.last_set_speed_kmh = (pl[0] | (pl[1] << 8)) / 100.0;
        E.last_lease_ms = pl[4] | (pl[5] << 8);
    }
}

static void on_uart_out(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq; (void)param;
    uint8_t b = (uint8_t)value;
    snoop_feed(&E.snoop_tx, b, on_tx_frame);
    if (E.master_fd < 0 || !ring_put(&E.tx, b))
        E.tx_dropped++;
}

static void on_uart_xoff(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq; (void)param;
    E.uart_xoff = value != 0;
}

static void on_uart_xon(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq; (void)param;
    if (value)
        E.uart_xoff = false;
}

/* One byte every 10 bit times, like the wire: the chip's receiver sees the real pace. */
static avr_cycle_count_t uart_feed(struct avr_t *avr, avr_cycle_count_t when, void *p)
{
    (void)p;
    if (E.rx.len && !E.uart_xoff) {
        uint8_t b = (uint8_t)ring_get(&E.rx);
        snoop_feed(&E.snoop_rx, b, on_rx_frame);
        avr_raise_irq(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT), b);
    }
    return when + RX_BYTE_CYCLES;
}

/* ---------------------------------------------------------------- reset */

static void restore_inputs(void)
{
    drive_pd(PIN_BELT, true);
    drive_pd(PIN_KEY, !E.key_closed);
}

static void start_timers(void)
{
    avr_cycle_timer_register(E.avr, BELT_STEP_CYCLES, belt_step, NULL);
    avr_cycle_timer_register(E.avr, RX_BYTE_CYCLES, uart_feed, NULL);
}

/* Called by avr_reset() after the core cleared its registers and cycle timers: whatever
 * reset the chip (watchdog, `inject reboot`), the world outside it carries on. The timers are
 * registered again once avr_reset() has returned (some simavr versions zero the cycle count
 * at its very end, which would push timers registered here far into the future). */
static void on_mcu_reset(struct avr_t *avr)
{
    if (E.mcu_reset)
        E.mcu_reset(avr);
    E.resets++;
    E.uart_xoff = false;
    E.belt_pin_low = false;
    E.status_frames = 0;
    E.wdr_count = 0;            /* the boot's first pass is not a gap */
    E.timers_lost = true;
}

static void after_reset(void)
{
    E.timers_lost = false;
    restore_inputs();
    start_timers();
}

/* ---------------------------------------------------------------- pty */

static int open_pty(void)
{
    int master, slave;
    if (openpty(&master, &slave, NULL, NULL, NULL) < 0)
        return -1;
    struct termios t;
    tcgetattr(slave, &t);
    cfmakeraw(&t);
    tcsetattr(slave, TCSANOW, &t);
    fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
    const char *name = ttyname(slave);
    snprintf(E.pty_path, sizeof E.pty_path, "%s", name ? name : "?");
    /* keep our own slave fd open: reads on the master then never fail with EIO while the
     * host has the port closed */
    E.master_fd = master;
    E.slave_fd = slave;
    E.rx.len = 0;
    E.tx.len = 0;
    reply("PTY %s", E.pty_path);
    return 0;
}

static void close_pty(void)
{
    if (E.master_fd >= 0)
        close(E.master_fd);
    if (E.slave_fd >= 0)
        close(E.slave_fd);
    E.master_fd = E.slave_fd = -1;
    E.rx.len = E.tx.len = 0;
}

static void pump_pty(void)
{
    if (E.master_fd < 0)
        return;
    /* Read only what the ring can hold: a host writing faster than 115200 baud fills the
     * pty's buffer and blocks, as it would on a serial port. */
    uint8_t buf[512];
    while (E.rx.len < BUF_SIZE) {
        size_t room = BUF_SIZE - E.rx.len;
        ssize_t n = read(E.master_fd, buf, room < sizeof buf ? room : sizeof buf);
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n; i++)
            if (!ring_put(&E.rx, buf[i]))
                E.rx_dropped++;
    }
    while (E.tx.len) {
        size_t chunk = E.tx.len;
        if (E.tx.head + chunk > BUF_SIZE)
            chunk = BUF_SIZE - E.tx.head;
        ssize_t n = write(E.master_fd, E.tx.data + E.tx.head, chunk);
        if (n <= 0) {
            /* nobody reads: drop what does not fit, like a UART with no listener */
            if (n < 0 && errno == EAGAIN) {
                E.tx_dropped += E.tx.len;
                E.tx.len = 0;
            }
            break;
        }
        E.tx.head = (E.tx.head + (size_t)n) % BUF_SIZE;
        E.tx.len -= (size_t)n;
    }
}

/* ---------------------------------------------------------------- control commands */

static const char *HELP =
    "commands: inject FAULT [VALUE] | clear FAULT | key open | key closed | status | help; "
    "faults: sensor_freeze, runaway [km/h/s], stuck_speed, reboot, hang, disconnect "
    "(drop_frames, corrupt_bytes, lease_ignored: unsupported on the emulated chip)";

static const char *STATE_NAMES[] = {"boot", "idle", "running", "stopping", "fault"};
static const char *FAULT_NAMES[] = {
    "none", "lease_expired", "speed_above_ceiling", "accel_above_ceiling", "not_configured",
    "safety_key_open", "estop", "sensor_fault", "motor_fault", "bad_frame_flood", "overspeed",
    "internal"};

static void status_line(void)
{
    uint64_t isr_us100 = E.isr_max_cycles * 100u / (CPU_HZ / 1000000u);
    reply("OK status state=%s fault=%s belt_kmh=%.3f measured_kmh=%.2f duty_pct=%.2f "
          "motor_enabled=%d motor_powered=%d key=%s cable=%s boot=%u emu_us=%llu "
          "pulses=%llu isr_max_cycles=%llu isr_max_us=%llu.%02llu isr_count=%llu "
          "loop_max_us=%llu loop_passes=%llu "
          "status_frames=%llu status_gap_max_us=%llu "
          "t_estop_us=%llu t_set_speed_us=%llu lease_ms=%u set_speed_kmh=%.2f "
          "t_duty_drop_us=%llu t_duty_zero_us=%llu t_enable_off_us=%llu t_belt_rest_us=%llu "
          "behind_max_us=%llu rx_backlog=%zu uart_xoff=%d rx_dropped=%llu tx_dropped=%llu",
          (E.fw_state >= 0 && E.fw_state <= 4) ? STATE_NAMES[E.fw_state] : "unknown",
          (E.fw_fault >= 0 && E.fw_fault <= 11) ? FAULT_NAMES[E.fw_fault] : "unknown",
          belt_speed_kmh(&E.belt), E.fw_measured_kmh, E.duty * 100.0,
          E.motor_enabled ? 1 : 0, motor_powered() ? 1 : 0, E.key_closed ? "closed" : "open",
          E.master_fd >= 0 ? "in" : "out", E.resets, (unsigned long long)now_us(),
          (unsigned long long)E.pulses, (unsigned long long)E.isr_max_cycles,
          (unsigned long long)(isr_us100 / 100u), (unsigned long long)(isr_us100 % 100u),
          (unsigned long long)E.isr_count,
          (unsigned long long)(E.loop_max_cycles / (CPU_HZ / 1000000u)),
          (unsigned long long)E.wdr_count, (unsigned long long)E.status_frames,
          (unsigned long long)E.status_gap_max_us, (unsigned long long)E.t_estop_us,
          (unsigned long long)E.t_set_speed_us, E.last_lease_ms, E.last_set_speed_kmh,
          (unsigned long long)E.t_duty_drop_us, (unsigned long long)E.t_duty_zero_us,
          (unsigned long long)E.t_enable_off_us, (unsigned long long)E.t_belt_rest_us,
          (unsigned long long)E.behind_max_us,
          E.rx.len, E.uart_xoff ? 1 : 0, (unsigned long long)E.rx_dropped, (unsigned long long)E.tx_dropped);
}

/* Reset with the watchdog flag set, as the chip's watchdog would leave it. */
static void reboot_chip(void)
{
    avr_reset(E.avr);
    E.avr->data[REG_MCUSR] = MCUSR_WDRF;
    after_reset();
}

/* Stop the main loop for good with interrupts off: only the watchdog gets it out. The last
 * flash word (unused by the application) becomes `rjmp .-2` and the PC goes there. */
static void hang_chip(void)
{
    avr_t *avr = E.avr;
    uint32_t at = (avr->flashend - 1u) & ~1u;
    avr->flash[at] = 0xFF;
    avr->flash[at + 1] = 0xCF;
    avr->sreg[S_I] = 0;
    avr->pc = at;
}

static void command(char *line)
{
    char *words[4] = {0};
    int n = 0;
    for (char *tok = strtok(line, " \t\r\n"); tok && n < 4; tok = strtok(NULL, " \t\r\n"))
        words[n++] = tok;
    if (n == 0)
        return;
    for (char *c = words[0]; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');
    if (!strcmp(words[0], "help") && n == 1) {
        reply("OK %s", HELP);
    } else if (!strcmp(words[0], "status") && n == 1) {
        status_line();
    } else if (!strcmp(words[0], "key") && n == 2 &&
               (!strcmp(words[1], "open") || !strcmp(words[1], "closed"))) {
        E.key_closed = !strcmp(words[1], "closed");
        drive_pd(PIN_KEY, !E.key_closed);
        belt_set_key(&E.belt, E.key_closed);   /* the key is in the motor power path */
        reply("OK key %s", words[1]);
    } else if ((!strcmp(words[0], "inject") || !strcmp(words[0], "clear")) && (n == 2 || n == 3)) {
        bool on = !strcmp(words[0], "inject");
        char *f = words[1];
        for (char *c = f; *c; c++)
            if (*c == '-')
                *c = '_';
        if (!on && n == 3) {
            reply("ERR `clear` takes only a fault name: %s", HELP);
        } else if (!strcmp(f, "sensor_freeze") && n == 2) {
            belt_set_sensor_frozen(&E.belt, on);
            reply("OK %s %s", words[0], f);
        } else if (!strcmp(f, "runaway")) {
            double kmh_s = 2.0;
            if (n == 3) {
                char *end;
                kmh_s = strtod(words[2], &end);
                if (*end || !(kmh_s > 0) || kmh_s > 100) {
                    reply("ERR runaway rate %s is not a number in (0, 100] km/h/s", words[2]);
                    return;
                }
            }
            belt_set_runaway(&E.belt, on ? kmh_s : 0.0);
            reply("OK %s runaway%s%s", words[0], n == 3 ? " " : "", n == 3 ? words[2] : "");
        } else if (!strcmp(f, "stuck_speed") && n == 2) {
            belt_set_stuck(&E.belt, on);
            reply("OK %s stuck_speed", words[0]);
        } else if (!strcmp(f, "reboot") && n == 2) {
            if (on) {
                reboot_chip();
                reply("OK inject reboot");
            } else {
                reply("OK clear reboot");
            }
        } else if (!strcmp(f, "hang") && n == 2) {
            if (on) {
                hang_chip();
                reply("OK inject hang");
            } else {
                reply("OK clear hang");
            }
        } else if (!strcmp(f, "disconnect") && n == 2) {
            if (on) {
                close_pty();
                reply("OK inject disconnect");
            } else if (E.master_fd < 0) {
                if (open_pty() < 0)
                    reply("ERR could not open a pseudo-terminal: %s", strerror(errno));
                else
                    reply("OK clear disconnect");
            } else {
                reply("OK clear disconnect");
            }
        } else if (!strcmp(f, "drop_frames") || !strcmp(f, "corrupt_bytes") ||
                   !strcmp(f, "lease_ignored")) {
            reply("ERR unsupported: %s is not modelled by the emulated chip", f);
        } else {
            reply("ERR unknown fault %s: %s", f, HELP);
        }
    } else {
        reply("ERR unknown command %s: %s", words[0], HELP);
    }
}

static void pump_stdin(bool *open)
{
    static char line[512];
    static size_t len;
    char buf[512];
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n == 0) {
        *open = false;                         /* EOF: keep running until a signal */
        return;
    }
    if (n < 0)
        return;
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == '\n') {
            line[len] = 0;
            command(line);
            len = 0;
        } else if (len < sizeof line - 1) {
            line[len++] = buf[i];
        }
    }
}

/* ---------------------------------------------------------------- main */

static void usage(void)
{
    fprintf(stderr, "usage: treadmill-emu [--fast] [--distance-per-pulse-mm MM] FIRMWARE.elf\n");
}

int main(int argc, char **argv)
{
    const char *elf = NULL;
    int out_fd = dup(STDOUT_FILENO);
    g_out = out_fd >= 0 ? fdopen(out_fd, "w") : NULL;
    if (!g_out || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
        perror("treadmill-emu: stdout");
        return 1;
    }
    E.mm_per_pulse = 12.5;
    E.master_fd = E.slave_fd = -1;
    E.fw_state = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--fast")) {
            E.fast = true;
        } else if (!strcmp(argv[i], "--distance-per-pulse-mm") && i + 1 < argc) {
            E.mm_per_pulse = strtod(argv[++i], NULL);
            if (!(E.mm_per_pulse >= 0.1 && E.mm_per_pulse <= 300.0)) {
                fprintf(stderr, "treadmill-emu: --distance-per-pulse-mm must be 0.1..300\n");
                return 2;
            }
        } else if (argv[i][0] == '-') {
            usage();
            return 2;
        } else {
            elf = argv[i];
        }
    }
    if (!elf) {
        usage();
        return 2;
    }
    elf_firmware_t fw;
    memset(&fw, 0, sizeof fw);
    if (elf_read_firmware(elf, &fw) != 0) {
        fprintf(stderr, "treadmill-emu: cannot load %s: not an AVR ELF (build it with "
                        "`make -C firmware`)\n", elf);
        return 1;
    }
    if (!fw.mmcu[0])
        snprintf(fw.mmcu, sizeof fw.mmcu, "atmega328p");
    fw.frequency = CPU_HZ;
    E.avr = avr_make_mcu_by_name(fw.mmcu);
    if (!E.avr) {
        fprintf(stderr, "treadmill-emu: simavr does not know the MCU %s\n", fw.mmcu);
        return 1;
    }
    avr_init(E.avr);
    avr_load_firmware(E.avr, &fw);
    E.avr->frequency = CPU_HZ;
    E.avr->log = LOG_ERROR;

    /* no console echo of the USART, no sleeping while the chip polls it: we pace it */
    uint32_t flags = 0;
    avr_ioctl(E.avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
    flags &= ~(uint32_t)(AVR_UART_FLAG_STDIO | AVR_UART_FLAG_POLL_SLEEP);
    avr_ioctl(E.avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
    avr_irq_register_notify(avr_io_getirq(E.avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT),
                            on_uart_out, NULL);
    avr_irq_register_notify(avr_io_getirq(E.avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF),
                            on_uart_xoff, NULL);
    avr_irq_register_notify(avr_io_getirq(E.avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON),
                            on_uart_xon, NULL);

    avr_irq_register_notify(port_irq('B', PIN_ISR_BUSY), on_isr_pin, NULL);
    avr_irq_register_notify(port_irq('B', PIN_PWM), on_pwm_pin, NULL);
    avr_irq_register_notify(port_irq('D', PIN_MOTOR_EN), on_enable_pin, NULL);
    /* 16-bit registers change on the low-byte write (the high byte waits in TEMP on the
     * chip), so the duty is recomputed there, never between the two halves */
    const avr_io_addr_t timer_regs[] = {REG_TCCR1A, REG_TCCR1B, REG_OCR1AL, REG_ICR1L};
    for (size_t i = 0; i < sizeof timer_regs / sizeof timer_regs[0]; i++)
        avr_register_io_write(E.avr, timer_regs[i], on_timer_reg_write, NULL);

    avr_register_io(E.avr, &g_probe);
    E.mcu_reset = E.avr->reset;
    E.avr->reset = on_mcu_reset;
    belt_params_t params;
    belt_default_params(&params);
    params.mm_per_pulse = E.mm_per_pulse;
    belt_init(&E.belt, &params, now_us());
    E.key_closed = true;
    restore_inputs();
    start_timers();

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    fcntl(STDIN_FILENO, F_SETFL, fcntl(STDIN_FILENO, F_GETFL) | O_NONBLOCK);
    if (open_pty() < 0) {
        fprintf(stderr, "treadmill-emu: cannot open a pseudo-terminal: %s\n", strerror(errno));
        return 1;
    }

    bool stdin_open = true;
    uint64_t t0_ns = mono_ns();
    uint64_t c0 = now_cycles();
    while (!g_stop) {
        /* run the chip up to real time (1 ms slices) */
        uint64_t target;
        if (E.fast) {
            target = now_cycles() + CYCLES_PER_MS;
        } else {
            uint64_t elapsed_ns = mono_ns() - t0_ns;
            target = c0 + elapsed_ns * (CPU_HZ / 1000000u) / 1000u;
            uint64_t c = now_cycles();
            if (target > c + 100u * CYCLES_PER_MS) {
                /* far behind (a loaded host): note it and let the chip's time slip rather
                 * than run a burst */
                uint64_t behind_us = (target - c) / (CPU_HZ / 1000000u);
                if (behind_us > E.behind_max_us)
                    E.behind_max_us = behind_us;
                c0 -= target - c - CYCLES_PER_MS;
                target = c + CYCLES_PER_MS;
            }
        }
        while (now_cycles() < target) {
            int st = avr_run(E.avr);
            if (E.timers_lost)
                after_reset();
            if (st == cpu_Done || st == cpu_Crashed) {
                fprintf(stderr, "treadmill-emu: the emulated chip stopped (%s) at pc 0x%04x\n",
                        st == cpu_Done ? "done" : "crashed", E.avr->pc);
                close_pty();
                return 1;
            }
        }
        pump_pty();
        struct pollfd fds[2];
        nfds_t nfds = 0;
        if (stdin_open)
            fds[nfds++] = (struct pollfd){.fd = STDIN_FILENO, .events = POLLIN};
        if (E.master_fd >= 0 && E.rx.len < BUF_SIZE)
            fds[nfds++] = (struct pollfd){.fd = E.master_fd, .events = POLLIN};
        int timeout_ms = 0;
        if (!E.fast) {
            /* sleep while the chip is ahead of real time (at most a few ms) */
            int64_t ahead_ns = (int64_t)((now_cycles() - c0) * 1000u / (CPU_HZ / 1000000u)) -
                               (int64_t)(mono_ns() - t0_ns);
            if (ahead_ns > 0)
                timeout_ms = ahead_ns >= 10000000 ? 10 : (int)(ahead_ns / 1000000) + 1;
        }
        if (poll(fds, nfds, timeout_ms) > 0) {
            for (nfds_t i = 0; i < nfds; i++) {
                if (!(fds[i].revents & (POLLIN | POLLHUP)))
                    continue;
                if (fds[i].fd == STDIN_FILENO)
                    pump_stdin(&stdin_open);
                else
                    pump_pty();
            }
        }
    }
    close_pty();
    return 0;
}
