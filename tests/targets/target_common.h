/* What the C test targets share: the monotonic clock, a CPU burn that stays inside its caller,
 * and the periodic timerfd an epoll loop ticks on. Included by each target (compiled alone, so
 * the definitions here are each target's own).
 */
#ifndef STALLSCOPE_TARGET_COMMON_H
#define STALLSCOPE_TARGET_COMMON_H

#include <stdint.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>

__attribute__((unused)) static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Where the burns leave their result, so the compiler keeps the arithmetic. */
volatile unsigned long long sink;

/* Burns the CPU until CLOCK_MONOTONIC passes end_ns, reading the clock only every `inner`
 * rounds so that samples land in the caller rather than in the vDSO (whose caller a
 * frame-pointer walk cannot see). A macro, not a function: the caller (a noinline function the
 * tests look for on top of the stall's stack) stays the leaf frame.
 */
#define SPIN_UNTIL(end_ns, inner)                                                           \
    do {                                                                                    \
        const long long spin_end_ = (end_ns); /* evaluated once */                         \
        unsigned long long spin_x_ = 7;                                                     \
        while (now_ns() < spin_end_)                                                        \
            for (int spin_i_ = 0; spin_i_ < (inner); spin_i_++)                             \
                spin_x_ = spin_x_ * 2862933555777941757ULL + 3037000493ULL;                 \
        sink = spin_x_;                                                                     \
    } while (0)

/* A timerfd that fires every `ms` milliseconds, first after `ms`. */
__attribute__((unused)) static int periodic_timerfd(long ms, int flags) {
    int tfd = timerfd_create(CLOCK_MONOTONIC, flags);
    struct timespec every = {ms / 1000, (ms % 1000) * 1000000L};
    struct itimerspec spec = {every, every};
    if (tfd >= 0) timerfd_settime(tfd, 0, &spec, NULL);
    return tfd;
}

/* An epoll instance watching each of `fds` for input (data.fd set to the fd). */
__attribute__((unused)) static int epoll_watching(const int *fds, unsigned n, int flags) {
    int ep = epoll_create1(flags);
    for (unsigned i = 0; ep >= 0 && i < n; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    return ep;
}

#endif
