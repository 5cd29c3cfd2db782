/* The least a FUSE file system can do for a database: one file, `/file`, passed through to a
 * backing file, direct I/O, an fsync that is the backing file's fdatasync. No map, no checksum,
 * no Python: what it reaches through the kernel's FUSE is the bound for any FUSE file system on the
 * machine, which the db bench group (bench/db_bench.py) measures beside an LU and the plain file.
 *
 *     passthrough BACKING MOUNTPOINT [libfuse options]      (built by bench/db_bench.py)
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *backing;

static int fs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    (void)fi;
    memset(st, 0, sizeof *st);
    if (strcmp(path, "/") == 0) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
        return 0;
    }
    if (strcmp(path, "/file") != 0)
        return -ENOENT;
    struct stat b;
    if (stat(backing, &b) != 0)
        return -errno;
    st->st_mode = S_IFREG | 0644;
    st->st_nlink = 1;
    st->st_size = b.st_size;
    st->st_blocks = b.st_blocks;
    st->st_blksize = 4096;
    st->st_mtim = b.st_mtim;
    st->st_ctim = b.st_ctim;
    return 0;
}

static int fs_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi,
                      enum fuse_readdir_flags flags)
{
    (void)off, (void)fi, (void)flags;
    if (strcmp(path, "/") != 0)
        return -ENOENT;
    fill(buf, ".", NULL, 0, 0);
    fill(buf, "..", NULL, 0, 0);
    fill(buf, "file", NULL, 0, 0);
    return 0;
}

static int fs_open(const char *path, struct fuse_file_info *fi)
{
    if (strcmp(path, "/file") != 0)
        return -ENOENT;
    int fd = open(backing, O_RDWR);
    if (fd < 0)
        return -errno;
    fi->fh = (uint64_t)fd;
    fi->direct_io = 1; /* as the engine's mount: every request reaches the server */
    return 0;
}

static int fs_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)path;
    ssize_t n = pread((int)fi->fh, buf, size, off);
    return n < 0 ? -errno : (int)n;
}

static int fs_write(const char *path, const char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)path;
    ssize_t n = pwrite((int)fi->fh, buf, size, off);
    return n < 0 ? -errno : (int)n;
}

static int fs_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    (void)path, (void)datasync;
    return fdatasync((int)fi->fh) != 0 ? -errno : 0;
}

static int fs_release(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    close((int)fi->fh);
    return 0;
}

static const struct fuse_operations ops = {
    .getattr = fs_getattr, .readdir = fs_readdir, .open = fs_open, .read = fs_read, .write = fs_write,
    .fsync = fs_fsync, .release = fs_release,
};

int main(int argc, char *argv[])
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s BACKING MOUNTPOINT [libfuse options]\n", argv[0]);
        return 2;
    }
    backing = argv[1];
    argv[1] = argv[0]; /* libfuse parses the rest: the mount point first */
    return fuse_main(argc - 1, argv + 1, &ops, NULL);
}
