/* The direct path: file I/O through a translation table, without the GIL, and the FUSE read and
 * write callbacks that use it before falling back to the caller's own (Python) callbacks.
 *
 * A table says where each unit (`unit` bytes) of a logical byte range lives in one file, in
 * chunks of `chunk` units: phys[c][j] * unit for unit c * chunk + j, or nowhere (BS_UNMAPPED, or
 * phys[c] NULL: reads as zeros); direct[c][j] is BS_DIRECT_WRITE where that unit may be
 * written in place, 0 where it may only be read, and for a unit the owner is still putting
 * together (a deferred copy on write) BS_DIRECT_HELD or BS_DIRECT_BUSY, which are never read
 * here. A HELD unit of a single (not mirrored) table takes writes of whole aligned blocks of
 * BS_SUM_BLOCK bytes, which mark their blocks in the unit's block array (bs_table_held: one byte
 * per block, set to 1 after the block is written); a BUSY unit takes nothing (the owner is
 * copying into it). direct[c] NULL: 0 for all of chunk c. So a sparse map costs a pointer per chunk where it has no data. The
 * owner publishes the directories and the chunks and keeps them alive and unchanged except
 * while it holds the table exclusively (bs_table_lock / bs_table_unlock); I/O through the table
 * holds it shared for the whole of its translate-and-copy, so an owner that changes an entry
 * knows no I/O is still using the old one once it has the lock.
 *
 * bs_table_pread and bs_table_pwrite return 0 when they did the whole request, BS_SLOW when the
 * table cannot serve it (for a read, a unit HELD or BUSY; for a write, a unit not mapped, or
 * not BS_DIRECT_WRITE and not a HELD one as above, or a whole unit of zeros when zero_slow is set, which the owner wants to see; a range past
 * `size`), having done nothing, or a negative errno. A write sets *dirty to 1 before it returns.
 *
 * A mirrored table (bs_table_mirror) writes every unit to two files from one buffer, one after
 * the other (each as above: through its mapping where it can), under the stripe lock of the
 * physical unit (bs_stripe_lock), and is acknowledged when both have it. It writes only
 * whole, aligned checksum blocks of units that are "armed": sums[c][j] (per chunk of `sums_chunk`
 * physical units) points at that unit's array of block checksums, where the write stores the
 * checksums of what it wrote; a NULL entry (not armed) is BS_SLOW. The owner arms a unit only
 * after everything that must precede a write to it is durable (the mirror's write-ahead records)
 * and disarms while it holds every table that points at the array. On a mirrored table an I/O
 * error is BS_SLOW too, so the owner's path (which knows which copy failed) does the request
 * again: a BS_SLOW write of a mirrored table may have written some of its bytes, and the fallback
 * writes all of them again, the same bytes to the same places.
 *
 * A mirrored table may also verify its reads (bs_table_verify): vsums[c][j] (per chunk of
 * `vsums_chunk` physical units) points at the checksums that unit's blocks must have (0: none
 * known for a block). A read then takes the whole blocks it touches, checks each against its
 * checksum, and is BS_SLOW when one does not match (buf may then hold part of the request,
 * which the owner's path reads again whole), or when a unit it reads has no entry (nothing
 * read): the owner's path finds the good copy and repairs the bad one. A mirrored
 * write stores the checksums it computes into the unit's vsums entry too, under the stripe lock.
 * The owner adds entries at any time and removes them only holding every table that uses them.
 *
 * Whole aligned pieces of BS_WRITE_PIECE of a write (within one unit: units smaller than a piece
 * are always pwritten) go through `map`, a shared mapping of the file (bs_map_file), when every
 * page they touch is in the page cache: a copy into mapped pages takes neither a system call nor
 * the file's inode lock, which two threads writing one file otherwise queue on. The rest is
 * pwritten: a smaller mapped write would dirty more than it wrote (a whole folio), and a page not
 * in memory would be read from disk before a mapped copy overwrote it. A fault in the mapping
 * (SIGBUS: no space for a page of a hole, an I/O error) is caught, and the pwrite that follows
 * says why. Reads are always preads (a mapped copy did not read faster).
 *
 * The FUSE callbacks find a table by the file handle (fuse_file_info.fh at fh_offset, given once
 * by bs_fuse_setup with the fallback callbacks); a handle with no table, or BS_SLOW, goes to the
 * fallback. They know nothing of libfuse beyond the callback signatures.
 */
#ifndef BLOCKSTORE_FASTPATH_H
#define BLOCKSTORE_FASTPATH_H
#include <stddef.h>
#include <stdint.h>

#define BS_UNMAPPED 4294967295
#define BS_SLOW 1
#define BS_DIRECT_WRITE 1
#define BS_DIRECT_HELD 2
#define BS_DIRECT_BUSY 3

typedef struct bs_table bs_table;

bs_table *bs_table_new(void);
void bs_table_free(bs_table *t);
void bs_table_lock(bs_table *t);
void bs_table_unlock(bs_table *t);
/* Call while holding the table exclusively (or before any I/O uses it). */
void bs_table_publish(bs_table *t, int fd, char *map, uint64_t map_len, uint64_t unit, uint64_t size,
                      uint32_t *const *phys, uint8_t *const *direct, uint64_t chunk, uint64_t chunks,
                      int zero_slow, int *dirty, int *sync_err);
/* Make the published table mirrored (after bs_table_publish, which makes it single again): `fd2`
 * is the second copy (-1: none, a degraded mirror), `map2` its mapping (or NULL), `dirty2` its
 * flag, `sync_err2` its sync error word (bs_table_fsync); `sums` the directory of armed units
 * described above, `sums_chunks` entries long. */
void bs_table_mirror(bs_table *t, int fd2, char *map2, uint64_t map2_len, int *dirty2, int *sync_err2,
                     uint64_t **const *sums, uint64_t sums_chunk, uint64_t sums_chunks);
/* Verify the reads of the mirrored table just made so (after bs_table_mirror): `vsums` the
 * directory described above, `vsums_chunks` entries long; NULL (as bs_table_publish leaves it):
 * reads are not verified. */
void bs_table_verify(bs_table *t, uint64_t **const *vsums, uint64_t vsums_chunk, uint64_t vsums_chunks);
/* The block arrays of HELD units: blocks[c][j] for unit c * chunk + j (blocks[c] NULL, or an
 * entry NULL: none, and the unit's writes are BS_SLOW), `chunks` entries long; reset by
 * bs_table_publish. Entries change only while the unit is not HELD. */
void bs_table_held(bs_table *t, uint8_t **const *blocks, uint64_t chunks);
/* A shared read-write mapping of `len` bytes of `fd` (it may reach past the file's end, where
 * nothing is ever copied: such pages are not in memory), or NULL; the first call also installs the
 * SIGBUS handler of bs_copy_to_map. */
char *bs_map_file(int fd, uint64_t len);
void bs_unmap_file(char *map, uint64_t len);
/* memcpy into mapped pages: 0, or -EFAULT when the copy faulted (SIGBUS) and stopped part-way. */
int bs_copy_to_map(char *dst, const char *src, size_t len);
int bs_table_pread(bs_table *t, char *buf, size_t len, uint64_t off);
/* Bytes written through the table so far (the writes it served, not the BS_SLOW ones). */
uint64_t bs_table_written(bs_table *t);
/* The fence word: the table serves writes only before `until_ns` on CLOCK_MONOTONIC (a new table:
 * always); at or after it every write is BS_SLOW, so the owner decides (a node that may have lost
 * its right to write an LU refuses or holds it). The owner moves it forward while it may write. */
void bs_table_fence(bs_table *t, uint64_t until_ns);
int bs_table_pwrite(bs_table *t, const char *buf, size_t len, uint64_t off);
/* An fsync of what the table's writes put in its files, when nothing but their bytes is left to
 * make durable: one fdatasync of the file (of each copy, in turn, for a mirrored table), 0 or a
 * negative errno; BS_SLOW (nothing done, or for a mirrored table a copy's sync failed) when the
 * owner has more to do or to decide. The table counts what may have left metadata to commit
 * (bs_table_changes: every bs_table_unlock, every write into a HELD unit, every write the FUSE
 * fallback served, counted after it returns); the owner's flush reads the count (and the commit
 * word `commits`, if given) before it begins and, once it has left nothing pending that it must
 * commit, says so with bs_table_clean. The fsync is served only while the count, and the commit
 * word (a commit of any process since may have changed what the owner must follow), are still
 * those; for a table with no watch word and no fence word, published with sync error words
 * (`sync_err` of bs_table_publish, `sync_err2` of bs_table_mirror; NULL: never served) that are
 * 0. It always syncs (another table's fsync may be syncing the same file, not yet done) and
 * leaves the files' dirty flags set (the owner's flush skips its sync when a flag is clear). A
 * failure stores the errno in the file's sync error word, which stays: the owner's every later
 * sync of the file fails (the kernel may have dropped the pages); a single table answers it,
 * a mirrored one is BS_SLOW, for the owner to fail that copy. */
int bs_table_fsync(bs_table *t);
uint64_t bs_table_changes(bs_table *t);
void bs_table_clean(bs_table *t, uint64_t seen, const uint64_t *commits, uint64_t commits_seen);
/* The watch word of a reader's table of a map another process changes (read redirection): the
 * table serves a read only if `*word` is `seen` both before and after it reads, else BS_SLOW (buf
 * may then hold part of the request). Whoever changes the map bumps the word before and after
 * each change it commits (bs_word_bump), so a read that finds the word unchanged read what the
 * table said while the table was still true: an extent the map gave up and another LU took is
 * never read through it. NULL: no watch (bs_table_publish leaves none). */
void bs_table_watch(bs_table *t, const uint64_t *word, uint64_t seen);
/* The word, atomically: read, and add one (returning the new value). */
uint64_t bs_word_load(const uint64_t *word);
uint64_t bs_word_bump(uint64_t *word);

typedef int (*bs_fuse_read_fn)(const char *path, char *buf, size_t size, int64_t off, void *fi);
typedef int (*bs_fuse_write_fn)(const char *path, const char *buf, size_t size, int64_t off, void *fi);
typedef int (*bs_fuse_fsync_fn)(const char *path, int datasync, void *fi);

void bs_fuse_setup(size_t fh_offset, bs_fuse_read_fn slow_read, bs_fuse_write_fn slow_write,
                   bs_fuse_fsync_fn slow_fsync);
/* Serve handle `fh` through table `t` (NULL: always the fallback), counting its requests under
 * `stat` (0 .. BS_STAT_LUS - 1, one per LU of the mount; -1: not counted). */
int bs_fuse_attach(uint64_t fh, bs_table *t, int stat);
void bs_fuse_detach(uint64_t fh);
int bs_fuse_read(const char *path, char *buf, size_t size, int64_t off, void *fi);
int bs_fuse_write(const char *path, const char *buf, size_t size, int64_t off, void *fi);
/* bs_table_fsync for the handle's table, else the fallback. */
int bs_fuse_fsync(const char *path, int datasync, void *fi);
/* Requests each callback served directly / passed on, since setup: [read direct, read passed,
 * write direct, write passed, fsync direct, fsync passed]. */
void bs_fuse_counts(uint64_t *out);
/* Request counters per LU of the mount (the index bs_fuse_attach was given): for reads, then
 * writes, the requests, bytes, nanoseconds and BS_STAT_BUCKETS buckets of their times (bucket i:
 * shorter than 2^i microseconds; the last: the rest). Kept from bs_fuse_setup on, also for the
 * requests the fallback serves; bs_fuse_stat_add counts one served without the C callbacks. */
/* The open reply. This part defines fuse_reply_open, the call with which libfuse answers an
 * open: made visible to libfuse before libfuse is loaded (this library reopened RTLD_GLOBAL), it
 * answers as libfuse 3.14 does, plus the flags bs_fuse_open_flags chose on direct-io opens; with
 * libfuse 3.15 or later it hands the call on (there the flags are the open's own).
 * - BS_OPEN_PARALLEL_WRITES: the kernel lets one write at a time into a direct-io FUSE file (it
 *   takes the file's lock) unless the open was answered with FOPEN_PARALLEL_DIRECT_WRITES
 *   (Linux 6.2), which libfuse before 3.15 cannot send: every write of an LU's file then waited
 *   for the one before, however many threads the mount and the client had. Concurrent writes to
 *   one LU are the engine's to order (the direct path's table lock and stripe locks, the pool's
 *   lock), as they are for two files of one LU or two processes.
 * - BS_OPEN_NOFLUSH: FOPEN_NOFLUSH (Linux 5.16): a close sends no FLUSH request, for a mount
 *   whose flush does nothing (close does not promise durability; fsync does). Without it every
 *   close of every descriptor is a round trip, and a process whose descriptors a fork copied
 *   waits in the child's close for a mount that is stopped. */
#define BS_OPEN_PARALLEL_WRITES 1
#define BS_OPEN_NOFLUSH 2
void bs_fuse_open_flags(int flags);
/* Opens answered with the chosen flags, so far. */
int bs_fuse_open_flags_sent(void);

#define BS_STAT_LUS 1024
#define BS_STAT_BUCKETS 24
#define BS_STAT_WORDS (2 * (3 + BS_STAT_BUCKETS))
void bs_fuse_stat(int stat, uint64_t *out);
void bs_fuse_stat_add(int stat, int write, int64_t result, uint64_t ns);

#endif
