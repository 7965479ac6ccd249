/* A stress target for issue #22: an epoll loop that plants STALLS stalls of mixed kinds while
 * it migrates between two CPUs (sched_setaffinity flips on itself), so the agent sees every
 * kind of switch on both CPUs, in every order the ring buffer can deliver them.
 *
 * Usage: stress_loop CPU_A CPU_B STALLS SEED
 * Prints "ready TID" once set up (TID: the loop thread), waits for SIGUSR1 (a signalfd in its
 * loop; the test signals its own child), then plants the stalls, one per iteration with two
 * quick iterations (a 10 ms epoll timeout) between them, and prints "done". For each stall it
 * prints, in the quick iteration after it, "planted KIND START_NS END_NS CPU" (CLOCK_MONOTONIC,
 * its own measurement of the iteration's work; CPU: where the loop was pinned at its start).
 * Kinds, in a shuffled order (SEED), each 100 to 150 ms:
 *   burn      spin_on_loop(): spins for that much CPU time (longer on the wall clock when the
 *             machine is loaded); half-way it moves itself to the other CPU, so it is switched
 *             out on one CPU and in on the other in the middle of the stall;
 *   sleep     sleep_on_loop(): nanosleep, after moving itself to the other CPU (it wakes there);
 *   lock      wait_for_lock(): blocks in pthread_mutex_lock on a mutex that the "holder" thread
 *             holds while it computes (hold_and_compute());
 *   runqueue  crowded_on_loop(): works for the span's wall time while two "hog" threads pinned
 *             to the loop's CPU spin there (hog_spin()): it spends most of it waiting for a CPU.
 * Exits by itself after LIFETIME_S.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "target_common.h"

#define LIFETIME_S 240
#define HOGS 2

static int cpus[2];
static int loop_cpu_index;
volatile int rounds;

static void pin_self(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
        perror("sched_setaffinity");
        exit(1);
    }
}

/* Moves the loop to the other CPU (sched_setaffinity on itself migrates it at once). */
static void flip_cpu(void) {
    loop_cpu_index ^= 1;
    pin_self(cpus[loop_cpu_index]);
}

static void spin_until(long long end) {
    unsigned long long x = 7;
    while (now_ns() < end)
        for (int i = 0; i < 2000; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    sink = x;
}

static long long cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Spins until this thread has used `until` ns of CPU time: the stall is CPU work whatever the
 * machine's load (a loaded machine makes it longer on the wall clock, not less on-CPU). */
static void spin_cpu_until(long long until) {
    unsigned long long x = 5;
    while (cpu_ns() < until)
        for (int i = 0; i < 2000; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    sink = x;
}

__attribute__((noinline)) void spin_on_loop(long ms) {
    long long start = cpu_ns();
    spin_cpu_until(start + ms * 500000LL);
    flip_cpu();
    spin_cpu_until(start + ms * 1000000LL);
    rounds++;
}

__attribute__((noinline)) void sleep_on_loop(long ms) {
    struct timespec req = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&req, NULL);
    rounds++;
}

/* The lock: the holder takes it when asked, says so, computes `hold_ms`, unlocks. */
static pthread_mutex_t shared = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t ask_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ask = PTHREAD_COND_INITIALIZER;
static long hold_ms;
static atomic_int holding;

__attribute__((noinline)) void hold_and_compute(long ms) {
    pthread_mutex_lock(&shared);
    atomic_store(&holding, 1);
    spin_until(now_ns() + ms * 1000000LL);
    atomic_store(&holding, 0);
    pthread_mutex_unlock(&shared);
    rounds++;
}

static void *holder_main(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "holder");
    for (;;) {
        pthread_mutex_lock(&ask_lock);
        while (hold_ms == 0) pthread_cond_wait(&ask, &ask_lock);
        long ms = hold_ms;
        hold_ms = 0;
        pthread_mutex_unlock(&ask_lock);
        hold_and_compute(ms);
    }
    return NULL;
}

__attribute__((noinline)) void wait_for_lock(void) {
    pthread_mutex_lock(&shared);
    pthread_mutex_unlock(&shared);
    rounds++;
}

/* Asks the holder to take the lock and waits (spinning, a few microseconds) until it has. */
static void lock_taken_by_holder(long ms) {
    pthread_mutex_lock(&ask_lock);
    hold_ms = ms;
    pthread_cond_signal(&ask);
    pthread_mutex_unlock(&ask_lock);
    while (!atomic_load(&holding)) sched_yield();
}

/* The hogs: pinned to the loop's CPU, they spin while `crowd` is set. */
static pthread_mutex_t hog_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hog_go = PTHREAD_COND_INITIALIZER;
static int hog_generation, hog_cpu;
static atomic_int crowd;

__attribute__((noinline)) void hog_spin(void) {
    unsigned long long x = 3;
    while (atomic_load(&crowd))
        for (int i = 0; i < 2000; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    sink = x;
}

static void *hog_main(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "hog");
    int seen = 0;
    for (;;) {
        pthread_mutex_lock(&hog_lock);
        while (hog_generation == seen) pthread_cond_wait(&hog_go, &hog_lock);
        seen = hog_generation;
        int cpu = hog_cpu;
        pthread_mutex_unlock(&hog_lock);
        pin_self(cpu);
        hog_spin();
    }
    return NULL;
}

__attribute__((noinline)) void crowded_on_loop(long ms) {
    spin_until(now_ns() + ms * 1000000LL);
    rounds++;
}

static void start_hogs(void) {
    atomic_store(&crowd, 1);
    pthread_mutex_lock(&hog_lock);
    hog_cpu = cpus[loop_cpu_index];
    hog_generation++;
    pthread_cond_broadcast(&hog_go);
    pthread_mutex_unlock(&hog_lock);
}

static unsigned long long seed;
static unsigned next_random(void) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return (unsigned)(seed >> 33);
}

static const char *KINDS[] = {"burn", "sleep", "lock", "runqueue"};

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: stress_loop CPU_A CPU_B STALLS SEED\n");
        return 2;
    }
    cpus[0] = atoi(argv[1]);
    cpus[1] = atoi(argv[2]);
    int stalls = atoi(argv[3]);
    seed = strtoull(argv[4], NULL, 10);
    /* SIGUSR1 blocked in every thread (they inherit the mask): only the signalfd takes it. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    /* Threads before pinning, so they inherit no pinning (the hogs pin themselves). */
    pthread_t t;
    pthread_create(&t, NULL, holder_main, NULL);
    for (int i = 0; i < HOGS; i++) pthread_create(&t, NULL, hog_main, NULL);
    pin_self(cpus[0]);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = sfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);

    /* The schedule: each kind equally often, shuffled. */
    int *kinds = calloc((size_t)stalls, sizeof *kinds);
    for (int i = 0; i < stalls; i++) kinds[i] = i % 4;
    for (int i = stalls - 1; i > 0; i--) {
        int j = (int)(next_random() % (unsigned)(i + 1));
        int k = kinds[i];
        kinds[i] = kinds[j];
        kinds[j] = k;
    }

    printf("ready %ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    long long deadline = now_ns() + LIFETIME_S * 1000000000LL;
    int started = 0, planted = 0, quiet = 0, kind = 0, cpu = 0;
    long long start = 0, end = 0;
    while (now_ns() < deadline) {
        struct epoll_event events[4];
        if (start && !end) {
            /* The stall's span ends here, right before the wait (a preemption anywhere after
             * its work is still part of the iteration the agent reports). */
            end = now_ns();
        }
        int n = epoll_wait(ep, events, 4, started ? 10 : 1000);
        /* The span is the whole iteration's work, from leaving the wait to entering it again
         * (migrations included), so it is what the agent must report. */
        long long begin = now_ns();
        for (int i = 0; i < n; i++) {
            struct signalfd_siginfo info;
            if (read(sfd, &info, sizeof info) == sizeof info) started = 1;
        }
        if (!started) continue;
        if (quiet < 2 || planted >= stalls) { /* quick iterations between stalls */
            if (start && end) { /* the last stall's line, printed outside any planted span */
                printf("planted %s %lld %lld %d\n", KINDS[kind], start, end, cpu);
                if (planted == stalls) printf("done\n");
                fflush(stdout);
                start = end = 0;
            } else if (next_random() % 3 == 0) {
                flip_cpu(); /* it moves between stalls too */
            }
            quiet++;
            continue;
        }
        quiet = 0;
        start = begin;
        end = 0;
        kind = kinds[planted];
        long ms = 100 + (long)(next_random() % 51);
        cpu = cpus[loop_cpu_index];
        switch (kind) {
        case 0:
            spin_on_loop(ms);
            break;
        case 1:
            flip_cpu();
            sleep_on_loop(ms);
            break;
        case 2:
            lock_taken_by_holder(ms);
            wait_for_lock();
            break;
        default:
            start_hogs();
            crowded_on_loop(ms);
            atomic_store(&crowd, 0);
            break;
        }
        planted++;
    }
    return 0;
}
