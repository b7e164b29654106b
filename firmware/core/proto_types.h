/* Types of the generated message table (msg_table.h). Portable C11, no hardware. */
#ifndef PROTO_TYPES_H
#define PROTO_TYPES_H

#include <stddef.h>
#include <stdint.h>

/* How a payload field is checked (docs/protocol.md §5.1). */
typedef enum {
    FK_UINT = 0,    /* unsigned integer (fixed-point speeds too), lo..hi in wire units */
    FK_ENUM = 1,    /* one byte, one of the listed values */
    FK_FLAG = 2,    /* one byte, 0 or 1 (bits 1..7 reserved) */
    FK_VERSION = 3, /* three bytes major.minor.patch, any value */
    FK_OPT_SEQ = 4  /* u16: 0..255, or 0xFFFF for "none" */
} field_kind_t;

typedef struct {
    uint8_t offset;
    uint8_t size; /* 1, 2, 3 or 4 bytes, little-endian */
    uint8_t kind; /* field_kind_t */
    uint32_t lo;
    uint32_t hi;
    const uint8_t *enum_values; /* FK_ENUM: allowed values */
    uint8_t enum_count;
} field_spec_t;

typedef struct {
    uint8_t id;
    uint8_t len;
    const field_spec_t *fields;
    uint8_t field_count;
} msg_spec_t;

#define ACCEPT_IN_FAULT_BIT(id) (1u << (id))

#endif /* PROTO_TYPES_H */
