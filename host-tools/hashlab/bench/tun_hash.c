/*
 * hashlab-tunhash: the tunrss series' own hash function (drivers/net/tun_vnet_hash.h,
 * taken from kernel/series/tunrss as it is) compiled on the host, timed per packet,
 * for a figure next to the steering programs' BPF_PROG_TEST_RUN numbers.
 *
 *   hashlab-tunhash KEY_HEX FRAME_HEX HASH_TYPES ITERATIONS SAMPLES
 *   hashlab-tunhash --sizeof     (the bytes of one device's configuration)
 *
 * prints "tun ns_best ns_median hash report": tun_vnet_hash_compute() on a linear skb
 * holding FRAME (parse, pick the type, Toeplitz by the per-byte tables
 * tun_vnet_hash_set_key() derives from the key, not timed), ITERATIONS times per
 * sample.  Not included: what tun does around it (the RCU read of the configuration,
 * the skb extension, the indirection table lookup).  The kernel headers the function uses are
 * replaced by the few definitions below, over a linear buffer (skb_header_pointer()
 * returns a pointer into it, as the kernel's does for linear data).
 */
#include <linux/types.h>
#include <linux/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define BIT(n) (1UL << (n))
#define htons(x) ((__be16)__builtin_bswap16(x))

struct rcu_head {
    void *next;
};

struct sk_buff {
    const unsigned char *data;
    unsigned int len;
};

static inline const void *skb_header_pointer(const struct sk_buff *skb, int offset,
                                             int len, void *buffer)
{
    (void)buffer;
    if (offset < 0 || len < 0 || (unsigned int)offset + (unsigned int)len > skb->len)
        return NULL;
    return skb->data + offset;
}

#define skb_mac_header_was_set(skb) 0
#define skb_mac_offset(skb) 0

static inline u64 get_unaligned_be64(const void *p)
{
    u64 v;

    memcpy(&v, p, sizeof(v));
    return __builtin_bswap64(v);
}

#include "tun_vnet_hash.h"

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

static double now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    static struct tun_vnet_hash_cfg cfg;
    static uint8_t frame[65536];
    size_t key_len, frame_len;
    long iters, samples;
    uint32_t value = 0;
    uint16_t report = 0;
    double *ns;

    if (argc == 2 && !strcmp(argv[1], "--sizeof")) {
        printf("%zu\n", sizeof(cfg));
        return 0;
    }
    if (argc != 6 || unhex(argv[1], cfg.key, TUN_VNET_HASH_MAX_KEY_SIZE, &key_len) ||
        unhex(argv[2], frame, sizeof(frame), &frame_len)) {
        fprintf(stderr, "usage: %s KEY_HEX FRAME_HEX HASH_TYPES ITERATIONS SAMPLES\n", argv[0]);
        return 2;
    }
    cfg.types = strtoul(argv[3], NULL, 0);
    tun_vnet_hash_set_key(&cfg);
    iters = atol(argv[4]);
    samples = atol(argv[5]);
    if (iters < 1 || samples < 1)
        return 2;
    ns = calloc(samples, sizeof(*ns));
    struct sk_buff skb = { frame, (unsigned int)frame_len };

    for (long s = 0; s < samples; s++) {
        double t0 = now_ns();

        for (long i = 0; i < iters; i++) {
            __asm__ volatile("" : : "r"(&skb), "r"(&cfg) : "memory");
            report = tun_vnet_hash_compute(&skb, &cfg, &value);
        }
        ns[s] = (now_ns() - t0) / iters;
    }
    qsort(ns, samples, sizeof(*ns), cmp);
    printf("tun %.2f %.2f %08x %u\n", ns[0], ns[samples / 2], value, report);
    return 0;
}
