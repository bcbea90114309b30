"""Print every value under sys/class/net/<dev>/ (recursively, queues/ included) as JSON.

Run inside the network namespace under test (`ip netns exec NS python
tests/apply/sysfs_snapshot.py DEV...`): there sysfs shows that namespace's
devices. Values are kept byte for byte (as latin-1 text); a file that cannot be
read is recorded as "!ERRNAME" (write-only files, EOPNOTSUPP answers).
"""

from __future__ import annotations

import errno
import json
import os
import sys


def snapshot(dev: str) -> dict[str, str]:
    top = os.path.realpath(os.path.join("/sys/class/net", dev))
    out: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(top, followlinks=False):
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, top)
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError as e:
                out[rel] = "!" + errno.errorcode.get(e.errno or 0, str(e.errno))
                continue
            try:
                chunks = []
                while True:
                    b = os.read(fd, 65536)
                    if not b:
                        break
                    chunks.append(b)
                out[rel] = b"".join(chunks).decode("latin-1")
            except OSError as e:
                out[rel] = "!" + errno.errorcode.get(e.errno or 0, str(e.errno))
            finally:
                os.close(fd)
    return out


if __name__ == "__main__":
    json.dump({d: snapshot(d) for d in sys.argv[1:]}, sys.stdout, sort_keys=True)
