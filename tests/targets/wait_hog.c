/* A CPU hog for the runqueue test: pins itself to the CPU given as argv[1], prints "hogging" and
 * spins until killed, or for at most argv[2] seconds (default 10), so it never outlives a test
 * that forgot it.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    int cpu = argc > 1 ? atoi(argv[1]) : 0;
    long seconds = argc > 2 ? atol(argv[2]) : 10;
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(cpu, &cpus);
    if (sched_setaffinity(0, sizeof cpus, &cpus) != 0) {
        perror("sched_setaffinity");
        return 1;
    }
    printf("hogging %d\n", cpu);
    fflush(stdout);
    time_t end = time(NULL) + seconds;
    volatile unsigned long long x = 1;
    while (time(NULL) < end)
        for (int i = 0; i < 1000000; i++) x = x * 3 + 1;
    return 0;
}
