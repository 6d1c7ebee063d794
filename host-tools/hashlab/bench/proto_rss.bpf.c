// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * hashlab bench prototype: virtio-net RSS + hash report with a table-driven
 * Toeplitz hash.
 *
 * A stand-in for QEMU's tools/ebpf/rss.bpf.c (as patched by hashlab) that
 * differs in one thing only, the hash: instead of walking the 36 input bytes
 * bit by bit (288 conditional XORs and shifts), it XORs one precomputed
 * 32-bit word per input byte (or per nibble) from a table that userspace
 * computes once per key:
 *
 *   PROTO_HASH 0  bit by bit, from tap_rss_map_toeplitz_key (as QEMU does)
 *   PROTO_HASH 1  per-byte tables:   u32 t[36][256]  (36 KiB), 12 or 36 lookups
 *   PROTO_HASH 2  per-nibble tables: u32 t[72][16]   (4.5 KiB), 24 or 72 lookups
 *
 * t[i][b] is the Toeplitz contribution of value b at input byte i: the XOR of
 * the 32-bit key windows starting at key bits 8i+k for every bit k (MSB
 * first) set in b.  Toeplitz is linear over XOR, so the hash of the whole
 * input is the XOR of its bytes' contributions; a zero byte contributes 0.
 *
 * Parsing follows the virtio rules as hashlab's oracle states them
 * (hashlab.oracle.rss, behaviour "hashlab-ebpf"): offsets from the Ethernet header,
 * at most two VLAN tags, a complete IPv4 header (IHL >= 5) or IPv6 header,
 * up to 16 IPv6 extension headers (HBH, routing, fragment, AH, dest opts),
 * each complete; a Home Address option looked for at most 30 options deep;
 * a Type 2 Routing Header with one address and Segments Left 1; TCP/UDP only
 * when the whole header is there (TCP data offset >= 5) and the packet is not
 * a fragment.
 *
 * The maps are QEMU's three (same names and layout) plus the table map, so
 * that the same loader fills them.  Two programs share the code: a socket
 * filter returning the queue, and a BPF_PROG_TYPE_VNET_HASH program setting
 * the lab kernel's __sk_buff vnet_* fields (written at their offsets, so that
 * no patched UAPI header is needed to build this).
 */
#include <stddef.h>
#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef PROTO_HASH
#define PROTO_HASH 1
#endif

#define INPUT_MAX 36
#define TABLE_MAX 128
#define MAX_EXT_HEADERS 16
#define MAX_OPTIONS 30

#define P_HOPOPTS 0
#define P_TCP 6
#define P_UDP 17
#define P_ROUTING 43
#define P_FRAGMENT 44
#define P_AH 51
#define P_DSTOPTS 60

#define T_IPV4 (1u << 0)
#define T_TCPV4 (1u << 1)
#define T_UDPV4 (1u << 2)
#define T_IPV6 (1u << 3)
#define T_TCPV6 (1u << 4)
#define T_UDPV6 (1u << 5)
#define T_IPV6_EX (1u << 6)
#define T_TCPV6_EX (1u << 7)
#define T_UDPV6_EX (1u << 8)

enum report { R_NONE, R_IPV4, R_TCPV4, R_UDPV4, R_IPV6, R_TCPV6, R_UDPV6, R_IPV6_EX,
              R_TCPV6_EX, R_UDPV6_EX };

/* The lab kernel series' struct __sk_buff tail. */
#define SKB_VNET_HASH_VALUE 192
#define SKB_VNET_HASH_REPORT 196
#define SKB_VNET_RSS_QUEUE 198

struct cfg {
    __u8 redirect;
    __u8 populate_hash;
    __u32 hash_types;
    __u16 indirections_len;
    __u16 default_queue;
} __attribute__((packed));

struct key40 {
    __u32 first_word; /* key bytes 0..3 as a host-endian word (QEMU's layout) */
    __u8 rest[INPUT_MAX];
};

struct tables {
#if PROTO_HASH == 2
    __u32 t[2 * INPUT_MAX][16];
#else
    __u32 t[INPUT_MAX][256];
#endif
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(struct cfg));
    __uint(max_entries, 1);
    __uint(map_flags, BPF_F_MMAPABLE);
} tap_rss_map_configurations SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(struct key40));
    __uint(max_entries, 1);
    __uint(map_flags, BPF_F_MMAPABLE);
} tap_rss_map_toeplitz_key SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(__u16));
    __uint(max_entries, TABLE_MAX);
    __uint(map_flags, BPF_F_MMAPABLE);
} tap_rss_map_indirection_table SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(struct tables));
    __uint(max_entries, 1);
    __uint(map_flags, BPF_F_MMAPABLE);
} tap_rss_map_toeplitz_tables SEC(".maps");

struct flow {
    __u8 l3;      /* 4, 6, 0: not hashed */
    __u8 l4;      /* P_TCP, P_UDP, 0 */
    __u8 ext;     /* IPv6 extension headers present */
    __u8 has_hao;
    __u8 has_rh2;
    __u8 pad[3];
    __be16 sport, dport;
    __u8 src[16], dst[16], hao[16], rh2[16];
};

static __always_inline int ld(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
    return bpf_skb_load_bytes_relative(skb, off, to, len, BPF_HDR_START_MAC);
}

static __always_inline bool have(struct __sk_buff *skb, __u32 last)
{
    __u8 b;

    return ld(skb, last, &b, 1) == 0;
}

static __always_inline bool vlan_tpid(__be16 t)
{
    return t == bpf_htons(0x8100) || t == bpf_htons(0x88a8) || t == bpf_htons(0x9100);
}

static __always_inline bool ext_header(__u8 t)
{
    return t == P_HOPOPTS || t == P_ROUTING || t == P_FRAGMENT || t == P_AH || t == P_DSTOPTS;
}

static __always_inline void find_hao(struct __sk_buff *skb, struct flow *f, __u32 o, __u32 end)
{
    __u8 opt[2];

    for (int i = 0; i < MAX_OPTIONS; i++) {
        if (o >= end || ld(skb, o, opt, 2))
            return;
        if (opt[0] == 0) {
            o += 1;
            continue;
        }
        if (opt[0] == 0xc9 && opt[1] == 16 && o + 18 <= end) {
            if (!ld(skb, o + 2, f->hao, 16))
                f->has_hao = 1;
            return;
        }
        o += 2 + opt[1];
    }
}

/* Returns the L4 protocol (and its offset in *p), -1: not hashable, -2: fragment. */
static __always_inline int walk_ipv6(struct __sk_buff *skb, struct flow *f, __u8 type, __u32 *p)
{
    bool frag = false;
    __u32 off = *p, len;
    __u8 h[4];

    for (int i = 0; i <= MAX_EXT_HEADERS; i++) {
        if (!ext_header(type)) {
            *p = off;
            return frag ? -2 : type;
        }
        if (i == MAX_EXT_HEADERS || ld(skb, off, h, 2))
            return -1;
        f->ext = 1;
        len = type == P_AH ? (h[1] + 2) * 4 : (h[1] + 1) * 8;
        if (!have(skb, off + len - 1))
            return -1;
        if (type == P_FRAGMENT) {
            frag = true;
        } else if (type == P_ROUTING && !f->has_rh2) {
            if (!ld(skb, off, h, 4) && h[1] == 2 && h[2] == 2 && h[3] == 1 &&
                !ld(skb, off + 8, f->rh2, 16))
                f->has_rh2 = 1;
        } else if (type == P_DSTOPTS && !f->has_hao) {
            find_hao(skb, f, off + 2, off + len);
        }
        type = h[0];
        off += len;
    }
    return -1;
}

static __always_inline void parse(struct __sk_buff *skb, struct flow *f)
{
    __u32 off = 12, l4off;
    int proto;
    __be16 et;

    if (ld(skb, off, &et, 2))
        return;
    for (int i = 0; i < 2 && vlan_tpid(et); i++) {
        off += 4;
        if (ld(skb, off, &et, 2))
            return;
    }
    if (vlan_tpid(et))
        return;
    off += 2;

    if (et == bpf_htons(0x0800)) {
        __u8 ip[20];
        __u32 hl;

        if (ld(skb, off, ip, 20) || (ip[0] >> 4) != 4 || (ip[0] & 15) < 5)
            return;
        hl = (ip[0] & 15) * 4;
        if (hl > 20 && !have(skb, off + hl - 1))
            return;
        f->l3 = 4;
        __builtin_memcpy(f->src, ip + 12, 4);
        __builtin_memcpy(f->dst, ip + 16, 4);
        proto = ((ip[6] & 0x3f) | ip[7]) ? -2 : ip[9];
        l4off = off + hl;
    } else if (et == bpf_htons(0x86dd)) {
        __u8 ip6[40];

        if (ld(skb, off, ip6, 40) || (ip6[0] >> 4) != 6)
            return;
        l4off = off + 40;
        proto = walk_ipv6(skb, f, ip6[6], &l4off);
        if (proto == -1)
            return;
        f->l3 = 6;
        __builtin_memcpy(f->src, ip6 + 8, 16);
        __builtin_memcpy(f->dst, ip6 + 24, 16);
    } else {
        return;
    }

    if (proto == P_TCP) {
        __u8 th[20];

        if (!ld(skb, l4off, th, 20) && (th[12] >> 4) >= 5) {
            f->l4 = P_TCP;
            __builtin_memcpy(&f->sport, th, 2);
            __builtin_memcpy(&f->dport, th + 2, 2);
        }
    } else if (proto == P_UDP) {
        __u8 uh[8];

        if (!ld(skb, l4off, uh, 8)) {
            f->l4 = P_UDP;
            __builtin_memcpy(&f->sport, uh, 2);
            __builtin_memcpy(&f->dport, uh + 2, 2);
        }
    }
}

/* The virtio selection; fills in[] (zero-padded) and returns the report. */
static __always_inline int select_input(const struct flow *f, __u32 types, __u8 *in)
{
    int r = R_NONE;
    bool ex = false;

    if (f->l3 == 4) {
        if (f->l4 == P_TCP && (types & T_TCPV4))
            r = R_TCPV4;
        else if (f->l4 == P_UDP && (types & T_UDPV4))
            r = R_UDPV4;
        else if (types & T_IPV4)
            r = R_IPV4;
        else
            return R_NONE;
        __builtin_memcpy(in, f->src, 4);
        __builtin_memcpy(in + 4, f->dst, 4);
        if (r != R_IPV4) {
            __builtin_memcpy(in + 8, &f->sport, 2);
            __builtin_memcpy(in + 10, &f->dport, 2);
        }
        return r;
    }
    if (f->l3 != 6)
        return R_NONE;
    if (f->ext) {
        ex = true;
        if (f->l4 == P_TCP && (types & T_TCPV6_EX))
            r = R_TCPV6_EX;
        else if (f->l4 == P_UDP && (types & T_UDPV6_EX))
            r = R_UDPV6_EX;
        else if (types & T_IPV6_EX)
            r = R_IPV6_EX;
        else
            ex = false;
    }
    if (!ex) {
        if (f->l4 == P_TCP && (types & T_TCPV6))
            r = R_TCPV6;
        else if (f->l4 == P_UDP && (types & T_UDPV6))
            r = R_UDPV6;
        else if (types & T_IPV6)
            r = R_IPV6;
        else
            return R_NONE;
    }
    __builtin_memcpy(in, ex && f->has_hao ? f->hao : f->src, 16);
    __builtin_memcpy(in + 16, ex && f->has_rh2 ? f->rh2 : f->dst, 16);
    if (r != R_IPV6 && r != R_IPV6_EX) {
        __builtin_memcpy(in + 32, &f->sport, 2);
        __builtin_memcpy(in + 34, &f->dport, 2);
    }
    return r;
}

#if PROTO_HASH == 0
static __always_inline __u32 toeplitz(const __u8 *in, int n, const void *unused,
                                      const struct key40 *k)
{
    __u32 h = 0, w = k->first_word;

    for (int i = 0; i < INPUT_MAX; i++) {
        __u8 b = in[i], nx = k->rest[i];

        for (int j = 0; j < 8; j++) {
            if (b & 0x80)
                h ^= w;
            w = (w << 1) | (nx >> 7);
            b <<= 1;
            nx <<= 1;
        }
    }
    return h;
}
#elif PROTO_HASH == 1
static __always_inline __u32 toeplitz(const __u8 *in, int n, const struct tables *t,
                                      const void *unused)
{
    __u32 h = 0;

    if (n == 12) {
#pragma unroll
        for (int i = 0; i < 12; i++)
            h ^= t->t[i][in[i]];
        return h;
    }
#pragma unroll
    for (int i = 0; i < INPUT_MAX; i++)
        h ^= t->t[i][in[i]];
    return h;
}
#else
static __always_inline __u32 toeplitz(const __u8 *in, int n, const struct tables *t,
                                      const void *unused)
{
    __u32 h = 0;

    /* Fully unrolled, clang schedules all 72 loads first and runs out of stack. */
#pragma clang loop unroll_count(4)
    for (int i = 0; i < INPUT_MAX; i++) {
        if (i == n)
            break;
        h ^= t->t[2 * i][in[i] >> 4] ^ t->t[2 * i + 1][in[i] & 15];
    }
    return h;
}
#endif

struct result {
    __u32 hash;
    __u16 report;
    __u16 queue;
};

static __always_inline void rss(struct __sk_buff *skb, struct result *res)
{
    struct flow f = {};
    __u8 in[INPUT_MAX] = {};
    struct cfg *c;
    __u32 zero = 0, idx;
    __u16 *q;
    int r;

    res->hash = 0;
    res->report = R_NONE;
    res->queue = 0;
    c = bpf_map_lookup_elem(&tap_rss_map_configurations, &zero);
    if (!c)
        return;
    res->queue = c->default_queue;
    if (!c->redirect && !c->populate_hash)
        return;
    parse(skb, &f);
    r = select_input(&f, c->hash_types, in);
    if (r == R_NONE)
        return;
#if PROTO_HASH == 0
    struct key40 *k = bpf_map_lookup_elem(&tap_rss_map_toeplitz_key, &zero);

    if (!k)
        return;
    res->hash = toeplitz(in, f.l3 == 4 ? 12 : INPUT_MAX, NULL, k);
#else
    struct tables *t = bpf_map_lookup_elem(&tap_rss_map_toeplitz_tables, &zero);

    if (!t)
        return;
    res->hash = toeplitz(in, f.l3 == 4 ? 12 : INPUT_MAX, t, NULL);
#endif
    res->report = r;
    if (!c->redirect) {
        res->queue = (__u16)res->hash;
        return;
    }
    idx = res->hash & (c->indirections_len - 1);
    q = bpf_map_lookup_elem(&tap_rss_map_indirection_table, &idx);
    if (q)
        res->queue = *q;
}

SEC("socket")
int proto_rss_socket(struct __sk_buff *skb)
{
    struct result res;

    rss(skb, &res);
    return res.queue;
}

SEC("vnet_hash")
int proto_rss_vnet_hash(struct __sk_buff *skb)
{
    struct result res;

    rss(skb, &res);
    *(__u32 *)((char *)skb + SKB_VNET_HASH_VALUE) = res.hash;
    *(__u16 *)((char *)skb + SKB_VNET_HASH_REPORT) = res.report;
    *(__u16 *)((char *)skb + SKB_VNET_RSS_QUEUE) = res.queue;
    return 0;
}

char _license[] SEC("license") = "GPL";
