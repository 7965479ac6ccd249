/* Worker churn for `stallscope watch`: usage: watch_churn SECONDS. Every 50 ms the parent forks
 * a worker that execs this program again (a new address space each time, as a recycled worker
 * gets); each worker runs an epoll loop on a 10 ms timerfd, stalls once for 30 ms in
 * worker_stall() and exits after 8 ticks. The parent prints "workers N" when done.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "target_common.h"

__attribute__((noinline)) void worker_stall(long ms) {
    SPIN_UNTIL(now_ns() + ms * 1000000LL, 10000);
}

static int worker(void) {
    int tfd = periodic_timerfd(10, 0);
    int ep = epoll_watching(&tfd, 1, 0);
    for (int tick = 1; tick <= 8;) {
        struct epoll_event out;
        if (epoll_wait(ep, &out, 1, -1) != 1) continue;
        uint64_t expirations;
        if (read(tfd, &expirations, sizeof expirations) != sizeof expirations) continue;
        if (tick == 3) worker_stall(30);
        tick++;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "worker") == 0) return worker();
    long seconds = argc > 1 ? atol(argv[1]) : 10;
    long long end = now_ns() + seconds * 1000000000LL;
    int workers = 0;
    /* Exec'd by its own path, so the workers keep the program's name (comm). */
    static char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return 1;
    self[n] = 0;
    while (now_ns() < end) {
        pid_t pid = fork();
        if (pid == 0) {
            execl(self, argv[0], "worker", (char *)NULL);
            _exit(127);
        }
        if (pid > 0) workers++;
        struct timespec gap = {0, 50000000};
        nanosleep(&gap, NULL);
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
    }
    while (wait(NULL) > 0) {
    }
    printf("workers %d\n", workers);
    fflush(stdout);
    return 0;
}
