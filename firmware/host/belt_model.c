#include "belt_model.h"

#include <math.h>
#include <string.h>

#define KMH_PER_MM_PER_MS 3.6 /* 1 mm/ms = 1 m/s = 3.6 km/h */
#define STEP_US 1000u
#define REST_KMH 1e-3

void belt_default_params(belt_params_t *p) {
    p->belt_time_constant_ms = 150.0;
    p->motor_ramp_kmh_s = 12.0;
    p->motor_top_kmh = 22.0;
    p->power_cut_decel_kmh_s = 10.0;
    p->full_scale_kmh = 12.9;
    p->full_scale_duty = 0.85;
    p->mm_per_pulse = 12.5;
}

void belt_init(belt_t *b, const belt_params_t *p, uint64_t now_us) {
    memset(b, 0, sizeof *b);
    b->p = *p;
    b->now_us = now_us;
    b->key_closed = true;
    b->next_pulse_mm = p->mm_per_pulse;
}

void belt_set_drive(belt_t *b, double duty, bool enable) {
    if (!(duty >= 0.0)) {
        duty = 0.0; /* NaN or negative */
    }
    if (duty > 1.0) {
        duty = 1.0;
    }
    b->duty = duty;
    b->enable = enable;
}

void belt_set_key(belt_t *b, bool closed) { b->key_closed = closed; }

void belt_set_runaway(belt_t *b, double runaway_kmh_s) {
    b->runaway_kmh_s = runaway_kmh_s > 0.0 ? runaway_kmh_s : 0.0;
}

void belt_set_stuck(belt_t *b, bool stuck) { b->stuck = stuck; }

void belt_set_sensor_frozen(belt_t *b, bool frozen) {
    if (frozen && !b->frozen) {
        b->frozen_kmh = b->belt_kmh < REST_KMH ? 0.0 : b->belt_kmh;
        b->frozen_mm = b->distance_mm;
    } else if (!frozen && b->frozen) {
        /* The sensor follows the belt again from where the belt is now. */
        b->next_pulse_mm = b->distance_mm + b->p.mm_per_pulse;
    }
    b->frozen = frozen;
}

bool belt_motor_powered(const belt_t *b) { return b->enable && b->key_closed; }

double belt_setpoint_kmh(const belt_t *b) {
    double duty = b->duty > b->p.full_scale_duty ? b->p.full_scale_duty : b->duty;
    return duty / b->p.full_scale_duty * b->p.full_scale_kmh;
}

double belt_speed_kmh(const belt_t *b) { return b->belt_kmh; }
double belt_motor_kmh(const belt_t *b) { return b->motor_kmh; }
double belt_distance_m(const belt_t *b) { return b->distance_mm / 1000.0; }
uint64_t belt_pulses(const belt_t *b) { return b->pulses; }

double belt_pulse_period_us(const belt_t *b, double speed_kmh) {
    if (speed_kmh <= 0.0) {
        return 0.0;
    }
    return b->p.mm_per_pulse * KMH_PER_MM_PER_MS / speed_kmh * 1000.0;
}

static void step(belt_t *b, uint32_t dt_us, belt_pulse_fn on_pulse, void *ctx) {
    const belt_params_t *p = &b->p;
    double dt_s = dt_us / 1e6;
    double dt_ms = dt_us / 1e3;
    uint64_t start_us = b->now_us;
    bool powered = belt_motor_powered(b);

    /* 1. Motor board output. */
    if (!powered) {
        b->motor_kmh = fmax(0.0, b->motor_kmh - p->power_cut_decel_kmh_s * dt_s);
    } else if (b->runaway_kmh_s > 0.0) {
        b->motor_kmh = fmin(p->motor_top_kmh, b->motor_kmh + b->runaway_kmh_s * dt_s);
    } else if (!b->stuck) {
        double target = fmin(belt_setpoint_kmh(b), p->motor_top_kmh);
        double slew = p->motor_ramp_kmh_s * dt_s;
        if (b->motor_kmh < target) {
            b->motor_kmh = fmin(target, b->motor_kmh + slew);
        } else {
            b->motor_kmh = fmax(target, b->motor_kmh - slew);
        }
    }

    /* 2. Belt: first-order lag toward the board's output. */
    double before = b->belt_kmh;
    double alpha = 1.0 - exp(-dt_ms / p->belt_time_constant_ms);
    double after = before + (b->motor_kmh - before) * alpha;
    if (!powered) {
        after = fmin(after, fmax(0.0, before - p->power_cut_decel_kmh_s * dt_s));
    }
    if (after < REST_KMH && b->motor_kmh < REST_KMH) {
        after = 0.0;
    }
    b->belt_kmh = after;

    /* 3. Distance and sensor pulses, interpolated within the step. */
    double travelled = 0.5 * (before + after) / KMH_PER_MM_PER_MS * dt_ms;
    double new_distance = b->distance_mm + travelled;
    if (b->frozen) {
        double frozen_travel = b->frozen_kmh / KMH_PER_MM_PER_MS * dt_ms;
        double new_frozen = b->frozen_mm + frozen_travel;
        while (frozen_travel > 0.0 && new_frozen >= b->next_pulse_mm) {
            double frac = (b->next_pulse_mm - b->frozen_mm) / frozen_travel;
            b->pulses++;
            if (on_pulse != NULL) {
                on_pulse(ctx, start_us + (uint64_t)llround(frac * dt_us));
            }
            b->next_pulse_mm += p->mm_per_pulse;
        }
        b->frozen_mm = new_frozen;
    } else {
        while (travelled > 0.0 && new_distance >= b->next_pulse_mm) {
            double frac = (b->next_pulse_mm - b->distance_mm) / travelled;
            b->pulses++;
            if (on_pulse != NULL) {
                on_pulse(ctx, start_us + (uint64_t)llround(frac * dt_us));
            }
            b->next_pulse_mm += p->mm_per_pulse;
        }
    }
    b->distance_mm = new_distance;
    b->now_us = start_us + dt_us;
}

void belt_advance(belt_t *b, uint64_t now_us, belt_pulse_fn on_pulse, void *ctx) {
    while (b->now_us < now_us) {
        uint64_t left = now_us - b->now_us;
        uint32_t dt = left > STEP_US ? STEP_US : (uint32_t)left;
        step(b, dt, on_pulse, ctx);
    }
}
