/* A single-threaded epoll loop (a 10 ms timerfd, and SIGUSR1 through a signalfd as the trigger)
 * that waits for a lock. On each SIGUSR1 the loop tells a worker thread (named "worker") to run
 * hold_lock_and_compute(): it takes a pthread mutex, tells the loop it holds it (an eventfd the
 * loop waits on), computes for 300 ms and unlocks. The loop, woken by that eventfd, calls
 * take_shared_lock() and blocks in pthread_mutex_lock (a futex wait) until the worker unlocks:
 * a lock stall whose cause is the worker's computation.
 *
 * Prints "ready" once set up, then "planted lock START_NS END_NS" (CLOCK_MONOTONIC) around each
 * lock wait; exits by itself after 15 s.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "target_common.h"

#define COMPUTE_MS 300
#define LIFETIME_S 15

static pthread_mutex_t shared = PTHREAD_MUTEX_INITIALIZER;
static int go_efd, locked_efd;
volatile int rounds;

static void notify(int fd) {
    uint64_t one = 1;
    if (write(fd, &one, sizeof one) != sizeof one) abort();
}

static void drain(int fd) {
    uint64_t value;
    if (read(fd, &value, sizeof value) != sizeof value) abort();
}

/* The cause: holds the mutex while computing. Reads the clock rarely, so samples land here. */
__attribute__((noinline)) void hold_lock_and_compute(long ms) {
    pthread_mutex_lock(&shared);
    notify(locked_efd);
    long long end = now_ns() + ms * 1000000LL;
    unsigned long long x = 11;
    while (now_ns() < end)
        for (int i = 0; i < 10000; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    sink = x;
    pthread_mutex_unlock(&shared);
    rounds++; /* keeps the unlock from being a tail call: this frame is on the waker's stack */
}

static void *worker_main(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "worker");
    for (;;) {
        drain(go_efd);
        hold_lock_and_compute(COMPUTE_MS);
    }
    return NULL;
}

/* The victim: the loop blocks here until the worker unlocks. */
__attribute__((noinline)) void take_shared_lock(void) {
    pthread_mutex_lock(&shared);
    sink++;
    pthread_mutex_unlock(&shared);
    rounds++;
}

int main(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* before any thread, so all inherit it */
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    int tfd = periodic_timerfd(10, TFD_CLOEXEC);
    go_efd = eventfd(0, EFD_CLOEXEC);
    locked_efd = eventfd(0, EFD_CLOEXEC);
    int fds[] = {tfd, sfd, locked_efd};
    int ep = epoll_watching(fds, sizeof fds / sizeof fds[0], EPOLL_CLOEXEC);
    pthread_t worker;
    if (pthread_create(&worker, NULL, worker_main, NULL) != 0) abort();
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
                notify(go_efd); /* the worker takes the lock and tells us */
            } else if (fd == locked_efd) {
                drain(locked_efd);
                long long start = now_ns();
                take_shared_lock();
                long long end = now_ns();
                printf("planted lock %lld %lld\n", start, end);
                fflush(stdout);
            }
        }
    }
    return 0;
}
