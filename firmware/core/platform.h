/* The only place the portable core knows which machine it runs on: where constant tables
 * live. On the AVR they stay in flash (PROGMEM) and are read with memcpy_P, so the 2 KB of
 * RAM hold state only; natively they are ordinary const data. */
#ifndef PLATFORM_H
#define PLATFORM_H

#include <stddef.h>
#include <string.h>

#if defined(__AVR__)
#include <avr/pgmspace.h>
#define FW_ROM PROGMEM
#define fw_rom_copy(dst, src, n) memcpy_P((dst), (src), (n))
#define fw_rom_u16(p) pgm_read_word(p)
#else
#define FW_ROM
#define fw_rom_copy(dst, src, n) memcpy((dst), (src), (n))
#define fw_rom_u16(p) (*(p))
#endif

#endif /* PLATFORM_H */
