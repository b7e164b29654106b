/* CRC-16/CCITT-FALSE (docs/protocol.md §3): poly 0x1021, init 0xFFFF, no reflection. */
#ifndef CRC16_H
#define CRC16_H

#include <stddef.h>
#include <stdint.h>

#include "platform.h"

#define CRC16_INIT 0xFFFFu

extern const uint16_t crc16_table[256] FW_ROM;

/* One byte into a running CRC. */
static inline uint16_t crc16_update(uint16_t crc, uint8_t byte) {
    uint8_t index = (uint8_t)((crc >> 8) ^ byte);
    return (uint16_t)((uint16_t)(crc << 8) ^ fw_rom_u16(&crc16_table[index]));
}

/* CRC of len bytes, starting from crc (CRC16_INIT for a fresh CRC). */
uint16_t crc16(const uint8_t *data, size_t len, uint16_t crc);

#endif /* CRC16_H */
