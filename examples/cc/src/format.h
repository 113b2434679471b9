#ifndef FORMAT_H
#define FORMAT_H
#include "stats.h"

void print_stats(const char *label, struct stats s);

#endif
