/*
 * hashlab-testrun: run one loaded BPF program over many frames with
 * BPF_PROG_TEST_RUN, one bpf(2) call per frame, without Python in the loop.
 *
 * The program is passed as an inherited file descriptor (argv[1]); everything
 * else comes on stdin, little-endian:
 *
 *   "HLTR" u32 version(1) u32 ctx_size u32 count
 *   count x { u32 repeat; u32 len; u8 data[len]; }
 *
 * ctx_size is the size of the zeroed struct __sk_buff passed as ctx_in and
 * asked back as ctx_out (0: no context at all).  For every frame one record
 * goes to stdout:
 *
 *   i32 err (0 or the errno of BPF_PROG_TEST_RUN)  u32 retval  u32 duration
 *   u32 ctx_size_out  u32 vnet_hash_value  u16 vnet_hash_report
 *   u16 vnet_rss_queue                                            (24 bytes)
 *
 * The vnet_* fields are read from ctx_out at offsets 192/196/198 (the lab
 * kernel series' struct __sk_buff); they are 0 when ctx_out is shorter.
 * Only raw system calls: no libbpf, so it builds anywhere.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/bpf.h>

#define MAX_CTX 256
#define MAX_FRAME 65536
#define VNET_HASH_VALUE_OFF 192
#define VNET_HASH_REPORT_OFF 196
#define VNET_RSS_QUEUE_OFF 198

struct record {
    int32_t err;
    uint32_t retval;
    uint32_t duration;
    uint32_t ctx_size_out;
    uint32_t hash;
    uint16_t report;
    uint16_t queue;
} __attribute__((packed));

static int read_all(void *buf, size_t n)
{
    char *p = buf;

    while (n) {
        ssize_t r = read(0, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int write_all(const void *buf, size_t n)
{
    const char *p = buf;

    while (n) {
        ssize_t r = write(1, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static unsigned char frame[MAX_FRAME];
    unsigned char ctx_in[MAX_CTX], ctx_out[MAX_CTX];
    static struct record out[1024];
    uint32_t hdr[4], fh[2];
    size_t nout = 0;
    int prog_fd;

    if (argc != 2) {
        fprintf(stderr, "usage: %s PROG_FD < frames\n", argv[0]);
        return 2;
    }
    prog_fd = atoi(argv[1]);
    if (read_all(hdr, sizeof(hdr)) || memcmp(&hdr[0], "HLTR", 4) || hdr[1] != 1 ||
        hdr[2] > MAX_CTX) {
        fprintf(stderr, "hashlab-testrun: bad header on stdin\n");
        return 2;
    }
    memset(ctx_in, 0, sizeof(ctx_in));

    for (uint32_t i = 0; i < hdr[3]; i++) {
        union bpf_attr attr;
        struct record *rec;

        if (read_all(fh, sizeof(fh)) || fh[1] > MAX_FRAME || read_all(frame, fh[1])) {
            fprintf(stderr, "hashlab-testrun: short input at frame %u\n", i);
            return 2;
        }
        memset(&attr, 0, sizeof(attr));
        memset(ctx_out, 0, sizeof(ctx_out));
        attr.test.prog_fd = (uint32_t)prog_fd;
        attr.test.data_in = (uint64_t)(uintptr_t)frame;
        attr.test.data_size_in = fh[1];
        attr.test.repeat = fh[0];
        if (hdr[2]) {
            attr.test.ctx_in = (uint64_t)(uintptr_t)ctx_in;
            attr.test.ctx_size_in = hdr[2];
            attr.test.ctx_out = (uint64_t)(uintptr_t)ctx_out;
            attr.test.ctx_size_out = hdr[2];
        }
        rec = &out[nout++];
        memset(rec, 0, sizeof(*rec));
        if (syscall(__NR_bpf, BPF_PROG_TEST_RUN, &attr, sizeof(attr)) < 0) {
            rec->err = errno;
        } else {
            rec->retval = attr.test.retval;
            rec->duration = attr.test.duration;
            rec->ctx_size_out = attr.test.ctx_size_out;
            if (attr.test.ctx_size_out >= VNET_RSS_QUEUE_OFF + 2) {
                memcpy(&rec->hash, ctx_out + VNET_HASH_VALUE_OFF, 4);
                memcpy(&rec->report, ctx_out + VNET_HASH_REPORT_OFF, 2);
                memcpy(&rec->queue, ctx_out + VNET_RSS_QUEUE_OFF, 2);
            }
        }
        if (nout == sizeof(out) / sizeof(out[0])) {
            if (write_all(out, nout * sizeof(out[0])))
                return 1;
            nout = 0;
        }
    }
    if (nout && write_all(out, nout * sizeof(out[0])))
        return 1;
    return 0;
}
