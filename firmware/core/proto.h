/* Framing, stream decoder and message encoding of the firmware link (docs/protocol.md).
 * Portable C11, no hardware access, no allocation: the decoder holds at most 53 bytes
 * between calls and never fails on any input. */
#ifndef PROTO_H
#define PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "msg_table.h"

#define PROTO_SYNC 0xA5u
#define PROTO_MAX_PAYLOAD 48u
#define PROTO_HEADER 4u /* SYNC LEN SEQ MSG_ID */
#define PROTO_MAX_FRAME (PROTO_HEADER + PROTO_MAX_PAYLOAD + 2u) /* 54 */

/* FwState, FwFault, NakReason, ResetCause (docs/protocol.md §5.2). */
enum { ST_BOOT = 0, ST_IDLE = 1, ST_RUNNING = 2, ST_STOPPING = 3, ST_FAULT = 4 };
enum {
    FAULT_NONE = 0,
    FAULT_LEASE_EXPIRED = 1,
    FAULT_SPEED_ABOVE_CEILING = 2,
    FAULT_ACCEL_ABOVE_CEILING = 3,
    FAULT_NOT_CONFIGURED = 4,
    FAULT_SAFETY_KEY_OPEN = 5,
    FAULT_ESTOP = 6,
    FAULT_SENSOR_FAULT = 7,
    FAULT_MOTOR_FAULT = 8,
    FAULT_BAD_FRAME_FLOOD = 9,
    FAULT_OVERSPEED = 10,
    FAULT_INTERNAL = 11
};
enum {
    NAK_UNKNOWN_MESSAGE = 1,
    NAK_BAD_PAYLOAD = 2,
    NAK_OUT_OF_RANGE = 3,
    NAK_REFUSED_IN_STATE = 4,
    NAK_NOT_CONFIGURED = 5,
    NAK_ABOVE_CEILING = 6,
    NAK_CONFIG_CHECKSUM = 7,
    NAK_NO_HANDSHAKE = 8,
    NAK_BELT_MOVING = 9
};
enum {
    RESET_POWER_ON = 0,
    RESET_WATCHDOG = 1,
    RESET_BROWNOUT = 2,
    RESET_SOFTWARE = 3,
    RESET_EXTERNAL = 4,
    RESET_UNKNOWN = 255
};

typedef struct {
    uint8_t seq;
    uint8_t id;
    uint8_t len;
    uint8_t payload[PROTO_MAX_PAYLOAD];
} frame_t;

typedef enum {
    DEC_FRAME = 1,  /* a valid frame (CRC, known id, length and every field in range) */
    DEC_REJECT = 2  /* CRC-valid, refused for its content: answer NAK nak_reason */
} dec_kind_t;

typedef struct {
    uint8_t kind; /* dec_kind_t */
    uint8_t nak_reason; /* DEC_REJECT: NAK_UNKNOWN_MESSAGE, NAK_BAD_PAYLOAD or NAK_OUT_OF_RANGE */
    frame_t frame;  /* DEC_REJECT: seq and id are valid, the payload is not */
} dec_event_t;

/* Counters as firmware_bridge.wire.codec.DecoderStats. */
typedef struct {
    uint32_t frames;
    uint32_t crc_errors;
    uint32_t oversize;
    uint32_t unknown_ids;
    uint32_t bad_payloads;
    uint32_t bytes_skipped;
    uint32_t resyncs;
} dec_stats_t;

typedef struct {
    uint8_t buf[2u * PROTO_MAX_FRAME];
    uint8_t start;
    uint8_t n;
    bool discarding;
    dec_stats_t stats;
} decoder_t;

void dec_init(decoder_t *d);
/* Append one received byte. Call dec_poll until it returns false before the next push. */
void dec_push(decoder_t *d, uint8_t byte);
/* The next decoded event, or false when more bytes are needed. */
bool dec_poll(decoder_t *d, dec_event_t *ev);
/* crc_errors + oversize + unknown_ids + bad_payloads. */
uint32_t dec_errors(const decoder_t *d);

/* Check a payload against the generated table: 0 when valid, else the NAK reason
 * (UNKNOWN_MESSAGE, BAD_PAYLOAD for a wrong length, OUT_OF_RANGE for a field). */
uint8_t proto_validate(uint8_t id, const uint8_t *payload, uint8_t len);

/* Build a complete frame into out (at least PROTO_MAX_FRAME bytes); returns its length,
 * 0 if len is above PROTO_MAX_PAYLOAD. */
uint8_t proto_encode(uint8_t *out, uint8_t seq, uint8_t id, const uint8_t *payload, uint8_t len);

/* Little-endian field access. */
static inline uint16_t get_u16(const uint8_t *p) {
    return (uint16_t)((uint16_t)p[0] | (uint16_t)((uint16_t)p[1] << 8));
}
static inline uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

#endif /* PROTO_H */
