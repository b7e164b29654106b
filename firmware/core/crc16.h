/* CRC-16/CCITT-FALSE (docs/protocol.md §3): poly 0x1021, init 0xFFFF, no reflection. */
#ifndef CRC16_H
#define CRC16_H

#include <stddef.h>
#include <stdint.h>

#define CRC16_INIT 0xFFFFu

/* One byte into a running CRC. Byte-wise shift formula, no table: about 20 AVR cycles. */
static inline uint16_t crc16_update(uint16_t crc, uint8_t byte) {
    uint8_t x = (uint8_t)((crc >> 8) ^ byte);
    x ^= (uint8_t)(x >> 4);
    return (uint16_t)((uint16_t)(crc << 8) ^ (uint16_t)((uint16_t)x << 12) ^
                      (uint16_t)((uint16_t)x << 5) ^ (uint16_t)x);
}

/* CRC of len bytes, starting from crc (CRC16_INIT for a fresh CRC). */
uint16_t crc16(const uint8_t *data, size_t len, uint16_t crc);

#endif /* CRC16_H */
