/* Benchmark target: context switches at a chosen rate, for the event-loss sweep and the scale
 * benchmark of `cargo xtask bench`.
 *
 * Usage: switcher MODE COUNT RATE [LIFETIME_S]
 *   pairs   COUNT pairs of threads bounce one byte over two pipes; every round trip is two
 *           blocking reads, i.e. two switch-outs. RATE is the total switch-outs per second
 *           aimed at (0: as fast as they can).
 *   threads COUNT threads; each wakes RATE/COUNT times per second on an absolute timer, burns
 *           about 20 us of CPU (so samples and switch-outs land in user code) and sleeps again.
 *   procs   the same with COUNT single-threaded processes (forked; they die with the parent).
 * Prints "ready" once every thread or process runs. Exits by itself after LIFETIME_S (default
 * 600) so it can never outlive a benchmark. The switches actually made are read by the bench
 * from /proc (voluntary + nonvoluntary context switches of every thread).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static double rate_per_worker; /* switch-outs per second per pair or ticker; 0 = unlimited */

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_until(long long ns) {
    struct timespec ts = {ns / 1000000000LL, ns % 1000000000LL};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0) {
    }
}

volatile unsigned long long sink;

__attribute__((noinline)) void burn_20us(void) {
    long long end = now_ns() + 20000;
    unsigned long long x = 1;
    while (now_ns() < end) {
        for (int i = 0; i < 100; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    }
    sink = x;
}

struct pair {
    int ping[2];
    int pong[2];
};

static void *pong_side(void *arg) {
    struct pair *p = arg;
    char c;
    while (read(p->ping[0], &c, 1) == 1) {
        if (write(p->pong[1], &c, 1) != 1) break;
    }
    return NULL;
}

/* Drives the ping-pong; when a rate is set, sleeps whenever it is ahead of schedule. */
static void *ping_side(void *arg) {
    struct pair *p = arg;
    char c = 'p';
    long long start = now_ns();
    double round_trips_per_ns = rate_per_worker / 2.0 / 1e9;
    for (long long done = 0;; done++) {
        if (write(p->ping[1], &c, 1) != 1 || read(p->pong[0], &c, 1) != 1) break;
        if (round_trips_per_ns > 0 && (done & 15) == 15) {
            long long due = start + (long long)((double)(done + 1) / round_trips_per_ns);
            if (due > now_ns()) sleep_until(due);
        }
    }
    return NULL;
}

static void *ticker(void *arg) {
    (void)arg;
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    long long period = (long long)(1e9 / rate_per_worker);
    long long next = now_ns();
    for (;;) {
        burn_20us();
        next += period;
        long long now = now_ns();
        if (next < now - 100 * period) next = now; /* far behind: do not burst to catch up */
        sleep_until(next);
    }
    return NULL;
}

static void start_thread(void *(*fn)(void *), void *arg) {
    pthread_t t;
    if (pthread_create(&t, NULL, fn, arg)) {
        perror("pthread_create");
        exit(1);
    }
    pthread_detach(t);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: switcher pairs|threads|procs COUNT RATE [LIFETIME_S]\n");
        return 2;
    }
    const char *mode = argv[1];
    int count = atoi(argv[2]);
    double rate = atof(argv[3]);
    int lifetime = argc > 4 ? atoi(argv[4]) : 600;
    if (count < 1) count = 1;
    rate_per_worker = rate / count;
    if (strcmp(mode, "pairs") == 0) {
        for (int i = 0; i < count; i++) {
            struct pair *p = calloc(1, sizeof *p);
            if (!p || pipe(p->ping) || pipe(p->pong)) {
                perror("pipe");
                return 1;
            }
            start_thread(pong_side, p);
            start_thread(ping_side, p);
        }
    } else if (strcmp(mode, "threads") == 0 && rate > 0) {
        for (int i = 0; i < count; i++) start_thread(ticker, NULL);
    } else if (strcmp(mode, "procs") == 0 && rate > 0) {
        pid_t parent = getpid();
        for (int i = 0; i < count; i++) {
            pid_t pid = fork();
            if (pid < 0) {
                perror("fork");
                return 1;
            }
            if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent) _exit(0);
                alarm(lifetime);
                ticker(NULL);
                _exit(0);
            }
        }
    } else {
        fprintf(stderr, "switcher: unknown mode %s (or RATE 0 for a timed mode)\n", mode);
        return 2;
    }
    printf("ready\n");
    fflush(stdout);
    sleep(lifetime);
    return 0;
}
