/* A single-threaded epoll loop (a 10 ms timerfd, and SIGUSR1 through a signalfd as the trigger),
 * pinned to CPU 0, that does about 300 ms of CPU work in crunch_numbers() on each SIGUSR1 (a fixed
 * number of rounds, calibrated against its own CPU-time clock at startup, so the work itself
 * makes no syscall and every preemption lands in crunch_numbers). The test runs CPU hogs pinned to CPU 0 meanwhile (see
 * wait_hog.c), so the work takes about three times as long: a stall spent mostly runnable but
 * waiting for a CPU.
 *
 * Prints "ready" once set up, then "planted runqueue START_NS END_NS" (CLOCK_MONOTONIC) around
 * each piece of work; exits by itself after 15 s.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "target_common.h"

#define WORK_MS 300
#define LIFETIME_S 15

static long long clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#define ROUND 100000

/* `rounds` rounds of arithmetic, however long that takes on the wall clock. */
__attribute__((noinline)) void crunch_numbers(long rounds) {
    unsigned long long x = 13;
    for (long r = 0; r < rounds; r++) {
        for (int i = 0; i < ROUND; i++) x = x * 2862933555777941757ULL + 3037000493ULL;
        sink = x;
    }
}

/* How many rounds of crunch_numbers take `ms` of this thread's CPU time (measured over 50 ms). */
static long calibrate(long ms) {
    long long start = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    long rounds = 0, step = 16;
    while (clock_ns(CLOCK_THREAD_CPUTIME_ID) - start < 50000000LL) {
        crunch_numbers(step);
        rounds += step;
    }
    long long spent = clock_ns(CLOCK_THREAD_CPUTIME_ID) - start;
    return (long)((double)rounds * (ms * 1000000.0) / (double)spent);
}

static void drain(int fd) {
    uint64_t value;
    if (read(fd, &value, sizeof value) != sizeof value) abort();
}

int main(void) {
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(0, &cpus);
    if (sched_setaffinity(0, sizeof cpus, &cpus) != 0) {
        perror("sched_setaffinity CPU 0");
        return 1;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    int tfd = periodic_timerfd(10, TFD_CLOEXEC);
    int fds[] = {tfd, sfd};
    int ep = epoll_watching(fds, sizeof fds / sizeof fds[0], EPOLL_CLOEXEC);
    long work_rounds = calibrate(WORK_MS);
    printf("ready\n");
    fflush(stdout);

    long long deadline = now_ns() + LIFETIME_S * 1000000000LL;
    while (now_ns() < deadline) {
        struct epoll_event events[4];
        int n = epoll_wait(ep, events, 4, 100);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == tfd) {
                drain(tfd);
            } else if (fd == sfd) {
                struct signalfd_siginfo info;
                if (read(sfd, &info, sizeof info) != sizeof info) abort();
                long long start = now_ns();
                crunch_numbers(work_rounds);
                long long end = now_ns();
                printf("planted runqueue %lld %lld\n", start, end);
                fflush(stdout);
            }
        }
    }
    return 0;
}
