#include "stats.h"

struct stats stats_of(const long *values, size_t n) {
    struct stats s = {0, 0, 0, n};
    for (size_t i = 0; i < n; i++) {
        if (i == 0 || values[i] < s.min) s.min = values[i];
        if (i == 0 || values[i] > s.max) s.max = values[i];
        s.sum += values[i];
    }
    return s;
}

long collatz_steps(long n) {
    long steps = 0;
    while (n != 1) {
        n = (n % 2) ? 3 * n + 1 : n / 2;
        steps++;
    }
    return steps;
}
