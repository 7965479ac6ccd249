/* A single-threaded epoll loop (a 10 ms timerfd, and SIGUSR1 through a signalfd as the trigger)
 * that blocks in read(2) on a pipe. On each SIGUSR1 the loop wakes a writer thread (named
 * "writer") and calls read_from_pipe(), a blocking read on the pipe; the writer, in
 * write_after_delay(), sleeps 250 ms and then writes one byte: an off-CPU stall in `read` whose
 * waker is the writer.
 *
 * With an argument N, each SIGUSR1 first runs N quick rounds of the same read (the writer writes
 * at once), so the planted read blocks at a place the loop has blocked at many times before
 * (kernel stacks are reused there).
 *
 * Prints "ready" once set up, then "planted read START_NS END_NS" (CLOCK_MONOTONIC) around each
 * planted blocking read; exits by itself after 15 s.
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

#define DELAY_MS 250
#define LIFETIME_S 15

static int go_efd, pipe_fds[2];
volatile int rounds;
static volatile long delay_ms = DELAY_MS;

static void notify(int fd) {
    uint64_t one = 1;
    if (write(fd, &one, sizeof one) != sizeof one) abort();
}

static void drain(int fd) {
    uint64_t value;
    if (read(fd, &value, sizeof value) != sizeof value) abort();
}

/* The cause: the data the loop waits for comes 250 ms late. */
__attribute__((noinline)) void write_after_delay(long ms) {
    struct timespec delay = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&delay, &delay) != 0) {
    }
    if (write(pipe_fds[1], "x", 1) != 1) abort();
    rounds++; /* keeps the write from being a tail call: this frame is on the waker's stack */
}

static void *writer_main(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "writer");
    for (;;) {
        drain(go_efd);
        write_after_delay(delay_ms);
    }
    return NULL;
}

/* The victim: a blocking read on the loop. */
__attribute__((noinline)) void read_from_pipe(void) {
    char byte;
    if (read(pipe_fds[0], &byte, 1) != 1) abort();
    rounds++;
}

int main(int argc, char **argv) {
    int warmups = argc > 1 ? atoi(argv[1]) : 0;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* before any thread, so all inherit it */
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    int tfd = periodic_timerfd(10, TFD_CLOEXEC);
    go_efd = eventfd(0, EFD_CLOEXEC);
    if (pipe(pipe_fds) != 0) abort();
    int fds[] = {tfd, sfd};
    int ep = epoll_watching(fds, sizeof fds / sizeof fds[0], EPOLL_CLOEXEC);
    pthread_t writer;
    if (pthread_create(&writer, NULL, writer_main, NULL) != 0) abort();
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
                delay_ms = 0;
                for (int w = 0; w < warmups; w++) {
                    notify(go_efd);
                    read_from_pipe();
                }
                delay_ms = DELAY_MS;
                long long start = now_ns();
                notify(go_efd);
                read_from_pipe();
                long long end = now_ns();
                printf("planted read %lld %lld\n", start, end);
                fflush(stdout);
            }
        }
    }
    return 0;
}
