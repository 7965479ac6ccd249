/* A single-threaded epoll loop (a 10 ms timerfd, and SIGUSR1 through a signalfd as the trigger)
 * that calls fsync(2) on its loop. On each SIGUSR1 it starts writing a new file in the directory
 * given as argv[1], MIB MiB in all (argv[2], default 128), 4 MiB per timer tick so that no tick
 * is slow; the tick after the last write calls flush_to_disk(), which fsyncs the file and waits
 * for the disk (tens of milliseconds even on a fast disk; on tmpfs it would be instant).
 * Sequential writes keep fsync mostly waiting for the device rather than computing in the kernel
 * (scattered pages make ext4 spend most of fsync on the CPU, allocating blocks).
 *
 * Prints "ready" once set up, then "planted fsync START_NS END_NS" (CLOCK_MONOTONIC) around each
 * fsync; exits by itself after 15 s.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "target_common.h"

#define CHUNK (1 << 20)
#define CHUNKS_PER_TICK 4
#define LIFETIME_S 15

volatile int rounds;

/* The planted wait: write the dirty pages back and wait for the disk. */
__attribute__((noinline)) void flush_to_disk(int fd) {
    if (fsync(fd) != 0) {
        perror("fsync");
        abort();
    }
    rounds++;
}

static void drain(int fd) {
    uint64_t value;
    if (read(fd, &value, sizeof value) != sizeof value) abort();
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: wait_fsync DIR [MIB]\n");
        return 2;
    }
    const char *dir = argv[1];
    long chunks = argc > 2 ? atol(argv[2]) : 128;
    static char chunk[CHUNK];
    for (int i = 0; i < CHUNK; i++) chunk[i] = (char)(i * 7 + 1);

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    int tfd = periodic_timerfd(10, TFD_CLOEXEC);
    int fds[] = {tfd, sfd};
    int ep = epoll_watching(fds, sizeof fds / sizeof fds[0], EPOLL_CLOEXEC);
    printf("ready\n");
    fflush(stdout);

    int file = -1, round = 0;
    long written = 0;
    long long deadline = now_ns() + LIFETIME_S * 1000000000LL;
    while (now_ns() < deadline) {
        struct epoll_event events[4];
        int n = epoll_wait(ep, events, 4, 100);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == sfd) {
                struct signalfd_siginfo info;
                if (read(sfd, &info, sizeof info) != sizeof info) abort();
                if (file >= 0) continue; /* still busy with the previous round */
                char path[4096];
                snprintf(path, sizeof path, "%s/wait_fsync-%d.data", dir, ++round);
                file = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                if (file < 0) {
                    perror(path);
                    abort();
                }
                written = 0;
            } else if (fd == tfd) {
                drain(tfd);
                if (file < 0) continue;
                if (written < chunks) {
                    for (int k = 0; k < CHUNKS_PER_TICK && written < chunks; k++, written++)
                        if (write(file, chunk, CHUNK) != CHUNK) abort();
                } else {
                    long long start = now_ns();
                    flush_to_disk(file);
                    long long end = now_ns();
                    close(file);
                    file = -1;
                    printf("planted fsync %lld %lld\n", start, end);
                    fflush(stdout);
                }
            }
        }
    }
    return 0;
}
