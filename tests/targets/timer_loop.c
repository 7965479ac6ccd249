/* An epoll loop woken by a timerfd every 20 ms that stalls by itself: on tick 10 it spins for
 * 200 ms in spin_on_tick(), and after 25 ticks it exits. Used to test `stallscope record --
 * COMMAND`: the agent starts it, must follow it from its first instruction, find the loop thread
 * from its epoll_wait calls alone, report the one stall, and stop when it exits.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "target_common.h"

__attribute__((noinline)) void spin_on_tick(long ms) {
    SPIN_UNTIL(now_ns() + ms * 1000000LL, 10000);
}

int main(void) {
    int tfd = periodic_timerfd(20, 0);
    int ep = epoll_watching(&tfd, 1, 0);
    for (int tick = 1; tick <= 25;) {
        struct epoll_event out;
        if (epoll_wait(ep, &out, 1, -1) != 1) continue;
        uint64_t expirations;
        if (read(tfd, &expirations, sizeof expirations) != sizeof expirations) continue;
        if (tick == 10) {
            long long start = now_ns();
            spin_on_tick(200);
            fprintf(stderr, "planted spin %lld %lld\n", start, now_ns());
        }
        tick++;
    }
    return 0;
}
