/* Native host build of the firmware core: the same C core as on the chip, on the monotonic
 * clock, behind a pseudo-terminal, with the MC2100 and the belt simulated by belt_model.c.
 *
 *     firmware/build/treadmill-native [--distance-per-pulse-mm MM] [--seed N] [--link PATH]
 *
 * The process interface is the one of `treadmill sim` (firmware_bridge/sim/cli.py): the first
 * line on stdout is `PTY <path>`; commands on stdin, one a line, each answered by one line
 * starting with OK or ERR; SIGTERM or SIGINT ends it with exit status 0. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "belt_model.h"
#include "fw.h"

#define PWM_TOP 3124u /* as Timer1 on the chip: 20 Hz at prescaler 256 */

static volatile sig_atomic_t g_stop;

typedef struct {
    int master;
    int slave;
    char path[128];
    const char *link;
    bool connected;
    fw_t fw;
    belt_t belt;
    uint64_t t0_ns;
    uint32_t prev_boot_id;
    bool key_closed;
    double drop_pct;
    double corrupt_pct;
    bool runaway;
    double runaway_kmh_s;
    uint64_t rng;
    uint32_t um_per_pulse;
    uint64_t tx_dropped_bytes;
    uint64_t frames_dropped;
    uint64_t bytes_corrupted;
} host_t;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: the line faults and nothing else use it. */
static uint64_t rng_next(host_t *h) {
    h->rng ^= h->rng >> 12;
    h->rng ^= h->rng << 25;
    h->rng ^= h->rng >> 27;
    return h->rng * 2685821657736338717ull;
}

static double rng_pct(host_t *h) { return (double)(rng_next(h) >> 11) / 9007199254740992.0 * 100.0; }

static void corrupt(host_t *h, uint8_t *data, size_t len) {
    for (size_t i = 0; i < len; i++) {
        if (rng_pct(h) < h->corrupt_pct) {
            data[i] ^= (uint8_t)(1u + rng_next(h) % 255u);
            h->bytes_corrupted++;
        }
    }
}

static void fw_send(void *ctx, const uint8_t *frame, uint8_t len) {
    host_t *h = ctx;
    if (h->drop_pct > 0.0 && rng_pct(h) < h->drop_pct) {
        h->frames_dropped++;
        return;
    }
    if (!h->connected) {
        h->tx_dropped_bytes += len;
        return;
    }
    uint8_t buf[PROTO_MAX_FRAME];
    memcpy(buf, frame, len);
    if (h->corrupt_pct > 0.0) {
        corrupt(h, buf, len);
    }
    ssize_t n = write(h->master, buf, len);
    if (n < 0) {
        n = 0; /* EAGAIN (nobody reads) or EIO: lost, like bytes on a real UART */
    }
    h->tx_dropped_bytes += (uint64_t)(len - (size_t)n);
}

static bool fw_drop_rx(void *ctx) {
    host_t *h = ctx;
    if (h->drop_pct > 0.0 && rng_pct(h) < h->drop_pct) {
        h->frames_dropped++;
        return true;
    }
    return false;
}

static uint64_t now_us(const host_t *h) { return (mono_ns() - h->t0_ns) / 1000u; }

static uint32_t new_boot_id(host_t *h) {
    uint32_t id = 0;
    while (id == 0 || id == h->prev_boot_id) {
        if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id) {
            id = (uint32_t)rng_next(h);
        }
    }
    h->prev_boot_id = id;
    return id;
}

static void boot(host_t *h, uint8_t cause) {
    fw_boot_t b = {.reset_cause = cause, .boot_id = new_boot_id(h), .um_per_pulse = h->um_per_pulse};
    fw_io_t io = {.send = fw_send, .drop_rx = fw_drop_rx, .ctx = h};
    fw_init(&h->fw, &b, io, (uint32_t)(now_us(h) / 1000u));
}

static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

static bool open_pty(host_t *h) {
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0) {
        perror("treadmill-native: cannot open a pseudo-terminal");
        return false;
    }
    const char *name = ptsname(m);
    if (name == NULL) {
        perror("treadmill-native: ptsname");
        close(m);
        return false;
    }
    snprintf(h->path, sizeof h->path, "%s", name);
    /* Keep our own slave open: with no slave open the master reads fail with EIO. */
    int s = open(h->path, O_RDWR | O_NOCTTY);
    if (s < 0) {
        perror("treadmill-native: cannot open the pty slave");
        close(m);
        return false;
    }
    struct termios t;
    if (tcgetattr(s, &t) == 0) {
        cfmakeraw(&t);
        cfsetispeed(&t, B115200);
        cfsetospeed(&t, B115200);
        tcsetattr(s, TCSANOW, &t);
    }
    fcntl(m, F_SETFL, fcntl(m, F_GETFL) | O_NONBLOCK);
    h->master = m;
    h->slave = s;
    h->connected = true;
    if (h->link != NULL) {
        char tmp[512];
        snprintf(tmp, sizeof tmp, "%s.tmp", h->link);
        unlink(tmp);
        if (symlink(h->path, tmp) != 0 || rename(tmp, h->link) != 0) {
            fprintf(stderr, "treadmill-native: cannot point %s at %s: %s\n", h->link, h->path,
                    strerror(errno));
        }
    }
    return true;
}

static void close_pty(host_t *h) {
    if (!h->connected) {
        return;
    }
    if (h->link != NULL) {
        unlink(h->link);
    }
    close(h->master);
    close(h->slave);
    h->master = -1;
    h->slave = -1;
    h->connected = false;
}

static const char *STATE_NAMES[] = {"boot", "idle", "running", "stopping", "fault"};
static const char *FAULT_NAMES[] = {"none",          "lease_expired", "speed_above_ceiling",
                                    "accel_above_ceiling", "not_configured", "safety_key_open",
                                    "estop",         "sensor_fault",  "motor_fault",
                                    "bad_frame_flood", "overspeed",   "internal"};

static const char *FAULTS_HELP =
    "faults: drop_frames, corrupt_bytes, sensor_freeze, runaway, stuck_speed, reboot, disconnect, "
    "lease_ignored";

static double duty_of(const host_t *h) {
    return (double)fw_pwm_counts(&h->fw, PWM_TOP) / (double)(PWM_TOP + 1u);
}

static void status_line(host_t *h) {
    char injected[160] = "";
    /* alphabetical, as `treadmill sim` lists them */
    if (h->corrupt_pct > 0.0) strcat(injected, ",corrupt_bytes");
    if (h->drop_pct > 0.0) strcat(injected, ",drop_frames");
    if (h->runaway) strcat(injected, ",runaway");
    if (h->belt.frozen) strcat(injected, ",sensor_freeze");
    if (h->belt.stuck) strcat(injected, ",stuck_speed");
    const fw_t *fw = &h->fw;
    say("OK status state=%s fault=%s belt_kmh=%.2f true_kmh=%.2f measured_kmh=%.2f "
        "commanded_kmh=%.2f duty_pct=%.2f motor_enabled=%d key=%s boot_id=0x%08x cable=%s "
        "injected=%s",
        STATE_NAMES[fw->state], FAULT_NAMES[fw->fault], belt_speed_kmh(&h->belt),
        belt_speed_kmh(&h->belt), fw_measured_x100(fw) / 100.0, fw_commanded_x100(fw) / 100.0,
        duty_of(h) * 100.0, fw_motor_enable(fw) ? 1 : 0, h->key_closed ? "closed" : "open",
        fw->boot_id, h->connected ? "in" : "out", injected[0] ? injected + 1 : "none");
}

/* One fault name as `treadmill sim` parses it: case-insensitive, '-' or '_'. */
static void normalise(char *s) {
    for (; *s; s++) {
        *s = (char)tolower((unsigned char)*s);
        if (*s == '-') *s = '_';
    }
}

static bool parse_number(const char *text, double *out) {
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || errno != 0 || isnan(v)) {
        return false;
    }
    *out = v;
    return true;
}

static void command(host_t *h, char *line) {
    char *words[4];
    int n = 0;
    for (char *tok = strtok(line, " \t\r\n"); tok != NULL && n < 4; tok = strtok(NULL, " \t\r\n")) {
        words[n++] = tok;
    }
    if (n == 0) {
        return;
    }
    normalise(words[0]);
    const char *verb = words[0];
    if (strcmp(verb, "help") == 0 && n == 1) {
        say("OK commands: inject FAULT [VALUE] | clear FAULT | key open | key closed | status | "
            "help; %s",
            FAULTS_HELP);
        return;
    }
    if (strcmp(verb, "status") == 0 && n == 1) {
        status_line(h);
        return;
    }
    if (strcmp(verb, "key") == 0 && n == 2) {
        normalise(words[1]);
        if (strcmp(words[1], "open") == 0 || strcmp(words[1], "closed") == 0) {
            h->key_closed = strcmp(words[1], "closed") == 0;
            belt_set_key(&h->belt, h->key_closed);
            fw_key_sample(&h->fw, h->key_closed, (uint32_t)(now_us(h) / 1000u));
            say("OK key %s", h->key_closed ? "closed" : "open");
            return;
        }
    }
    if ((strcmp(verb, "inject") == 0 || strcmp(verb, "clear") == 0) && (n == 2 || n == 3)) {
        bool inject = verb[0] == 'i';
        char *fault = words[1];
        normalise(fault);
        static const char *known[] = {"drop_frames", "corrupt_bytes", "sensor_freeze", "runaway",
                                      "stuck_speed", "reboot",        "disconnect",    "lease_ignored"};
        bool ok = false;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
            ok = ok || strcmp(fault, known[i]) == 0;
        }
        if (!ok) {
            say("ERR unknown simulated fault '%s': allowed drop_frames, corrupt_bytes, "
                "sensor_freeze, runaway, stuck_speed, reboot, disconnect, lease_ignored",
                words[1]);
            return;
        }
        if (strcmp(fault, "lease_ignored") == 0) {
            say("ERR unsupported: lease_ignored (a broken lease) exists only in the Python "
                "simulator; the firmware core has no switch to break it");
            return;
        }
        if (!inject) {
            if (n != 2) {
                say("ERR `clear` takes only a fault name");
                return;
            }
            if (strcmp(fault, "drop_frames") == 0) h->drop_pct = 0.0;
            else if (strcmp(fault, "corrupt_bytes") == 0) h->corrupt_pct = 0.0;
            else if (strcmp(fault, "sensor_freeze") == 0) belt_set_sensor_frozen(&h->belt, false);
            else if (strcmp(fault, "runaway") == 0) {
                h->runaway = false;
                belt_set_runaway(&h->belt, 0.0);
            } else if (strcmp(fault, "stuck_speed") == 0) belt_set_stuck(&h->belt, false);
            else if (strcmp(fault, "disconnect") == 0) {
                if (!h->connected) {
                    if (!open_pty(h)) {
                        say("ERR could not open a new pseudo-terminal");
                        return;
                    }
                    say("PTY %s", h->link != NULL ? h->link : h->path);
                }
            }
            say("OK clear %s", fault);
            return;
        }
        double value = NAN;
        bool has_value = n == 3;
        if (has_value && !parse_number(words[2], &value)) {
            say("ERR %s: '%s' is not a number", fault, words[2]);
            return;
        }
        bool pct_fault = strcmp(fault, "drop_frames") == 0 || strcmp(fault, "corrupt_bytes") == 0;
        if (has_value && !pct_fault && strcmp(fault, "runaway") != 0) {
            say("ERR %s takes no value (got %s); only drop_frames, corrupt_bytes (percent) and "
                "runaway (km/h/s) do",
                fault, words[2]);
            return;
        }
        if (pct_fault) {
            double pct = has_value ? value : 10.0;
            if (!(pct > 0.0 && pct <= 100.0)) {
                say("ERR %s needs a percentage in (0, 100], got %s: e.g. `inject %s 10`", fault,
                    words[2], fault);
                return;
            }
            if (fault[0] == 'd') h->drop_pct = pct;
            else h->corrupt_pct = pct;
        } else if (strcmp(fault, "runaway") == 0) {
            double accel = has_value ? value : 0.5;
            if (!(accel > 0.0)) {
                say("ERR runaway needs accel_kmh_s > 0, got %s", words[2]);
                return;
            }
            h->runaway = true;
            h->runaway_kmh_s = accel;
            belt_set_runaway(&h->belt, accel);
        } else if (strcmp(fault, "sensor_freeze") == 0) {
            belt_set_sensor_frozen(&h->belt, true);
        } else if (strcmp(fault, "stuck_speed") == 0) {
            belt_set_stuck(&h->belt, true);
        } else if (strcmp(fault, "reboot") == 0) {
            boot(h, RESET_WATCHDOG); /* the chip's watchdog reset: motor off, all forgotten */
        } else { /* disconnect */
            close_pty(h);
        }
        if (has_value) {
            say("OK inject %s %s", fault, words[2]);
        } else {
            say("OK inject %s", fault);
        }
        return;
    }
    say("ERR unknown command '%s': commands: inject FAULT [VALUE] | clear FAULT | key open | key "
        "closed | status | help",
        verb);
}

static void on_pulse(void *ctx, uint64_t t_us) {
    host_t *h = ctx;
    fw_pulse(&h->fw, (uint32_t)t_us);
}

static void usage(void) {
    fprintf(stderr, "usage: treadmill-native [--distance-per-pulse-mm MM] [--seed N] [--link PATH]\n"
                    "  runs the firmware core on a pseudo-terminal; prints `PTY <path>` first\n");
}

int main(int argc, char **argv) {
    static host_t h;
    memset(&h, 0, sizeof h);
    h.master = h.slave = -1;
    h.key_closed = true;
    h.rng = 0x9E3779B97F4A7C15ull;
    double mm_per_pulse = SENSOR_UM_PER_PULSE / 1000.0;
    for (int i = 1; i < argc; i++) {
        double v;
        if (strcmp(argv[i], "--distance-per-pulse-mm") == 0 && i + 1 < argc) {
            if (!parse_number(argv[++i], &v) || !(v >= 0.1 && v <= 300.0)) {
                fprintf(stderr, "treadmill-native: --distance-per-pulse-mm must be 0.1..300\n");
                return 2;
            }
            mm_per_pulse = v;
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            h.rng = (uint64_t)strtoull(argv[++i], NULL, 0) * 2654435761ull + 0x9E3779B97F4A7C15ull;
        } else if (strcmp(argv[i], "--link") == 0 && i + 1 < argc) {
            h.link = argv[++i];
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("treadmill-native %d.%d.%d build %s, protocol v%u\n", FW_VERSION_MAJOR,
                   FW_VERSION_MINOR, FW_VERSION_PATCH, FW_BUILD_ID, PROTOCOL_VERSION);
            return 0;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage();
            return 0;
        } else {
            usage();
            return 2;
        }
    }
    h.um_per_pulse = (uint32_t)llround(mm_per_pulse * 1000.0);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    h.t0_ns = mono_ns();
    belt_params_t bp;
    belt_default_params(&bp);
    bp.mm_per_pulse = mm_per_pulse;
    bp.full_scale_kmh = PWM_FULL_SCALE_KMH_X100 / 100.0;
    bp.full_scale_duty = PWM_FULL_SCALE_DUTY_PERMILLE / 1000.0;
    belt_init(&h.belt, &bp, 0);
    if (!open_pty(&h)) {
        return 1;
    }
    boot(&h, RESET_POWER_ON);
    say("PTY %s", h.link != NULL ? h.link : h.path);

    struct stat st;
    bool stdin_open = fstat(STDIN_FILENO, &st) == 0 &&
                      (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode) || isatty(STDIN_FILENO));
    char line[512];
    size_t line_len = 0;
    while (!g_stop) {
        uint64_t us = now_us(&h);
        uint32_t ms = (uint32_t)(us / 1000u);
        belt_advance(&h.belt, us, on_pulse, &h);
        fw_key_sample(&h.fw, h.key_closed, ms);
        fw_tick(&h.fw, ms, (uint32_t)us);
        belt_set_drive(&h.belt, duty_of(&h), fw_motor_enable(&h.fw));

        struct pollfd pfd[2];
        nfds_t nfds = 0;
        int master_ix = -1, stdin_ix = -1;
        if (h.connected) {
            pfd[nfds] = (struct pollfd){.fd = h.master, .events = POLLIN};
            master_ix = (int)nfds++;
        }
        if (stdin_open) {
            pfd[nfds] = (struct pollfd){.fd = STDIN_FILENO, .events = POLLIN};
            stdin_ix = (int)nfds++;
        }
        int rc = poll(pfd, nfds, 1);
        if (rc < 0) {
            if (errno == EINTR) continue;
            perror("treadmill-native: poll");
            return 1;
        }
        if (master_ix >= 0 && (pfd[master_ix].revents & POLLIN)) {
            uint8_t buf[256];
            ssize_t n = read(h.master, buf, sizeof buf);
            if (n > 0) {
                if (h.corrupt_pct > 0.0) corrupt(&h, buf, (size_t)n);
                fw_tick(&h.fw, (uint32_t)(now_us(&h) / 1000u), (uint32_t)now_us(&h));
                for (ssize_t i = 0; i < n; i++) {
                    fw_rx_byte(&h.fw, buf[i]);
                }
            }
        }
        if (stdin_ix >= 0 && (pfd[stdin_ix].revents & (POLLIN | POLLHUP))) {
            char buf[256];
            ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
            if (n <= 0) {
                stdin_open = false; /* EOF: keep running until a signal */
            } else {
                for (ssize_t i = 0; i < n; i++) {
                    if (buf[i] == '\n') {
                        line[line_len] = '\0';
                        command(&h, line);
                        line_len = 0;
                    } else if (line_len + 1 < sizeof line) {
                        line[line_len++] = buf[i];
                    }
                }
            }
        }
    }
    close_pty(&h);
    return 0;
}
