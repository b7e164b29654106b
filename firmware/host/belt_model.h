/* The MC2100 motor board, the belt and the speed sensor, as a plain C model shared by the
 * native host build (firmware/host) and the simavr harness (firmware/emu). Self-contained:
 * no dependency on the firmware core. Numbers as the Python simulator's physics
 * (firmware_bridge/sim/physics.py), without the walker's foot strikes and the sensor jitter
 * (this model is deterministic).
 *
 * The chain, from the firmware's output pins to what the firmware reads back:
 * 1. Motor board: its set-point is the PWM duty, speed = duty / full_scale_duty *
 *    full_scale_kmh (12.9 km/h at 85 %, duty above 85 % counts as 85 %); it slews its output
 *    toward the set-point at motor_ramp_kmh_s. It drives only while motor power is on: the
 *    enable output (D7, the relay) HIGH **and** the safety key circuit closed (the key is in
 *    the power path, whatever the firmware does). Unpowered, the output falls at
 *    power_cut_decel_kmh_s. Faults: runaway (output climbs at a rate whatever it is asked, up
 *    to top_kmh) and stuck (output holds); neither acts while unpowered.
 * 2. Belt: first-order lag (time constant belt_time_constant_ms) toward the board's output;
 *    unpowered it is braked, never faster than the decaying drive.
 * 3. Sensor: one pulse every mm_per_pulse of belt travel (12.5 mm, FW-15), its time
 *    interpolated inside the integration step. Fault sensor_freeze: the sensor keeps
 *    reporting the speed it had when frozen (pulses continue at that period; none if the belt
 *    was at rest), whatever the belt does, like the simulator's frozen reading.
 *
 * Time is in microseconds (uint64_t, from any origin); the model integrates in steps of at
 * most 1 ms. */
#ifndef BELT_MODEL_H
#define BELT_MODEL_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    double belt_time_constant_ms;  /* 150 */
    double motor_ramp_kmh_s;       /* 12: the board's own slew limit */
    double motor_top_kmh;          /* 22: the board cannot drive the belt faster */
    double power_cut_decel_kmh_s;  /* 10: dynamic brake and belt friction, unpowered */
    double full_scale_kmh;         /* 12.9 km/h ... */
    double full_scale_duty;        /* ... at duty 0.85 */
    double mm_per_pulse;           /* 12.5 */
} belt_params_t;

typedef void (*belt_pulse_fn)(void *ctx, uint64_t t_us);

typedef struct {
    belt_params_t p;
    uint64_t now_us;
    bool started;
    /* inputs */
    double duty;
    bool enable;
    bool key_closed;
    /* faults */
    double runaway_kmh_s; /* > 0: runaway at this rate */
    bool stuck;
    bool frozen;
    double frozen_kmh;
    /* state */
    double motor_kmh;
    double belt_kmh;
    double distance_mm;
    double next_pulse_mm;
    double frozen_mm; /* distance the frozen sensor has reported */
    uint64_t pulses;
} belt_t;

void belt_default_params(belt_params_t *p);
void belt_init(belt_t *b, const belt_params_t *p, uint64_t now_us);

/* Inputs: PWM duty 0..1 (fraction of the period the signal is high), the enable output
 * and the safety key circuit. */
void belt_set_drive(belt_t *b, double duty, bool enable);
void belt_set_key(belt_t *b, bool closed);
/* Faults. runaway_kmh_s <= 0 ends a runaway. */
void belt_set_runaway(belt_t *b, double runaway_kmh_s);
void belt_set_stuck(belt_t *b, bool stuck);
void belt_set_sensor_frozen(belt_t *b, bool frozen);

/* Advance to now_us (earlier times are ignored); on_pulse (may be NULL) is called for each
 * sensor pulse, in order, with its time (<= now_us). */
void belt_advance(belt_t *b, uint64_t now_us, belt_pulse_fn on_pulse, void *ctx);

bool belt_motor_powered(const belt_t *b);
/* The board's set-point from the duty (km/h). */
double belt_setpoint_kmh(const belt_t *b);
double belt_speed_kmh(const belt_t *b);
double belt_motor_kmh(const belt_t *b);
double belt_distance_m(const belt_t *b);
uint64_t belt_pulses(const belt_t *b);
/* Pulse period (us) of a belt at speed_kmh; 0 at rest. */
double belt_pulse_period_us(const belt_t *b, double speed_kmh);

#endif /* BELT_MODEL_H */
