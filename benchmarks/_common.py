"""Shared helpers of the benchmarks: device, timing, memory, machine description, and
appending a dated section to `benchmarks/RESULTS.md`. Not a test helper; not imported by
the product."""

import datetime
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
RESULTS_HEADER = """# Benchmark results

Sections are appended by the scripts in `benchmarks/` (newest last). Each names the
machine, device and package versions it ran on; numbers from different machines are not
comparable. Re-run a script to add a section; do not edit old ones.
"""

try:  # the benchmarks measure the installed package; the tiny models come from dynamictrl.testing
    import dynamictrl  # noqa: F401
except ModuleNotFoundError:
    raise SystemExit(
        "the benchmarks need the dynamictrl package: run `pip install -e .` in the repository root "
        "(or prefix the command with PYTHONPATH=.)"
    ) from None

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # benchmarks never download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GIB = 1024**3
MIB = 1024**2


# ------------------------------------------------------------------ device
def pick_device(requested: str | None = None) -> str:
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------ memory
def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def maxrss_bytes() -> int:
    """Peak RSS of this process so far (getrusage ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def hwm_bytes() -> int | None:
    """VmHWM (peak RSS, resettable with `reset_hwm`), or None where /proc lacks it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_hwm() -> bool:
    """Resets the kernel's peak-RSS mark (Linux >= 4.0: `echo 5 > /proc/self/clear_refs`)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Samples RSS in a thread: a peak that needs no kernel support (may miss short spikes)."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self.peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


class PeakMemory:
    """Peak memory of a block: CUDA max_memory_allocated on a GPU, peak RSS above the RSS
    at entry on the CPU (VmHWM after a reset, else a sampling thread)."""

    def __init__(self, device: str):
        self.device = str(device)
        self.peak = 0  # bytes above the start (CPU) or allocated peak (CUDA)
        self.kind = ""

    def __enter__(self):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.kind = "cuda max_memory_allocated"
        else:
            self.start = rss_bytes()
            self.hwm = reset_hwm() and hwm_bytes() is not None
            self.kind = "peak RSS - RSS at start" + (" (VmHWM)" if self.hwm else " (sampled)")
            self.sampler = None if self.hwm else RssSampler().__enter__()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        elif self.hwm:
            self.peak = hwm_bytes() - self.start
        else:
            self.sampler.__exit__()
            self.peak = self.sampler.peak - self.start


# ------------------------------------------------------------------ timing
class Stopwatch:
    """Accumulates time spent inside (possibly nested, re-entrant) calls."""

    def __init__(self, device: str):
        self.device = device
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0
        self._start = 0.0

    def start(self):
        if self._depth == 0:
            sync(self.device)
            self._start = time.perf_counter()
        self._depth += 1

    def stop(self):
        self._depth -= 1
        if self._depth == 0:
            sync(self.device)
            self.seconds += time.perf_counter() - self._start
            self.calls += 1

    def reset(self):
        self.seconds, self.calls, self._depth = 0.0, 0, 0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            self.start()
            try:
                return fn(*args, **kwargs)
            finally:
                self.stop()

        timed.__wrapped__ = fn
        return timed

    def hook_module(self, module):
        """Forward pre/post hooks (the post hook runs `always_call`, also on exceptions)."""
        pre = module.register_forward_pre_hook(lambda m, args: self.start())
        post = module.register_forward_hook(lambda m, args, out: self.stop(), always_call=True)
        return pre, post


def patch_method(obj, name: str, stopwatch: Stopwatch) -> None:
    """Times `obj.name(...)` by shadowing it with an instance attribute."""
    setattr(obj, name, stopwatch.wrap(getattr(obj, name)))


# ------------------------------------------------------------------ machine + results
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_busy_fraction(seconds: float = 0.5) -> float:
    """Fraction of all cores busy over `seconds` while this process sleeps (= other load)."""

    def snapshot():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values), idle

    try:
        total0, idle0 = snapshot()
        time.sleep(seconds)
        total1, idle1 = snapshot()
    except OSError:
        return float("nan")
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def ram_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return float("nan")


def device_description(device: str) -> str:
    import torch

    if str(device).startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{device}: {props.name}, {props.total_memory / GIB:.1f} GiB"
    return f"cpu ({torch.get_num_threads()} torch threads)"


def environment(device: str) -> dict:
    import diffusers
    import torch
    import transformers

    busy = cpu_busy_fraction()
    note = " (BUSY: other processes use the CPU; timings are noisy)" if busy > 0.25 else ""
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {ram_gib():.1f} GiB RAM; CPU busy at start "
        f"{100 * busy:.0f}%{note}",
        "device": device_description(device),
        "packages": f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}, python {platform.python_version()}",
    }


def print_environment(env: dict) -> None:
    for key, value in env.items():
        print(f"{key:9s}: {value}")
    print()


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(row) for row in cells[1:]]
    return "\n".join(lines)


def append_results(title: str, env: dict, body: str, command: str | None = None) -> Path:
    """Appends `## title (date)` with the environment and `body` (markdown) to RESULTS.md."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if not RESULTS.exists():
        RESULTS.write_text(RESULTS_HEADER)
    command = command or "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    section = [
        "",
        f"## {title} ({env['date']})",
        "",
        f"- command: `{command}`",
        f"- machine: {env['machine']}",
        f"- device: {env['device']}",
        f"- packages: {env['packages']}",
        "",
        body.rstrip(),
        "",
    ]
    with RESULTS.open("a") as f:
        f.write("\n".join(section))
    return RESULTS
