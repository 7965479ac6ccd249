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

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

volatile unsigned long long sink;

__attribute__((noinline)) void spin_in_handler(long ms) {
    long long end = now_ns() + ms * 1000000LL;
    unsigned long long x = 7;
    /* Read the clock rarely, so samples land here rather than in the vDSO. */
    while (now_ns() < end)
        for (int i = 0; i < 10000; i++) x = x * 2862933555777941757ULL + 3037000493ULL;
    sink = x;
}

int main(int argc, char **argv) {
    int stalls = argc > 1 ? atoi(argv[1]) : 3;
    long ms = argc > 2 ? atol(argv[2]) : 250;
    int gap = argc > 3 ? atoi(argv[3]) : 10;
    if (gap < 1) gap = 1;
    int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec spec = {{0, 20000000}, {0, 20000000}};
    timerfd_settime(tfd, 0, &spec, NULL);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = tfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
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
