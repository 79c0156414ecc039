#!/usr/bin/env python3
"""recording_write: what recording a statement costs, in time and in bytes.

Measures, on the current filesystem (a temp dir; ``--dir`` to choose):

  * microseconds per ``RecordingWriter.append`` of a typical ``operation`` event
    (encode + hash + one write(); best of ``--repeat`` runs, and the encode+hash
    part alone), and per append followed by fsync (the ``fsync: always`` policy);
  * bytes per 1,000 statements (operation + decision + result events with a
    3-row sample), raw and gzip-compressed at levels 1, 6 and 9, with the time
    each level takes to compress;
  * GroupSync.sync_all over 64 dirty recordings.

Example (from the repository root):

  .venv/bin/python benchmarks/recording_write/run.py
  .venv/bin/python benchmarks/recording_write/run.py --n 50000 --dir /var/tmp
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import tempfile
import time
from pathlib import Path

from pathwarden.recording import GroupSync, RecordingWriter, read_recording
from pathwarden.recording.format import build_event

OPERATION = {
    "op_seq": 17, "kind": "query", "action": "forward", "params": None,
    "text": "select id, service, version, settings from deployments "
            "where environment = 'staging' order by id desc limit 50",
}
DECISION = {
    "op_seq": 17, "verdict": "allow", "policy": "test-readonly", "rule": 2,
    "reason": "select on public.deployments allowed for ci-test",
}
RESULT = {
    "op_seq": 17, "tag": "SELECT 3", "rows": 3, "duration_ms": 1.24, "error": None,
    "masked": [{"column": "settings", "detector": "uri-credentials", "count": 1}],
    "sample": {
        "columns": ["id", "service", "version", "settings"],
        "rows": [
            ["41", "shop", "4.1.0", None],
            ["42", "shop", "4.2.0", "DATABASE_URL=postgres://shop:[MASKED:uri-credentials]@db/shop"],
            ["43", "billing", "1.9.3", "LOG_LEVEL=info"],
        ],
    },
}


def per_append_us(directory: Path, n: int, repeat: int) -> tuple[float, float]:
    runs = []
    for r in range(repeat):
        w = RecordingWriter.create(directory / f"append-{r}.pwrec", f"bench-{r}", "gw-bench")
        start = time.perf_counter()
        for _ in range(n):
            w.append("operation", OPERATION)
        runs.append((time.perf_counter() - start) / n * 1e6)
        w.close()
    encode = []
    for _ in range(repeat):
        prev = "0" * 64
        start = time.perf_counter()
        for i in range(n):
            build_event(i, 1714731000.123456, "operation", OPERATION, prev)
        encode.append((time.perf_counter() - start) / n * 1e6)
    return min(runs), min(encode)


def per_pair_us(directory: Path, n: int, repeat: int) -> tuple[float, float]:
    """operation + decision: two appends, against one append_many (one write)."""
    two, one = [], []
    for r in range(repeat):
        w = RecordingWriter.create(directory / f"pair-{r}.pwrec", f"pair-{r}", "gw-bench")
        start = time.perf_counter()
        for _ in range(n):
            w.append("operation", OPERATION)
            w.append("decision", DECISION)
        two.append((time.perf_counter() - start) / n * 1e6)
        start = time.perf_counter()
        for _ in range(n):
            w.append_many([("operation", OPERATION, True), ("decision", DECISION, True)])
        one.append((time.perf_counter() - start) / n * 1e6)
        w.close()
    return min(two), min(one)


def per_append_fsync_us(directory: Path, n: int) -> float:
    w = RecordingWriter.create(directory / "fsync.pwrec", "bench-fsync", "gw-bench")
    start = time.perf_counter()
    for _ in range(n):
        w.append("operation", OPERATION)
        w.fsync()
    w.close()
    return (time.perf_counter() - start) / n * 1e6


def statements_file(directory: Path, statements: int) -> Path:
    path = directory / "statements.pwrec"
    w = RecordingWriter.create(path, "bench-statements", "gw-bench")
    w.append("session_start", {"identity": "ci-test", "token_ref": "tok_1", "claims": {},
                                "client": "127.0.0.1:51234", "connection": "app-db",
                                "protocol": "postgres"})
    for i in range(statements):
        w.append("operation", {**OPERATION, "op_seq": i})
        w.append("decision", {**DECISION, "op_seq": i})
        w.append("result", {**RESULT, "op_seq": i}, essential=False)
    w.append("session_end", {"reason": "client", "bytes_from_client": 0, "bytes_to_client": 0})
    w.close()
    return path


def group_sync_ms(directory: Path, writers: int) -> float:
    group = GroupSync()
    ws = [RecordingWriter.create(directory / f"g{i}.pwrec", f"g{i}", "gw") for i in range(writers)]
    for w in ws:
        group.add(w)
    times = []
    for _ in range(5):
        for w in ws:
            w.append("operation", OPERATION)
        start = time.perf_counter()
        report = group.sync_all()
        times.append((time.perf_counter() - start) * 1e3)
        assert report.synced == writers
        assert not report.failed
    for w in ws:
        w.close()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="appends per timing run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--statements", type=int, default=1000)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        append_us, encode_us = per_append_us(d, args.n, args.repeat)
        size = len(build_event(0, 1.0, "operation", OPERATION, "0" * 64)[1])
        print(f"append of an operation event ({size} bytes):")
        print(f"  {append_us:6.2f} us per append (best of {args.repeat} x {args.n})")
        print(f"  {encode_us:6.2f} us of it encoding + hashing, the rest is write()")
        two, one = per_pair_us(d, args.n // 2, args.repeat)
        print(f"  {two:6.2f} us per operation + decision as two appends")
        print(f"  {one:6.2f} us per operation + decision as one append_many")
        print(f"  {per_append_fsync_us(d, 500):6.0f} us per append + fsync (policy 'always')")
        print(f"  {group_sync_ms(d, 64):6.2f} ms per GroupSync.sync_all of 64 dirty recordings")

        path = statements_file(d, args.statements)
        raw = path.read_bytes()
        rec = read_recording(path)
        assert not rec.problems
        assert rec.complete
        print(f"\n{args.statements} statements (operation + decision + result with a 3-row sample),"
              f" {len(rec.events)} events:")
        per = len(raw) / args.statements
        print(f"  raw            {len(raw):9d} bytes  ({per:7.1f} per statement)")
        for level in (1, 6, 9):
            start = time.perf_counter()
            for _ in range(5):
                packed = gzip.compress(raw, compresslevel=level, mtime=0)
            ms = (time.perf_counter() - start) / 5 * 1e3
            per = len(packed) / args.statements
            print(f"  gzip level {level}   {len(packed):9d} bytes  ({per:7.1f}"
                  f" per statement, ratio {len(raw) / len(packed):4.1f}x, {ms:6.1f} ms,"
                  f" {len(raw) / 1e6 / (ms / 1e3):5.0f} MB/s)")


if __name__ == "__main__":
    main()
