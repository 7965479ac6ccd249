/* Benchmark target: two threads bouncing one byte over a pair of pipes ROUNDS times, a
 * context-switch-heavy workload. Prints the elapsed wall time and the process's CPU time (both
 * threads, the kernel's work in their context included: tracing programs run there), in ns.
 * Wall time alone cannot show a tracer's cost on a small VM: a probe on the switch path can keep
 * its vCPUs from idling between wake-ups and make the ping-pong faster. Usage: pingpong ROUNDS */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int to_b[2], to_a[2];
static long rounds;

static void *bouncer(void *arg) {
    (void)arg;
    char c;
    for (long i = 0; i < rounds; i++) {
        if (read(to_b[0], &c, 1) != 1) break;
        if (write(to_a[1], &c, 1) != 1) break;
    }
    return NULL;
}

int main(int argc, char **argv) {
    rounds = argc > 1 ? atol(argv[1]) : 100000;
    if (pipe(to_b) || pipe(to_a)) return 1;
    pthread_t t;
    pthread_create(&t, NULL, bouncer, NULL);
    struct timespec a, b, cpu_a, cpu_b;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu_a);
    clock_gettime(CLOCK_MONOTONIC, &a);
    char c = 'x';
    for (long i = 0; i < rounds; i++) {
        if (write(to_b[1], &c, 1) != 1) break;
        if (read(to_a[0], &c, 1) != 1) break;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    pthread_join(t, NULL);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu_b);
    printf("%lld %lld\n", (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec),
           (long long)(cpu_b.tv_sec - cpu_a.tv_sec) * 1000000000LL + (cpu_b.tv_nsec - cpu_a.tv_nsec));
    return 0;
}
