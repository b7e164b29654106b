#include "speed.h"

#include <string.h>

void speed_init(speed_est_t *s, uint32_t um_per_pulse) {
    memset(s, 0, sizeof *s);
    s->um_per_pulse = um_per_pulse;
    s->quiet = true;
}

uint16_t speed_from_period(uint32_t um_per_pulse, uint32_t intervals, uint32_t span_us) {
    /* um/us = m/s; x3.6 km/h; x100 wire units: 360 * um / us. Fits 32 bits for
     * um_per_pulse <= 300 mm and intervals < SENSOR_HISTORY (fw_config.h). */
    if (span_us == 0u || intervals == 0u) {
        return 0u;
    }
    uint32_t num = um_per_pulse * 360u * intervals;
    uint32_t v = (num + span_us / 2u) / span_us;
    return v > 0xFFFFu ? 0xFFFFu : (uint16_t)v;
}

void speed_pulse(speed_est_t *s, uint32_t t_us) {
    if (s->count > 0u) {
        uint32_t last = s->t_us[(uint8_t)(s->head - 1u) & (SENSOR_HISTORY - 1u)];
        uint32_t period = t_us - last;
        if (period == 0u || period > 0x7FFFFFFFul) {
            return; /* not after the previous edge: ignore */
        }
        s->last_period_us = period;
    }
    s->t_us[s->head] = t_us;
    s->head = (uint8_t)((s->head + 1u) & (SENSOR_HISTORY - 1u));
    if (s->count < SENSOR_HISTORY) {
        s->count++;
    }
    s->pulses++;
}

static void speed_forget(speed_est_t *s) {
    s->count = 0;
    s->last_period_us = 0;
}

void speed_update(speed_est_t *s, uint32_t now_us) {
    if (s->count == 0u) {
        s->quiet = true;
        s->reading_x100 = 0;
        return;
    }
    uint32_t last = s->t_us[(uint8_t)(s->head - 1u) & (SENSOR_HISTORY - 1u)];
    uint32_t since_us = now_us - last;
    if (since_us > 0x7FFFFFFFul) {
        since_us = 0; /* the pulse was stamped after now (a race with the interrupt) */
    }
    const uint32_t cap_us = (uint32_t)SENSOR_STALE_CAP_MS * 1000u;
    if (s->count == 1u) {
        /* One pulse since rest: no period yet, so no reading, but the belt may move. */
        if (since_us > cap_us) {
            speed_forget(s);
            s->quiet = true;
        } else {
            s->quiet = false;
        }
        s->reading_x100 = 0;
        return;
    }
    uint32_t period = s->last_period_us;
    uint32_t stale_us = period > cap_us / SENSOR_STALE_FACTOR ? cap_us : period * SENSOR_STALE_FACTOR;
    if (since_us > stale_us) {
        speed_forget(s);
        s->quiet = true;
        s->reading_x100 = 0;
        return;
    }
    s->quiet = false;
    /* Pulses within the gate before the last one. */
    const uint32_t gate_us = (uint32_t)SENSOR_GATE_MS * 1000u;
    uint8_t n = 1;
    uint32_t oldest = last;
    while (n < s->count) {
        uint32_t t = s->t_us[(uint8_t)(s->head - 1u - n) & (SENSOR_HISTORY - 1u)];
        if (last - t > gate_us) {
            break;
        }
        oldest = t;
        n++;
    }
    uint32_t intervals = 1;
    uint32_t span = period;
    if (n >= 3u) {
        intervals = (uint32_t)(n - 1u);
        span = last - oldest;
    }
    /* Bounded by the time since the last pulse: the belt cannot be faster than that. */
    if (since_us > span / intervals) {
        intervals = 1;
        span = since_us;
    }
    s->reading_x100 = speed_from_period(s->um_per_pulse, intervals, span);
}
