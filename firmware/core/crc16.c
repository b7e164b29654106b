#include "crc16.h"

uint16_t crc16(const uint8_t *data, size_t len, uint16_t crc) {
    while (len--) {
        crc = crc16_update(crc, *data++);
    }
    return crc;
}
