"""A client of an LU file on a node's mount: writes numbered, checksummed blocks in turn, and
says on stdout (one JSON line each) which it had acknowledged by fsync.

    block_client.py BLOCKS SECONDS MOUNT [MOUNT ...]

Block ``i`` (4 KiB) goes to offset ``(i % BLOCKS) * 4096`` of ``MOUNT/LU`` (the LU named by the
environment's ``LU``): its sequence number, the LU's name, then filler, ending in the xxh64 of
what comes before it. Every 8 blocks it fsyncs and prints ``{"acked": i}``. An error is printed
(``{"error": errno, "at": i}``); then the client tries the mounts in turn until one opens the
file for writing (the LU's new owner) and goes on from the last acknowledged block, so what the
verifier reads is what the acknowledged history says. Ends after SECONDS with ``{"done": i}``."""
from __future__ import annotations

import json
import os
import sys
import time

import xxhash

B = 4096


def block(i: int, lu: str) -> bytes:
    head = i.to_bytes(8, "little") + lu.encode().ljust(24, b"\0")
    body = head + bytes([i % 251]) * (B - len(head) - 8)
    return body + xxhash.xxh64(body).intdigest().to_bytes(8, "little")


def check(data: bytes, lu: str) -> int | None:
    """The sequence number of a whole, valid block of ``lu``; None for anything else."""
    body, digest = data[:-8], data[-8:]
    if xxhash.xxh64(body).intdigest().to_bytes(8, "little") != digest or body[8:32].rstrip(b"\0") != lu.encode():
        return None
    return int.from_bytes(body[:8], "little")


def say(**what: object) -> None:
    print(json.dumps(what), flush=True)


def main() -> None:
    blocks, seconds, mounts = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    lu = os.environ["LU"]
    end = time.monotonic() + seconds
    fd, acked, i = -1, -1, 0
    while time.monotonic() < end:
        if fd < 0:
            for m in mounts:
                try:
                    fd = os.open(os.path.join(m, lu), os.O_WRONLY)
                    say(opened=m, at=acked + 1)
                    break
                except OSError:
                    continue
            if fd < 0:
                time.sleep(0.02)
                continue
            i = acked + 1
        try:
            os.pwrite(fd, block(i, lu), (i % blocks) * B)
            if i % 8 == 7:
                os.fsync(fd)
                acked = i
                say(acked=i)
            i += 1
        except OSError as e:
            say(error=e.errno, at=i)
            try:
                os.close(fd)
            except OSError:
                pass
            fd = -1
    if fd >= 0:
        try:
            os.fsync(fd)
            acked = i - 1
        except OSError as e:
            say(error=e.errno, at=i)
    say(done=acked)


if __name__ == "__main__":
    main()
