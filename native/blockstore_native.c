/* blockstore's hot path; the contract is in blockstore_native.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__)
/* libxxhash picks the widest vector unit the CPU has at run time (AVX2 hashes 4 KiB blocks about
 * twice as fast as the SSE2 a portable build gets) */
#include <xxh_x86dispatch.h>
#else
#include <xxhash.h>
#endif

#include "blockstore_native.h"

/* Writes go to the file in pieces of at most BS_WRITE_PIECE, which keeps its page cache in
 * folios of at most that size: a later 4 KiB write into a large folio costs ext4 a walk over all of
 * its block buffers. Measured on ext4 (kernel 6.18), one thread, after the file was written in
 * pieces of 1 MiB / 256 KiB / 64 KiB: 4 KiB random pwrites ran at 32,500 / 83,000 / 164,000 a
 * second, and 1 MiB sequential pwrites at 5,770 / 5,214 / 4,783 MiB/s. Through a mount (one run,
 * pieces of 256 KiB / 64 KiB, alternating): 16 synchronous 4 KiB writers 50,100 / 72,000 IOPS
 * (a plain file: 71,400), 4 KiB write + fsync 4,520 / 4,830, 1 MiB sequential overwrites 2,995 /
 * 2,850 MiB/s: 64 KiB, for a database's or a VM's small writes. */

int bs_pwrite_all(int fd, const char *buf, size_t len, int64_t off)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, len < BS_WRITE_PIECE ? len : BS_WRITE_PIECE, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        buf += n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}

int bs_pread_all(int fd, char *buf, size_t len, int64_t off)
{
    while (len > 0) {
        ssize_t n = pread(fd, buf, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO; /* the file ends before what should be there: truncated */
        buf += n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}

struct second_copy {
    int fd;
    const char *buf;
    size_t len;
    int64_t off;
    int result;
    const char *sum_buf; /* blocks this thread checksums (its half), or NULL */
    size_t sum_len;
    uint64_t *sums;
};

static void *write_second(void *arg)
{
    struct second_copy *c = arg;
    if (c->sum_buf)
        bs_sum_blocks(c->sum_buf, c->sum_len, BS_SUM_BLOCK, c->sums);
    c->result = bs_pwrite_all(c->fd, c->buf, c->len, c->off);
    return NULL;
}

/* Large writes put the second copy on its own thread: the two copies into the page cache then
 * overlap on two cores (a thread costs tens of microseconds, a 1 MiB copy hundreds). */
#define PARALLEL_FROM (256 * 1024)

void bs_sum_blocks(const char *buf, size_t len, size_t block, uint64_t *sums)
{
    for (size_t i = 0; i < len / block; i++) {
        uint64_t h = XXH3_64bits(buf + i * block, block);
        sums[i] = h ? h : 1;
    }
}

int bs_sum_file(int fd, int64_t off, size_t len, size_t block, uint64_t *sums, char *buf, size_t buf_len)
{
    size_t step = buf_len / block * block;
    for (size_t done = 0; done < len; done += step) {
        size_t n = len - done < step ? len - done : step;
        int r = bs_pread_all(fd, buf, n, off + (int64_t)done);
        if (r < 0)
            return r;
        bs_sum_blocks(buf, n, block, sums + done / block);
    }
    return 0;
}

/* Both copies from one buffer; one failing copy does not stop the other. The checksums are taken
 * from the caller's buffer, never from a copy read back, so they describe what the client wrote. */
static pthread_mutex_t stripes[BS_STRIPES] = {[0 ... BS_STRIPES - 1] = PTHREAD_MUTEX_INITIALIZER};

void bs_stripe_lock(int64_t stripe) { pthread_mutex_lock(&stripes[stripe % BS_STRIPES]); }
void bs_stripe_unlock(int64_t stripe) { pthread_mutex_unlock(&stripes[stripe % BS_STRIPES]); }

int bs_pwrite2(int fd0, int fd1, const char *buf, size_t len, int64_t off, uint64_t *sums, int64_t stripe,
               int *failed)
{
    if (stripe >= 0)
        bs_stripe_lock(stripe);
    int r0, r1;
    pthread_t t;
    /* with two threads, each checksums half the blocks before writing its copy */
    size_t half = len / BS_SUM_BLOCK / 2 * BS_SUM_BLOCK;
    struct second_copy c = {fd1, buf, len, off, 0, sums ? buf + half : NULL, len - half,
                            sums ? sums + half / BS_SUM_BLOCK : NULL};
    if (fd0 >= 0 && fd1 >= 0 && len >= PARALLEL_FROM && pthread_create(&t, NULL, write_second, &c) == 0) {
        if (sums)
            bs_sum_blocks(buf, half, BS_SUM_BLOCK, sums);
        r0 = bs_pwrite_all(fd0, buf, len, off);
        pthread_join(t, NULL);
        r1 = c.result;
    } else {
        if (sums)
            bs_sum_blocks(buf, len, BS_SUM_BLOCK, sums);
        r0 = fd0 >= 0 ? bs_pwrite_all(fd0, buf, len, off) : 0;
        r1 = fd1 >= 0 ? bs_pwrite_all(fd1, buf, len, off) : 0;
    }
    if (stripe >= 0)
        bs_stripe_unlock(stripe);
    *failed = (r0 < 0 ? 1 : 0) | (r1 < 0 ? 2 : 0);
    return r0 < 0 ? r0 : r1;
}

/* Copy without a userspace round trip where the kernel can (same filesystem, or reflinks). */
int bs_copy(int src, int64_t src_off, int dst, int64_t dst_off, size_t len)
{
    off64_t in = src_off, out = dst_off;
    while (len > 0) {
        ssize_t n = copy_file_range(src, &in, dst, &out, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL)
                break; /* fall back to read and write below */
            return -errno;
        }
        if (n == 0)
            break;
        len -= (size_t)n;
    }
    if (len == 0)
        return 0;
    char chunk[65536];
    while (len > 0) {
        size_t step = len < sizeof chunk ? len : sizeof chunk;
        int r = bs_pread_all(src, chunk, step, in);
        if (r == 0)
            r = bs_pwrite_all(dst, chunk, step, out);
        if (r < 0)
            return r;
        in += (int64_t)step;
        out += (int64_t)step;
        len -= step;
    }
    return 0;
}

/* The copy-on-write of one extent: the old extent with `len` new bytes at `start` laid over it,
 * written whole to the new place in one or two files (dst1 < 0: one). With nothing to lay over
 * and one destination, the kernel copies (copy_file_range). `scratch` holds `extent` bytes. */
int bs_cow(int src, int64_t src_off, int dst0, int dst1, int64_t dst_off, size_t extent,
           const char *data, size_t start, size_t len, char *scratch, int *failed)
{
    *failed = 0;
    if (len == 0 && dst1 < 0) {
        int r = bs_copy(src, src_off, dst0, dst_off, extent);
        *failed = r < 0 ? 1 : 0;
        return r;
    }
    int r = bs_pread_all(src, scratch, extent, src_off);
    if (r < 0)
        return r;
    if (len)
        memcpy(scratch + start, data, len);
    return bs_pwrite2(dst0, dst1, scratch, extent, dst_off, NULL, -1, failed);
}

int bs_is_zero(const char *buf, size_t len)
{
    /* Real data rarely starts with 16 zero bytes: look there first, then compare the buffer with
     * itself shifted by 16 bytes, which memcmp does at memory speed. */
    size_t head = len < 16 ? len : 16;
    for (size_t i = 0; i < head; i++)
        if (buf[i])
            return 0;
    return len <= 16 || memcmp(buf, buf + 16, len - 16) == 0;
}

int bs_pread_multi(int fd, char *buf, const int64_t *offs, const size_t *lens, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (offs[i] < 0) {
            memset(buf, 0, lens[i]); /* a hole */
        } else {
            int r = bs_pread_all(fd, buf, lens[i], offs[i]);
            if (r < 0)
                return r;
        }
        buf += lens[i];
    }
    return 0;
}

/* -- last words ----------------------------------------------------------------------------- */

static char fault_line[512];
static size_t fault_len;
static int fault_code;

static void on_fault(int sig)
{
    ssize_t r = write(2, fault_line, fault_len); /* write and _exit: async-signal-safe */
    (void)r, (void)sig;
    _exit(fault_code);
}

void bs_fault_exit(const char *line, int code)
{
    fault_len = strnlen(line, sizeof fault_line - 1);
    memcpy(fault_line, line, fault_len);
    fault_code = code;
    struct sigaction sa = {.sa_handler = on_fault};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGSEGV, &sa, NULL);
}
