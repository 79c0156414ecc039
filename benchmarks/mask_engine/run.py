#!/usr/bin/env python3
"""mask_engine: throughput and accuracy of the masking engine, next to detect-secrets.

Generates CI output with planted, labelled fake secrets (see corpus.py) and measures,
pinned to one CPU:

  * throughput (MB/s, 10^6 bytes per second) of the pathwarden engine: mask() over
    64 KiB chunks, mask() over the whole buffer, and the streaming masker fed 4 KiB
    chunks; and of detect-secrets (default plugins and filters, in-process, line by
    line, on a slice of the same data because it is slow), for the `typical` and the
    `keyword-dense` corpus, with the goals (>= 100 MB/s typical, >= 30 MB/s
    keyword-dense, for mask() over 64 KiB chunks);
  * accuracy: per detector, planted secrets whose whole span is covered by masked
    output (recall), replacements that do not overlap any planted secret (false
    masks) and precision; overall recall of known-format secrets (goal >= 0.99);
    false masks per 10 MB of a benign-only corpus (goal <= 1); detect-secrets'
    recall on the same planted secrets.

Examples (from the repository root):

  .venv/bin/python benchmarks/mask_engine/run.py --quick
  .venv/bin/python -m benchmarks.mask_engine.run              # 50 MB corpora
  .venv/bin/python -m benchmarks.mask_engine.run --json /tmp/mask-engine.json

See benchmarks/README.md ("Masking engine").
"""

from __future__ import annotations

import argparse
import bisect
import gc
import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MB = 1_000_000
GOAL_TYPICAL_MBS = 100.0
GOAL_DENSE_MBS = 30.0
GOAL_RECALL = 0.99
GOAL_FALSE_PER_10MB = 1.0
MARK = re.compile(rb"\[MASKED:([A-Za-z0-9_.:-]+)\]")


def _load_corpus() -> ModuleType:
    path = HERE / "corpus.py"
    spec = importlib.util.spec_from_file_location("pw_bench_mask_corpus", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


corpus = _load_corpus()
Label = corpus.Label


def log(msg: str) -> None:
    print(f"[mask_engine] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- environment
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def pkg_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def engine_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "log", "-1", "--format=%h %cs", "--", "src/pathwarden/masking"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src/pathwarden/masking"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return "unknown"
    src = hashlib.sha256()
    for f in sorted((REPO / "src/pathwarden/masking").glob("*.py")):
        src.update(f.name.encode() + b"\0" + f.read_bytes())
    state = " + uncommitted changes" if dirty else ""
    return f"{rev or 'uncommitted'}{state} (sources sha256 {src.hexdigest()[:12]})"


def pin_one_cpu(cpu: int | None) -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    allowed = sorted(os.sched_getaffinity(0))
    target = allowed[-1] if cpu is None else cpu
    os.sched_setaffinity(0, {target})
    return f"pinned to CPU {target} (of {len(allowed)} allowed)"


def wait_for_engine(timeout: float) -> ModuleType:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            import pathwarden.masking as masking

            masking.engine_for  # noqa: B018 - fails until the engine is in place
            masking.MaskOptions  # noqa: B018
            return masking
        except (ImportError, AttributeError) as exc:
            msg = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise SystemExit(f"pathwarden.masking is not usable: {msg}") from exc
            if msg != last:
                log(f"waiting for the engine ({msg})")
                last = msg
            for name in [m for m in sys.modules if m.startswith("pathwarden.masking")]:
                del sys.modules[name]
            time.sleep(10)


# --------------------------------------------------------------------------- maskers
def mask_chunks(eng: Any, data: bytes, size: int) -> bytes:
    return b"".join([eng.mask(data[i : i + size]).data for i in range(0, len(data), size)])


def mask_whole(eng: Any, data: bytes) -> bytes:
    return bytes(eng.mask(data).data)


def mask_stream(eng: Any, data: bytes, size: int) -> bytes:
    st = eng.stream()
    out = [st.feed(data[i : i + size]) for i in range(0, len(data), size)]
    out.append(st.flush())
    return b"".join(o for o in out if o)


def timed(fn: Callable[[], bytes], repeat: int) -> tuple[float, float, bytes]:
    """Median and best seconds of ``repeat`` runs, and the output of the first."""
    times: list[float] = []
    first = b""
    for i in range(repeat):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        finally:
            gc.enable()
        if i == 0:
            first = out
    return statistics.median(times), min(times), first


# --------------------------------------------------------------------------- detect-secrets
class DetectSecrets:
    """detect-secrets 1.x with its default plugins and filters, as a file scan does it."""

    def __init__(self) -> None:
        from detect_secrets.core import scan
        from detect_secrets.settings import default_settings

        self._scan = scan
        self._ctx = default_settings()
        self._ctx.__enter__()
        self.version = pkg_version("detect-secrets")
        from detect_secrets.settings import get_plugins

        self.plugins = [type(p).__name__ for p in get_plugins()]

    def scan_lines(self, lines: list[tuple[int, str]]) -> list[tuple[int, str, str]]:
        """(line number, secret type, secret value) for each finding."""
        found = self._scan._process_line_based_plugins(lines=lines, filename="ci-output.log")
        return [(s.line_number, s.type, s.secret_value or "") for s in found]

    def throughput(self, data: bytes) -> tuple[float, int]:
        text = data.decode("utf-8", "replace")
        lines = list(enumerate(text.splitlines(), start=1))
        gc.collect()
        t0 = time.perf_counter()
        found = self.scan_lines(lines)
        return time.perf_counter() - t0, len(found)


def slice_lines(data: bytes, size: int) -> bytes:
    if size >= len(data):
        return data
    end = data.rfind(b"\n", 0, size)
    return data[: end + 1 if end > 0 else size]


# --------------------------------------------------------------------------- alignment
@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    detector: str


def align(src: bytes, out: bytes) -> list[Span]:
    """Where the replacements in ``out`` landed in ``src``.

    ``out`` is ``src`` with some spans replaced by ``[MASKED:<detector>]``. The text
    between two markers is located in ``src`` at its first occurrence after the
    previous replacement began (the last one is anchored at the end). Adjacent
    markers with nothing between them are taken as one replacement. Raises
    ValueError when ``out`` cannot be explained that way.
    """
    if out is src or out == src:
        return []
    marks = list(MARK.finditer(out))
    if not marks:
        raise ValueError("output differs from input but has no [MASKED:...] marker")
    spans: list[Span] = []
    first = marks[0]
    head = out[: first.start()]
    if not src.startswith(head):
        raise ValueError("output does not start like the input")
    open_start, open_det = len(head), first.group(1).decode()
    for prev, m in itertools.pairwise(marks):
        seg = out[prev.end() : m.start()]
        if not seg:
            continue  # adjacent markers: one replacement
        at = src.find(seg, open_start + 1)
        if at < 0:
            raise ValueError(f"text after a marker not found in the input near {open_start}")
        spans.append(Span(open_start, at, open_det))
        open_start, open_det = at + len(seg), m.group(1).decode()
    tail = out[marks[-1].end() :]
    end = len(src) - len(tail)
    if end <= open_start or not src.endswith(tail):
        raise ValueError("output does not end like the input")
    spans.append(Span(open_start, end, open_det))
    return spans


def verify_alignment(src: bytes, out: bytes, spans: list[Span]) -> bool:
    parts: list[bytes] = []
    pos = 0
    for s in spans:
        parts += [src[pos : s.start], b"[MASKED:" + s.detector.encode() + b"]"]
        pos = s.end
    parts.append(src[pos:])
    rebuilt = b"".join(parts)
    if rebuilt == out:
        return True
    # adjacent markers were merged: compare with the markers collapsed
    return MARK.sub(b"[M]", re.sub(rb"(\[MASKED:[^\]]+\])+", b"[M]", rebuilt)) == MARK.sub(
        b"[M]", re.sub(rb"(\[MASKED:[^\]]+\])+", b"[M]", out)
    )


class Intervals:
    """Union of intervals, for coverage and overlap queries."""

    def __init__(self, items: Iterable[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for s, e in sorted(items):
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        self.starts = [m[0] for m in merged]
        self.ends = [m[1] for m in merged]

    def covers(self, s: int, e: int) -> bool:
        i = bisect.bisect_right(self.starts, s) - 1
        return i >= 0 and self.ends[i] >= e

    def overlaps(self, s: int, e: int) -> bool:
        i = bisect.bisect_right(self.starts, e - 1) - 1
        return i >= 0 and self.ends[i] > s


class LabelIndex:
    def __init__(self, labels: Sequence[Any]) -> None:
        self.labels = sorted(labels, key=lambda x: x.start)
        self.starts = [x.start for x in self.labels]
        self.max_len = max((x.end - x.start for x in self.labels), default=0)

    def overlapping(self, s: int, e: int) -> list[Any]:
        lo = bisect.bisect_left(self.starts, s - self.max_len)
        hi = bisect.bisect_left(self.starts, e)
        return [x for x in self.labels[lo:hi] if x.end > s]


# --------------------------------------------------------------------------- shapes
SEPS = "-_."


def shape(text: str) -> str:
    """Describe a secret without reproducing it: a short literal prefix, then classes."""
    k = max((i + 1 for i, c in enumerate(text[:16]) if c in SEPS), default=0)
    if k == 0 and text[:4].isalpha():
        k = 4
    rest = text[k:]
    classes = []
    for name, test in (
        ("A-Z", str.isupper),
        ("a-z", str.islower),
        ("0-9", str.isdigit),
    ):
        if any(test(c) for c in rest):
            classes.append(name)
    other = sorted({c for c in rest if not c.isalnum()} - {"\n"})
    cls = "".join(classes) + "".join(other)
    nl = f", {rest.count(chr(10)) + 1} lines" if "\n" in rest else ""
    return f"{text[:k]}<{len(rest)} x [{cls}]{nl}>"


def context(data: bytes, s: int, e: int, secrets: LabelIndex, width: int = 150) -> str:
    """The line(s) around [s, e), with every planted secret shown as its shape."""
    ls = data.rfind(b"\n", 0, s) + 1
    le = data.find(b"\n", e)
    le = len(data) if le < 0 else le
    if le - ls > 4 * width:
        ls, le = max(ls, s - width), min(le, e + width)
    parts: list[str] = []
    pos = ls
    for lab in secrets.overlapping(ls, le):
        a, b = max(lab.start, ls), min(lab.end, le)
        if a < pos:
            continue
        parts += [data[pos:a].decode(), "{" + shape(data[lab.start : lab.end].decode()) + "}"]
        pos = b
    parts.append(data[pos:le].decode())
    text = "".join(parts).replace("\r", "\\r").replace("\x1b", "\\e")
    lines = text.split("\n")
    out = " | ".join(line.strip() for line in lines[:3]) + (" | ..." if len(lines) > 3 else "")
    return out if len(out) <= 2 * width else out[: 2 * width] + "..."


# --------------------------------------------------------------------------- accuracy
@dataclass
class Accuracy:
    planted: Counter[str] = field(default_factory=Counter)
    recalled: Counter[str] = field(default_factory=Counter)
    masked_as: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    masks: Counter[str] = field(default_factory=Counter)  # replacements per marker name
    false: Counter[str] = field(default_factory=Counter)  # replacements overlapping no secret
    false_on: Counter[str] = field(default_factory=Counter)  # what false masks hit
    false_texts: Counter[str] = field(default_factory=Counter)  # the benign text masked
    missed_shapes: Counter[tuple[str, str]] = field(default_factory=Counter)
    miss_examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    false_examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    nbytes: int = 0
    align_errors: int = 0

    def merge(self, other: Accuracy) -> None:
        names = (
            "planted",
            "recalled",
            "masks",
            "false",
            "false_on",
            "false_texts",
            "missed_shapes",
        )
        for name in names:
            getattr(self, name).update(getattr(other, name))
        for k, v in other.masked_as.items():
            self.masked_as[k].update(v)
        for k, v in other.miss_examples.items():
            self.miss_examples[k] += v
        for k, v in other.false_examples.items():
            self.false_examples[k] += v
        self.nbytes += other.nbytes
        self.align_errors += other.align_errors


def score(c: Any, out: bytes, examples: int) -> Accuracy:
    acc = Accuracy(nbytes=len(c.data))
    try:
        spans = align(c.data, out)
        if not verify_alignment(c.data, out, spans):
            raise ValueError("alignment does not reproduce the output")
    except ValueError as exc:
        log(f"{c.variant}: cannot map replacements back to the input: {exc}")
        acc.align_errors += 1
        return acc
    secrets = LabelIndex(c.secrets)
    negatives = LabelIndex(c.negatives)
    covered = Intervals((s.start, s.end) for s in spans)
    span_index = LabelIndex(spans)
    for lab in c.secrets:
        acc.planted[lab.detector] += 1
        if covered.covers(lab.start, lab.end):
            acc.recalled[lab.detector] += 1
            for s in span_index.overlapping(lab.start, lab.end):
                acc.masked_as[lab.detector][s.detector] += 1
        else:
            acc.missed_shapes[(lab.detector, lab.shape)] += 1
            ex = acc.miss_examples[lab.detector]
            if len(ex) < examples:
                partial = " (partly masked)" if span_index.overlapping(lab.start, lab.end) else ""
                ex.append(f"[{lab.shape}]{partial} {context(c.data, lab.start, lab.end, secrets)}")
    secret_union = Intervals((x.start, x.end) for x in c.secrets)
    for s in spans:
        acc.masks[s.detector] += 1
        if secret_union.overlaps(s.start, s.end):
            continue
        acc.false[s.detector] += 1
        hit = negatives.overlapping(s.start, s.end)
        what = hit[0].detector if hit else "unlabelled text"
        acc.false_on[f"{s.detector} on {what}"] += 1
        masked = c.data[s.start : s.end].decode("ascii", "replace")
        if len(masked) > 80:
            masked = masked[:77] + "..."
        acc.false_texts[f"{s.detector}: {masked!r}"] += 1
        ex = acc.false_examples[s.detector]
        if len(ex) < examples:
            ex.append(f"[{what}] masked {masked!r} in: {context(c.data, s.start, s.end, secrets)}")
    return acc


def ds_recall(ds: DetectSecrets, c: Any, per_detector: int) -> tuple[Counter[str], Counter[str]]:
    """detect-secrets findings over the lines of planted secrets (at most N per detector)."""
    text = c.data.decode()
    line_starts = [0]
    line_starts += [m.end() for m in re.finditer("\n", text)]
    chosen: dict[str, list[Any]] = defaultdict(list)
    for lab in c.secrets:
        if len(chosen[lab.detector]) < per_detector:
            chosen[lab.detector].append(lab)
    planted: Counter[str] = Counter()
    hit: Counter[str] = Counter()
    for det, labs in chosen.items():
        for lab in labs:
            planted[det] += 1
            l0 = bisect.bisect_right(line_starts, lab.start) - 1
            l1 = bisect.bisect_right(line_starts, max(lab.end - 1, lab.start)) - 1
            first = max(0, l0 - 1) if l1 > l0 else l0  # a PEM block: include the BEGIN line
            lines = []
            for ln in range(first, l1 + 1):
                end = line_starts[ln + 1] - 1 if ln + 1 < len(line_starts) else len(text)
                lines.append((ln, text[line_starts[ln] : end]))
            found = ds.scan_lines(lines)
            ok = False
            for ln, typ, value in found:
                if l1 > l0 or typ == "Private Key":  # a PEM block: any finding on it
                    ok = True
                    break
                line_text = dict(lines)[ln]
                base = line_starts[ln]
                if not value:
                    ok = True
                    break
                at = line_text.find(value)
                while at >= 0:
                    if base + at < lab.end and base + at + len(value) > lab.start:
                        ok = True
                        break
                    at = line_text.find(value, at + 1)
                if ok:
                    break
            hit[det] += ok
    return planted, hit


# --------------------------------------------------------------------------- output
def fmt_rate(x: float) -> str:
    return f"{x:8.1f}" if x >= 10 else f"{x:8.2f}" if x >= 0.1 else f"{x:8.3f}"


def pct(n: int, d: int) -> str:
    return f"{n / d:6.3f}" if d else "     -"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="mask_engine", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small corpora, finishes in under a minute")
    p.add_argument("--size-mb", type=float, help="MiB per planted corpus (default 50, quick 3)")
    p.add_argument(
        "--benign-mb", type=float, help="MiB per benign-only corpus (default 50, quick 3)"
    )
    p.add_argument(
        "--ds-mb",
        type=float,
        help="MiB of each corpus scanned by detect-secrets for "
        "throughput and benign findings (default 2, quick 0.5)",
    )
    p.add_argument(
        "--ds-per-detector",
        type=int,
        default=200,
        help="planted secrets per detector scanned by detect-secrets for recall",
    )
    p.add_argument(
        "--repeat", type=int, help="timed runs per measurement, median (default 3, quick 1)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cpu", type=int, help="CPU to pin to (default: the last one allowed)")
    p.add_argument(
        "--examples", type=int, default=3, help="examples per detector of misses/false masks"
    )
    p.add_argument("--skip-detect-secrets", action="store_true")
    p.add_argument("--wait", type=float, default=0, help="seconds to wait for pathwarden.masking")
    p.add_argument("--json", help="write the results to this file")
    a = p.parse_args(argv)
    a.size_mb = a.size_mb or (3 if a.quick else 50)
    a.benign_mb = a.benign_mb or (3 if a.quick else 50)
    a.ds_mb = a.ds_mb or (0.5 if a.quick else 2)
    a.repeat = a.repeat or (1 if a.quick else 3)
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    t_start = time.monotonic()
    pinned = pin_one_cpu(a.cpu)
    masking = wait_for_engine(a.wait)
    t0 = time.perf_counter()
    eng = masking.engine_for(masking.MaskOptions())
    compile_s = time.perf_counter() - t0
    ds = None if a.skip_detect_secrets else DetectSecrets()

    cmd = " ".join(shlex.quote(x) for x in [Path(sys.executable).name, *sys.argv])
    print(f"command:        {cmd}")
    print(f"cpu:            {cpu_model()}, {os.cpu_count()} CPUs, {pinned}")
    print(
        f"python:         {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}"
    )
    print(f"hyperscan:      {pkg_version('hyperscan')}")
    print(
        "detect-secrets: "
        + (f"{ds.version} ({len(ds.plugins)} default plugins)" if ds else "skipped")
    )
    print(
        f"engine:         src/pathwarden/masking at {engine_revision()}; "
        f"compiled in {compile_s * 1000:.0f} ms"
    )
    names = list(getattr(eng, "detector_names", []))
    print(f"detectors:      {len(names)}: {', '.join(names)}")
    print(
        f"corpora:        {a.size_mb:g} MiB typical + {a.size_mb:g} MiB keyword-dense (planted), "
        f"{a.benign_mb:g} MiB of each benign-only; seed {a.seed}"
    )
    print(flush=True)

    results: dict[str, Any] = {"args": vars(a), "throughput": [], "accuracy": {}}
    corpora: dict[str, Any] = {}
    for variant in corpus.VARIANTS:
        t0 = time.perf_counter()
        corpora[variant] = corpus.generate(variant, a.size_mb, a.seed, plant=True)
        c = corpora[variant]
        log(
            f"generated {variant}: {len(c.data) / MB:.1f} MB, {len(c.secrets)} secrets, "
            f"{len(c.negatives)} hard negatives in {time.perf_counter() - t0:.1f}s"
        )

    # ------------------------------------------------------------------ throughput
    outputs: dict[tuple[str, str], bytes] = {}
    rows: list[tuple[str, str, float, float, str]] = []
    for variant, c in corpora.items():
        goal = GOAL_TYPICAL_MBS if variant == "typical" else GOAL_DENSE_MBS
        n = len(c.data)
        methods: list[tuple[str, Callable[[], bytes]]] = [
            ("pathwarden mask() 64 KiB chunks", lambda c=c: mask_chunks(eng, c.data, 64 * 1024)),
            ("pathwarden mask() whole buffer", lambda c=c: mask_whole(eng, c.data)),
            ("pathwarden stream 4 KiB feeds", lambda c=c: mask_stream(eng, c.data, 4096)),
        ]
        for name, fn in methods:
            secs, best, out = timed(fn, a.repeat)
            outputs[(variant, name)] = out
            rate = n / secs / MB
            rows.append((variant, name, rate, n / best / MB, "met" if rate >= goal else "UNMET"))
            log(f"{variant}: {name}: {rate:.1f} MB/s")
        if ds:
            sl = slice_lines(c.data, int(a.ds_mb * 1024 * 1024))
            secs, nfound = ds.throughput(sl)
            rate = len(sl) / secs / MB
            rows.append(
                (variant, f"detect-secrets, first {len(sl) / MB:.1f} MB, per line", rate, rate, "")
            )
            log(f"{variant}: detect-secrets: {rate:.3f} MB/s ({nfound} findings)")

    print(
        f"Throughput on one core (MB/s = 10^6 bytes/s; median and best of {a.repeat}; "
        f"goals: median of mask() over 64 KiB chunks: typical >= {GOAL_TYPICAL_MBS:g}, "
        f"keyword-dense >= {GOAL_DENSE_MBS:g})"
    )
    print()
    print(f"{'corpus':14} {'method':42} {'MB/s':>8} {'best':>8} {'x detect-secrets':>17}  goal")
    for variant, name, rate, best_rate, goal_txt in rows:
        ds_rate = next(
            (r for v, m, r, _b, _g in rows if v == variant and m.startswith("detect-secrets")), 0
        )
        ratio = (
            f"{rate / ds_rate:16.0f}x" if ds_rate and not name.startswith("detect") else f"{'':17}"
        )
        g = goal_txt if "64 KiB" in name else ""
        best_txt = fmt_rate(best_rate) if not name.startswith("detect") else f"{'':8}"
        print(f"{variant:14} {name:42} {fmt_rate(rate)} {best_txt} {ratio}  {g}")
        results["throughput"].append(
            {"corpus": variant, "method": name, "mb_s": rate, "best_mb_s": best_rate, "goal": g}
        )
    if ds:
        print(
            f"\n  detect-secrets {ds.version}: default plugins ({len(ds.plugins)}) and filters, "
            "in-process, "
            "line by line (what `detect-secrets scan` runs per file);\n  it is measured on a slice "
            "of each corpus because it is slow, and only detects (it produces no masked output)."
        )
    print(flush=True)

    # ------------------------------------------------------------------ accuracy
    total = Accuracy()
    per_variant: dict[str, Accuracy] = {}
    for variant, c in corpora.items():
        whole = outputs[(variant, "pathwarden mask() whole buffer")]
        acc = score(c, whole, a.examples)
        per_variant[variant] = acc
        total.merge(acc)
    method_recall: list[tuple[str, str, int, int, str]] = []
    for variant, c in corpora.items():
        whole = outputs[(variant, "pathwarden mask() whole buffer")]
        for name in (
            "pathwarden mask() whole buffer",
            "pathwarden mask() 64 KiB chunks",
            "pathwarden stream 4 KiB feeds",
        ):
            out = outputs[(variant, name)]
            acc = per_variant[variant] if name.endswith("whole buffer") else score(c, out, 0)
            known = sum(acc.planted[d] for d in corpus.KNOWN_FORMAT)
            rec = sum(acc.recalled[d] for d in corpus.KNOWN_FORMAT)
            same = "identical" if out == whole else "differs"
            method_recall.append((variant, name, rec, known, same))

    benign: dict[str, Accuracy] = {}
    ds_benign: dict[str, tuple[int, int]] = {}
    for variant in corpus.VARIANTS:
        t0 = time.perf_counter()
        c = corpus.generate(variant, a.benign_mb, a.seed + 1000, plant=False)
        log(
            f"generated benign {variant}: {len(c.data) / MB:.1f} MB "
            f"in {time.perf_counter() - t0:.1f}s"
        )
        out = mask_whole(eng, c.data)
        benign[variant] = score(c, out, a.examples)
        if ds:
            sl = slice_lines(c.data, int(a.ds_mb * 1024 * 1024))
            _secs, nfound = ds.throughput(sl)
            ds_benign[variant] = (nfound, len(sl))
        del c, out

    ds_planted: Counter[str] = Counter()
    ds_hit: Counter[str] = Counter()
    if ds:
        for c in corpora.values():
            p, h = ds_recall(ds, c, a.ds_per_detector)
            ds_planted.update(p)
            ds_hit.update(h)

    print("Accuracy on the planted corpora (typical + keyword-dense, mask() over the whole buffer)")
    print(
        "  recalled: the whole planted span is covered by replacements; false: a replacement that"
    )
    print("  overlaps no planted secret; precision = (masks - false) / masks, per replacement name")
    print()
    hdr = (
        f"{'detector':24} {'planted':>7} {'recalled':>8} {'recall':>6}  {'masks':>6} {'false':>6} "
        f"{'precision':>9}  {'d-s recall':>10}  masked as (when another name)"
    )
    print(hdr)
    names_all = list(corpus.DETECTORS) + sorted(set(total.masks) - set(corpus.DETECTORS))
    det_rows = []
    for d in names_all:
        planted, recalled = total.planted[d], total.recalled[d]
        masks, false = total.masks[d], total.false[d]
        prec = pct(masks - false, masks)
        dsr = pct(ds_hit[d], ds_planted[d]) if ds else "     -"
        other = [f"{k} {v}" for k, v in total.masked_as[d].most_common() if k != d][:2]
        print(
            f"{d:24} {planted:7} {recalled:8} {pct(recalled, planted)}  {masks:6} {false:6} "
            f"{prec:>9}  {dsr:>10}  {', '.join(other)}"
        )
        det_rows.append(
            {
                "detector": d,
                "planted": planted,
                "recalled": recalled,
                "masks": masks,
                "false": false,
                "ds_planted": ds_planted[d],
                "ds_recalled": ds_hit[d],
            }
        )
    kp = sum(total.planted[d] for d in corpus.KNOWN_FORMAT)
    kr = sum(total.recalled[d] for d in corpus.KNOWN_FORMAT)
    ap, ar = sum(total.planted.values()), sum(total.recalled.values())
    all_masks, all_false = sum(total.masks.values()), sum(total.false.values())
    dkp = sum(ds_planted[d] for d in corpus.KNOWN_FORMAT)
    dkr = sum(ds_hit[d] for d in corpus.KNOWN_FORMAT)
    print(
        f"{'known-format':24} {kp:7} {kr:8} {pct(kr, kp)}  {'':6} {'':6} {'':9}  "
        f"{pct(dkr, dkp) if ds else '     -':>10}"
    )
    print(
        f"{'all planted':24} {ap:7} {ar:8} {pct(ar, ap)}  {all_masks:6} "
        f"{all_false:6} "
        f"{pct(all_masks - all_false, all_masks):>9}  "
        f"{pct(sum(ds_hit.values()), sum(ds_planted.values())) if ds else '     -':>10}"
    )
    if ds:
        print(
            "\n  d-s recall: detect-secrets findings on the lines of up to "
            f"{a.ds_per_detector} planted "
            "secrets per detector and corpus (a finding counts when its value overlaps the span;"
        )
        print(
            "  for multi-line keys, any finding on the block). detect-secrets has no plugin for "
            "several of these providers."
        )
    print()
    print("Recall of known-format secrets by method (64 KiB chunks are masked independently, so a")
    print("secret cut by a chunk boundary can be missed; the streaming masker should not miss it)")
    for variant, name, rec, known, same in method_recall:
        print(
            f"  {variant:14} {name:34} {rec:6}/{known:<6} {pct(rec, known)}  output {same} "
            "to whole buffer"
        )
    print()
    print(
        "False masks on benign-only output "
        f"(no planted secrets; goal <= {GOAL_FALSE_PER_10MB:g} per 10 MB)"
    )
    tot_false = 0
    tot_bytes = 0
    for variant, acc in benign.items():
        f = sum(acc.masks.values())
        tot_false += f
        tot_bytes += acc.nbytes
        per = f / (acc.nbytes / (10 * MB))
        ds_txt = ""
        if ds and variant in ds_benign:
            nf, nb = ds_benign[variant]
            ds_txt = (
                f"; detect-secrets: {nf} findings in {nb / MB:.1f} MB "
                f"= {nf / (nb / (10 * MB)):.0f} per 10 MB"
            )
        print(
            f"  {variant:14} {acc.nbytes / MB:6.1f} MB  {f:6} false masks "
            f"= {per:8.2f} per 10 MB{ds_txt}"
        )
        for what, k in acc.false_on.most_common(8):
            print(f"      {k:6}  {what}")
        if acc.false_texts:
            print("    most frequent masked texts:")
            for what, k in acc.false_texts.most_common(12):
                print(f"      {k:6}  {what}")
    benign_rate = tot_false / (tot_bytes / (10 * MB)) if tot_bytes else 0.0

    print()
    print("Goals")
    goal_lines = []
    for variant, name, rate, _best, goal_txt in rows:
        if "64 KiB" in name:
            g = GOAL_TYPICAL_MBS if variant == "typical" else GOAL_DENSE_MBS
            goal_lines.append(
                (f"throughput {variant} >= {g:g} MB/s", f"{rate:.1f} MB/s", goal_txt == "met")
            )
    goal_lines.append(
        (
            f"recall of known-format secrets >= {GOAL_RECALL}",
            f"{kr / kp if kp else 0:.4f}",
            kp > 0 and kr / kp >= GOAL_RECALL,
        )
    )
    goal_lines.append(
        (
            f"false masks per 10 MB benign <= {GOAL_FALSE_PER_10MB:g}",
            f"{benign_rate:.2f}",
            benign_rate <= GOAL_FALSE_PER_10MB,
        )
    )
    for text, value, ok in goal_lines:
        print(f"  {text:44} {value:>14}  {'met' if ok else 'UNMET'}")

    if a.examples:
        print()
        print("Examples (planted secrets shown as prefix<length x [classes]>)")
        for d in names_all:
            for ex in total.miss_examples.get(d, []):
                print(f"  missed {d}: {ex}")
        missed = total.missed_shapes.most_common(40)
        if missed:
            print("  misses by where they were planted (at most 40 rows):")
            for (d, sh), k in missed:
                print(f"      {k:6}  {d} in {sh}")
        for where, accs in (("planted corpora", [total]), ("benign", list(benign.values()))):
            for acc in accs:
                for d, exs in acc.false_examples.items():
                    for ex in exs:
                        print(f"  false {d} ({where}): {ex}")
    if total.align_errors or any(b.align_errors for b in benign.values()):
        print("\nWARNING: some outputs could not be mapped back to their input; see the log")
    print(f"\n(total time {time.monotonic() - t_start:.0f}s)")

    results["accuracy"] = {
        "detectors": det_rows,
        "known_format_recall": kr / kp if kp else None,
        "ds_known_format_recall": dkr / dkp if dkp else None,
        "benign_false_per_10mb": benign_rate,
        "benign": {v: dict(acc.false_on) for v, acc in benign.items()},
        "method_recall": [list(x) for x in method_recall],
        "goals": [{"goal": t, "value": v, "met": ok} for t, v, ok in goal_lines],
    }
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
