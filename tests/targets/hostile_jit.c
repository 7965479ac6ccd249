// A hostile target for tests/tests/hostile_target.rs: it names its thread with terminal
// escapes, markup and invalid UTF-8, burns CPU in "JIT" code (an anonymous executable
// mapping, named only by its perf map), and chooses what /tmp/perf-PID.map is:
//   hostile_jit names          a map it owns whose names hold markup and control characters
//   hostile_jit symlink PATH   a symlink to PATH (a root-only file the agent must not read)
//   hostile_jit owner UID      a map owned by another user UID
//   hostile_jit native         no map: burns in the C function burn_native() instead
// Started as root, it drops to uid/gid 65534 (nobody) once its map is in place. Each burn
// spins ~300 ms in the JIT code, then sleeps 200 ms; it prints "ready" when set up.
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

// mov rax, rdi; 1: dec rax; jnz 1b; ret
static const unsigned char SPIN[] = {0x48, 0x89, 0xf8, 0x48, 0xff, 0xc8, 0x75, 0xfb, 0xc3};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

volatile uint64_t sink;

__attribute__((noinline)) void burn_native(uint64_t n) {
    uint64_t x = 7;
    for (uint64_t i = 0; i < n; i++) x = x * 2862933555777941757ULL + 3037000493ULL;
    sink = x;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: hostile_jit names|symlink PATH|owner UID\n");
        return 2;
    }
    unsigned char *code = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (code == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memcpy(code, SPIN, sizeof SPIN);
    uint64_t (*spin)(uint64_t) = (uint64_t (*)(uint64_t))code;

    char path[64];
    snprintf(path, sizeof path, "/tmp/perf-%d.map", getpid());
    unlink(path);
    int native = strcmp(argv[1], "native") == 0;
    if (native) {
        // No perf map at all.
    } else if (strcmp(argv[1], "symlink") == 0 && argc > 2) {
        if (symlink(argv[2], path) != 0) {
            perror("symlink");
            return 1;
        }
    } else {
        FILE *map = fopen(path, "w");
        if (!map) {
            perror("perf map");
            return 1;
        }
        fprintf(map, "%lx %x jit_spin<script>alert(1)</script>|`id`&amp;\x1b[31mRED\x1b[0m\r\x07\xff\xfe\n",
                (unsigned long)code, 4096);
        fclose(map);
        if (strcmp(argv[1], "owner") == 0 && argc > 2) {
            if (chown(path, (uid_t)atoi(argv[2]), (gid_t)atoi(argv[2])) != 0) {
                perror("chown");
                return 1;
            }
        } else if (chown(path, 65534, 65534) != 0) {
            perror("chown");
            return 1;
        }
    }
    if (setgid(65534) != 0 || setuid(65534) != 0) {
        perror("drop to nobody");
        return 1;
    }
    // 15 bytes at most: ESC, markup, a backtick, a newline and bytes that are not UTF-8.
    prctl(PR_SET_NAME, "\x1b[2J<i>|`&\n\xff\xfe", 0, 0, 0);
    printf("ready %s\n", path);
    fflush(stdout);
    for (;;) {
        uint64_t start = now_ns();
        while (now_ns() - start < 300000000u) {
            if (native)
                burn_native(2000000);
            else
                spin(2000000);
        }
        printf("burn\n");
        fflush(stdout);
        usleep(200000);
    }
}
