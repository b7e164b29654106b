/* A minimal test runner for the native unit tests: no dependencies, every failed check
 * prints where and what, and the process exits 1 when any check failed. */
#ifndef TEST_UTIL_H
#define TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>

static int g_checks;
static int g_failures;
static const char *g_test = "";

#define CHECK(cond)                                                                              \
    do {                                                                                         \
        g_checks++;                                                                              \
        if (!(cond)) {                                                                           \
            g_failures++;                                                                        \
            fprintf(stderr, "FAIL %s (%s:%d): %s\n", g_test, __FILE__, __LINE__, #cond);         \
        }                                                                                        \
    } while (0)

#define CHECK_EQ(a, b)                                                                           \
    do {                                                                                         \
        long long va_ = (long long)(a), vb_ = (long long)(b);                                    \
        g_checks++;                                                                              \
        if (va_ != vb_) {                                                                        \
            g_failures++;                                                                        \
            fprintf(stderr, "FAIL %s (%s:%d): %s == %s: %lld != %lld\n", g_test, __FILE__,       \
                    __LINE__, #a, #b, va_, vb_);                                                 \
        }                                                                                        \
    } while (0)

#define RUN(fn)                                                                                  \
    do {                                                                                         \
        g_test = #fn;                                                                            \
        int before_ = g_failures;                                                                \
        fn();                                                                                    \
        fprintf(stderr, "%s %s\n", g_failures == before_ ? "ok  " : "FAIL", #fn);                \
        tests_run++;                                                                             \
    } while (0)

#endif /* TEST_UTIL_H */
