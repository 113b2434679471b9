#include <stdio.h>
#include "format.h"
#include "stats.h"

#define N 10000

int main(void) {
    static long steps[N];
    for (long i = 0; i < N; i++) steps[i] = collatz_steps(i + 1);
    print_stats("collatz", stats_of(steps, N));
    long longest = 0;
    for (long i = 1; i < N; i++)
        if (steps[i] > steps[longest]) longest = i;
    printf("longest chain below %d starts at %ld (%ld steps)\n", N + 1, longest + 1, steps[longest]);
    return 0;
}
