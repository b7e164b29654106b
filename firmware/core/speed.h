/* Belt speed from the sensor's pulse periods (FW-15). Portable C11, integer only.
 *
 * The reading is distance / period, the period averaged over the pulses of the last
 * SENSOR_GATE_MS so that one jittered edge moves it little. While no pulse has come for
 * longer than the last period the reading is bounded by distance / time since the last pulse
 * (the belt cannot be faster than that); after SENSOR_STALE_FACTOR periods (at most
 * SENSOR_STALE_CAP_MS) it is stale: it reads 0 and needs two fresh pulses for the next
 * reading. The same rules as the simulator's sensor (firmware_bridge/sim/physics.py). */
#ifndef SPEED_H
#define SPEED_H

#include <stdbool.h>
#include <stdint.h>

#include "fw_config.h"

typedef struct {
    uint32_t um_per_pulse;
    uint32_t t_us[SENSOR_HISTORY]; /* pulse times, newest at head - 1 */
    uint8_t head;
    uint8_t count;          /* pulses since the reading was last stale (capped) */
    uint32_t last_period_us; /* valid when count >= 2 */
    uint16_t reading_x100;  /* 0.01 km/h */
    bool quiet;             /* no sign of motion: no pulse within the stale window */
    uint32_t pulses;        /* total, for diagnostics */
} speed_est_t;

void speed_init(speed_est_t *s, uint32_t um_per_pulse);
/* A sensor edge at t_us (microseconds, wrapping; never earlier than the previous one). */
void speed_pulse(speed_est_t *s, uint32_t t_us);
/* Recompute the reading at now_us. */
void speed_update(speed_est_t *s, uint32_t now_us);

/* 0.01 km/h for `intervals` pulse intervals of um_per_pulse spread over span_us. */
uint16_t speed_from_period(uint32_t um_per_pulse, uint32_t intervals, uint32_t span_us);

#endif /* SPEED_H */
