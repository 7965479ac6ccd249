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

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

volatile unsigned long long sink;

__attribute__((noinline)) void spin_on_tick(long ms) {
    long long end = now_ns() + ms * 1000000LL;
    unsigned long long x = 7;
    /* Read the clock rarely, so samples land here rather than in the vDSO (whose caller a
       frame-pointer walk cannot see). */
    while (now_ns() < end)
        for (int i = 0; i < 10000; i++) x = x * 2862933555777941757ULL + 3037000493ULL;
    sink = x;
}

int main(void) {
    int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec spec = {{0, 20000000}, {0, 20000000}};
    timerfd_settime(tfd, 0, &spec, NULL);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = tfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
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
