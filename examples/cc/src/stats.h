#ifndef STATS_H
#define STATS_H
#include <stddef.h>

/* Summary statistics of a series of integers. */
struct stats {
    long min, max, sum;
    size_t count;
};

struct stats stats_of(const long *values, size_t n);
long collatz_steps(long n);

#endif
