"""Host-memory cost of loading the DynamiCtrl transformer through the model manager, and
of swapping it for a mask variant.

    python benchmarks/load_memory.py [--gb 2] [--dtype fp32|bf16] [--tmp DIR] [--keep]

Writes a random ~2 GB `DynamiCtrlTransformerModel` (width and depth scaled from the
CogVideoX-1.5 config) with `save_pretrained` into a temp weights folder in the hub layouts:
`DynamiCtrl/{tokenizer,text_encoder,vae,scheduler}` (the tiny test parts) plus
`DynamiCtrl/transformer`, and a second transformer as `Dynamictrl-Mask_B01` at the root.
Then, each in a FRESH subprocess (so ru_maxrss starts clean):

1. load: `DynamiCtrlModels(ModelManager("cpu"), "gulucaptain/DynamiCtrl", weights_dir=tmp).pipeline(None)`;
   peak RSS (kernel high-water mark) minus the RSS just before the call, against the
   transformer's safetensors size. Target: <= 1.2x.
2. swap: load the base, drop the caller's pipeline, then `.pipeline("mask_background")`;
   time and peak RSS during the swap.
3. swap while the caller still holds the old pipeline object (what a UI that keeps a
   reference would see).

`--dtype fp32` (default) writes fp32 and loads with torch_dtype=None; `--dtype bf16` writes
bf16 and loads with torch_dtype=bfloat16 (the released files and the studio's CUDA path);
`--dtype bf16 --load-dtype fp32` loads a bf16 file as fp32 (the released files on the
studio's CPU path, dtype "auto"). The files are read from the page cache (just written), so the
times are not disk times. Temp files are deleted at the end unless `--keep`.
It prints numbers; it is not a test.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    GIB,
    append_results,
    environment,
    markdown_table,
    print_environment,
    text_table,
)

TARGET = 1.2
HERE = Path(__file__).resolve().parent


def big_config(target_bytes: float, bytes_per_param: int) -> tuple[dict, int]:
    """A CogVideoX-1.5-like config (heads x 64, time_embed 512, text 32 for the tiny T5)
    whose parameter count lands near target_bytes; returns (config, params)."""
    from dynamictrl.testing.models import TRANSFORMER_CONFIG

    heads = 24  # width 1536 (the real model: 48 heads = 3072)
    width, time_dim = heads * 64, 512
    per_block = 12 * width * width + 9 * width + 15 * time_dim * width + 9 * width  # qkvo, ff(4x), norms, PadaLN
    layers = max(1, round(target_bytes / bytes_per_param / per_block))
    config = dict(
        TRANSFORMER_CONFIG,
        num_attention_heads=heads,
        attention_head_dim=64,
        num_layers=layers,
        time_embed_dim=time_dim,
        ofs_embed_dim=time_dim,
        text_embed_dim=32,
        patch_bias=False,
    )
    return config, layers * per_block


def write_weights(root: Path, config: dict, dtype, shard_gb: float | None = None) -> dict:
    """Tiny shared parts + the big transformer twice (base, Mask_B01). Returns file sizes."""
    import torch

    from dynamictrl.models import DynamiCtrlTransformerModel
    from dynamictrl.testing.models import save_shared_parts

    base = save_shared_parts(root / "DynamiCtrl")

    # Built on the meta device and filled in place: no 2 GB of default init, no second copy.
    with torch.device("meta"):
        model = DynamiCtrlTransformerModel(**config)
    model = model.to_empty(device="cpu").to(dtype)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.normal_(0.0, 0.02, generator=generator)
    sizes = {}
    for folder in (base / "transformer", root / "Dynamictrl-Mask_B01"):
        model.save_pretrained(folder, **({} if shard_gb is None else {"max_shard_size": f"{int(shard_gb * 1000)}MB"}))
        sizes[folder.relative_to(root).as_posix()] = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    del model
    return sizes


# ------------------------------------------------------------------ child process
def child(mode: str, weights_dir: str, dtype_name: str) -> None:
    """One measurement in a fresh interpreter; prints one JSON line."""
    import gc

    import torch
    from _common import hwm_bytes, maxrss_bytes, reset_hwm, rss_bytes

    import dynamictrl.pipeline  # noqa: F401  (imports before the baseline)
    from dynamictrl.manager import DynamiCtrlModels, ModelManager

    torch_dtype = {"fp32": None, "bf16": torch.bfloat16}[dtype_name]

    def status_kb(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return None

    def peak_since_reset(hwm_ok):
        return hwm_bytes() if hwm_ok else maxrss_bytes()

    def touch(module):
        """Reads every weight once (as a first forward would): mmap'd pages become resident."""
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                torch.sum(tensor)

    manager = ModelManager(device="cpu")
    models = DynamiCtrlModels(manager, "gulucaptain/DynamiCtrl", weights_dir=weights_dir, torch_dtype=torch_dtype)
    gc.collect()
    result = {"mode": mode}
    rss0 = rss_bytes()
    hwm_ok = reset_hwm() and hwm_bytes() is not None
    result["peak_source"] = "VmHWM after reset" if hwm_ok else "ru_maxrss"
    start = time.perf_counter()
    pipe = models.pipeline(None)
    result["load_s"] = time.perf_counter() - start
    result["load_peak"] = peak_since_reset(hwm_ok) - rss0
    result["after_load"] = rss_bytes() - rss0
    start = time.perf_counter()
    touch(pipe.transformer)
    result["touch_s"] = time.perf_counter() - start
    result["touch_peak"] = peak_since_reset(hwm_ok) - rss0
    result["after_touch"] = rss_bytes() - rss0
    result["after_touch_anon"] = status_kb("RssAnon")
    result["after_touch_file"] = status_kb("RssFile")
    result["model_bytes"] = sum(p.numel() * p.element_size() for p in pipe.transformer.parameters())
    result["dtype"] = str(pipe.transformer.dtype)
    if mode in ("swap", "swap_hold"):
        if mode == "swap":
            del pipe  # the studio drops its pipeline when the job ends
        gc.collect()
        rss1 = rss_bytes()
        hwm_ok = reset_hwm() and hwm_bytes() is not None
        start = time.perf_counter()
        masked = models.pipeline("mask_background")
        result["swap_s"] = time.perf_counter() - start
        touch(masked.transformer)
        peak = peak_since_reset(hwm_ok) if hwm_ok else None
        result["swap_peak_over_before_swap"] = None if peak is None else peak - rss1
        result["swap_peak_over_start"] = None if peak is None else peak - rss0
        result["after_swap"] = rss_bytes() - rss0
        loaded = [row["name"] for row in manager.status() if row["loaded"]]
        result["loaded_after_swap"] = loaded
    print("RESULT " + json.dumps(result), flush=True)


def measure(mode: str, weights_dir: Path, dtype_name: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            mode,
            "--weights-dir",
            str(weights_dir),
            "--load-dtype",
            dtype_name,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(HERE),
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"child {mode} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def gb(value) -> str:
    return "-" if value is None else f"{max(value, 0) / GIB:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=2.0, help="target transformer file size in GB (1e9 bytes)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="dtype of the written file")
    parser.add_argument(
        "--load-dtype",
        default=None,
        choices=("fp32", "bf16"),
        help="torch_dtype of the load (default: the file's; fp32 loads with torch_dtype=None, as "
        "the studio does on the CPU)",
    )
    parser.add_argument(
        "--shard-gb",
        type=float,
        default=None,
        help="max safetensors shard size in GB (default: diffusers' 10GB, i.e. one file)",
    )
    parser.add_argument("--tmp", default=None, help="parent folder of the temp weights (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the temp weights")
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--weights-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        child(args.child, args.weights_dir, args.load_dtype)
        return
    args.load_dtype = args.load_dtype or args.dtype

    import torch

    env = environment("cpu")
    env["device"] = "cpu (host memory; loading never touches a GPU)"
    print_environment(env)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    bytes_per_param = 4 if args.dtype == "fp32" else 2
    config, _params = big_config(args.gb * 1e9, bytes_per_param)

    tmp = Path(tempfile.mkdtemp(prefix="dynamictrl-load-", dir=args.tmp))
    try:
        start = time.perf_counter()
        sizes = write_weights(tmp, config, dtype, args.shard_gb)
        shards = len(list((tmp / "DynamiCtrl" / "transformer").glob("*.safetensors")))
        file_size = sizes["DynamiCtrl/transformer"]
        print(
            f"wrote {len(sizes)} transformers of {file_size / GIB:.2f} GiB ({args.dtype}, "
            f"{config['num_layers']} blocks x {config['num_attention_heads'] * 64} wide, {shards} shard(s)) into {tmp} "
            f"in {time.perf_counter() - start:.1f} s"
        )
        results = {}
        for mode in ("load", "swap", "swap_hold"):
            start = time.perf_counter()
            results[mode] = measure(mode, tmp, args.load_dtype)
            print(f"  {mode}: done in {time.perf_counter() - start:.1f} s (fresh subprocess)")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    load = results["load"]
    ratio = load["touch_peak"] / file_size
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    header = ["measurement", "seconds", "peak GiB", "peak / file", "RSS after GiB", "notes"]
    rows = [
        [
            "load base (pipeline(None))",
            f"{load['load_s']:.2f}",
            gb(load["load_peak"]),
            f"{load['load_peak'] / file_size:.2f}x",
            gb(load["after_load"]),
            "weights not read yet",
        ],
        [
            "load base + read every weight once",
            f"{load['load_s'] + load['touch_s']:.2f}",
            gb(load["touch_peak"]),
            f"{ratio:.2f}x",
            gb(load["after_touch"]),
            f"process RSS then: anon {gb(load['after_touch_anon'])} / file-backed {gb(load['after_touch_file'])} GiB",
        ],
    ]
    for mode, label in (
        ("swap", "swap base -> mask_background (+ read)"),
        ("swap_hold", "same, old pipeline still referenced"),
    ):
        r = results[mode]
        over = r["swap_peak_over_before_swap"]
        total = r["swap_peak_over_start"]
        total_ratio = "-" if total is None else f"{total / file_size:.2f}x"
        rows.append(
            [
                label,
                f"{r['swap_s']:.2f}",
                gb(over),
                "-" if over is None else f"{max(over, 0) / file_size:.2f}x",
                gb(r["after_swap"]),
                (
                    f"peak over pre-load RSS {gb(total)} GiB ({total_ratio}); "
                    f"loaded after: {', '.join(n.split('.')[-1] for n in r['loaded_after_swap'])}"
                ),
            ]
        )
    print()
    print(text_table(header, rows))
    print(
        f"\ntransformer file: {file_size / GIB:.3f} GiB ({file_size:,} bytes); model in memory "
        f"{load['model_bytes'] / GIB:.3f} GiB ({load['dtype']}); peak source: {load['peak_source']}"
    )
    print(
        f"load peak (load + read every weight) / file size = {ratio:.2f}x -> {verdict} (target <= {TARGET}x); "
        f"/ size in memory = {load['touch_peak'] / load['model_bytes']:.2f}x"
    )

    if not args.no_results:
        body = "\n".join(
            [
                (
                    f"Random transformer ({config['num_layers']} blocks x {config['num_attention_heads'] * 64} wide, "
                    f"{args.dtype} file {file_size / GIB:.2f} GiB in {shards} shard(s), loaded as {load['dtype']}) in the "
                    "hub layouts with the tiny T5/VAE; each row in a fresh subprocess through "
                    "`DynamiCtrlModels(ModelManager('cpu'), ...)`. Peak = peak RSS (VmHWM, reset before the step) minus "
                    "RSS just before the step; files in the page cache. 'read every weight' sums each parameter once, as "
                    "a first forward or `.to(cuda)` would; the swap rows include that read of the new transformer; seconds "
                    "of the swap rows are the `pipeline(...)` call only."
                ),
                "",
                markdown_table(header, rows),
                "",
                (
                    f"**Load peak (load + read every weight) / file size = {ratio:.2f}x -> {verdict}** "
                    f"(target <= {TARGET}x); peak / transformer size in memory ({load['model_bytes'] / GIB:.2f} GiB, "
                    f"{load['dtype']}) = {load['touch_peak'] / load['model_bytes']:.2f}x."
                ),
            ]
        )
        path = append_results(f"load_memory ({args.dtype} file, {args.load_dtype} load)", env, body)
        print(f"\nappended to {path}")


if __name__ == "__main__":
    main()
