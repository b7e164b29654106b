/* Compiled-in constants of the reference firmware (docs/firmware.md, "Ceilings").
 *
 * The ceilings are fixed at build time. No message can raise them: CONFIGURE may only set
 * limits at or below them (FW-4), and SET_SPEED above the configured limits latches a fault.
 * To change a ceiling, rebuild: `make -C firmware CEIL_SPEED_X100=1000` (every value can be
 * overridden on the make command line, see firmware/Makefile) and re-run
 * `treadmill verify-config` on the machine.
 *
 * Units are in the names: _X100 is 0.01 km/h or 0.01 km/h/s (the wire units), _MS ms,
 * _UM micrometres. */
#ifndef FW_CONFIG_H
#define FW_CONFIG_H

/* ---- firmware identity (HELLO fw_version) ---- */
#ifndef FW_VERSION_MAJOR
#define FW_VERSION_MAJOR 1
#endif
#ifndef FW_VERSION_MINOR
#define FW_VERSION_MINOR 0
#endif
#ifndef FW_VERSION_PATCH
#define FW_VERSION_PATCH 0 /* the build number, set by the Makefile */
#endif
#ifndef FW_BUILD_ID
#define FW_BUILD_ID "unknown"
#endif

/* ---- ceilings (FW-4), reported in HELLO (speed, accel) ---- */
#ifndef CEIL_SPEED_X100
#define CEIL_SPEED_X100 1200u /* 12.00 km/h: below the board's full scale (PWM_FULL_SCALE) */
#endif
#ifndef CEIL_ACCEL_X100
#define CEIL_ACCEL_X100 200u /* 2.00 km/h/s */
#endif
#ifndef CEIL_DECEL_X100
#define CEIL_DECEL_X100 1000u /* 10.00 km/h/s: highest CONFIGURE max_decel accepted */
#endif
#ifndef CEIL_LEASE_MS
#define CEIL_LEASE_MS 1000u /* highest CONFIGURE max_lease_ms accepted */
#endif
#ifndef DEFAULT_DECEL_X100
#define DEFAULT_DECEL_X100 360u /* category 1 ramp before any CONFIGURE (1.0 m/s^2) */
#endif

/* ---- motor board (MC2100): belt speed at the highest duty the board follows ---- */
#ifndef PWM_FULL_SCALE_KMH_X100
#define PWM_FULL_SCALE_KMH_X100 1290u /* 12.90 km/h at 85 % duty (calibrate per machine) */
#endif
#define PWM_FULL_SCALE_DUTY_PERMILLE 850u /* the MC2100 follows 0..85 % */

/* ---- speed sensor (FW-15) ---- */
#ifndef SENSOR_UM_PER_PULSE
#define SENSOR_UM_PER_PULSE 12500ul /* 12.5 mm of belt per pulse: 20 magnets on the roller */
#endif
#define SENSOR_UM_PER_PULSE_MAX 300000ul /* 300 mm: coarser sensors are refused at build */
#define SENSOR_STALE_FACTOR 3u     /* no pulse for 3 periods: the reading is stale (0) */
#define SENSOR_STALE_CAP_MS 2000u  /* ... but never wait longer than this */
#define SENSOR_GATE_MS 100u        /* average the periods of the pulses in this window */
#define SENSOR_HISTORY 32u         /* pulse timestamps kept (power of two) */

/* ---- timing ---- */
#define SELF_TEST_MS 50u        /* BOOT lasts this long (FW-1) */
#define STATUS_PERIOD_MS 20u    /* unsolicited STATUS at 50 Hz (FW-11) */
#define STANDSTILL_X100 10u     /* measured at or below 0.10 km/h: at rest */

/* ---- self-supervision (FW-12, FW-13), the simulator's values ---- */
#define OVERSPEED_MARGIN_X100 50u    /* measured > peak set-point + max(0.50 km/h, */
#define OVERSPEED_REL_PERCENT 10u    /*   10 % of the peak) ... */
#define OVERSPEED_WINDOW_MS 1500u    /* peak over this window (covers the sensor's lag) */
#define OVERSPEED_MS 300u            /* ... for this long: OVERSPEED */
#define SENSOR_MIN_X100 100u         /* set-point at or above 1.00 km/h ... */
#define SENSOR_SILENT_MS 2500u       /* ... and the sensor reads 0 this long: SENSOR_FAULT */
#define BAD_FRAME_LIMIT 20u          /* more rejected frames than this ... */
#define BAD_FRAME_WINDOW_MS 1000u    /* ... within this window while RUNNING: BAD_FRAME_FLOOD */

/* Checked at build time: a ceiling the board cannot drive, or a sensor too coarse for the
 * arithmetic, does not compile. */
_Static_assert(CEIL_SPEED_X100 <= 3000u, "speed ceiling above the protocol range (30 km/h)");
_Static_assert(CEIL_SPEED_X100 <= PWM_FULL_SCALE_KMH_X100,
               "speed ceiling above what the motor board can be asked for");
_Static_assert(CEIL_ACCEL_X100 >= 1u && CEIL_ACCEL_X100 <= 2000u, "accel ceiling out of range");
_Static_assert(CEIL_DECEL_X100 >= 1u && CEIL_DECEL_X100 <= 2000u, "decel ceiling out of range");
_Static_assert(DEFAULT_DECEL_X100 >= 1u && DEFAULT_DECEL_X100 <= CEIL_DECEL_X100,
               "default deceleration must be within the deceleration ceiling");
_Static_assert(CEIL_LEASE_MS >= 1u && CEIL_LEASE_MS <= 10000u, "lease ceiling out of range");
_Static_assert(SENSOR_UM_PER_PULSE >= 100ul && SENSOR_UM_PER_PULSE <= SENSOR_UM_PER_PULSE_MAX,
               "sensor distance per pulse out of the supported 0.1..300 mm");
_Static_assert((SENSOR_HISTORY & (SENSOR_HISTORY - 1u)) == 0u, "SENSOR_HISTORY: power of two");

#endif /* FW_CONFIG_H */
