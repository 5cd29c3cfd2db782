/* The direct path; the contract is in fastpath.h. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "blockstore_native.h"
#include "fastpath.h"

struct bs_table {
    pthread_rwlock_t lock;
    int fd;
    char *map;
    uint64_t map_len;
    uint64_t unit, size, n, chunk;
    uint32_t *const *phys;
    uint8_t *const *direct;
    int zero_slow;
    int *dirty;
    /* mirrored tables only (mirror != 0) */
    int mirror, fd2;
    char *map2;
    uint64_t map2_len;
    int *dirty2;
    uint64_t **const *sums;
    uint64_t sums_chunk, sums_chunks;
    uint64_t **const *vsums; /* what reads are verified against (bs_table_verify), or NULL */
    uint64_t vsums_chunk, vsums_chunks;
    /* held units' block arrays (bs_table_held), per chunk of `chunk` logical units */
    uint8_t **const *blocks;
    uint64_t blocks_chunks;
    uint64_t written; /* bytes written through the table, ever */
    uint64_t write_until; /* the fence word (bs_table_fence) */
    const uint64_t *watch; /* the watch word (bs_table_watch), or NULL, and its value when published */
    uint64_t seen;
    /* bs_table_fsync: changes counts whatever may have left metadata to commit (the owner's
     * changes of the table, writes into HELD units, writes the fallback served); clean is the
     * count the owner's last flush covered; sync_err the file's sticky sync failure word */
    uint64_t changes, clean;
    int *sync_err, *sync_err2;
    /* and the commit word as the owner's last flush found it (bs_table_clean), or NULL */
    const uint64_t *commits;
    uint64_t commits_seen;
};

bs_table *bs_table_new(void)
{
    bs_table *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    /* Prefer the owner: a stream of shared holders must not starve a change to the table. */
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&t->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    t->fd = -1;
    t->write_until = UINT64_MAX;
    t->changes = 1; /* not clean until the owner says a flush covered it */
    return t;
}

void bs_table_free(bs_table *t)
{
    if (t == NULL)
        return;
    pthread_rwlock_destroy(&t->lock);
    free(t);
}

void bs_table_lock(bs_table *t) { pthread_rwlock_wrlock(&t->lock); }
void bs_table_unlock(bs_table *t)
{
    /* whatever the owner changed holding the table may be metadata a flush must commit */
    __atomic_add_fetch(&t->changes, 1, __ATOMIC_SEQ_CST);
    pthread_rwlock_unlock(&t->lock);
}

uint64_t bs_table_changes(bs_table *t) { return __atomic_load_n(&t->changes, __ATOMIC_SEQ_CST); }

void bs_table_clean(bs_table *t, uint64_t seen, const uint64_t *commits, uint64_t commits_seen)
{
    pthread_rwlock_wrlock(&t->lock); /* not bs_table_unlock: that would count a change */
    t->commits = commits;
    t->commits_seen = commits_seen;
    __atomic_store_n(&t->clean, seen, __ATOMIC_SEQ_CST);
    pthread_rwlock_unlock(&t->lock);
}

void bs_table_publish(bs_table *t, int fd, char *map, uint64_t map_len, uint64_t unit, uint64_t size,
                      uint32_t *const *phys, uint8_t *const *direct, uint64_t chunk, uint64_t chunks,
                      int zero_slow, int *dirty, int *sync_err)
{
    t->fd = fd;
    t->map = map;
    t->map_len = map != NULL ? map_len : 0;
    t->unit = unit;
    t->size = size;
    t->phys = phys;
    t->direct = direct;
    t->chunk = chunk;
    t->n = chunk * chunks;
    t->zero_slow = zero_slow;
    t->dirty = dirty;
    t->sync_err = sync_err;
    t->sync_err2 = NULL;
    t->mirror = 0;
    t->fd2 = -1;
    t->sums = NULL;
    t->vsums = NULL;
    t->blocks = NULL;
    t->blocks_chunks = 0;
    t->watch = NULL;
}

void bs_table_watch(bs_table *t, const uint64_t *word, uint64_t seen)
{
    t->watch = word;
    t->seen = seen;
}

uint64_t bs_word_load(const uint64_t *word) { return __atomic_load_n(word, __ATOMIC_SEQ_CST); }

uint64_t bs_word_bump(uint64_t *word) { return __atomic_add_fetch(word, 1, __ATOMIC_SEQ_CST); }

/* Whether the table's watch word (if any) still has the value it was published with. */
static inline int unwatched(const bs_table *t)
{
    return t->watch == NULL || bs_word_load(t->watch) == t->seen;
}

void bs_table_held(bs_table *t, uint8_t **const *blocks, uint64_t chunks)
{
    t->blocks = blocks;
    t->blocks_chunks = chunks;
}

void bs_table_mirror(bs_table *t, int fd2, char *map2, uint64_t map2_len, int *dirty2, int *sync_err2,
                     uint64_t **const *sums, uint64_t sums_chunk, uint64_t sums_chunks)
{
    t->mirror = 1;
    t->fd2 = fd2;
    t->sync_err2 = sync_err2;
    t->map2 = map2;
    t->map2_len = map2 != NULL ? map2_len : 0;
    t->dirty2 = dirty2;
    t->sums = sums;
    t->sums_chunk = sums_chunk;
    t->sums_chunks = sums_chunks;
}

void bs_table_verify(bs_table *t, uint64_t **const *vsums, uint64_t vsums_chunk, uint64_t vsums_chunks)
{
    t->vsums = vsums;
    t->vsums_chunk = vsums_chunk;
    t->vsums_chunks = vsums_chunks;
}

/* Unit i's physical unit, and whether it may be written in place (i < n). */
static inline uint32_t phys_of(const bs_table *t, uint64_t i)
{
    const uint32_t *c = t->phys[i / t->chunk];
    return c == NULL ? (uint32_t)BS_UNMAPPED : c[i % t->chunk];
}

/* Unit i's direct entry: 0, BS_DIRECT_WRITE or BS_DIRECT_HELD (i < n). */
static inline int direct_of(const bs_table *t, uint64_t i)
{
    const uint8_t *c = t->direct[i / t->chunk];
    return c == NULL ? 0 : c[i % t->chunk];
}

/* The checksum array of physical unit p of a mirrored table, or NULL when p is not armed. */
static inline uint64_t *sums_of(const bs_table *t, uint32_t p)
{
    if (t->sums == NULL || t->sums_chunk == 0 || p / t->sums_chunk >= t->sums_chunks)
        return NULL;
    uint64_t **const c = t->sums[p / t->sums_chunk];
    return c == NULL ? NULL : c[p % t->sums_chunk];
}

/* The checksums physical unit p's reads are verified against, or NULL (none known yet). */
static inline uint64_t *vsums_of(const bs_table *t, uint32_t p)
{
    if (t->vsums_chunk == 0 || p / t->vsums_chunk >= t->vsums_chunks)
        return NULL;
    uint64_t **const c = t->vsums[p / t->vsums_chunk];
    return c == NULL ? NULL : c[p % t->vsums_chunk];
}

/* The block array of held unit i (i < n), or NULL. */
static inline uint8_t *blocks_of(const bs_table *t, uint64_t i)
{
    if (t->blocks == NULL || i / t->chunk >= t->blocks_chunks || t->blocks[i / t->chunk] == NULL)
        return NULL;
    return t->blocks[i / t->chunk][i % t->chunk];
}

/* The whole request is checked before any byte moves, so BS_SLOW always means "nothing done". */
static int servable(const bs_table *t, size_t len, uint64_t off, int write, const char *buf)
{
    if (t->fd < 0 || t->unit == 0 || t->chunk == 0 || off > t->size || len > t->size - off || t->size > t->n * t->unit)
        return 0;
    if (len == 0)
        return 1;
    uint64_t first = off / t->unit, last = (off + len - 1) / t->unit;
    if (!write) {
        for (uint64_t i = first; i <= last; i++) {
            if (direct_of(t, i) >= BS_DIRECT_HELD)
                return 0;
            uint32_t p = phys_of(t, i);
            if (t->vsums != NULL && p != (uint32_t)BS_UNMAPPED && vsums_of(t, p) == NULL)
                return 0; /* not verifiable yet: the owner's path loads its checksums */
        }
        return 1;
    }
    if (t->mirror && (off % BS_SUM_BLOCK || len % BS_SUM_BLOCK || t->unit % BS_SUM_BLOCK))
        return 0; /* a partial block is completed from a copy proven good: the owner's work */
    int whole_blocks = off % BS_SUM_BLOCK == 0 && len % BS_SUM_BLOCK == 0 && t->unit % BS_SUM_BLOCK == 0;
    for (uint64_t i = first; i <= last; i++) {
        uint32_t p = phys_of(t, i);
        int d = direct_of(t, i);
        if (p == (uint32_t)BS_UNMAPPED || (t->mirror && sums_of(t, p) == NULL))
            return 0;
        if (d != BS_DIRECT_WRITE && !(d == BS_DIRECT_HELD && !t->mirror && whole_blocks && blocks_of(t, i) != NULL))
            return 0;
        if (t->zero_slow) {
            uint64_t start = i * t->unit;
            if (start >= off && start + t->unit <= off + len && bs_is_zero(buf + (start - off), t->unit))
                return 0;
        }
    }
    return 1;
}

/* -- writes through the mapping ------------------------------------------------------------- */

/* The copy a thread has in flight into the mapping, if any: where its SIGBUS returns to. */
static __thread sigjmp_buf *volatile copying __attribute__((tls_model("initial-exec")));
static struct sigaction previous_bus;
static pthread_once_t bus_once = PTHREAD_ONCE_INIT;

static void on_bus(int sig, siginfo_t *info, void *ctx)
{
    if (copying != NULL)
        siglongjmp(*copying, 1);
    /* Not a copy of ours: the previous action takes the fault when the instruction runs again. */
    sigaction(SIGBUS, &previous_bus, NULL);
    (void)sig, (void)info, (void)ctx;
}

static void install_bus(void)
{
    /* SA_NODEFER: siglongjmp leaves the handler without restoring the signal mask (saving it
     * would cost a system call per copy), so SIGBUS must not be blocked while it runs. */
    struct sigaction sa = {.sa_sigaction = on_bus, .sa_flags = SA_SIGINFO | SA_NODEFER};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &previous_bus);
}

char *bs_map_file(int fd, uint64_t len)
{
    pthread_once(&bus_once, install_bus);
    void *m = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return m == MAP_FAILED ? NULL : m;
}

void bs_unmap_file(char *map, uint64_t len)
{
    if (map != NULL)
        munmap(map, (size_t)len);
}

int bs_copy_to_map(char *dst, const char *src, size_t len)
{
    sigjmp_buf here;
    if (sigsetjmp(here, 0)) {
        copying = NULL;
        return -EFAULT;
    }
    copying = &here;
    memcpy(dst, src, len);
    copying = NULL;
    return 0;
}

/* Whether every page of [p, p + len) is in the page cache (mincore: one system call, no lock
 * of the file). */
static int resident(const char *p, size_t len)
{
    static long page;
    if (page == 0)
        page = sysconf(_SC_PAGESIZE);
    uintptr_t start = (uintptr_t)p & ~(uintptr_t)(page - 1);
    size_t pages = ((uintptr_t)p + len - start + (size_t)page - 1) / (size_t)page;
    unsigned char in[BS_WRITE_PIECE / 4096 + 2];
    if (pages > sizeof in || mincore((void *)start, pages * (size_t)page, in) != 0)
        return 0;
    for (size_t i = 0; i < pages; i++)
        if (!(in[i] & 1))
            return 0;
    return 1;
}

/* One write within one unit, at byte `at` of the file. Whole, aligned pieces of BS_WRITE_PIECE
 * whose pages are in memory are copied into the mapping; the runs between them are pwritten, each
 * in one call. Whole pieces only: a write fault dirties the page's whole folio, so a mapped 4 KiB
 * write into a 64 KiB folio would have writeback write all of it (16 times the bytes), where
 * pwrite dirties the bytes it wrote. Folios are at most a piece as long as writes go in pieces
 * (blockstore_native.c). */
static int write_at(int fd, char *map, uint64_t map_len, const char *buf, size_t len, int64_t at)
{
    size_t from = 0; /* [from, done) is still to be pwritten */
    for (size_t done = 0; done < len;) {
        uint64_t pos = (uint64_t)at + done;
        size_t head = (size_t)(-pos % BS_WRITE_PIECE); /* bytes to the next piece boundary */
        size_t step = head != 0 ? head : BS_WRITE_PIECE;
        if (step > len - done)
            step = len - done;
        if (head == 0 && step == BS_WRITE_PIECE && map != NULL && pos + step <= map_len &&
            resident(map + pos, step) && bs_copy_to_map(map + pos, buf + done, step) == 0) {
            int r = from < done ? bs_pwrite_all(fd, buf + from, done - from, at + (int64_t)from) : 0;
            if (r != 0)
                return r;
            from = done + step;
        }
        done += step;
    }
    return from < len ? bs_pwrite_all(fd, buf + from, len - from, at + (int64_t)from) : 0;
}

/* Whether the n whole blocks at buf match their checksums `want` (0: none known, any matches). */
static int blocks_match(const char *buf, size_t n, const uint64_t *want)
{
    uint64_t got[64];
    for (size_t i = 0; i < n; i += 64) {
        size_t k = n - i < 64 ? n - i : 64;
        bs_sum_blocks(buf + i * BS_SUM_BLOCK, k * BS_SUM_BLOCK, BS_SUM_BLOCK, got);
        for (size_t j = 0; j < k; j++)
            if (want[i + j] != 0 && want[i + j] != got[j])
                return 0;
    }
    return 1;
}

/* A verified read of [in, in + len) of a unit whose blocks must match `want`, the unit at byte
 * `base` of fd: whole blocks are read straight into buf, a partial one at either end through a
 * block of its own. 0, BS_SLOW on a mismatch, or a negative errno. */
static int read_verified(int fd, char *buf, size_t len, uint64_t base, uint64_t in, const uint64_t *want)
{
    char tmp[BS_SUM_BLOCK];
    uint64_t end = in + len;
    uint64_t lo = (in + BS_SUM_BLOCK - 1) / BS_SUM_BLOCK * BS_SUM_BLOCK, hi = end / BS_SUM_BLOCK * BS_SUM_BLOCK;
    int r;
    if (lo < hi) {
        r = bs_pread_all(fd, buf + (lo - in), hi - lo, (int64_t)(base + lo));
        if (r != 0)
            return r;
        if (!blocks_match(buf + (lo - in), (hi - lo) / BS_SUM_BLOCK, want + lo / BS_SUM_BLOCK))
            return BS_SLOW;
    }
    /* the partial blocks: the one holding `in` if it starts before lo, the one holding end - 1 */
    uint64_t edges[2] = {in / BS_SUM_BLOCK, (end - 1) / BS_SUM_BLOCK};
    for (int e = 0; e < 2; e++) {
        uint64_t b = edges[e], bstart = b * BS_SUM_BLOCK, bend = bstart + BS_SUM_BLOCK;
        int partial = bstart < in || bend > end;
        if (!partial || (e == 1 && b == edges[0]))
            continue; /* whole (read above), or the same block as the head */
        r = bs_pread_all(fd, tmp, BS_SUM_BLOCK, (int64_t)(base + bstart));
        if (r != 0)
            return r;
        if (!blocks_match(tmp, 1, want + b))
            return BS_SLOW;
        uint64_t from = bstart > in ? bstart : in, to = bend < end ? bend : end;
        memcpy(buf + (from - in), tmp + (from - bstart), to - from);
    }
    return 0;
}

/* One request through the table: a read into rbuf, or a write from wbuf. */
static uint64_t now_ns(void);

void bs_table_fence(bs_table *t, uint64_t until_ns)
{
    __atomic_store_n(&t->write_until, until_ns, __ATOMIC_RELEASE);
}

static int table_io(bs_table *t, char *rbuf, const char *wbuf, size_t len, uint64_t off)
{
    int r = 0;
    uint64_t until = __atomic_load_n(&t->write_until, __ATOMIC_ACQUIRE);
    if (wbuf != NULL && until != UINT64_MAX && now_ns() >= until)
        return BS_SLOW; /* fenced: the owner decides */
    pthread_rwlock_rdlock(&t->lock);
    if (!servable(t, len, off, wbuf != NULL, wbuf) || !unwatched(t)) {
        pthread_rwlock_unlock(&t->lock);
        return BS_SLOW;
    }
    for (size_t done = 0; done < len && r == 0;) {
        uint64_t i = (off + done) / t->unit, in = (off + done) % t->unit;
        size_t step = t->unit - in < len - done ? (size_t)(t->unit - in) : len - done;
        uint32_t p = phys_of(t, i); /* i < n: servable kept the range within size */
        int64_t at = (int64_t)((uint64_t)p * t->unit + in);
        if (wbuf != NULL && t->mirror) {
            bs_stripe_lock(p);
            bs_sum_blocks(wbuf + done, step, BS_SUM_BLOCK, sums_of(t, p) + in / BS_SUM_BLOCK);
            uint64_t *vs = t->vsums != NULL ? vsums_of(t, p) : NULL;
            if (vs != NULL) /* before the bytes: a reader meeting the new sum and old bytes goes slow */
                memcpy(vs + in / BS_SUM_BLOCK, sums_of(t, p) + in / BS_SUM_BLOCK, step / BS_SUM_BLOCK * sizeof *vs);
            r = write_at(t->fd, t->map, t->map_len, wbuf + done, step, at);
            if (r == 0 && t->fd2 >= 0)
                r = write_at(t->fd2, t->map2, t->map2_len, wbuf + done, step, at);
            bs_stripe_unlock(p);
        } else if (wbuf != NULL) {
            r = write_at(t->fd, t->map, t->map_len, wbuf + done, step, at);
            uint8_t *blocks = direct_of(t, i) == BS_DIRECT_HELD ? blocks_of(t, i) : NULL;
            if (r == 0 && blocks != NULL) { /* after the bytes: a block marked is a block written */
                memset(blocks + in / BS_SUM_BLOCK, 1, step / BS_SUM_BLOCK);
                __atomic_add_fetch(&t->changes, 1, __ATOMIC_SEQ_CST); /* its copy completes at a flush */
            }
        }
        else if (p == (uint32_t)BS_UNMAPPED)
            memset(rbuf + done, 0, step);
        else if (t->vsums != NULL)
            r = read_verified(t->fd, rbuf + done, step, (uint64_t)p * t->unit, in, vsums_of(t, p));
        else
            r = bs_pread_all(t->fd, rbuf + done, step, at);
        done += step;
    }
    if (wbuf != NULL) {
        if (r == 0)
            __atomic_add_fetch(&t->written, len, __ATOMIC_RELAXED);
        *t->dirty = 1; /* even after a failure part-way: some bytes may have reached the file */
        if (t->mirror && t->fd2 >= 0)
            *t->dirty2 = 1;
    }
    /* the preads are system calls: this load is ordered after them */
    int changed = t->watch != NULL && !unwatched(t);
    pthread_rwlock_unlock(&t->lock);
    return (r < 0 && (t->mirror || t->watch != NULL)) || changed ? BS_SLOW : r;
}

/* Sync fd, recording a failure in its sticky word: 0 or a negative errno. */
static int sync_file(int fd, int *err)
{
    if (fdatasync(fd) == 0)
        return 0;
    int r = -errno;
    __atomic_store_n(err, -r, __ATOMIC_RELEASE);
    return r;
}

static int unfailed(const int *err) { return err != NULL && __atomic_load_n(err, __ATOMIC_ACQUIRE) == 0; }

int bs_table_fsync(bs_table *t)
{
    if (__atomic_load_n(&t->write_until, __ATOMIC_ACQUIRE) != UINT64_MAX)
        return BS_SLOW; /* an owner under a fence: its flush answers only while it may write */
    pthread_rwlock_rdlock(&t->lock);
    int r = BS_SLOW;
    if (t->fd >= 0 && t->watch == NULL && unfailed(t->sync_err) && (!t->mirror || t->fd2 < 0 || unfailed(t->sync_err2)) &&
        (t->commits == NULL || bs_word_load(t->commits) == t->commits_seen) &&
        __atomic_load_n(&t->changes, __ATOMIC_SEQ_CST) == __atomic_load_n(&t->clean, __ATOMIC_SEQ_CST)) {
        /* The files' dirty flags stay as they are: cleared here, a flush of the owner's meeting
         * one while this sync is still under way would skip its own and answer too soon. */
        r = sync_file(t->fd, t->sync_err);
        if (r == 0 && t->mirror && t->fd2 >= 0)
            r = sync_file(t->fd2, t->sync_err2);
        if (r != 0 && t->mirror)
            r = BS_SLOW; /* the owner fails that copy and goes on with the other */
    }
    pthread_rwlock_unlock(&t->lock);
    return r;
}

uint64_t bs_table_written(bs_table *t)
{
    return __atomic_load_n(&t->written, __ATOMIC_RELAXED);
}

int bs_table_pread(bs_table *t, char *buf, size_t len, uint64_t off)
{
    return table_io(t, buf, NULL, len, off);
}

int bs_table_pwrite(bs_table *t, const char *buf, size_t len, uint64_t off)
{
    return table_io(t, NULL, buf, len, off);
}

/* -- FUSE callbacks ------------------------------------------------------------------------- */

#define SLOTS 4096 /* open file handles with a table at once; more simply take the fallback */

static struct {
    uint64_t fh;
    bs_table *table;
    int stat, used;
} slots[SLOTS];
static pthread_rwlock_t slots_lock = PTHREAD_RWLOCK_INITIALIZER;
static size_t fh_offset;
static bs_fuse_read_fn slow_read;
static bs_fuse_write_fn slow_write;
static bs_fuse_fsync_fn slow_fsync;
static uint64_t counts[6];
/* per LU: [read, write] x [requests, bytes, ns, buckets...] (fastpath.h) */
static uint64_t stats[BS_STAT_LUS][BS_STAT_WORDS];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void bs_fuse_stat_add(int stat, int write, int64_t result, uint64_t ns)
{
    if (stat < 0 || stat >= BS_STAT_LUS)
        return;
    uint64_t *s = stats[stat] + (write ? 3 + BS_STAT_BUCKETS : 0);
    uint64_t us = ns / 1000;
    int b = us ? 64 - __builtin_clzll(us) : 0;
    if (b >= BS_STAT_BUCKETS)
        b = BS_STAT_BUCKETS - 1;
    __atomic_add_fetch(&s[0], 1, __ATOMIC_RELAXED);
    if (result > 0)
        __atomic_add_fetch(&s[1], (uint64_t)result, __ATOMIC_RELAXED);
    __atomic_add_fetch(&s[2], ns, __ATOMIC_RELAXED);
    __atomic_add_fetch(&s[3 + b], 1, __ATOMIC_RELAXED);
}

void bs_fuse_stat(int stat, uint64_t *out)
{
    for (int i = 0; i < BS_STAT_WORDS; i++)
        out[i] = stat >= 0 && stat < BS_STAT_LUS ? __atomic_load_n(&stats[stat][i], __ATOMIC_RELAXED) : 0;
}

void bs_fuse_setup(size_t offset, bs_fuse_read_fn read_fn, bs_fuse_write_fn write_fn, bs_fuse_fsync_fn fsync_fn)
{
    fh_offset = offset;
    slow_read = read_fn;
    slow_write = write_fn;
    slow_fsync = fsync_fn;
    memset(counts, 0, sizeof counts);
    memset(stats, 0, sizeof stats);
}

int bs_fuse_attach(uint64_t fh, bs_table *t, int stat)
{
    int r = 0;
    pthread_rwlock_wrlock(&slots_lock);
    if (slots[fh % SLOTS].used && slots[fh % SLOTS].fh != fh)
        r = -EBUSY;
    else {
        slots[fh % SLOTS].fh = fh;
        slots[fh % SLOTS].table = t;
        slots[fh % SLOTS].stat = stat;
        slots[fh % SLOTS].used = 1;
    }
    pthread_rwlock_unlock(&slots_lock);
    return r;
}

void bs_fuse_detach(uint64_t fh)
{
    pthread_rwlock_wrlock(&slots_lock);
    if (slots[fh % SLOTS].fh == fh) {
        slots[fh % SLOTS].table = NULL;
        slots[fh % SLOTS].used = 0;
    }
    pthread_rwlock_unlock(&slots_lock);
}

/* The kernel sends no I/O on a handle after its release, and the owner detaches a handle before
 * it frees its table, so a table found here outlives the request that uses it. */
static bs_table *table_of(void *fi, int *stat)
{
    uint64_t fh = *(const uint64_t *)((const char *)fi + fh_offset);
    bs_table *t = NULL;
    *stat = -1;
    pthread_rwlock_rdlock(&slots_lock);
    if (slots[fh % SLOTS].used && slots[fh % SLOTS].fh == fh) {
        t = slots[fh % SLOTS].table;
        *stat = slots[fh % SLOTS].stat;
    }
    pthread_rwlock_unlock(&slots_lock);
    return t;
}

static int read_request(bs_table *t, const char *path, char *buf, size_t size, int64_t off, void *fi)
{
    if (t != NULL && off >= 0) {
        /* Short at the end, as a file read is; the size is read under no lock, but a request
         * racing a resize may be cut at either size. */
        uint64_t end = t->size;
        size_t n = (uint64_t)off >= end ? 0 : (end - (uint64_t)off < size ? (size_t)(end - (uint64_t)off) : size);
        int r = bs_table_pread(t, buf, n, (uint64_t)off);
        if (r != BS_SLOW) {
            __atomic_add_fetch(&counts[0], 1, __ATOMIC_RELAXED);
            return r < 0 ? r : (int)n;
        }
    }
    __atomic_add_fetch(&counts[1], 1, __ATOMIC_RELAXED);
    return slow_read(path, buf, size, off, fi);
}

static int write_request(bs_table *t, const char *path, const char *buf, size_t size, int64_t off, void *fi)
{
    if (t != NULL && off >= 0) {
        int r = bs_table_pwrite(t, buf, size, (uint64_t)off);
        if (r != BS_SLOW) {
            __atomic_add_fetch(&counts[2], 1, __ATOMIC_RELAXED);
            return r < 0 ? r : (int)size;
        }
    }
    __atomic_add_fetch(&counts[3], 1, __ATOMIC_RELAXED);
    int r = slow_write(path, buf, size, off, fi);
    if (t != NULL) /* after it: what it changed is in memory, for the flush that covers this count */
        __atomic_add_fetch(&t->changes, 1, __ATOMIC_SEQ_CST);
    return r;
}

/* One request, timed and counted under its handle's LU (bs_fuse_attach's `stat`). */
static int counted(int write, const char *path, char *buf, size_t size, int64_t off, void *fi)
{
    int stat;
    bs_table *t = table_of(fi, &stat);
    uint64_t t0 = stat >= 0 ? now_ns() : 0;
    int r = write ? write_request(t, path, buf, size, off, fi) : read_request(t, path, buf, size, off, fi);
    if (stat >= 0)
        bs_fuse_stat_add(stat, write, r, now_ns() - t0);
    return r;
}

int bs_fuse_read(const char *path, char *buf, size_t size, int64_t off, void *fi)
{
    return counted(0, path, buf, size, off, fi);
}

int bs_fuse_write(const char *path, const char *buf, size_t size, int64_t off, void *fi)
{
    return counted(1, path, (char *)buf, size, off, fi);  /* written from, never to */
}

int bs_fuse_fsync(const char *path, int datasync, void *fi)
{
    int stat;
    bs_table *t = table_of(fi, &stat);
    if (t != NULL) {
        int r = bs_table_fsync(t);
        if (r != BS_SLOW) {
            __atomic_add_fetch(&counts[4], 1, __ATOMIC_RELAXED);
            return r;
        }
    }
    __atomic_add_fetch(&counts[5], 1, __ATOMIC_RELAXED);
    return slow_fsync(path, datasync, fi);
}

void bs_fuse_counts(uint64_t *out)
{
    for (int i = 0; i < 6; i++)
        out[i] = __atomic_load_n(&counts[i], __ATOMIC_RELAXED);
}

/* -- the open reply (fastpath.h: parallel writes) ------------------------------------------ */

/* struct fuse_file_info up to libfuse 3.14 (the bits libfuse 3.5 and 3.11 added were padding before) */
struct fi_314 {
    int32_t flags;
    uint32_t writepage : 1, direct_io : 1, keep_cache : 1, flush : 1, nonseekable : 1, flock_release : 1,
        cache_readdir : 1, noflush : 1, padding : 24;
    uint32_t padding2;
    uint64_t fh;
};
struct open_out { uint64_t fh; uint32_t open_flags, padding; }; /* the kernel's fuse_open_out */

enum { FOPEN_DIRECT_IO = 1 << 0, FOPEN_KEEP_CACHE = 1 << 1, FOPEN_NONSEEKABLE = 1 << 2, FOPEN_CACHE_DIR = 1 << 3,
       FOPEN_NOFLUSH = 1 << 5, FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6 };

static int open_flags, open_flags_sent;
static pthread_once_t reply_once = PTHREAD_ONCE_INIT;
static int (*real_reply_open)(void *, const void *);
static int (*reply_buf)(void *, const char *, size_t);
static int libfuse_version;

void bs_fuse_open_flags(int flags) { __atomic_store_n(&open_flags, flags, __ATOMIC_RELAXED); }
int bs_fuse_open_flags_sent(void) { return __atomic_load_n(&open_flags_sent, __ATOMIC_RELAXED); }

static void find_libfuse(void)
{
    void *h = dlopen("libfuse3.so.3", RTLD_LAZY | RTLD_NOLOAD);
    real_reply_open = h ? dlsym(h, "fuse_reply_open") : dlsym(RTLD_NEXT, "fuse_reply_open");
    reply_buf = h ? dlsym(h, "fuse_reply_buf") : NULL;
    int (*version)(void) = h ? dlsym(h, "fuse_version") : NULL;
    libfuse_version = version ? version() : 0;
}

int fuse_reply_open(void *req, const void *fi)
{
    pthread_once(&reply_once, find_libfuse);
    const struct fi_314 *f = fi;
    int chosen = __atomic_load_n(&open_flags, __ATOMIC_RELAXED);
    if (reply_buf == NULL || libfuse_version < 300 || libfuse_version >= 315 || !chosen || !f->direct_io)
        return real_reply_open(req, fi);
    struct open_out arg = {.fh = f->fh, .open_flags = FOPEN_DIRECT_IO};
    if (chosen & BS_OPEN_PARALLEL_WRITES)
        arg.open_flags |= FOPEN_PARALLEL_DIRECT_WRITES;
    if (chosen & BS_OPEN_NOFLUSH)
        arg.open_flags |= FOPEN_NOFLUSH;
    if (f->keep_cache)
        arg.open_flags |= FOPEN_KEEP_CACHE;
    if (f->cache_readdir)
        arg.open_flags |= FOPEN_CACHE_DIR;
    if (f->nonseekable)
        arg.open_flags |= FOPEN_NONSEEKABLE;
    if (f->noflush)
        arg.open_flags |= FOPEN_NOFLUSH;
    __atomic_add_fetch(&open_flags_sent, 1, __ATOMIC_RELAXED);
    return reply_buf(req, (const char *)&arg, sizeof arg);
}
