/* An event storm with planted stalls, for stallscope's overload tests.
 *
 * Usage: storm [PAIRS [STORM_MS [BURN_MS [PERIOD_MS [LIFETIME_S]]]]]
 *   defaults: 20 pairs (40 threads), a 6000 ms storm, 300 ms burns every 1000 ms, 60 s lifetime.
 *
 * The main thread is an epoll loop (timerfd + signalfd). Every PERIOD_MS the timer fires and
 * the loop burns BURN_MS of CPU in burn_cpu() inside that iteration, then prints
 *   "planted burn START_NS END_NS"
 * (CLOCK_MONOTONIC, the clock stallscope reports in). START is taken right after epoll_wait
 * returned and END right before the loop waits again, so they bound the iteration itself.
 *
 * SIGUSR1 starts the storm: PAIRS pairs of threads ping-pong one byte over two pipes as fast
 * as they can (every round trip is two wake-ups and two context switches) for STORM_MS, then
 * exit; the loop prints "storm start NS" and, when the last storm thread is done,
 * "storm end NS". The process exits by itself after LIFETIME_S so it can never outlive a test.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "target_common.h"

__attribute__((noinline)) void burn_cpu(long ms) {
    long long end = now_ns() + ms * 1000000LL;
    unsigned long long x = 1;
    while (now_ns() < end) {
        for (int i = 0; i < 1000; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    }
    sink = x;
}

struct pair {
    int ping[2];
    int pong[2];
};

static long long storm_deadline;
static atomic_int storm_running;
static int done_pipe[2]; /* the last storm thread to finish writes here; the loop watches it */

static void storm_thread_done(void) {
    if (atomic_fetch_sub(&storm_running, 1) == 1) {
        char c = 'x';
        (void)!write(done_pipe[1], &c, 1);
    }
}

/* One side serves: read a byte, send it back. It stops when the other side closes. */
static void *pong_side(void *arg) {
    struct pair *p = arg;
    char c;
    while (read(p->ping[0], &c, 1) == 1) {
        if (write(p->pong[1], &c, 1) != 1) break;
    }
    close(p->pong[1]);
    storm_thread_done();
    return NULL;
}

/* The other side drives the ping-pong until the deadline. */
static void *ping_side(void *arg) {
    struct pair *p = arg;
    char c = 'p';
    unsigned n = 0;
    for (;;) {
        if ((++n & 63) == 0 && now_ns() >= storm_deadline) break;
        if (write(p->ping[1], &c, 1) != 1) break;
        if (read(p->pong[0], &c, 1) != 1) break;
    }
    close(p->ping[1]);
    storm_thread_done();
    return NULL;
}

static void start_storm(int pairs, long storm_ms) {
    storm_deadline = now_ns() + storm_ms * 1000000LL;
    atomic_store(&storm_running, 2 * pairs);
    for (int i = 0; i < pairs; i++) {
        struct pair *p = calloc(1, sizeof *p);
        if (!p || pipe(p->ping) || pipe(p->pong)) {
            perror("pipe");
            exit(1);
        }
        pthread_t a, b;
        if (pthread_create(&a, NULL, pong_side, p) || pthread_create(&b, NULL, ping_side, p)) {
            perror("pthread_create");
            exit(1);
        }
        pthread_detach(a);
        pthread_detach(b);
    }
}

int main(int argc, char **argv) {
    int pairs = argc > 1 ? atoi(argv[1]) : 20;
    long storm_ms = argc > 2 ? atol(argv[2]) : 6000;
    long burn_ms = argc > 3 ? atol(argv[3]) : 300;
    long period_ms = argc > 4 ? atol(argv[4]) : 1000;
    long lifetime_s = argc > 5 ? atol(argv[5]) : 60;
    long long exit_at = now_ns() + lifetime_s * 1000000000LL;

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &mask, NULL); /* inherited by the storm threads */
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    struct itimerspec period = {
        .it_interval = {period_ms / 1000, (period_ms % 1000) * 1000000L},
        .it_value = {period_ms / 1000, (period_ms % 1000) * 1000000L},
    };
    if (sfd < 0 || tfd < 0 || timerfd_settime(tfd, 0, &period, NULL) || pipe(done_pipe)) {
        perror("setup");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = tfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    ev.data.fd = sfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
    ev.data.fd = done_pipe[0];
    epoll_ctl(ep, EPOLL_CTL_ADD, done_pipe[0], &ev);
    printf("ready\n");
    fflush(stdout);

    int stormed = 0;
    while (now_ns() < exit_at) {
        struct epoll_event events[8];
        int n = epoll_wait(ep, events, 8, -1);
        long long start = now_ns();
        if (n < 0 && errno == EINTR) continue;
        int burned = 0;
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == tfd) {
                unsigned long long ticks;
                (void)!read(tfd, &ticks, sizeof ticks);
                burn_cpu(burn_ms);
                burned = 1;
            } else if (fd == sfd) {
                struct signalfd_siginfo info;
                (void)!read(sfd, &info, sizeof info);
                if (!stormed) {
                    stormed = 1;
                    start_storm(pairs, storm_ms);
                    printf("storm start %lld\n", now_ns());
                    fflush(stdout);
                }
            } else if (fd == done_pipe[0]) {
                char c;
                (void)!read(done_pipe[0], &c, 1);
                printf("storm end %lld\n", now_ns());
                fflush(stdout);
            }
        }
        if (burned) {
            long long end = now_ns();
            printf("planted burn %lld %lld\n", start, end);
            fflush(stdout);
        }
    }
    return 0;
}
