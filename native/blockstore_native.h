/* blockstore's hot path: it moves bytes and knows nothing of LUs, extents or policy.
 *
 * Every function returns 0 on success or a negative errno. Short writes and EINTR are retried
 * until the whole length is done. Where two files are written (a mirrored write), *failed tells
 * which copy failed: bit 0 for the first, bit 1 for the second; a failure of one copy does not stop
 * the other from being written, so the caller can carry on degraded.
 * The functions are called without the GIL (cffi API mode), so they must not touch Python.
 */
#ifndef BLOCKSTORE_NATIVE_H
#define BLOCKSTORE_NATIVE_H
#include <stddef.h>
#include <stdint.h>

/* bs_pwrite_all writes in pieces of at most this many bytes (why: blockstore_native.c). */
#define BS_WRITE_PIECE (64 * 1024)
int bs_pwrite_all(int fd, const char *buf, size_t len, int64_t off);
/* A read that meets the file's end before `len` bytes is -EIO: data files are never shorter than
 * what is read from them, so a short one was truncated under us. */
int bs_pread_all(int fd, char *buf, size_t len, int64_t off);

/* Checksums are kept per block of this many bytes: the size of a page, of the usual file system
 * block, and of the smallest common write, so an aligned write never reads to checksum. */
#define BS_SUM_BLOCK 4096
/* sums[i] = xxh3-64 of block i of buf (len / block of them; len a multiple of block), with 0
 * replaced by 1: 0 means "no checksum" to the caller. */
void bs_sum_blocks(const char *buf, size_t len, size_t block, uint64_t *sums);
/* As bs_sum_blocks over `len` bytes of `fd` at `off` (len a multiple of block), read through
 * `buf` (at least one block; small enough to stay in the CPU cache); errors as bs_pread_all. */
int bs_sum_file(int fd, int64_t off, size_t len, size_t block, uint64_t *sums, char *buf, size_t buf_len);
/* Both copies from one buffer. With `sums` not NULL, len is a multiple of BS_SUM_BLOCK and the
 * checksums of the buffer's blocks are computed while the second copy is written. With `stripe`
 * >= 0 the write holds the lock of that stripe number (one of BS_STRIPES, by remainder): writers
 * that may overlap (the callers pass the number of the extent written) then land in both copies,
 * and store their checksums, in one order, so the copies never disagree and the last checksum
 * stored is the last write's. */
#define BS_STRIPES 256
void bs_stripe_lock(int64_t stripe);
void bs_stripe_unlock(int64_t stripe);
int bs_pwrite2(int fd0, int fd1, const char *buf, size_t len, int64_t off, uint64_t *sums, int64_t stripe,
               int *failed);
int bs_cow(int src, int64_t src_off, int dst0, int dst1, int64_t dst_off, size_t extent,
           const char *data, size_t start, size_t len, char *scratch, int *failed);
int bs_copy(int src, int64_t src_off, int dst, int64_t dst_off, size_t len);
int bs_is_zero(const char *buf, size_t len);
int bs_pread_multi(int fd, char *buf, const int64_t *offs, const size_t *lens, size_t n);

/* Last words for a memory fault nobody catches: on SIGBUS or SIGSEGV, write `line` (copied, at
 * most 511 bytes) to fd 2 and _exit(code). For a command-line process: its faults come from files
 * it reads through mappings (LMDB trusts its pages, and a damaged one can send it past the end of
 * data.mdb), and one line with an exit code says more than "Bus error". A handler installed
 * later (bs_map_file's) passes the faults that are not its own on to this one. */
void bs_fault_exit(const char *line, int code);

#endif
