"""Compare ways for an asyncio server to publish one file per message.

Every strategy publishes each message atomically and never overwrites:

* named temp: ``openat(dir, tmp, O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC,
  0o640)``, write, close, ``linkat(dir, tmp, dir, final)`` (fails with EEXIST
  instead of overwriting), ``unlinkat(dir, tmp)``;
* O_TMPFILE: ``openat(dir, ".", O_TMPFILE|O_WRONLY|O_CLOEXEC, 0o640)``, write,
  ``linkat(AT_FDCWD, "/proc/self/fd/N", dir, final, AT_SYMLINK_FOLLOW)``, close
  (no temporary name, nothing left behind after a crash).

All paths are relative to one directory fd opened once per run.  A producer
coroutine enqueues N prepared messages into a bounded ``asyncio.Queue``; the
strategies differ only in how the queue is drained:

``inline``          one task does the syscalls on the event loop (blocking it);
``inline-tmpfile``  the same with O_TMPFILE;
``executor-T``      T tasks, one ``run_in_executor`` hop per file, T threads;
``aiofiles-C``      C tasks, ``aiofiles.open``/write/close + ``aiofiles.os.link``
                    + ``aiofiles.os.remove`` (five hops per file), C threads;
``batched-W-B``     W tasks, each takes up to B queued items and publishes them
                    in one executor call (W threads);
``tmpfile-W-B``     the same with O_TMPFILE instead of a named temp;
``...+fsync=MODE``  batched with ``dir`` (fsync the directory once per batch),
                    ``file+dir`` (fsync every file, the directory once per
                    batch) or ``file+dir/file`` (both for every file).

Phases, each with interleaved repeats (configurations rotate order every
repeat; the JSON keeps every run and the tables show the median):

1.  throughput (files/s, CPU per file) of every strategy, default asyncio loop,
    1.5 KB and 64 KiB messages;
1b. the same for a subset with a busy event loop: the producer spends
    ``--busy-us`` of pure-Python work per message, as the gRPC receive path
    would, so the writers compete with the loop for the GIL and the cores;
2.  default loop against uvloop for the best configuration of the two best
    strategy families;
3.  enqueue-to-publish latency (p50/p99) and event-loop lag, producer paced at
    half of the measured peak: ``inline`` and W=1 batched with B = 16/64/256.

Other processes on the machine are measured, not assumed away: every run
records the CPU the rest of the machine used meanwhile (``foreign_cores``,
from /proc/stat minus this process's rusage) and waits briefly for quiet
before starting.  ``--cpus`` pins the process, e.g. to compare one core with
two.

Every run writes into a fresh sub-directory that is verified (exactly N final
files, no temporary left) and removed afterwards.  Directories given with
``--dir`` that did not exist are created and removed at the end.

Reproduce (from the repository root)::

    python benchmarks/experiments/writers/compare_writers.py \\
        --dir /dev/shm/writerbench --dir /var/tmp/writerbench
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

try:  # aiofiles is measured here, not a dependency of the product
    import aiofiles
    import aiofiles.os

    HAVE_AIOFILES = True
except ImportError:  # pragma: no cover - the aiofiles rows are then skipped
    HAVE_AIOFILES = False

try:
    import uvloop

    HAVE_UVLOOP = True
except ImportError:  # pragma: no cover - phase 2 is then skipped
    HAVE_UVLOOP = False

OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TMPFILE_FLAGS = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
FILE_MODE = 0o640
TEMP_PREFIX = "tap-tmp-"
SMALL_SIZE = 1573  # one buffered HTTP trace with a 1 KiB body
LARGE_SIZE = 64 * 1024

Kind = Literal["inline", "executor", "aiofiles", "batched"]
Fsync = Literal["none", "dir", "file+dir", "file+dir/file"]
LoopKind = Literal["asyncio", "uvloop"]
Phase = Literal["throughput", "busy", "loops", "latency"]


@dataclass(frozen=True)
class Spec:
    """One writer configuration."""

    kind: Kind
    threads: int = 0  # executor threads, also the number of consumer tasks
    batch: int = 1
    tmpfile: bool = False
    fsync: Fsync = "none"

    @property
    def family(self) -> str:
        """Strategy name without its tuning parameters."""
        if self.kind == "batched":
            base = "tmpfile" if self.tmpfile else "batched"
            return base if self.fsync == "none" else f"{base}+fsync"
        return self.kind  # inline-tmpfile counts as inline

    @property
    def label(self) -> str:
        """Short unique name used in tables and JSON."""
        if self.kind == "inline":
            return "inline-tmpfile" if self.tmpfile else "inline"
        if self.kind in ("executor", "aiofiles"):
            return f"{self.kind}-{self.threads}"
        base = "tmpfile" if self.tmpfile else "batched"
        label = f"{base}-W{self.threads}-B{self.batch}"
        return label if self.fsync == "none" else f"{label}+fsync={self.fsync}"


@dataclass(frozen=True, slots=True)
class Item:
    """One message to publish."""

    idx: int
    final: str
    tmp: str
    payload: bytes


@dataclass
class Ctx:
    """Per-run state shared by the event loop and the writer threads."""

    dfd: int
    spec: Spec
    published: list[float] | None = None  # publish timestamps (latency mode)


@dataclass
class Sample:
    """One measured run."""

    phase: Phase
    fs: str
    size: int
    strategy: str
    loop: LoopKind
    rep: int
    files: int
    seconds: float
    files_per_s: float
    cpu_us_per_file: float
    sys_us_per_file: float
    foreign_cores: float  # CPU used by other processes during the run, in cores
    waited_s: float  # time spent waiting for the machine to be quiet before the run
    latency_ms: dict[str, float] = field(default_factory=dict)
    loop_lag_ms: dict[str, float] = field(default_factory=dict)
    target_rate: float = 0.0


# --------------------------------------------------------------------------
# Synchronous publish primitives (run on the loop or in executor threads)
# --------------------------------------------------------------------------


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]


def publish_named(ctx: Ctx, item: Item, fsync_file: bool) -> None:
    """Named temp + link (never overwrites) + unlink of the temp."""
    dfd = ctx.dfd
    fd = os.open(item.tmp, OPEN_FLAGS, FILE_MODE, dir_fd=dfd)
    try:
        _write_all(fd, item.payload)
        if fsync_file:
            os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(item.tmp, item.final, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.unlink(item.tmp, dir_fd=dfd)
    if ctx.published is not None:
        ctx.published[item.idx] = time.perf_counter()


def publish_tmpfile(ctx: Ctx, item: Item, fsync_file: bool) -> None:
    """Anonymous O_TMPFILE inode, linked into place through /proc/self/fd."""
    dfd = ctx.dfd
    fd = os.open(".", TMPFILE_FLAGS, FILE_MODE, dir_fd=dfd)
    try:
        _write_all(fd, item.payload)
        if fsync_file:
            os.fsync(fd)
        os.link(f"/proc/self/fd/{fd}", item.final, dst_dir_fd=dfd, follow_symlinks=True)
    finally:
        os.close(fd)
    if ctx.published is not None:
        ctx.published[item.idx] = time.perf_counter()


def publish_one(ctx: Ctx, item: Item) -> None:
    """Publish a single item as the spec says (no directory fsync)."""
    publish = publish_tmpfile if ctx.spec.tmpfile else publish_named
    publish(ctx, item, ctx.spec.fsync in ("file+dir", "file+dir/file"))


def publish_batch(ctx: Ctx, items: Sequence[Item]) -> None:
    """Publish a batch in the calling thread, with the spec's fsync policy."""
    spec = ctx.spec
    publish = publish_tmpfile if spec.tmpfile else publish_named
    fsync_file = spec.fsync in ("file+dir", "file+dir/file")
    per_file_dir = spec.fsync == "file+dir/file"
    for item in items:
        publish(ctx, item, fsync_file)
        if per_file_dir:
            os.fsync(ctx.dfd)
    if spec.fsync in ("dir", "file+dir"):
        os.fsync(ctx.dfd)


# --------------------------------------------------------------------------
# Asyncio side: producer and consumers
# --------------------------------------------------------------------------

Queue = asyncio.Queue[Item | None]


@dataclass(frozen=True)
class Load:
    """How the producer feeds the queue."""

    rate: float = 0.0  # items/s; 0 = as fast as the queue accepts
    work: int = 0  # burn() iterations before each enqueue (busy event loop)


def burn(iterations: int) -> None:
    """Pure-Python work holding the GIL, standing in for a gRPC receive path."""
    for _ in range(iterations):
        pass


def calibrate_burn(microseconds: float) -> int:
    """Iterations of :func:`burn` that take about ``microseconds``."""
    if microseconds <= 0:
        return 0
    n = 200_000
    best = min(_timed_burn(n) for _ in range(5))
    return max(1, int(n * microseconds * 1e-6 / best))


def _timed_burn(n: int) -> float:
    t0 = time.perf_counter()
    burn(n)
    return time.perf_counter() - t0


async def produce(
    queue: Queue, items: Sequence[Item], consumers: int, load: Load, enqueued: list[float] | None
) -> None:
    """Enqueue every item (paced to ``load.rate`` items/s if > 0), then stop markers."""
    rate = load.rate
    if rate <= 0:
        work = load.work
        for item in items:
            if work:
                burn(work)
            if enqueued is not None:
                enqueued[item.idx] = time.perf_counter()
            await queue.put(item)
    else:
        start = time.perf_counter()
        i, n = 0, len(items)
        while i < n:
            due = min(n, int((time.perf_counter() - start) * rate) + 1)
            while i < due:
                if enqueued is not None:
                    enqueued[i] = time.perf_counter()
                await queue.put(items[i])
                i += 1
            await asyncio.sleep(0.0005)
    for _ in range(consumers):
        await queue.put(None)


async def consume_inline(ctx: Ctx, queue: Queue) -> None:
    while (item := await queue.get()) is not None:
        publish_one(ctx, item)


async def consume_executor(ctx: Ctx, queue: Queue, pool: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    while (item := await queue.get()) is not None:
        await loop.run_in_executor(pool, publish_one, ctx, item)


async def consume_aiofiles(ctx: Ctx, queue: Queue, pool: ThreadPoolExecutor) -> None:
    dfd = ctx.dfd

    def opener(path: str, _flags: int) -> int:
        return os.open(path, OPEN_FLAGS, FILE_MODE, dir_fd=dfd)

    while (item := await queue.get()) is not None:
        async with aiofiles.open(item.tmp, "wb", opener=opener, executor=pool) as f:
            await f.write(item.payload)
        await aiofiles.os.link(item.tmp, item.final, src_dir_fd=dfd, dst_dir_fd=dfd, executor=pool)
        await aiofiles.os.remove(item.tmp, dir_fd=dfd, executor=pool)
        if ctx.published is not None:
            ctx.published[item.idx] = time.perf_counter()


async def consume_batched(ctx: Ctx, queue: Queue, pool: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    limit = ctx.spec.batch
    while True:
        first = await queue.get()
        if first is None:
            return
        batch = [first]
        stop = False
        while len(batch) < limit:
            try:
                nxt = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if nxt is None:
                stop = True
                break
            batch.append(nxt)
        await loop.run_in_executor(pool, publish_batch, ctx, batch)
        if stop:
            return


async def measure_lag(stop: asyncio.Event, out: list[float]) -> None:
    """Record how late 1 ms sleeps wake up: how long the loop was blocked."""
    interval = 0.001
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(interval)
        out.append(time.perf_counter() - t0 - interval)


async def drive(
    ctx: Ctx,
    items: Sequence[Item],
    queue_size: int,
    load: Load,
    enqueued: list[float] | None,
    lag: list[float] | None,
) -> None:
    """Run the producer and the spec's consumers until every item is published."""
    spec = ctx.spec
    queue: Queue = asyncio.Queue(maxsize=queue_size)
    pool = ThreadPoolExecutor(max_workers=max(1, spec.threads), thread_name_prefix="writer")
    consumers: list[Coroutine[Any, Any, None]]
    if spec.kind == "inline":
        consumers = [consume_inline(ctx, queue)]
    elif spec.kind == "executor":
        consumers = [consume_executor(ctx, queue, pool) for _ in range(spec.threads)]
    elif spec.kind == "aiofiles":
        consumers = [consume_aiofiles(ctx, queue, pool) for _ in range(spec.threads)]
    else:
        consumers = [consume_batched(ctx, queue, pool) for _ in range(spec.threads)]
    stop = asyncio.Event()
    lag_task = asyncio.create_task(measure_lag(stop, lag)) if lag is not None else None
    try:
        await asyncio.gather(produce(queue, items, len(consumers), load, enqueued), *consumers)
    finally:
        stop.set()
        if lag_task is not None:
            await lag_task
        pool.shutdown(wait=True)


# --------------------------------------------------------------------------
# One run: fresh directory, timing, verification, cleanup
# --------------------------------------------------------------------------


def make_items(n: int, size: int) -> list[Item]:
    """Realistically long names: authority, namespace, trace id, sequence."""
    payload = os.urandom(size)
    items = []
    for i in range(n):
        trace_id = f"{i * 2654435761 % 2**64:016x}{i:016x}"
        final = f"outbound.reviews.bookinfo.svc:bookinfo:{trace_id}:{i:06d}.pb"
        items.append(Item(i, final, TEMP_PREFIX + final, payload))
    return items


def loop_factory(kind: LoopKind) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        if not HAVE_UVLOOP:
            raise SystemExit("uvloop is not installed")
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def percentiles(values: Sequence[float], scale: float) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale, 3)

    return {
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "max": round(ordered[-1] * scale, 3),
    }


def machine_ticks() -> tuple[int, int]:
    """Busy and total CPU ticks of the whole machine, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def is_clean(sample: Sample, threshold: float) -> bool:
    return sample.foreign_cores <= threshold


class Bench:
    """Holds options and accumulates samples."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.samples: list[Sample] = []
        self.counter = 0
        self.quiet_budget: float = args.quiet_budget
        self.items: dict[tuple[int, int], list[Item]] = {}

    def items_for(self, n: int, size: int) -> list[Item]:
        key = (n, size)
        if key not in self.items:
            self.items[key] = make_items(n, size)
        return self.items[key]

    def wait_quiet(self) -> float:
        """Wait (within the budgets) until other processes use little CPU."""
        waited = 0.0
        while True:
            b0, _ = machine_ticks()
            time.sleep(0.05)
            b1, _ = machine_ticks()
            foreign = (b1 - b0) / CLK_TCK / 0.05
            if foreign <= self.args.foreign_threshold or waited >= 3.0 or self.quiet_budget <= 0:
                return round(waited, 2)
            time.sleep(0.25)
            waited += 0.3
            self.quiet_budget -= 0.3

    def run(
        self,
        phase: Phase,
        fs: str,
        base: Path,
        spec: Spec,
        size: int,
        n: int,
        rep: int,
        loop: LoopKind = "asyncio",
        load: Load = Load(),
    ) -> Sample:
        items = self.items_for(n, size)
        self.counter += 1
        run_dir = base / f"run-{os.getpid()}-{self.counter}"
        run_dir.mkdir()
        dfd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        rate = load.rate
        latency = rate > 0
        ctx = Ctx(dfd, spec, [0.0] * n if latency else None)
        enqueued = [0.0] * n if latency else None
        lag: list[float] | None = [] if latency else None
        try:
            gc.collect()
            waited = self.wait_quiet()
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            busy0, _ = machine_ticks()
            t0 = time.perf_counter()
            with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
                runner.run(drive(ctx, items, self.args.queue, load, enqueued, lag))
            seconds = time.perf_counter() - t0
            busy1, _ = machine_ticks()
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            names = os.listdir(dfd)  # noqa: PTH208 - listed through the directory fd
            if len(names) != n or any(name.startswith(TEMP_PREFIX) for name in names):
                raise RuntimeError(f"{spec.label}: {len(names)} entries after publishing {n}")
            for name in names:
                os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)
            shutil.rmtree(run_dir, ignore_errors=True)
        sys_cpu = ru1.ru_stime - ru0.ru_stime
        cpu = (ru1.ru_utime - ru0.ru_utime) + sys_cpu
        foreign = max(0.0, ((busy1 - busy0) / CLK_TCK - cpu) / seconds)
        sample = Sample(
            phase=phase,
            fs=fs,
            size=size,
            strategy=spec.label,
            loop=loop,
            rep=rep,
            files=n,
            seconds=round(seconds, 4),
            files_per_s=round(n / seconds, 1),
            cpu_us_per_file=round(cpu / n * 1e6, 2),
            sys_us_per_file=round(sys_cpu / n * 1e6, 2),
            foreign_cores=round(foreign, 2),
            waited_s=waited,
            target_rate=round(rate, 1),
        )
        if latency and ctx.published is not None and enqueued is not None and lag is not None:
            sample.latency_ms = percentiles(
                [p - e for p, e in zip(ctx.published, enqueued, strict=True)], 1e3
            )
            sample.loop_lag_ms = percentiles(lag, 1e3)
        self.samples.append(sample)
        extra = (
            f" lat p50={sample.latency_ms.get('p50')} p99={sample.latency_ms.get('p99')} ms"
            if latency
            else ""
        )
        print(
            f"  [{phase[:4]} {fs} {size:>5}B rep{rep} {loop:7}] {spec.label:34}"
            f" {sample.files_per_s:>10,.0f} files/s"
            f" {sample.cpu_us_per_file:>7.1f} us-cpu/file (sys {sample.sys_us_per_file:.1f})"
            f" others {sample.foreign_cores:.2f} cores{extra}",
            flush=True,
        )
        return sample

    def median(self, fs: str, size: int, label: str) -> float:
        """Median phase-1 throughput of one configuration (0 if not measured)."""
        group = [
            s
            for s in self.samples
            if s.phase == "throughput" and s.fs == fs and s.size == size and s.strategy == label
        ]
        values = [s.files_per_s for s in group]
        return statistics.median(values) if values else 0.0


def clean_or_all(group: list[Sample], threshold: float) -> list[Sample]:
    """The runs not disturbed by other processes, or all runs if none was clean."""
    clean = [s for s in group if is_clean(s, threshold)]
    return clean or group


# --------------------------------------------------------------------------
# Environment and file-system facts
# --------------------------------------------------------------------------


def fs_info(path: Path) -> dict[str, str]:
    """File system type, device and options of the mount holding ``path``."""
    best: dict[str, str] = {}
    resolved = str(path.resolve())
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            dev, mnt, fstype, opts = line.split()[:4]
            mnt = mnt.replace("\\040", " ")
            inside = resolved == mnt or resolved.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best.get("mount", "")):
                best = {"device": dev, "mount": mnt, "type": fstype, "options": opts}
    return best


def tmpfile_support(path: Path) -> dict[str, Any]:
    """Try O_TMPFILE + linkat(/proc/self/fd) once in ``path``."""
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    name = "tap-otmpfile-probe.pb"
    try:
        fd = os.open(".", TMPFILE_FLAGS, FILE_MODE, dir_fd=dfd)
    except OSError as exc:
        os.close(dfd)
        return {
            "supported": False,
            "error": f"open: {errno.errorcode.get(exc.errno or 0, exc.errno)}",
        }
    try:
        os.write(fd, b"probe")
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dfd, follow_symlinks=True)
        st = os.stat(name, dir_fd=dfd)
        try:
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dfd, follow_symlinks=True)
            refuses_overwrite = False
        except FileExistsError:
            refuses_overwrite = True
        os.unlink(name, dir_fd=dfd)
        return {
            "supported": True,
            "mode": oct(st.st_mode & 0o7777),
            "size": st.st_size,
            "link_refuses_overwrite": refuses_overwrite,
        }
    except OSError as exc:
        return {
            "supported": False,
            "error": f"link: {errno.errorcode.get(exc.errno or 0, exc.errno)}",
        }
    finally:
        os.close(fd)
        os.close(dfd)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as info:
        mem_kib = int(info.readline().split()[1])

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    return {
        "nproc": os.cpu_count(),
        "cpus_used": sorted(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "mem_gib": round(mem_kib / 2**20, 1),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "aiofiles": version("aiofiles"),
        "uvloop": version("uvloop"),
        "loadavg_start": os.getloadavg(),
    }


# --------------------------------------------------------------------------
# The matrix and its phases
# --------------------------------------------------------------------------


def throughput_specs() -> list[Spec]:
    specs = [
        Spec("inline"),
        Spec("inline", tmpfile=True),
        Spec("executor", 2),
        Spec("executor", 4),
    ]
    if HAVE_AIOFILES:
        specs.append(Spec("aiofiles", 4))
    grid = [(w, b) for w in (1, 2, 4) for b in (16, 64, 256)]
    specs += [Spec("batched", w, b) for w, b in grid]
    specs += [Spec("batched", w, b, tmpfile=True) for w, b in grid]
    return specs


BUSY_SPECS = [
    Spec("inline"),
    Spec("inline", tmpfile=True),
    Spec("executor", 2),
    Spec("batched", 1, 64),
    Spec("batched", 1, 256),
    Spec("batched", 2, 64),
    Spec("batched", 2, 256),
    Spec("batched", 1, 64, tmpfile=True),
    Spec("batched", 2, 64, tmpfile=True),
]


def fsync_specs() -> list[Spec]:
    """W=1 (the CPU-bound optimum) with each policy; more writers can overlap fsync waits."""
    base = Spec("batched", 1, 64)
    return [replace(base, fsync=m) for m in ("dir", "file+dir", "file+dir/file")] + [
        replace(base, tmpfile=True, fsync="file+dir"),
        replace(base, threads=2, fsync="file+dir"),
        replace(base, threads=4, fsync="file+dir"),
    ]


def rotate(seq: Sequence[Spec], k: int) -> list[Spec]:
    if not seq:
        return []
    k %= len(seq)
    return list(seq[k:]) + list(seq[:k])


def run_phases(bench: Bench, targets: list[tuple[str, Path, bool]]) -> dict[str, Any]:
    args = bench.args
    sizes = [(SMALL_SIZE, "files"), (LARGE_SIZE, "large_files")]
    phases = set(args.phases.split(","))
    selected = re.compile(args.only)
    plan: dict[str, Any] = {"uvloop": {}, "latency": {}}

    def keep(specs: Sequence[Spec]) -> list[Spec]:
        return [s for s in specs if selected.search(s.label)]

    def count(is_tmpfs: bool, key: str, fsync: bool = False) -> int:
        if is_tmpfs:  # fsync is next to free on tmpfs: no cap
            return int(getattr(args, key))
        n = int(getattr(args, f"disk_{key}"))
        return min(n, args.fsync_files) if fsync else n

    # Phase 1: throughput, default loop, interleaved repeats.
    specs = keep(throughput_specs() + fsync_specs())
    plan["throughput"] = [s.label for s in specs]
    if "throughput" in phases:
        print("phase 1: throughput (default asyncio loop)", flush=True)
        for rep in range(args.repeats):
            for fs, base, is_tmpfs in targets:
                for size, key in sizes:
                    for spec in rotate(specs, rep * 3):
                        n = count(is_tmpfs, key, spec.fsync != "none")
                        bench.run("throughput", fs, base, spec, size, n, rep)

    # Phase 1b: with a busy event loop (the GIL is contended as in the server,
    # where the loop thread also receives and parses every message).
    work = calibrate_burn(args.busy_us)
    busy = keep(BUSY_SPECS)
    plan["busy"] = {
        "busy_us": args.busy_us,
        "burn_iterations": work,
        "strategies": [s.label for s in busy],
    }
    if "busy" in phases and work:
        print(
            f"phase 1b: busy event loop ({args.busy_us} us of Python per message, 1.5 KB)",
            flush=True,
        )
        for rep in range(args.repeats):
            for fs, base, is_tmpfs in targets:
                for spec in rotate(busy, rep * 3):
                    bench.run(
                        "busy",
                        fs,
                        base,
                        spec,
                        SMALL_SIZE,
                        count(is_tmpfs, "files"),
                        rep,
                        load=Load(work=work),
                    )

    # Phase 2: uvloop against asyncio for the best configuration of the two
    # best strategy families (by phase-1 medians).
    picks: dict[tuple[str, int], list[Spec]] = {}
    for fs, _base, _tmpfs in targets:
        for size, _ in sizes:
            best_by_family: dict[str, tuple[float, Spec]] = {}
            for spec in specs:
                if spec.fsync != "none":
                    continue
                rate = bench.median(fs, size, spec.label)
                if rate > best_by_family.get(spec.family, (0.0, spec))[0]:
                    best_by_family[spec.family] = (rate, spec)
            ranked = sorted(best_by_family.values(), key=lambda rs: rs[0], reverse=True)[:2]
            picks[(fs, size)] = [spec for _, spec in ranked]
            plan["uvloop"][f"{fs}/{size}"] = [spec.label for spec in picks[(fs, size)]]
    if "loops" in phases and HAVE_UVLOOP:
        print("phase 2: asyncio vs uvloop", flush=True)
        for rep in range(args.repeats):
            for fs, base, is_tmpfs in targets:
                for size, key in sizes:
                    for spec in picks[(fs, size)]:
                        for loop in (
                            ("asyncio", "uvloop") if rep % 2 == 0 else ("uvloop", "asyncio")
                        ):
                            bench.run(
                                "loops", fs, base, spec, size, count(is_tmpfs, key), rep, loop
                            )

    # Phase 3: latency at ~50% of peak, small messages.  The batched
    # configurations (W=1, the recommended count, plus the best other W)
    # share one rate, half the best W=1 batched peak, so that B is compared
    # under the same load; inline gets half of its own peak.
    lat_specs: dict[str, list[tuple[Spec, float]]] = {}
    for fs, _base, _tmpfs in targets:
        pairs: list[tuple[Spec, float]] = []
        if bench.median(fs, SMALL_SIZE, "inline") > 0:
            pairs.append((Spec("inline"), 0.5 * bench.median(fs, SMALL_SIZE, "inline")))
        batched = [
            s for s in specs if s.family == "batched" and bench.median(fs, SMALL_SIZE, s.label) > 0
        ]
        single = [s for s in batched if s.threads == 1]
        if single:
            rate = 0.5 * max(bench.median(fs, SMALL_SIZE, s.label) for s in single)
            best = max(batched, key=lambda s: bench.median(fs, SMALL_SIZE, s.label))
            pairs += [(Spec("batched", 1, b), rate) for b in (16, 64, 256)]
            pairs.append((Spec("batched", 1, 64, tmpfile=True), rate))
            if best.threads != 1:
                pairs.append((Spec("batched", best.threads, 64), rate))
        lat_specs[fs] = pairs = [(s, r) for s, r in pairs if selected.search(s.label)]
        plan["latency"][fs] = {s.label: round(r, 1) for s, r in pairs}
    if "latency" in phases:
        print("phase 3: enqueue-to-publish latency at 50% of peak (1.5 KB)", flush=True)
        for rep in range(args.repeats):
            for fs, base, _ in targets:
                pairs = lat_specs[fs]
                k = rep % len(pairs) if pairs else 0
                for spec, rate in pairs[k:] + pairs[:k]:
                    n = max(1000, int(rate * args.latency_seconds))
                    bench.run("latency", fs, base, spec, SMALL_SIZE, n, rep, load=Load(rate=rate))
    return plan


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def summarize(bench: Bench) -> dict[str, Any]:
    """Medians per configuration over all runs, and over the runs other processes left alone."""
    threshold = bench.args.foreign_threshold
    groups: dict[tuple[str, str, int, str, str], list[Sample]] = {}
    for s in bench.samples:
        groups.setdefault((s.phase, s.fs, s.size, s.strategy, s.loop), []).append(s)
    rows = []
    for (phase, fs, size, strategy, loop), everything in groups.items():
        group = everything
        clean = clean_or_all(everything, threshold)
        row: dict[str, Any] = {
            "phase": phase,
            "fs": fs,
            "size": size,
            "strategy": strategy,
            "loop": loop,
            "runs": len(everything),
            "clean_runs": sum(is_clean(s, threshold) for s in everything),
            "files": group[0].files,
            "files_per_s_median": round(statistics.median(s.files_per_s for s in group), 1),
            "files_per_s_median_clean_runs": round(
                statistics.median(s.files_per_s for s in clean), 1
            ),
            "files_per_s_runs": [s.files_per_s for s in everything],
            "foreign_cores_runs": [s.foreign_cores for s in everything],
            "cpu_us_per_file_median": round(statistics.median(s.cpu_us_per_file for s in group), 2),
            "sys_us_per_file_median": round(statistics.median(s.sys_us_per_file for s in group), 2),
        }
        if phase == "latency":
            row["target_rate_median"] = round(statistics.median(s.target_rate for s in group), 1)
            for key in ("p50", "p99", "max"):
                row[f"latency_{key}_ms_median"] = round(
                    statistics.median(s.latency_ms[key] for s in group), 3
                )
                row[f"loop_lag_{key}_ms_median"] = round(
                    statistics.median(s.loop_lag_ms[key] for s in group), 3
                )
        rows.append(row)
    return {"rows": rows}


def markdown_tables(summary: dict[str, Any], targets: list[tuple[str, Path, bool]]) -> str:
    rows: list[dict[str, Any]] = summary["rows"]
    fss = [fs for fs, _, _ in targets]
    cols = [(fs, size) for fs in fss for size in (SMALL_SIZE, LARGE_SIZE)]

    def cell(
        fs: str, size: int, strategy: str, loop: str = "asyncio", phase: str = "throughput"
    ) -> dict[str, Any] | None:
        for r in rows:
            if (r["phase"], r["fs"], r["size"], r["strategy"], r["loop"]) == (
                phase,
                fs,
                size,
                strategy,
                loop,
            ):
                return r
        return None

    order: list[str] = []
    for r in rows:
        if r["phase"] == "throughput" and r["strategy"] not in order:
            order.append(r["strategy"])
    head = "| strategy | " + " | ".join(
        f"{fs} {'1.5 KB' if size == SMALL_SIZE else '64 KiB'}" for fs, size in cols
    )
    head += " | " + " | ".join(f"{fs} 1.5 KB, busy loop" for fs in fss)
    out = [
        head + " | CPU µs/file (" + fss[0] + " 1.5 KB) |",
        "|---" * (len(cols) + len(fss) + 2) + "|",
    ]
    for strategy in order:
        cells = []
        for fs, size, phase in [(fs, size, "throughput") for fs, size in cols] + [
            (fs, SMALL_SIZE, "busy") for fs in fss
        ]:
            c = cell(fs, size, strategy, phase=phase)
            runs = c["files_per_s_runs"] if c else []
            mark = " ±" if runs and max(runs) > 1.5 * min(runs) else ""
            cells.append(f"{c['files_per_s_median']:,.0f}{mark}" if c else "-")
        first = cell(fss[0], SMALL_SIZE, strategy)
        cpu = f"{first['cpu_us_per_file_median']:.1f}" if first else "-"
        out.append(f"| {strategy} | " + " | ".join(cells) + f" | {cpu} |")
    out += [
        "",
        "| fs | size | strategy | asyncio files/s | uvloop files/s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["phase"] == "loops" and r["loop"] == "uvloop":
            a = cell(r["fs"], r["size"], r["strategy"], "asyncio", "loops")
            out.append(
                f"| {r['fs']} | {r['size']} | {r['strategy']} | "
                f"{a['files_per_s_median'] if a else 0:,.0f} | {r['files_per_s_median']:,.0f} |"
            )
    out += [
        "",
        "| fs | strategy | paced at files/s | latency p50 ms | p99 ms | max ms"
        " | loop lag p99 ms | max ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["phase"] == "latency":
            out.append(
                f"| {r['fs']} | {r['strategy']} | {r['target_rate_median']:,.0f}"
                f" | {r['latency_p50_ms_median']} | {r['latency_p99_ms_median']}"
                f" | {r['latency_max_ms_median']} | {r['loop_lag_p99_ms_median']} | "
                f"{r['loop_lag_max_ms_median']} |"
            )
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    root = Path(__file__).resolve().parents[3]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--dir",
        action="append",
        required=True,
        type=Path,
        help="directory to benchmark in (repeat for several file systems);"
        " created and removed if absent",
    )
    p.add_argument("--files", type=int, default=20_000, help="1.5 KB files per run on tmpfs")
    p.add_argument("--large-files", type=int, default=5_000, help="64 KiB files per run on tmpfs")
    p.add_argument("--disk-files", type=int, default=5_000, help="1.5 KB files per run elsewhere")
    p.add_argument(
        "--disk-large-files", type=int, default=1_000, help="64 KiB files per run elsewhere"
    )
    p.add_argument(
        "--fsync-files", type=int, default=1_000, help="cap on files per run for fsync variants"
    )
    p.add_argument(
        "--busy-us",
        type=float,
        default=40.0,
        help="phase 1b: pure-Python work per message on the event loop,"
        " standing in for the gRPC receive path",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--cpus",
        default="",
        help="pin the process to these CPUs, e.g. 0 or 0,1 (default: no pinning)",
    )
    p.add_argument(
        "--phases",
        default="throughput,busy,loops,latency",
        help="comma-separated phases to run (loops and latency use the throughput medians)",
    )
    p.add_argument(
        "--only", default="", help="regular expression: run only the strategies whose label matches"
    )
    p.add_argument(
        "--foreign-threshold",
        type=float,
        default=0.3,
        help="other processes' CPU use (cores) above which a run counts as disturbed"
        " (see *_clean_runs in the JSON)",
    )
    p.add_argument(
        "--quiet-budget",
        type=float,
        default=30.0,
        help="total seconds to wait for other processes to go quiet before runs",
    )
    p.add_argument("--queue", type=int, default=1024, help="bound of the asyncio.Queue (items)")
    p.add_argument(
        "--latency-seconds", type=float, default=1.5, help="length of each paced latency run"
    )
    p.add_argument("--out", type=Path, default=root / "benchmarks" / "results" / "writers.json")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    bench = Bench(args)
    if not HAVE_AIOFILES:
        print("aiofiles is not installed: its rows are skipped", flush=True)
    if not HAVE_UVLOOP:
        print("uvloop is not installed: phase 2 is skipped", flush=True)
    created: list[Path] = []
    targets: list[tuple[str, Path, bool]] = []
    facts: dict[str, Any] = {}
    started = time.time()
    host = machine()
    try:
        for d in args.dir:
            if not d.exists():
                d.mkdir(parents=True)
                created.append(d)
            info = fs_info(d)
            label = info.get("type", "unknown")
            while label in [t[0] for t in targets]:
                label += "'"
            targets.append((label, d, info.get("type") == "tmpfs"))
            facts[label] = {"path": str(d), "mount": info, "o_tmpfile": tmpfile_support(d)}
            print(f"{label}: {d} {info} O_TMPFILE={facts[label]['o_tmpfile']}", flush=True)
        plan = run_phases(bench, targets)
    finally:
        for d in created:
            shutil.rmtree(d, ignore_errors=True)
    summary = summarize(bench)
    result = {
        "benchmark": "compare_writers",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {**host, "loadavg_end": os.getloadavg()},
        "filesystems": facts,
        "parameters": {
            k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k == "dir" else v)
            for k, v in vars(args).items()
        },
        "sizes": {"small": SMALL_SIZE, "large": LARGE_SIZE},
        "plan": plan,
        "elapsed_s": round(time.time() - started, 1),
        "summary": summary,
        "samples": [asdict(s) for s in bench.samples],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print()
    print(markdown_tables(summary, targets))
    print(f"\nwrote {args.out} in {result['elapsed_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
