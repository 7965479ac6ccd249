/* A small single-threaded epoll server with planted stalls, for stallscope's tests and demo.
 *
 * Protocol: a client connects and sends one line, then reads the answer:
 *   "burn MS"  -> burn_cpu(MS): spins on the CPU inside the loop thread for MS milliseconds
 *   "sleep MS" -> sleep_in_handler(MS): sleeps (nanosleep) inside the loop thread for MS ms
 *   "quick"    -> answers at once
 * With a second argument "fixed" the server plays the fixed version of itself: "burn" requests
 * answer at once (as if the work had moved off the loop).
 * For each planted stall it prints "planted KIND START_NS END_NS" (CLOCK_MONOTONIC, the clock
 * stallscope reports in), so tests compare the agent's durations with the truth. For each loop
 * iteration (from epoll_wait's return to the next call) that took SLOW_ITERATION_MS or more by
 * its own clock, planted or not, it prints "iteration START_NS END_NS": a judge then tells a
 * quick request that really was slow (a loaded machine, a kernel under emulation) from a stall
 * the agent reported where the loop was quick.
 *
 * Built with frame pointers: until full DWARF unwinding lands, the kernel's frame-pointer walk
 * is what gives user stacks. The sleep is a raw syscall so the innermost frame is our function
 * rather than a libc wrapper built without frame pointers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
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

__attribute__((noinline)) void sleep_in_handler(long ms) {
    struct timespec req = {ms / 1000, (ms % 1000) * 1000000L};
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "0"((long)SYS_nanosleep), "D"(&req), "S"(0L)
                     : "rcx", "r11", "memory");
    (void)ret;
}

static int fixed_mode;

#define SLOW_ITERATION_MS 50

__attribute__((noinline)) void handle_request(int fd) {
    char buf[256];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    if (n <= 0) return;
    buf[n] = 0;
    long ms = 0;
    const char *kind = NULL;
    long long start = now_ns();
    if (sscanf(buf, "burn %ld", &ms) == 1) {
        kind = "burn";
        if (!fixed_mode) burn_cpu(ms);
    } else if (sscanf(buf, "sleep %ld", &ms) == 1) {
        kind = "sleep";
        sleep_in_handler(ms);
    }
    long long end = now_ns();
    if (kind) {
        printf("planted %s %lld %lld\n", kind, start, end);
        fflush(stdout);
    }
    (void)!write(fd, "ok\n", 3);
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    fixed_mode = argc > 2 && strcmp(argv[2], "fixed") == 0;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 128)) {
        perror("bind/listen");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(listener, (struct sockaddr *)&addr, &len);
    printf("listening %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener};
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
    for (;;) {
        struct epoll_event events[64];
        int n = epoll_wait(ep, events, 64, -1);
        if (n < 0 && errno == EINTR) continue;
        long long woke = now_ns();
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                int conn = accept(listener, NULL, NULL);
                if (conn < 0) continue;
                struct epoll_event cev = {.events = EPOLLIN, .data.fd = conn};
                epoll_ctl(ep, EPOLL_CTL_ADD, conn, &cev);
            } else {
                handle_request(fd);
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
            }
        }
        long long done = now_ns();
        if (done - woke >= SLOW_ITERATION_MS * 1000000LL) {
            printf("iteration %lld %lld\n", woke, done);
            fflush(stdout);
        }
    }
}
