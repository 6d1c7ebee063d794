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
 *   hashlab-floor --parse KEY_HEX FRAME_HEX HASH_TYPES ITERATIONS SAMPLES
 *
 * the whole job instead, "parse ns_best ns_median hash report": parse the Ethernet frame
 * as the virtio spec's hash rules read it (VLAN tags; IPv4 with options and fragments;
 * IPv6 with up to 16 extension headers, a Home Address option, a Type 2 Routing
 * Header, fragments), pick the report type among HASH_TYPES (VIRTIO_NET_RSS_HASH_TYPE_*
 * bits), gather the input and hash it by the tables.  What a steering program could
 * at best cost; hashlab checks the hash and report against its oracle before use.
 *
 * Timing: clock_gettime(CLOCK_MONOTONIC) around ITERATIONS hashes, SAMPLES times;
 * a compiler barrier makes every iteration reload the input.
 */
#include <stdbool.h>
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

/* --- parse: the spec's selection over a frame --------------------------------------- */

enum { T_IPv4 = 1, T_TCPv4 = 2, T_UDPv4 = 4, T_IPv6 = 8, T_TCPv6 = 16, T_UDPv6 = 32,
       T_IPv6_EX = 64, T_TCPv6_EX = 128, T_UDPv6_EX = 256 };
enum { R_NONE, R_IPv4, R_TCPv4, R_UDPv4, R_IPv6, R_TCPv6, R_UDPv6, R_IPv6_EX, R_TCPv6_EX,
       R_UDPv6_EX };

static uint8_t frame[2048];
static size_t frame_len;
static uint32_t hash_types;

static unsigned be16(const uint8_t *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

/* The hash input of the selected type in IN (length *N); the report type. */
static int gather(const uint8_t *src, const uint8_t *dst, size_t alen, const uint8_t *ports,
                  int report, uint8_t *in, size_t *n)
{
    memcpy(in, src, alen);
    memcpy(in + alen, dst, alen);
    *n = 2 * alen;
    if (ports) {
        memcpy(in + *n, ports, 4);
        *n += 4;
    }
    return report;
}

static int parse(const uint8_t *f, size_t len, uint32_t types, uint8_t *in, size_t *n)
{
    size_t off = 12;
    unsigned eth;

    if (len < 14)
        return R_NONE;
    eth = be16(f + 12);
    while ((eth == 0x8100 || eth == 0x88a8 || eth == 0x9100) && off + 6 <= len) {
        off += 4;
        eth = be16(f + off);
    }
    off += 2;
    if (eth == 0x0800) {
        size_t ihl;
        unsigned proto;
        bool frag;

        if (len < off + 20 || (f[off] >> 4) != 4)
            return R_NONE;
        ihl = (size_t)(f[off] & 0xf) * 4;
        if (ihl < 20 || len < off + ihl)
            return R_NONE;
        proto = f[off + 9];
        frag = be16(f + off + 6) & 0x3fff;
        if (!frag && proto == 6 && (types & T_TCPv4) && len >= off + ihl + 20)
            return gather(f + off + 12, f + off + 16, 4, f + off + ihl, R_TCPv4, in, n);
        if (!frag && proto == 17 && (types & T_UDPv4) && len >= off + ihl + 8)
            return gather(f + off + 12, f + off + 16, 4, f + off + ihl, R_UDPv4, in, n);
        if (types & T_IPv4)
            return gather(f + off + 12, f + off + 16, 4, NULL, R_IPv4, in, n);
        return R_NONE;
    }
    if (eth == 0x86dd) {
        const uint8_t *src, *dst, *hao = NULL, *rh2 = NULL;
        size_t p = off + 40;
        unsigned nh;
        bool ext = false, frag = false, tcp, udp;

        if (len < p || (f[off] >> 4) != 6)
            return R_NONE;
        nh = f[off + 6];
        src = f + off + 8;
        dst = f + off + 24;
        for (int i = 0; i < 16 && !frag; i++) {
            size_t hl;

            if (nh != 0 && nh != 43 && nh != 44 && nh != 60)
                break;
            if (len < p + 8)
                return R_NONE;
            ext = true;
            hl = nh == 44 ? 8 : ((size_t)f[p + 1] + 1) * 8;
            if (len < p + hl)
                return R_NONE;
            if (nh == 44) {
                frag = true;
            } else if (nh == 43 && f[p + 2] == 2 && f[p + 3] == 1 && hl == 24) {
                rh2 = f + p + 8;
            } else if (nh == 60) {
                for (size_t o = p + 2; o < p + hl;) {
                    if (f[o] == 0) {  /* Pad1 */
                        o++;
                        continue;
                    }
                    if (o + 2 > p + hl || o + 2 + f[o + 1] > p + hl)
                        break;
                    if (f[o] == 0xc9 && f[o + 1] == 16)
                        hao = f + o + 2;
                    o += 2 + (size_t)f[o + 1];
                }
            }
            nh = f[p];
            p += hl;
        }
        tcp = !frag && nh == 6 && len >= p + 20;
        udp = !frag && nh == 17 && len >= p + 8;
        if (ext) {
            const uint8_t *s = hao ? hao : src, *d = rh2 ? rh2 : dst;

            if (tcp && (types & T_TCPv6_EX))
                return gather(s, d, 16, f + p, R_TCPv6_EX, in, n);
            if (udp && (types & T_UDPv6_EX))
                return gather(s, d, 16, f + p, R_UDPv6_EX, in, n);
            if (types & T_IPv6_EX)
                return gather(s, d, 16, NULL, R_IPv6_EX, in, n);
        }
        if (tcp && (types & T_TCPv6))
            return gather(src, dst, 16, f + p, R_TCPv6, in, n);
        if (udp && (types & T_UDPv6))
            return gather(src, dst, 16, f + p, R_UDPv6, in, n);
        if (types & T_IPv6)
            return gather(src, dst, 16, NULL, R_IPv6, in, n);
    }
    return R_NONE;
}

static uint32_t parse_and_hash(const uint8_t *f, size_t len, int *report)
{
    uint8_t in[INPUT_MAX];
    size_t n = 0;

    *report = parse(f, len, hash_types, in, &n);
    return *report == R_NONE ? 0 : hash_table(in, n);
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

static int bench_parse(long iters, int samples)
{
    double ns[64];
    uint32_t sink = 0;
    int report;

    for (int s = 0; s < samples; s++) {
        double t0 = now_ns();
        for (long i = 0; i < iters; i++) {
            __asm__ volatile("" : : "r"(frame) : "memory");
            sink ^= parse_and_hash(frame, frame_len, &report);
        }
        ns[s] = (now_ns() - t0) / (double)iters;
    }
    qsort(ns, (size_t)samples, sizeof(ns[0]), cmp_double);
    sink = parse_and_hash(frame, frame_len, &report);
    printf("parse %.3f %.3f %08x %d\n", ns[0], ns[samples / 2], sink, report);
    return 0;
}

int main(int argc, char **argv)
{
    size_t klen;
    long iters;
    int samples;

    if (argc == 7 && !strcmp(argv[1], "--parse")) {
        if (unhex(argv[2], key, KEY_LEN, &klen) || klen != KEY_LEN ||
            unhex(argv[3], frame, sizeof(frame), &frame_len))
            return 2;
        hash_types = (uint32_t)strtoul(argv[4], NULL, 0);
        iters = atol(argv[5]);
        samples = atoi(argv[6]);
        if (iters < 1 || samples < 1 || samples > 64)
            return 2;
        make_tables();
        return bench_parse(iters, samples);
    }

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
