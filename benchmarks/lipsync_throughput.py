"""Lip-sync (MuseTalk 1.5) throughput: frames/s of avatar preparation and of the cached path.

    python benchmarks/lipsync_throughput.py [--size 512x512] [--frames 50] [--seconds 4]
        [--batch-size 8] [--batch-sizes 1 4 8 16] [--device cuda] [--dtype auto|fp32|fp16|bf16]

Calls `LipSyncPipeline` directly, the way `Studio.lipsync` does, on a synthetic clip: N
source frames of the given size (random texture) with one face whose DWPose-style
landmarks are made up per frame (so no DWPose run is needed), and S seconds of a
synthetic voiced signal (a 16 kHz buzz with a syllable-rate envelope) at 25 fps:

1. preparation, `prepare_avatar` (face boxes, 256x256 crops, VAE encode, face parsing,
   blend masks): what a new video costs once;
2. the cached path, `pipe(avatar, audio, settings)` with its frame generator consumed
   (whisper, UNet + VAE decode, paste-back): what every further audio clip costs. The
   video is ping-ponged to the audio's length as in the product; the H.264 encode and
   audio mux of `Studio.lipsync` are not included;
3. the cached path again for each batch size of `--batch-sizes`.

Stage times come from wrapping, in this process only, the functions and modules the
pipeline itself calls (`face_boxes`, `crop_face`, `encode_faces`, `face_large`,
`parser.parse`, `blend_mask`, `audio_prompts`, whisper's encoder, `generate_faces`, the
UNet, `vae.decode`, `paste_face`), so they are the times of the measured run itself, no
second run; 'other' is the rest of the wall time. Each wrapper synchronises the device.

Uses the real lip-sync weights if every file of `dynamictrl.weights.LIPSYNC_WEIGHTS` is in
the weights folder, else tiny random ones from `dynamictrl/testing/musetalk.py` built in a temp
folder (then UNet and VAE numbers say nothing about MuseTalk's networks; the face parser
has the real BiSeNet architecture and whisper the real encoder width and depth). MuseTalk
claims 30 fps+ for the cached path on a V100 (real weights, fp16). Prints numbers; not a
test.
"""

import argparse
import contextlib
import math
import tempfile
import time
from pathlib import Path

from _common import (
    MIB,
    PeakMemory,
    Stopwatch,
    append_results,
    environment,
    markdown_table,
    maxrss_bytes,
    patch_method,
    pick_device,
    print_environment,
    rss_bytes,
    text_table,
)

FPS = 25.0
SAMPLE_RATE = 16000
MUSETALK_CLAIM_FPS = 30.0  # MuseTalk's README: "30fps+ on an NVIDIA Tesla V100" (cached avatar, fp16)
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# Module-level functions `LipSyncPipeline` looks up in its own module at call time.
PIPELINE_FUNCTIONS = ("face_boxes", "crop_face", "face_large", "blend_mask", "paste_face")


# ------------------------------------------------------------------ inputs
def parse_size(text: str) -> tuple[int, int]:
    """'512' or '1280x720' (width x height) -> (width, height)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or WIDTHxHEIGHT, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 64:
        raise argparse.ArgumentTypeError(f"size must be N or WIDTHxHEIGHT with sides >= 64, got {text!r}")
    return values[0], values[1]


def synthetic_frames(count: int, width: int, height: int, seed: int = 0):
    """Random texture with a moving bright block; the content changes no timing here."""
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    frames = np.repeat(base[None], count, axis=0)
    side = max(8, min(width, height) // 16)
    for t in range(count):
        x = (t * 7) % max(1, width - side)
        frames[t, :side, x : x + side] = (230, 180, 150)
    return frames


def face_landmarks_px(x0: float, y0: float, size: float, rng):
    """68 (x, y) pixel points inside the square [x0, x0+size]^2: two corners pinned so the
    extent is exact, the nose bridge (iBUG point 29) in the middle, so MuseTalk's box is
    the square itself (plus the extra margin below)."""
    import numpy as np

    points = np.stack([x0 + rng.uniform(0, size, 68), y0 + rng.uniform(0, size, 68)], axis=1)
    points[0] = (x0, y0)
    points[1] = (x0 + size, y0 + size)
    points[29] = (x0 + size / 2, y0 + size / 2)
    return points


def synthetic_poses(count: int, width: int, height: int, face_fraction: float, seed: int = 0):
    """One confident face per frame, `face_fraction` of the shorter side, drifting sideways."""
    import numpy as np

    from dynamictrl.pose.types import FramePose, PersonPose

    rng = np.random.default_rng(seed)
    size = face_fraction * min(width, height)
    zeros = np.zeros
    poses = []
    for t in range(count):
        x0 = (width - size) / 2 + 0.05 * width * math.sin(2 * math.pi * t / max(count, 1))
        y0 = (height - size) / 2 - 0.05 * height
        face = face_landmarks_px(x0, y0, size, rng) / np.array([width, height])
        person = PersonPose(
            body=zeros((18, 2)),
            body_scores=zeros(18),
            face=face,
            face_scores=np.full(68, 0.9),
            left_hand=zeros((21, 2)),
            left_hand_scores=zeros(21),
            right_hand=zeros((21, 2)),
            right_hand_scores=zeros(21),
        )
        poses.append(FramePose([person], height, width))
    return poses


def synthetic_voice(seconds: float, seed: int = 0):
    """A voiced buzz (120 Hz fundamental + harmonics, light noise) with a 4 Hz syllable envelope."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    voiced = sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    audio = 0.15 * voiced * envelope + 0.005 * rng.standard_normal(t.size)
    return audio.astype(np.float32)


# ------------------------------------------------------------------ weights
def lipsync_weights_state(weights_dir) -> tuple[bool, list[Path]]:
    """(all present, missing files) of the real lip-sync weights in `weights_dir`."""
    from dynamictrl import weights

    missing = []
    for repo, files in weights.LIPSYNC_WEIGHTS.items():
        folder = weights.local_dir_for(repo, weights_dir)
        missing += [folder / name for name in files if not (folder / name).is_file()]
    return not missing, missing


def load_models(args, dtype, tmp: Path):
    from dynamictrl import weights
    from dynamictrl.lipsync.models import MuseTalkModels

    real, missing = lipsync_weights_state(args.weights_dir)
    if real:
        folder = Path(args.weights_dir or weights.default_weights_dir())
        models = MuseTalkModels.from_pretrained(args.weights_dir, dtype=dtype, local_files_only=True)
        return models, f"REAL MuseTalk 1.5 weights from {folder}", True
    from dynamictrl.testing.musetalk import save_tiny_musetalk

    root = save_tiny_musetalk(tmp / "weights")
    models = MuseTalkModels.from_pretrained(root, dtype=dtype, local_files_only=True)
    shown = ", ".join(str(p) for p in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return (
        models,
        (
            f"TINY random test weights of dynamictrl/testing/musetalk.py (real files missing: {shown}): UNet and VAE "
            "times say nothing about MuseTalk's networks; the face parser is the real BiSeNet architecture "
            "and whisper has whisper-tiny's encoder width and depth (random values)"
        ),
        False,
    )


# ------------------------------------------------------------------ instrumentation
class Instruments:
    """Stopwatches around what the pipeline calls (see the module docstring)."""

    def __init__(self, pipe, device: str):
        import dynamictrl.lipsync.pipeline as pipeline_module

        models = pipe.models
        self.watches = {
            name: Stopwatch(device)
            for name in (
                *PIPELINE_FUNCTIONS,
                "encode_faces",
                "parse",
                "audio_prompts",
                "whisper_encoder",
                "generate_faces",
                "unet",
                "vae_decode",
            )
        }
        self._restore = []
        for name in PIPELINE_FUNCTIONS:
            original = getattr(pipeline_module, name)
            setattr(pipeline_module, name, self.watches[name].wrap(original))
            self._restore.append(lambda name=name, original=original: setattr(pipeline_module, name, original))
        for obj, method, watch in (
            (pipe, "encode_faces", "encode_faces"),
            (pipe, "audio_prompts", "audio_prompts"),
            (pipe, "generate_faces", "generate_faces"),
            (models.parser, "parse", "parse"),
            (models.vae, "decode", "vae_decode"),
        ):
            patch_method(obj, method, self.watches[watch])
            self._restore.append(lambda obj=obj, method=method: delattr(obj, method))
        for module, watch in ((models.unet, "unet"), (models.audio.encoder, "whisper_encoder")):
            for handle in self.watches[watch].hook_module(module):
                self._restore.append(handle.remove)

    def reset(self):
        for watch in self.watches.values():
            watch.reset()

    def snapshot(self) -> dict[str, tuple[float, int]]:
        return {name: (watch.seconds, watch.calls) for name, watch in self.watches.items()}

    def close(self):
        for restore in reversed(self._restore):
            restore()
        self._restore = []


@contextlib.contextmanager
def memory(device: str):
    """Host peak (RSS above the start) and, on a GPU, torch's peak allocated memory."""
    host = PeakMemory("cpu")
    gpu = PeakMemory(device) if str(device).startswith("cuda") else None
    with host:
        if gpu is None:
            yield {"host": host}
        else:
            with gpu:
                yield {"host": host, "gpu": gpu}


def best_run(repeats: int, instruments: Instruments, device: str, run):
    """Runs `run()` `repeats` times; (best wall, stage times of that run, peaks over all runs, result)."""
    best = None
    peaks = {"host": 0, "gpu": 0}
    kinds = {}
    for _ in range(repeats):
        instruments.reset()
        with memory(device) as peak:
            start = time.perf_counter()
            result = run()
            wall = time.perf_counter() - start
        for key, meter in peak.items():
            peaks[key] = max(peaks[key], meter.peak)
            kinds[key] = meter.kind
        if best is None or wall < best[0]:
            best = (wall, instruments.snapshot(), result)
    return best[0], best[1], peaks, kinds, best[2]


# ------------------------------------------------------------------ runs
def run_cached(pipe, avatar, audio, settings) -> int:
    frames, report = pipe(avatar, audio, settings)
    count = 0
    for _ in frames:
        count += 1
    if count != report.output_frames:
        raise RuntimeError(f"the pipeline yielded {count} frames, its report says {report.output_frames}")
    return count


def stage_rows(wall: float, frames: int, stages: list[tuple[str, str | None]], times: dict) -> list[list]:
    """Rows: stage, seconds (calls), ms/frame, frames/s (that stage alone), share of the wall."""
    rows = [["total (wall)", f"{wall:.3f}", f"{1000 * wall / frames:.2f}", f"{frames / wall:.1f}", "100%"]]
    top = 0.0
    for label, key in stages:
        if key is None:
            continue
        seconds, calls = times[key]
        nested = label.startswith("  ")
        if not nested:
            top += seconds
        rows.append(
            [
                label,
                f"{seconds:.3f} ({calls})",
                f"{1000 * seconds / frames:.2f}",
                f"{frames / seconds:.1f}" if seconds > 0 else "-",
                f"{100 * seconds / wall:.0f}%",
            ]
        )
    other = wall - top
    rows.append(
        ["other (rest of the wall)", f"{other:.3f}", f"{1000 * other / frames:.2f}", "-", f"{100 * other / wall:.0f}%"]
    )
    return rows


PREP_STAGES = [
    ("face boxes (face_boxes)", "face_boxes"),
    ("256x256 crops (crop_face)", "crop_face"),
    ("VAE encode (encode_faces)", "encode_faces"),
    ("parser crops (face_large)", "face_large"),
    ("face parsing (parser.parse)", "parse"),
    ("blend masks (blend_mask)", "blend_mask"),
]
CACHED_STAGES = [
    ("whisper + windows (audio_prompts)", "audio_prompts"),
    ("  of which whisper encoder", "whisper_encoder"),
    ("UNet + VAE decode (generate_faces)", "generate_faces"),
    ("  of which UNet", "unet"),
    ("  of which VAE decode", "vae_decode"),
    ("paste-back (paste_face)", "paste_face"),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", *DTYPES), help="auto: fp16 on cuda (as the studio), fp32 on cpu"
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=(512, 512),
        metavar="WxH",
        help="frame size, e.g. 512x512 (default) or 1280x720; N means NxN",
    )
    parser.add_argument("--frames", type=int, default=50, help="source video frames (the avatar)")
    parser.add_argument("--seconds", type=float, default=4.0, help="audio length; output frames = seconds * 25")
    parser.add_argument("--face-fraction", type=float, default=0.4, help="face size / shorter frame side")
    parser.add_argument("--batch-size", type=int, default=8, help="batch of the main runs (the product default)")
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[1, 4, 8, 16],
        help="batch sizes of the cached-path sweep (default: 1 4 8 16)",
    )
    parser.add_argument("--no-sweep", action="store_true", help="skip the batch-size sweep")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per measurement; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--weights-dir", default=None, help="folder holding the lip-sync weights (default: weights/)")
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.seconds * FPS < 1 or args.repeats < 1 or args.batch_size < 1:
        parser.error("--frames, --repeats and --batch-size must be >= 1 and --seconds must give >= 1 frame")
    if not 0.05 <= args.face_fraction <= 0.9:
        parser.error("--face-fraction must be within 0.05..0.9")
    if any(b < 1 for b in args.batch_sizes):
        parser.error("--batch-sizes must be >= 1")

    import torch

    from dynamictrl.lipsync.cache import AvatarCache
    from dynamictrl.lipsync.pipeline import LipSyncPipeline
    from dynamictrl.lipsync.settings import LipSyncSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cuda = device.startswith("cuda")
    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype != "auto" else (torch.float16 if cuda else torch.float32)
    env = environment(device)
    print_environment(env)

    width, height = args.size
    with tempfile.TemporaryDirectory(prefix="lipsync-bench-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        models, description, real = load_models(args, dtype, tmp)
        models.to(device)
        load_seconds = time.perf_counter() - start
        loaded_rss = rss_bytes()

        banner = "=" * 100
        print(banner)
        print(f"WEIGHTS: {description}")
        print(banner)
        pipe = LipSyncPipeline(models)
        parser_dtype = next(models.parser.net.parameters()).dtype
        print(f"loaded in {load_seconds:.1f} s; UNet/VAE/whisper {dtype}, face parser {parser_dtype}, on {device}")

        frames = synthetic_frames(args.frames, width, height)
        poses = synthetic_poses(args.frames, width, height, args.face_fraction)
        audio = synthetic_voice(args.seconds)
        settings = LipSyncSettings(batch_size=args.batch_size)
        instruments = Instruments(pipe, device)

        # Warm-up: first calls (allocator, cuDNN/oneDNN kernel choice) of both paths on one batch.
        warm = min(args.frames, args.batch_size)
        warm_avatar = pipe.prepare_avatar(frames[:warm], FPS, poses[:warm], settings)
        run_cached(pipe, warm_avatar, audio[: int(SAMPLE_RATE * warm / FPS) + 1], settings)
        del warm_avatar

        prep_wall, prep_times, prep_peak, kinds, avatar = best_run(
            args.repeats, instruments, device, lambda: pipe.prepare_avatar(frames, FPS, poses, settings)
        )
        face_side = avatar.boxes[0].width
        print(f"preparation: {args.frames} frames in {prep_wall:.2f} s = {args.frames / prep_wall:.1f} frames/s")

        output_frames = math.floor(len(audio) / SAMPLE_RATE * FPS)
        cached_wall, cached_times, cached_peak, _, count = best_run(
            args.repeats, instruments, device, lambda: run_cached(pipe, avatar, audio, settings)
        )
        assert count == output_frames, (count, output_frames)
        print(f"cached path: {count} frames in {cached_wall:.2f} s = {count / cached_wall:.1f} frames/s")

        sweep = []
        for batch_size in [] if args.no_sweep else args.batch_sizes:
            swept = LipSyncSettings(batch_size=batch_size)
            run_cached(pipe, avatar, audio[: int(SAMPLE_RATE * batch_size / FPS) + 1], swept)  # this batch's warm-up
            wall, times, peak, _, _ = best_run(
                args.repeats, instruments, device, lambda s=swept: run_cached(pipe, avatar, audio, s)
            )
            sweep.append((batch_size, wall, times, peak))
            print(f"  batch {batch_size:3d}: {count / wall:7.1f} frames/s")

        # The avatar cache on disk: what a later process pays instead of the preparation.
        cache_dir = tmp / "avatars"
        start = time.perf_counter()
        AvatarCache(cache_dir).put("bench", avatar)
        save_seconds = time.perf_counter() - start
        start = time.perf_counter()
        loaded = AvatarCache(cache_dir).get("bench", lambda: (frames, FPS))
        load_cache_seconds = time.perf_counter() - start
        assert loaded is not None and loaded.latents.shape == avatar.latents.shape
        disk_bytes = sum(p.stat().st_size for p in (cache_dir / "bench").iterdir())
        instruments.close()

    latents_bytes = avatar.latents.numel() * avatar.latents.element_size()
    masks_bytes = sum(m.nbytes for m in avatar.masks if m is not None)
    frames_bytes = frames.nbytes
    process_peak = maxrss_bytes()

    run = (
        f"{width}x{height} frames ({args.frames} source frames, face box ~{face_side} px wide), "
        f"{args.seconds:g} s of synthetic voiced audio at {FPS:g} fps = {output_frames} output frames "
        f"(ping-pong), batch {args.batch_size}, {dtype} (face parser {parser_dtype}), "
        f"best of {args.repeats} after one warm-up batch (per batch size)"
    )
    prep_rows = stage_rows(prep_wall, args.frames, PREP_STAGES, prep_times)
    cached_rows = stage_rows(cached_wall, output_frames, CACHED_STAGES, cached_times)
    header = ["stage", "s (calls)", "ms/frame", "frames/s", "share"]

    sweep_header = [
        "batch",
        "wall s",
        "frames/s",
        "x realtime",
        "whisper s",
        "UNet+VAE ms/frame",
        "paste ms/frame",
        "host peak MiB",
    ] + (["CUDA peak MiB"] if cuda else [])
    sweep_rows = []
    for batch_size, wall, times, peak in sweep:
        row = [
            batch_size,
            f"{wall:.3f}",
            f"{output_frames / wall:.1f}",
            f"{output_frames / wall / FPS:.2f}x",
            f"{times['audio_prompts'][0]:.3f}",
            f"{1000 * times['generate_faces'][0] / output_frames:.2f}",
            f"{1000 * times['paste_face'][0] / output_frames:.2f}",
            f"{peak['host'] / MIB:.0f}",
        ]
        if cuda:
            row.append(f"{peak['gpu'] / MIB:.0f}")
        sweep_rows.append(row)

    memory_header = ["what", "MiB"]
    memory_rows = [
        ["process peak RSS (ru_maxrss, whole run incl. model load)", f"{process_peak / MIB:.0f}"],
        ["RSS after imports + model load", f"{loaded_rss / MIB:.0f}"],
        ["preparation: host peak above start", f"{prep_peak['host'] / MIB:.0f}"],
        ["cached path: host peak above start", f"{cached_peak['host'] / MIB:.0f}"],
    ]
    if cuda:
        memory_rows += [
            ["preparation: CUDA max_memory_allocated", f"{prep_peak['gpu'] / MIB:.0f}"],
            ["cached path: CUDA max_memory_allocated", f"{cached_peak['gpu'] / MIB:.0f}"],
        ]
    memory_rows += [
        ["source frames (uint8, held by the avatar)", f"{frames_bytes / MIB:.1f}"],
        ["avatar latents + blend masks (in memory)", f"{(latents_bytes + masks_bytes) / MIB:.1f}"],
        [f"avatar on disk (save {save_seconds:.2f} s, load {load_cache_seconds:.2f} s)", f"{disk_bytes / MIB:.1f}"],
    ]

    fps_cached = output_frames / cached_wall
    claim = (
        f"MuseTalk claims {MUSETALK_CLAIM_FPS:g} fps+ for the cached path on a V100 (real weights, fp16); "
        f"this run: {fps_cached:.1f} frames/s on {env['device']}, {dtype}"
        + ("." if real else ", TINY weights: not comparable with the claim.")
    )
    notes = [
        f"weights: {description}.",
        f"run: {run}; model load {load_seconds:.1f} s.",
        "ms/frame and frames/s of a stage divide its time by all frames of the run (frames/s = if that stage "
        "alone ran); nested rows ('of which') are part of the row above; whisper runs once per call on whole 30 s "
        "segments, so its per-frame cost shrinks with longer audio.",
        f"host peak memory: {kinds.get('host', '')}; CUDA: max_memory_allocated.",
        claim,
    ]
    print()
    print("\n".join(notes))
    print(f"\npreparation (prepare_avatar), {args.frames} frames:")
    print(text_table(header, prep_rows))
    print(f"\ncached path (pipe(avatar, audio) consumed), {output_frames} frames:")
    print(text_table(header, cached_rows))
    if sweep_rows:
        print("\ncached path, batch-size sweep:")
        print(text_table(sweep_header, sweep_rows))
    print("\nmemory:")
    print(text_table(memory_header, memory_rows))

    if not args.no_results:
        body = [f"- {note}" for note in notes]
        body += ["", f"Preparation (`prepare_avatar`), {args.frames} frames:", "", markdown_table(header, prep_rows)]
        body += [
            "",
            f"Cached path (`pipe(avatar, audio, settings)` consumed), {output_frames} frames:",
            "",
            markdown_table(header, cached_rows),
        ]
        if sweep_rows:
            body += ["", "Cached path, batch-size sweep:", "", markdown_table(sweep_header, sweep_rows)]
        body += ["", "Memory:", "", markdown_table(memory_header, memory_rows)]
        title = f"lipsync_throughput ({'real' if real else 'tiny'} weights, {width}x{height})"
        path = append_results(title, env, "\n".join(body))
        print(f"\nappended to {path}")


if __name__ == "__main__":
    main()
