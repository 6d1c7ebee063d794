/*
 * hashlab-floor: the cost of the Toeplitz hash alone, in plain C, as a floor for
 * the steering programs' ns per packet.
 *
 *   hashlab-floor KEY_HEX INPUT_HEX ITERATIONS SAMPLES
 *
 * KEY_HEX: the 40-byte key; INPUT_HEX: the bytes hashed (12 for IPv4 4-tuples, 36 for
 * IPv6); prints one line per variant, "name ns_per_hash_best ns_per_hash_median hash":
 *
 *   bitwise  bit by bit, a masked XOR and a shift per input bit (the algorithm
 *            of QEMU's programs, without their branch), over exactly the input's
 *            bytes;
 *   table    one lookup per input byte in per-position tables computed from the
 *            key beforehand (not timed), the prototype's algorithm.
 *
 * Timing: clock_gettime(CLOCK_MONOTONIC) around ITERATIONS hashes, SAMPLES times;
 * a compiler barrier makes every iteration reload the input.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEY_LEN 40
#define INPUT_MAX 36

static uint8_t key[KEY_LEN];
static uint8_t input[INPUT_MAX];
static uint32_t tables[INPUT_MAX][256];
static size_t input_len;

static int unhex(const char *s, uint8_t *out, size_t max, size_t *len)
{
    size_t n = strlen(s);

    if (n % 2 || n / 2 > max)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (uint8_t)v;
    }
    *len = n / 2;
    return 0;
}

static uint32_t window(size_t bit)
{
    uint32_t w = 0;

    for (size_t k = 0; k < 32; k++) {
        size_t b = bit + k;
        w = (w << 1) | ((key[b / 8] >> (7 - b % 8)) & 1);
    }
    return w;
}

static void make_tables(void)
{
    for (size_t i = 0; i < INPUT_MAX; i++) {
        uint32_t w[8];

        for (int k = 0; k < 8; k++)
            w[k] = window(8 * i + k);
        for (int b = 0; b < 256; b++) {
            uint32_t h = 0;
            for (int k = 0; k < 8; k++)
                if (b & (0x80 >> k))
                    h ^= w[k];
            tables[i][b] = h;
        }
    }
}

static uint32_t hash_bitwise(const uint8_t *in, size_t n)
{
    uint32_t h = 0;
    uint32_t w = (uint32_t)key[0] << 24 | (uint32_t)key[1] << 16 | (uint32_t)key[2] << 8 | key[3];

    for (size_t i = 0; i < n; i++) {
        uint8_t b = in[i], next = key[i + 4];

        for (int j = 0; j < 8; j++) {
            h ^= w & -(uint32_t)(b >> 7); /* branch-free: no mispredictions */
            w = (w << 1) | (next >> 7);
            b <<= 1;
            next <<= 1;
        }
    }
    return h;
}

static uint32_t hash_table(const uint8_t *in, size_t n)
{
    uint32_t h = 0;

    for (size_t i = 0; i < n; i++)
        h ^= tables[i][in[i]];
    return h;
}

static double now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static void bench(const char *name, uint32_t (*fn)(const uint8_t *, size_t), long iters, int samples)
{
    double ns[64];
    uint32_t sink = 0;

    for (int s = 0; s < samples; s++) {
        double t0 = now_ns();
        for (long i = 0; i < iters; i++) {
            __asm__ volatile("" : : "r"(input) : "memory");
            sink ^= fn(input, input_len);
        }
        ns[s] = (now_ns() - t0) / (double)iters;
    }
    qsort(ns, (size_t)samples, sizeof(ns[0]), cmp_double);
    printf("%s %.3f %.3f %08x\n", name, ns[0], ns[samples / 2], fn(input, input_len));
    if (sink == 0x12345678)
        fprintf(stderr, " ");
}

int main(int argc, char **argv)
{
    size_t klen;
    long iters;
    int samples;

    if (argc != 5 || unhex(argv[1], key, KEY_LEN, &klen) || klen != KEY_LEN ||
        unhex(argv[2], input, INPUT_MAX, &input_len)) {
        fprintf(stderr, "usage: %s KEY_HEX(40 bytes) INPUT_HEX(<= 36 bytes) ITERATIONS SAMPLES\n",
                argv[0]);
        return 2;
    }
    iters = atol(argv[3]);
    samples = atoi(argv[4]);
    if (iters < 1 || samples < 1 || samples > 64)
        return 2;
    make_tables();
    bench("bitwise", hash_bitwise, iters, samples);
    bench("table", hash_table, iters, samples);
    return 0;
}
