"""Image management: a captured image (a directory or a tar archive of files, with
an optional ``manifest.json``) is imported into the pool as an Image Management Fileset (IMF): one
read-only LU per file, each known by a stable image file handle. Partitions are deployed from an
image by cloning every one of its LUs, so deployment takes the same time for any image size.

Import first discovers and validates the whole source (every file readable, nothing pointing
outside it, manifest checksums right, room in the pool counted sparse-aware) and only then
allocates. Copying skips holes and zero extents, and stores identical extents once: an extent's
xxh3-128 finds a candidate among image extents already stored, and the bytes are compared before
the extent is shared. The image record says "importing" until the last file is in, so a crash or
Ctrl-C leaves no half-visible image; the next import of that name clears the remains first.

Small files are packed: a file of at most half an extent goes into one LU of the image shared by
all of them (``img.IMAGE.pack``), at a 4 KiB-aligned offset, instead of an LU whose one extent it
would fill with a few bytes (a 6-byte file took 1 MiB). Its entry names the pack LU and its
``offset``; a partition clones the pack once and its files are at the same offsets. Why packing and
not a smaller unit: the extent is the pool's one unit of mapping, sharing and copy on write, and a
second, smaller unit for some LUs would give every map, reference count and copy two sizes.

Manifest (optional): {"name": "...", "files": {"relative/path": {"role": "boot"|"data"|...,
"sha256": "hex"}}}.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import struct
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import xxhash

from ..errors import AlreadyExists, BlockstoreError, Busy, InvalidArgument, NotFound, PoolFull
from ..extents import extents_for
from ..lu import LU
from ..names import check_name
from ..catalog import SECTOR
from ..pool import Pool
from ..records import LUInfo
from ..sizes import format_size
from ..transfer import data_ranges
from ..zero import is_zero

MANIFEST = "manifest.json"
MAX_IMAGE_NAME = 40
MAX_MANIFEST = 16 << 20
Progress = Callable[[str, int, int, int, int], None] | None  # file, done, size, total done, total


@dataclass
class SourceFile:
    path: str                      # relative, "/"-separated, as in the image
    size: int
    ranges: list[tuple[int, int]]  # byte ranges holding data
    opener: Callable[[], IO[bytes]]
    meta: dict[str, int] = field(default_factory=dict)  # mode, uid, gid, mtime_ns (as _meta gives)


#: What an image records of an entry that is not a regular file's bytes: its kind, and for a
#: link its target (a symbolic link's text, never followed; a hard link's first name in the image).
KINDS = ("dir", "symlink", "hardlink", "char", "block", "fifo")


@dataclass
class TreeEntry:
    path: str
    kind: str                                 # one of KINDS
    meta: dict[str, int]
    target: str | None = None                 # symlink: its text; hardlink: the path it is another name of
    rdev: tuple[int, int] | None = None       # char, block: (major, minor)

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "kind": self.kind, **self.meta}
        if self.target is not None:
            out["target"] = self.target
        if self.rdev is not None:
            out["rdev"] = list(self.rdev)
        return out


def _meta(mode: int, uid: int, gid: int, mtime_ns: int) -> dict[str, int]:
    """An entry's permission bits (with setuid, setgid and sticky), owner and modification time."""
    return {"mode": stat.S_IMODE(mode), "uid": uid, "gid": gid, "mtime_ns": mtime_ns}


def handle_of(image: str, path: str) -> str:
    """The stable image file handle of ``path`` in ``image``."""
    return "h" + xxhash.xxh3_64_hexdigest(f"{image}\0{path}".encode())[:12]


def image_lu(image: str, handle: str) -> str:
    return f"img.{image}.{handle}"


def part_lu(part: str, handle: str) -> str:
    return f"part.{part}.{handle}"


#: The handle of an image's pack LU (file handles are "h" and hex, so it names no file).
PACK = "pack"
#: Small files start at multiples of this in the pack (whole blocks: a file's block is its own).
PACK_ALIGN = 4096


def packed(size: int, extent_size: int) -> bool:
    """Whether a file of ``size`` bytes goes into the image's pack LU instead of an LU of its own."""
    return size <= extent_size // 2


def pack_layout(sizes: list[int]) -> tuple[list[int], int]:
    """Offsets (bytes) of files of ``sizes`` laid one after another at PACK_ALIGN, and the end."""
    offsets, end = [], 0
    for n in sizes:
        offsets.append(end)
        end += -(-n // PACK_ALIGN) * PACK_ALIGN
    return offsets, end


# -- discovery ----------------------------------------------------------------------------------

Found = tuple[list[SourceFile], list[TreeEntry], dict[str, Any] | None]


@contextmanager
def discover(src: str) -> Iterator[Found]:
    """The files of a captured image, the rest of its tree (directories, links, devices, FIFOs:
    recorded, never followed or read) and its manifest; refuses anything unreadable."""
    if os.path.isdir(src):
        try:
            root = os.open(src, _DIR)
        except OSError as e:
            raise InvalidArgument(f"cannot read image source {src}: {e.strerror}") from None
        try:
            yield _discover_dir(root)
        finally:
            os.close(root)
    elif os.path.isfile(src) and tarfile.is_tarfile(src):
        with tarfile.open(src) as tar:
            try:
                found = _discover_tar(tar)
                _check_end(tar)
            except (tarfile.TarError, EOFError) as e:
                # a damaged or cut-short archive: say so, naming the last member read whole
                read = getattr(tar, "members", [])  # the members read whole before the damage
                last = read[-1].name if read else None
                raise InvalidArgument(f"the tar archive {src} is damaged or cut short"
                                      + (f" after member {last!r}" if last else "") + f": {e}") from None
            yield found
    elif not os.path.exists(src):
        raise NotFound(f"image source {src} does not exist")
    else:
        raise InvalidArgument(f"image source {src} is neither a directory nor a tar archive")


def _check_end(tar: tarfile.TarFile) -> None:
    """A tar archive ends with blocks of zeros; one cut short in a header reads like an archive
    that ended there (tarfile stops quietly), so the end is looked for."""
    f = tar.fileobj  # the archive's stream, decompressed where it is compressed
    assert f is not None
    f.seek(tar.offset)  # just past the last member read
    marker = f.read(tarfile.BLOCKSIZE)
    if len(marker) < tarfile.BLOCKSIZE or marker.strip(b"\0"):
        raise tarfile.ReadError("no end-of-archive marker after the last member")


def _manifest(raw: bytes) -> dict[str, Any]:
    try:
        m = json.loads(raw)
    except ValueError as e:
        raise InvalidArgument(f"{MANIFEST} is not valid JSON: {e}") from None
    if not isinstance(m, dict) or not isinstance(m.get("files", {}), dict):
        raise InvalidArgument(f"{MANIFEST} must be an object with a 'files' object")
    return m


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


#: (name, (device, inode)) of each directory from the image's root down to a file's directory
Chain = tuple[tuple[str, tuple[int, int]], ...]


def _discover_dir(root: int) -> Found:
    """Walk the image from the descriptor of its root, never by path: whoever owns the source
    may swap a directory for a symbolic link at any moment. Each directory is opened relative to
    its parent's descriptor without following a link and must be the directory (device, inode)
    seen when its parent was read; only one directory is open at a time besides the root (an
    image of any number of directories, nested to any depth, takes no more descriptors, and the
    walk keeps its own list of directories to visit instead of recursing). Links are not
    followed at all: a symbolic link is recorded by its text, a file's second name as a hard link
    to its first, a device or FIFO by its kind (sockets are left out, as tar leaves them). Each
    file is later reopened the same way and must still be the same inode."""
    files: list[SourceFile] = []
    tree: list[TreeEntry] = []
    first_name: dict[tuple[int, int], str] = {}  # (device, inode) of a file with several names
    manifest = None
    todo: list[tuple[Chain, str]] = [((), "")]
    while todo:
        chain, prefix = todo.pop()
        dfd = _open_chain(root, chain, prefix)
        try:
            subdirs = []
            for name in sorted(e.name for e in os.scandir(dfd)):
                rel = prefix + name
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                meta = _meta(st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
                kind = _kind(st.st_mode)
                if kind == "dir":
                    tree.append(TreeEntry(rel, kind, meta))
                    subdirs.append((chain + ((name, (st.st_dev, st.st_ino)),), rel + "/"))
                    continue
                if kind == "symlink":
                    tree.append(TreeEntry(rel, kind, meta, target=os.readlink(name, dir_fd=dfd)))
                    continue
                if kind in ("char", "block"):
                    tree.append(TreeEntry(rel, kind, meta, rdev=(os.major(st.st_rdev), os.minor(st.st_rdev))))
                    continue
                if kind != "file":
                    if kind == "fifo":
                        tree.append(TreeEntry(rel, kind, meta))
                    continue
                if st.st_nlink > 1 and rel != MANIFEST:
                    ident = (st.st_dev, st.st_ino)
                    if ident in first_name:
                        tree.append(TreeEntry(rel, "hardlink", meta, target=first_name[ident]))
                        continue
                    first_name[ident] = rel
                try:
                    fd = _open_in(dfd, name, rel, (st.st_dev, st.st_ino))
                    try:
                        size = os.fstat(fd).st_size
                        ranges = list(data_ranges(fd, size))
                        if rel == MANIFEST:
                            if size > MAX_MANIFEST:
                                raise InvalidArgument(f"{MANIFEST} is larger than {MAX_MANIFEST >> 20} MiB")
                            manifest = _manifest(os.pread(fd, size, 0))
                            continue
                    finally:
                        os.close(fd)
                except OSError as e:
                    raise BlockstoreError(f"cannot read {rel}: {e.strerror}") from None
                files.append(SourceFile(rel, size, ranges, functools.partial(
                    _reopen, root, chain, prefix, name, (st.st_dev, st.st_ino)), meta))
            todo.extend(reversed(subdirs))  # depth first, in name order
        finally:
            if dfd != root:
                os.close(dfd)
    files.sort(key=lambda f: f.path.split("/"))  # the order a recursive walk in name order gives
    tree.sort(key=lambda e: e.path.split("/"))
    return files, tree, manifest


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo")):
        if test(mode):
            return kind
    return "socket"


def _open_chain(root: int, chain: Chain, where: str) -> int:
    """The directory ``chain`` leads to from ``root``, each step opened without following a link
    and checked to be the directory seen before; the caller closes it (unless it is ``root``)."""
    fd = root
    try:
        for name, ident in chain:
            nxt = os.open(name, _DIR, dir_fd=fd)
            if fd != root:
                os.close(fd)
            fd = nxt
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != ident:
                raise InvalidArgument(f"{where or '/'} was replaced during the import")
    except OSError as e:
        if fd != root:
            os.close(fd)
        raise InvalidArgument(f"{where or '/'} was replaced during the import ({e.strerror})") from None
    except BaseException:
        if fd != root:
            os.close(fd)
        raise
    return fd


def _reopen(root: int, chain: Chain, prefix: str, name: str, ident: tuple[int, int]) -> IO[bytes]:
    dfd = _open_chain(root, chain, prefix)
    try:
        return os.fdopen(_open_in(dfd, name, prefix + name, ident), "rb")
    finally:
        if dfd != root:
            os.close(dfd)


def _open_in(dfd: int, name: str, rel: str, ident: tuple[int, int]) -> int:
    """``name`` in directory ``dfd``, opened without following a link; it must be the regular
    file ``ident`` (device, inode) that discovery saw."""
    try:
        fd = os.open(name, _FILE, dir_fd=dfd)
    except OSError as e:
        raise InvalidArgument(f"{rel} was replaced during the import ({e.strerror})") from None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != ident or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InvalidArgument(f"{rel} was replaced during the import")
    os.set_blocking(fd, True)
    return fd


def _member(tar: tarfile.TarFile, m: tarfile.TarInfo) -> IO[bytes]:
    f = tar.extractfile(m)
    if f is None:
        raise InvalidArgument(f"tar member {m.name!r} cannot be read")
    return f


def _discover_tar(tar: tarfile.TarFile) -> Found:
    """The members of a tar archive as an image: a symbolic link by its text (never followed),
    a hard link as another name of a file member before it, directories, devices and FIFOs
    recorded; a member named with an absolute or escaping path is refused (it would land outside
    the partition's tree). A later member of the same name replaces an earlier one, as tar does."""
    files: dict[str, SourceFile] = {}
    tree: dict[str, TreeEntry] = {}
    manifest = None
    for m in tar.getmembers():
        name = _member_path(m.name)
        if name is None:
            continue  # the archive's top directory itself
        meta = _meta(m.mode, m.uid, m.gid, int(m.mtime * 1_000_000_000))
        files.pop(name, None)
        tree.pop(name, None)
        if m.issym():
            tree[name] = TreeEntry(name, "symlink", meta, target=m.linkname)
        elif m.islnk():
            target = _member_path(m.linkname)
            if target is None or target not in files:
                raise InvalidArgument(f"tar member {name!r} is a hard link to {m.linkname!r}, no file before it in the image")
            tree[name] = TreeEntry(name, "hardlink", meta, target=target)
        elif m.isdir():
            tree[name] = TreeEntry(name, "dir", meta)
        elif m.ischr() or m.isblk():
            tree[name] = TreeEntry(name, "char" if m.ischr() else "block", meta, rdev=(m.devmajor, m.devminor))
        elif m.isfifo():
            tree[name] = TreeEntry(name, "fifo", meta)
        elif m.isfile():
            if name == MANIFEST:
                manifest = _manifest(_member(tar, m).read())
                continue
            # a sparse member (GNU or PAX) holds data only where its map says: count it by that
            sparse: list[tuple[int, int]] | None = getattr(m, "sparse", None)  # (offset, length) pairs
            ranges = [(o, o + n) for o, n in sparse if n] if sparse else ([(0, m.size)] if m.size else [])
            files[name] = SourceFile(name, m.size, ranges, functools.partial(_member, tar, m), meta)
        else:
            raise InvalidArgument(f"tar member {name!r} is of a kind an image cannot hold")
    return (sorted(files.values(), key=lambda f: f.path.split("/")),
            sorted(tree.values(), key=lambda e: e.path.split("/")), manifest)


def _member_path(name: str) -> str | None:
    """A member's path in the image ("./etc/x" and "etc/x" alike), None for the top directory;
    InvalidArgument for one that is absolute or climbs out."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise InvalidArgument(f"tar member {name!r} has an absolute or escaping path")
    return "/".join(parts) or None


def _validate(pool: Pool, files: list[SourceFile], tree: list[TreeEntry],
              manifest: dict[str, Any] | None) -> dict[str, Any]:
    if not files and not tree:
        raise InvalidArgument("the image holds nothing")
    listed: dict[str, Any] = (manifest or {}).get("files", {})
    unknown = set(listed) - {f.path for f in files}
    if unknown:
        raise InvalidArgument(f"{MANIFEST} lists files the image does not have: {', '.join(sorted(unknown))}")
    for path, entry in listed.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256", ""), str):
            raise InvalidArgument(f"{MANIFEST}: the entry of {path!r} must be an object with a string sha256")
    for f in files:
        pool.check_lu_size(_lu_size(f.size))
    E = pool.extent_size
    # arithmetic: a 2^50-byte member costs nothing; small files count as the pack holds them
    need = sum(_count_extents(f.ranges, E) for f in files if not packed(f.size, E))
    need += extents_for(pack_layout([f.size for f in files if packed(f.size, E)])[1], E)
    free = pool.status()["free"] // E
    if need > free:
        raise PoolFull(f"the image needs up to {format_size(need * E)} and the pool has {format_size(free * E)} free")
    return listed


# -- import -------------------------------------------------------------------------------------

def import_image(pool: Pool, src: str, name: str, progress: Progress = None) -> dict[str, Any]:
    check_name(name, "image name")
    if len(name) > MAX_IMAGE_NAME:
        raise InvalidArgument(f"image name is longer than {MAX_IMAGE_NAME} characters")
    old = pool.svc_get("image", name)
    if old is not None and old["state"] == "ready":
        raise AlreadyExists(f"an image named {name!r} already exists")
    with discover(src) as (files, tree, manifest):
        listed = _validate(pool, files, tree, manifest)
        if old is not None:
            _drop_luns(pool, old)  # the remains of an interrupted import
        entries: list[dict[str, Any]] = [{"path": f.path, "handle": handle_of(name, f.path), "size": f.size,
                                          "role": listed.get(f.path, {}).get("role", "data"), **f.meta}
                                         for f in files]
        rec = {"name": name, "state": "importing", "source": os.path.abspath(src), "created": time.time(),
               "manifest_name": (manifest or {}).get("name"), "files": entries,
               "tree": [e.record() for e in tree]}
        pool.svc_put("image", name, rec)
        total = sum(f.size for f in files)
        done = 0
        E = pool.extent_size
        small = [(f, e) for f, e in zip(files, entries) if packed(f.size, E)]
        try:
            deduper = _Deduper(pool)
            for f, entry in zip(files, entries):
                if packed(f.size, E):
                    continue
                lu_name = image_lu(name, entry["handle"])
                entry["lu"] = lu_name
                with pool.create_lu(lu_name, _lu_size(f.size)) as lu:
                    entry["xxh128"], entry["shared_extents"] = _copy(lu, f, deduper, progress, done, total,
                                                                     listed.get(f.path, {}).get("sha256"))
                    lu.flush()
                    deduper.remember(lu)
                pool.update_lu(lu_name, role="image", readonly=True, image=name, path=f.path)
                done += f.size
            if small:
                _pack(pool, name, small, listed, deduper, progress, done, total)
            rec["state"] = "ready"
            pool.svc_put("image", name, rec)
        except BaseException:
            _drop_luns(pool, rec)
            pool.svc_put("image", name, None)
            raise
    return show(pool, name)


def _pack(pool: Pool, image: str, small: list[tuple[SourceFile, dict[str, Any]]], listed: dict[str, Any],
          dedup: "_Deduper", progress: Progress, done: int, total: int) -> None:
    """Copy the small files into the image's pack LU (pack_layout), an extent at a time through the
    deduplication; fills each entry's ``lu``, ``offset``, ``xxh128``. ``done``: bytes of the
    image copied before (for progress)."""
    E = pool.extent_size
    offsets, end = pack_layout([f.size for f, _ in small])
    lu_name = image_lu(image, PACK)
    with pool.create_lu(lu_name, _lu_size(end)) as lu:
        writer = _ExtentWriter(lu, dedup)
        for (f, entry), off in zip(small, offsets):
            with f.opener() as fh:
                data = fh.read(f.size + 1)
            sha256 = listed.get(f.path, {}).get("sha256")
            if len(data) != f.size or (sha256 and hashlib.sha256(data).hexdigest() != sha256.lower()):
                raise InvalidArgument(f"{f.path}: checksum does not match {MANIFEST} (over the bytes copied)"
                                      if len(data) == f.size else f"{f.path} changed size during the import")
            writer.put(off, data)
            entry.update(lu=lu_name, offset=off, xxh128=_small_sum(data, E), shared_extents=0)
            done += f.size
            if progress:
                progress(f.path, f.size, f.size, done, total)
        writer.close()
        lu.flush()
        dedup.remember(lu)
    pool.update_lu(lu_name, role="image", readonly=True, image=image, path=f"({len(small)} small files)")


def _small_sum(data: bytes, E: int) -> str:
    """The file checksum ``_copy`` gives a file of less than one extent, so that a file has the
    same checksum packed or not."""
    whole = xxhash.xxh3_128(struct.pack(">Q", len(data)))
    if not is_zero(data):
        whole.update(struct.pack(">Q", 0) + xxhash.xxh3_128_digest(data.ljust(E, b"\0")))
    return whole.hexdigest()


class _ExtentWriter:
    """Bytes laid at rising offsets into an LU, stored an extent at a time: an extent of zeros
    stays a hole, one whose bytes are stored already is shared (the deduplication)."""

    def __init__(self, lu: LU, dedup: "_Deduper") -> None:
        self.lu, self.dedup, self.E = lu, dedup, lu.extent_size
        self.ext, self.buf = 0, bytearray(self.E)

    def put(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            ext, within = divmod(offset, self.E)
            while self.ext < ext:
                self._store()
            n = min(len(view), self.E - within)
            self.buf[within:within + n] = view[:n]
            view, offset = view[n:], offset + n

    def close(self) -> None:
        if self.ext * self.E < self.lu.size:
            self._store()

    def _store(self) -> None:
        data = bytes(self.buf[:self.lu.size - self.ext * self.E])
        if not is_zero(data):
            self.dedup.store(self.lu, self.ext, data, xxhash.xxh3_128_digest(data.ljust(self.E, b"\0")))
        self.ext, self.buf = self.ext + 1, bytearray(self.E)


class _Deduper:
    """Finds a stored image extent with the same bytes (xxh3-128, then a byte compare)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.maps: dict[str, np.ndarray] = {}
        self.pending: list[tuple[bytes, int]] = []

    def find(self, digest: bytes, data: bytes) -> int | None:
        with self.pool.meta.read() as txn:
            raw = txn.get(digest, db=self.pool.meta.db["dedup"])
            if raw is None:
                return None
            phys, = struct.unpack(">I", raw[:4])
            owner = bytes(raw[4:]).decode()
            rec = self.pool.record(txn, owner, missing_ok=True)
            # Only extents of sealed image LUs are shared: nothing ever writes them in place.
            if rec is None or not rec.get("readonly"):
                return None
            if owner not in self.maps:
                self.maps[owner] = self.pool.load_map(txn, rec).mapped()
            if phys not in self.maps[owner]:
                return None
        E = self.pool.extent_size
        stored = self.pool.primary().pread(phys * E, E)
        return phys if stored == data.ljust(E, b"\0") else None

    def add(self, digest: bytes, ext: int) -> None:
        self.pending.append((digest, ext))

    def store(self, lu: LU, ext: int, data: bytes, digest: bytes) -> bool:
        """Put ``data`` (not all zeros; ``digest`` its extent's xxh3-128) at extent ``ext`` of
        ``lu``: shared with a stored extent of the same bytes (True), else written (False)."""
        phys = self.find(digest, data)
        if phys is not None:
            lu.share_extent(ext, phys)
            return True
        lu.write(ext * lu.extent_size, data)
        self.add(digest, ext)
        return False

    def remember(self, lu: LU) -> None:
        with self.pool.meta.write() as txn:
            for digest, ext in self.pending:
                phys = lu.physical_extent(ext)
                if phys is not None:
                    txn.put(digest, struct.pack(">I", phys) + lu.name.encode(), db=self.pool.meta.db["dedup"])
        self.pending = []


def _copy(lu: LU, f: SourceFile, dedup: _Deduper, progress: Progress, before: int, total: int,
          sha256: str | None = None) -> tuple[str, int]:
    """Copy one file into its LU extent by extent; returns (the file's checksum, extents shared).
    With ``sha256`` (the manifest's), the bytes copied must hash to it, holes read as zeros:
    checked over what was copied, so a file changed after discovery is refused, not imported.

    The checksum is xxh3-128 over the file size and, for each extent that is not all zeros, its
    index and the xxh3-128 of its bytes: equal files have equal checksums, and holes cost nothing
    (a 1 TiB sparse disk is summed as fast as its data is read).
    """
    E = lu.extent_size
    whole = xxhash.xxh3_128(struct.pack(">Q", f.size))
    shared = 0
    pos = 0
    sha = hashlib.sha256() if sha256 else None
    with f.opener() as fh:
        for ext in _extents_of(f.ranges, E):
            start = ext * E
            try:
                fh.seek(start)
                data = fh.read(min(E, f.size - start))
            except (tarfile.TarError, EOFError) as e:
                raise InvalidArgument(f"{f.path}: the archive is damaged or cut short in this member ({e})") from None
            if sha is not None:
                _hash_zeros(sha, start - pos)
                sha.update(data)
            pos = start + len(data)
            if not is_zero(data):
                digest = xxhash.xxh3_128_digest(data.ljust(E, b"\0"))
                whole.update(struct.pack(">Q", ext) + digest)
                shared += dedup.store(lu, ext, data, digest)
            if progress:
                progress(f.path, pos, f.size, before + pos, total)
    if sha is not None:
        _hash_zeros(sha, f.size - pos)
        if sha.hexdigest() != sha256.lower():  # type: ignore[union-attr]
            raise InvalidArgument(f"{f.path}: checksum does not match {MANIFEST} (over the bytes copied)")
    return whole.hexdigest(), shared


def _lu_size(size: int) -> int:
    """The LU that holds a file of ``size`` bytes: whole sectors, at least one."""
    return max(SECTOR, -(-size // SECTOR) * SECTOR)


def _extents_of(ranges: list[tuple[int, int]], E: int) -> Iterator[int]:
    """The extents that sorted, disjoint byte ranges touch, ascending, each once (lazily)."""
    last = -1
    for s, t in ranges:
        for e in range(max(s // E, last + 1), extents_for(t, E)):
            yield e
            last = e


def _count_extents(ranges: list[tuple[int, int]], E: int) -> int:
    """How many extents ``_extents_of`` yields, without yielding them."""
    n, last = 0, -1
    for s, t in ranges:
        first, end = max(s // E, last + 1), extents_for(t, E)
        if end > first:
            n += end - first
            last = end - 1
    return n


def _hash_zeros(h: "hashlib._Hash", n: int) -> None:
    """Feed ``n`` zero bytes (a hole) to ``h``."""
    zeros = bytes(min(max(n, 0), 1 << 20))
    while n > 0:
        h.update(zeros[:n])
        n -= len(zeros)


def _remove_present(pool: Pool, names: list[str]) -> None:
    """Remove those of ``names`` that exist (what an interrupted step left may be partial)."""
    present = {r["name"] for r in pool.list_lus()}
    for lu in names:
        if lu in present:
            pool.remove(lu, recursive=True)


def _drop_luns(pool: Pool, rec: dict[str, Any]) -> None:
    names = [e.get("lu") or image_lu(rec["name"], e["handle"]) for e in rec["files"]]
    _remove_present(pool, list(dict.fromkeys(names + [image_lu(rec["name"], PACK)])))


# -- queries and removal ------------------------------------------------------------------------

def list_images(pool: Pool) -> list[dict[str, Any]]:
    return [_summary(pool, r) for r in pool.svc_list("image") if r["state"] == "ready"]


def _get(pool: Pool, name: str) -> dict[str, Any]:
    rec = pool.svc_get("image", check_name(name, "image name"))
    if rec is None or rec["state"] != "ready":
        raise NotFound(f"no image named {name!r}")
    return rec


def _summary(pool: Pool, rec: dict[str, Any]) -> dict[str, Any]:
    lus = {r["name"]: r for r in pool.list_lus()}
    logical = sum(f["size"] for f in rec["files"])
    allocated = sum(lus[lu]["allocated"] for lu in {f.get("lu") for f in rec["files"]} if lu in lus)
    kinds = [e["kind"] for e in rec.get("tree", [])]
    return {"name": rec["name"], "files": len(rec["files"]), "logical": logical, "allocated": allocated,
            "created": rec["created"], "dirs": kinds.count("dir"),
            "links": kinds.count("symlink") + kinds.count("hardlink"),
            "special": sum(kinds.count(k) for k in ("char", "block", "fifo")),
            "partitions": sorted(p["name"] for p in pool.svc_list("partition") if p["image"] == rec["name"])}


def show(pool: Pool, name: str) -> dict[str, Any]:
    rec = _get(pool, name)
    out = _summary(pool, rec)
    out["manifest_name"] = rec.get("manifest_name")
    out["file_list"] = [{**{k: f.get(k) for k in ("path", "handle", "size", "role", "xxh128", "lu", "shared_extents")},
                         "offset": f.get("offset", 0), "packed": "offset" in f, **_meta_of(rec, f)}
                        for f in rec["files"]]
    out["tree"] = rec.get("tree", [])
    return out


def _meta_of(rec: dict[str, Any], f: dict[str, Any]) -> dict[str, int]:
    """A file's mode, owner and time; an image made before they were recorded: 0644, root's,
    the image's time."""
    return {"mode": f.get("mode", 0o644), "uid": f.get("uid", 0), "gid": f.get("gid", 0),
            "mtime_ns": f.get("mtime_ns", int(rec["created"] * 1_000_000_000))}


def remove_image(pool: Pool, name: str) -> None:
    rec = _get(pool, name)
    parts = [p["name"] for p in pool.svc_list("partition") if p["image"] == name]
    if parts:
        raise Busy(f"image {name!r} has deployed partitions ({', '.join(parts)}); remove them first")
    _drop_luns(pool, rec)
    pool.svc_put("image", name, None)


# -- partitions ---------------------------------------------------------------------------------

STATES = ("defined", "provisioning", "ready", "active")


def create_partition(pool: Pool, name: str, image: str, cec: str | None = None) -> dict[str, Any]:
    """Deploy ``image`` as a partition: an O(1) clone of every image LU."""
    check_name(name, "partition name")
    if len(name) > MAX_IMAGE_NAME:
        raise InvalidArgument(f"partition name is longer than {MAX_IMAGE_NAME} characters")
    if pool.svc_get("partition", name) is not None:
        raise AlreadyExists(f"a partition named {name!r} already exists")
    img = _get(pool, image)
    if cec is not None and pool.svc_get("cec", check_name(cec, "CEC name")) is None:
        raise NotFound(f"unknown CEC {cec!r}")
    made: dict[str, str] = {}  # file path -> its LU
    rec: dict[str, Any] = {"name": name, "image": image, "cec": cec, "state": "defined", "created": time.time(),
                           "lus": made}
    pool.svc_put("partition", name, rec)
    rec["state"] = "provisioning"
    pool.svc_put("partition", name, rec)
    try:
        for f in img["files"]:
            lu = part_lu(name, PACK if "offset" in f else f["handle"])
            if lu not in made.values():  # the pack once, for all its files
                pool.clone(f["lu"], lu)
                pool.update_lu(lu, role="partition", partition=name,
                               path=f["path"] if "offset" not in f else "(small files)")
            made[f["path"]] = lu
    except BaseException:
        for lu in dict.fromkeys(made.values()):
            pool.remove(lu)
        pool.svc_put("partition", name, None)
        raise
    rec["state"] = "ready"
    pool.svc_put("partition", name, rec)
    return show_partition(pool, name)


def _partition(pool: Pool, name: str) -> dict[str, Any]:
    rec = pool.svc_get("partition", check_name(name, "partition name"))
    if rec is None:
        raise NotFound(f"no partition named {name!r}")
    return rec


def activate(pool: Pool, name: str) -> dict[str, Any]:
    rec = _partition(pool, name)
    if rec["state"] == "active":
        return show_partition(pool, name)
    present = {r["name"] for r in pool.list_lus()}
    img = pool.svc_get("image", rec["image"])
    missing = [f["path"] for f in (img or {"files": []})["files"] if rec["lus"].get(f["path"]) not in present]
    if rec["state"] != "ready" or missing or img is None:
        raise Busy(f"partition {name!r} is {rec['state']}" + (f"; missing LUs for {', '.join(missing)}" if missing else "")
                   + ": it cannot be activated")
    rec["state"] = "active"
    pool.svc_put("partition", name, rec)
    return show_partition(pool, name)


def deactivate(pool: Pool, name: str) -> dict[str, Any]:
    rec = _partition(pool, name)
    if rec["state"] != "active":
        raise InvalidArgument(f"partition {name!r} is {rec['state']}, not active")
    rec["state"] = "ready"
    pool.svc_put("partition", name, rec)
    return show_partition(pool, name)


def remove_partition(pool: Pool, name: str) -> None:
    rec = _partition(pool, name)
    if rec["state"] == "active":
        raise Busy(f"partition {name!r} is active; deactivate it first")
    _remove_present(pool, list(dict.fromkeys(rec["lus"].values())))
    pool.svc_put("partition", name, None)


def show_partition(pool: Pool, name: str, lus: dict[str, LUInfo] | None = None) -> dict[str, Any]:
    """A partition and, per image file, its LU with the file's ``offset`` in it (0 unless the file
    is packed) and ``length`` (the file's size)."""
    rec = _partition(pool, name)
    if lus is None:
        lus = {r["name"]: r for r in pool.list_lus()}
    img = pool.svc_get("image", rec["image"]) or {"files": []}
    at = {f["path"]: f.get("offset", 0) for f in img["files"]}
    lengths = {f["path"]: f["size"] for f in img["files"]}
    return {"name": rec["name"], "image": rec["image"], "cec": rec["cec"], "state": rec["state"],
            "created": rec["created"],
            "lus": [{"path": p, "lu": lu, "offset": at.get(p, 0), "length": lengths.get(p),
                     "size": lus[lu]["size"] if lu in lus else None,
                     "allocated": lus[lu]["allocated"] if lu in lus else None} for p, lu in sorted(rec["lus"].items())]}


_TAR_TYPE = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
             "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}


def export_partition(pool: Pool, name: str, out: IO[bytes]) -> dict[str, Any]:
    """Write partition ``name``'s tree to ``out`` as a tar stream (POSIX pax): every directory,
    link, device and FIFO of its image, and every file with its bytes as the partition's own LUs
    hold them now, each with its mode, owner and time. ``tar -x`` as root gives the tree back."""
    rec = _partition(pool, name)
    if rec["state"] not in ("ready", "active"):
        raise Busy(f"partition {name!r} is {rec['state']}: it has no tree to export until it is ready")
    img = pool.svc_get("image", rec["image"])
    if img is None:
        raise NotFound(f"partition {name!r}'s image {rec['image']!r} is gone")
    # in path order (a directory before what it holds), hard links last (each after its file)
    items = sorted([(f["path"], f, None) for f in img["files"]] + [(e["path"], None, e) for e in img.get("tree", [])],
                   key=lambda it: (it[2] is not None and it[2]["kind"] == "hardlink", it[0].split("/")))
    opened: dict[str, LU] = {}
    written = 0
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path, f, e in items:
                info = tarfile.TarInfo(path)
                meta = _meta_of(img, f) if f is not None else e
                assert meta is not None
                info.mode, info.uid, info.gid = meta["mode"], meta["uid"], meta["gid"]
                ns = meta["mtime_ns"]
                info.mtime = ns // 1_000_000_000 if ns % 1_000_000_000 == 0 else ns / 1e9
                if f is not None:
                    lu_name = rec["lus"][path]
                    if lu_name not in opened:
                        opened[lu_name] = pool.open_lu(lu_name, writable=False)
                    info.size = f["size"]
                    tar.addfile(info, _Slice(opened[lu_name], f.get("offset", 0), f["size"]))
                    written += f["size"]
                    if "offset" not in f:  # a file's own LU: done with; the pack serves many
                        opened.pop(lu_name).close()
                    continue
                assert e is not None
                info.type = _TAR_TYPE[e["kind"]]
                if "target" in e:
                    info.linkname = e["target"]
                if "rdev" in e:
                    info.devmajor, info.devminor = e["rdev"]
                tar.addfile(info)
    finally:
        for lu in opened.values():
            lu.close()
    return {"partition": name, "image": rec["image"], "entries": len(items), "bytes": written}


class _Slice:
    """``length`` bytes of an LU from ``offset``, read as a file (what tarfile copies from)."""

    def __init__(self, lu: LU, offset: int, length: int) -> None:
        self.lu, self.pos, self.end = lu, offset, offset + length

    def read(self, n: int = -1) -> bytes:
        n = self.end - self.pos if n < 0 else min(n, self.end - self.pos)
        data = self.lu.read(self.pos, n) if n > 0 else b""
        self.pos += len(data)
        return data


def list_partitions(pool: Pool) -> list[dict[str, Any]]:
    lus = {r["name"]: r for r in pool.list_lus()}
    return [show_partition(pool, r["name"], lus) for r in pool.svc_list("partition")]
