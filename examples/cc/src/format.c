#include <stdio.h>
#include "format.h"

void print_stats(const char *label, struct stats s) {
    printf("%-10s count=%zu min=%ld max=%ld sum=%ld mean=%.3f\n", label, s.count, s.min, s.max, s.sum,
           s.count ? (double)s.sum / (double)s.count : 0.0);
}
