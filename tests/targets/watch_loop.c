/* An epoll loop woken by a timerfd every 20 ms that stalls by itself, for `stallscope watch`:
 * usage: watch_loop STALLS MS GAP_TICKS. Every GAP_TICKS ticks it spins MS ms in
 * spin_in_handler() (a stall), STALLS times, printing "planted spin START END" (CLOCK_MONOTONIC
 * ns) for each, then ticks 25 more times and exits. The agent is started first: it must find
 * this process by name when it is exec'd, and its loop thread from its epoll_wait calls alone.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "target_common.h"

__attribute__((noinline)) void spin_in_handler(long ms) {
    SPIN_UNTIL(now_ns() + ms * 1000000LL, 10000);
}

int main(int argc, char **argv) {
    int stalls = argc > 1 ? atoi(argv[1]) : 3;
    long ms = argc > 2 ? atol(argv[2]) : 250;
    int gap = argc > 3 ? atoi(argv[3]) : 10;
    if (gap < 1) gap = 1;
    int tfd = periodic_timerfd(20, 0);
    int ep = epoll_watching(&tfd, 1, 0);
    int done = 0;
    for (int tick = 1, after = 0; after < 25;) {
        struct epoll_event out;
        if (epoll_wait(ep, &out, 1, -1) != 1) continue;
        uint64_t expirations;
        if (read(tfd, &expirations, sizeof expirations) != sizeof expirations) continue;
        if (done < stalls && tick % gap == 0) {
            long long start = now_ns();
            spin_in_handler(ms);
            printf("planted spin %lld %lld\n", start, now_ns());
            fflush(stdout);
            done++;
        } else if (done == stalls) {
            after++;
        }
        tick++;
    }
    return 0;
}
