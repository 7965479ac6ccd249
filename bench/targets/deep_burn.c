/* Benchmark target: burns CPU at the bottom of a 40-deep call chain of distinct functions
 * (built without frame pointers), so every sample is a deep stack to unwind. Runs until killed.
 */
#include <stdint.h>

volatile uint64_t sink;

__attribute__((noinline)) static void leaf(void) {
    uint64_t x = sink;
    for (int i = 0; i < 200000; i++) x = x * 6364136223846793005ULL + 1;
    sink = x;
}

#define LEVEL(n, next)                                    \
    __attribute__((noinline)) static void level##n(int d) { \
        volatile char pad[64 + (n % 7) * 16];             \
        pad[0] = (char)d;                                 \
        next(d + pad[0] - d + 1);                         \
        sink += pad[0];                                   \
    }

static void bottom(int d) { (void)d; leaf(); }
LEVEL(39, bottom) LEVEL(38, level39) LEVEL(37, level38) LEVEL(36, level37) LEVEL(35, level36)
LEVEL(34, level35) LEVEL(33, level34) LEVEL(32, level33) LEVEL(31, level32) LEVEL(30, level31)
LEVEL(29, level30) LEVEL(28, level29) LEVEL(27, level28) LEVEL(26, level27) LEVEL(25, level26)
LEVEL(24, level25) LEVEL(23, level24) LEVEL(22, level23) LEVEL(21, level22) LEVEL(20, level21)
LEVEL(19, level20) LEVEL(18, level19) LEVEL(17, level18) LEVEL(16, level17) LEVEL(15, level16)
LEVEL(14, level15) LEVEL(13, level14) LEVEL(12, level13) LEVEL(11, level12) LEVEL(10, level11)
LEVEL(9, level10) LEVEL(8, level9) LEVEL(7, level8) LEVEL(6, level7) LEVEL(5, level6)
LEVEL(4, level5) LEVEL(3, level4) LEVEL(2, level3) LEVEL(1, level2) LEVEL(0, level1)

int main(void) {
    for (;;) level0(0);
}
