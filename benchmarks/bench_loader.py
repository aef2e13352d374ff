"""Loader throughput and memory on the HowTo100M layout (SPEC §6), read by the real training pipeline.

Writes a synthetic set in the field's exact layout — per video ``{id}_2d.npz`` / ``{id}_3d.npz`` (key
``features``, (T, 2048) at 1 and 1.5 features / s), ``{id}_spec.npz`` (key ``arr_0``, (40, F) at 100
frames / s), ``caption.pickle`` (one ASR segment every ~4 s) and the CSV — at a realistic length per
video (``--seconds``, default 390 s: HowTo100M's 134,472 h over 1.22 M videos is 6.6 min a video), then
reads it exactly as ``multisk train`` does (``build_train_dataset`` of the paper configuration,
``ResumableBatchSampler``, the dataset's collate, ``DataLoader`` with ``num_workers`` 0/1/2) and prints:

* clips/s for each worker count, and per worker;
* for the raw layout read whole (``memory_map=False``) and memory-mapped (the default for ``np.savez``
  files): bytes read per clip (whole: ``/proc/self/io`` ``rchar``, workers 0; mapped: the 4 KiB file
  pages the clips' slices cover, each counted once per video) and where the time of a clip goes (npz
  reading = open + zip + decompression + array copy, or, mapped, open + zip directory + headers;
  validation = float32 cast + finiteness check of whole files; clip assembly = clip sampling + word
  vectors + tensors, and, mapped, the page reads and checks of the clip's rows; collate);
* resident memory (RSS and PSS, ``/proc/PID/smaps_rollup``) of the main process and of each worker for
  growing numbers of videos in the CSV (it must stay flat: captions and paths are packed arrays);
* the projection: workers per GPU needed to feed 7,000 clips/s (a ≤ 310 ms step of 2,160 clips on an
  H100), and the disk bandwidth that implies;
* the same for the converted feature store (``multisk data convert howto100m``: fixed clips in
  memory-mapped arrays), so both can be compared.

Only ``--distinct`` videos are real files; the others are hard links to them, so the disk holds
``distinct`` videos and the page cache serves the reads: the figures are the CPU cost of the format,
and the printed bandwidth is what a disk (or network file system) would have to add.

    python benchmarks/bench_loader.py --videos 2000 [--seconds 390] [--distinct 16] [--batches 6]
    python benchmarks/bench_loader.py --quick            # seconds: the CI smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from torch.utils.data import DataLoader

from common import format_machine, machine_description
from multisk.config import load_config
from multisk.data.formats import howto100m
from multisk.data.formats.convert import convert_dataset
from multisk.train.datasets_for_config import build_train_dataset, collate_fn_for, loader_options
from multisk.train.sampling import ResumableBatchSampler

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "paper" / "howto100m_resnet_tva.yaml"
TARGET_CLIPS_PER_S = 7000  # 2,160 clips in <= 310 ms on one H100 (issue 21)
WORDS = [f"w{i}" for i in range(2000)]
WORD_DIM = 300
PAGE = 4096


# ------------------------------------------------------------------------------------------ data set
def write_layout(root: Path, videos: int, distinct: int, seconds: int, compressed: bool) -> Dict[str, Path]:
    """The HowTo100M files for ``videos`` videos (``distinct`` real ones, the rest hard links)."""
    from gensim.models import KeyedVectors

    rng = np.random.default_rng(0)
    kv = KeyedVectors(WORD_DIM)
    kv.add_vectors(WORDS, rng.standard_normal((len(WORDS), WORD_DIM)).astype(np.float32))
    vectors = root / "vectors.bin"
    kv.save_word2vec_format(str(vectors), binary=True)
    features, audio = root / "features", root / "audio"
    save = np.savez_compressed if compressed else np.savez
    paths, captions = [], {}
    for i in range(videos):
        rel = f"task{i % 97:02d}/vid{i:06d}"
        vid = rel.split("/")[-1]
        (features / rel).mkdir(parents=True, exist_ok=True)
        (audio / rel).mkdir(parents=True, exist_ok=True)
        names = [features / rel / f"{vid}_2d.npz", features / rel / f"{vid}_3d.npz", audio / rel / f"{vid}_spec.npz"]
        if i < distinct:
            save(names[0], features=rng.standard_normal((seconds, 2048)).astype(np.float32))
            save(names[1], features=rng.standard_normal((int(seconds * 1.5), 2048)).astype(np.float32))
            save(names[2], rng.standard_normal((40, seconds * 100)).astype(np.float32))
        else:
            source = f"task{(i % distinct) % 97:02d}/vid{i % distinct:06d}"
            src = [features / source / f"vid{i % distinct:06d}_2d.npz", features / source / f"vid{i % distinct:06d}_3d.npz",
                   audio / source / f"vid{i % distinct:06d}_spec.npz"]
            for s, d in zip(src, names):
                os.link(s, d)
        starts = np.arange(0.0, seconds - 4.0, 4.0)
        captions[vid] = {"start": starts, "end": starts + 3.5,
                         "text": np.array([" ".join(rng.choice(WORDS, 6)) for _ in starts], dtype=object)}
        paths.append(rel)
    with open(root / "caption.pickle", "wb") as fh:
        pickle.dump(captions, fh)
    return {"features": features, "audio": audio, "captions": root / "caption.pickle", "vectors": vectors,
            "paths": paths}


def write_csv(root: Path, paths: List[str], count: int) -> Path:
    csv = root / f"videos_{count}.csv"
    csv.write_text("path\n" + "\n".join(paths[:count]) + "\n", encoding="utf-8")
    return csv


def howto_config(layout: Dict[str, Any], csv: Path, batch_videos: int, workers: int):
    return load_config(PAPER, [
        f"data.howto_csv={csv}", f"data.howto_features_path={layout['features']}",
        f"data.howto_audio_path={layout['audio']}", f"data.howto_caption_path={layout['captions']}",
        f"data.word_vectors={layout['vectors']}", f"train.batch_size={batch_videos}",
        f"data.num_workers={workers}", "data.eval_splits=[]", "data.val_split=null", "model.prior.enabled=false",
    ])


def store_config(root: Path, batch_items: int, workers: int):
    return load_config(PAPER, [
        "data.train_format=store", f"data.root={root}", "data.train_split=train", "data.modality_map.text=text",
        f"train.batch_size={batch_items}", f"data.num_workers={workers}", "data.eval_splits=[]",
        "data.val_split=null", "model.prior.enabled=false", f"model.text_dim={WORD_DIM}",
    ])


# ---------------------------------------------------------------------------------------- measuring
def _children(pid: int) -> List[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def memory_mib(pid: int) -> Dict[str, float]:
    """RSS and PSS of a process in MiB (``smaps_rollup``)."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key.lower()] = int(rest.split()[0]) / 1024
    return values


def read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def run_loader(cfg, dataset, batches: int) -> Dict[str, Any]:
    """Iterate ``batches`` global batches as the trainer does; clips/s after the first batch, memory of
    the main process and of each worker sampled mid-run."""
    sampler = ResumableBatchSampler(len(dataset), cfg.train.batch_size, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn_for(dataset),
                        **loader_options(cfg, "cpu"))
    clips, start, memory, io_start = 0, None, None, read_bytes()
    for b, batch in enumerate(loader):
        if b == 0:
            start, io_start = time.perf_counter(), read_bytes()
        else:
            clips += int(batch["video"].shape[0])
        if b == batches // 2 or memory is None and b == batches:
            memory = {"main": memory_mib(os.getpid()),
                      "workers": [memory_mib(p) for p in _children(os.getpid()) if Path(f"/proc/{p}").exists()]}
        if b >= batches:
            break
    elapsed = time.perf_counter() - start
    # read() bytes of this process: the files' bytes without workers (with workers it would count the pipes)
    per_clip = (read_bytes() - io_start) / max(clips, 1) if cfg.data.num_workers == 0 else None
    return {"clips": clips, "seconds": elapsed, "clips_per_s": clips / elapsed, "memory": memory,
            "bytes_per_clip": per_clip}


def breakdown(dataset, batches: int, batch_videos: int) -> Dict[str, float]:
    """Seconds per clip spent in each phase (one process): npz reading, validation, assembly, collate."""
    spent = {"npz_read": 0.0, "validate": 0.0, "collate": 0.0}
    real_load, real_check = howto100m.load_npz_array, howto100m.check_array

    def timed_check(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real_check(*args, **kwargs)
        finally:
            spent["validate"] += time.perf_counter() - t0

    def timed_load(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real_load(*args, **kwargs)
        finally:
            spent["npz_read"] += time.perf_counter() - t0

    pages: set = set()
    real_rows = howto100m.VideoFeatures.rows

    def counted_rows(self, kind, rows):
        # the file pages a clip's slice covers (each page counted once per video and file): one run of
        # rows for the (T, 2048) features, one run per mel bin for the (40, F) spectrogram (its rows)
        mapped = {"2d": self.features_2d, "3d": self.features_3d, "audio": self.audio_frames}[kind]
        source = mapped if isinstance(mapped, np.memmap) else getattr(mapped, "base", None)
        if rows is not None and rows.size and isinstance(source, np.memmap):
            first = source.offset + (rows.ctypes.data - source.ctypes.data)
            if kind == "audio":
                runs = [(first + mel * source.shape[1] * rows.itemsize, rows.shape[0] * rows.itemsize)
                        for mel in range(rows.shape[1])]
            else:
                runs = [(first, rows.nbytes)]
            for start, length in runs:
                pages.update((self.video_id, kind, page) for page in range(start // PAGE, (start + length - 1) // PAGE + 1))
        return real_rows(self, kind, rows)

    real_open = howto100m.open_npz_array

    def timed_open(path, key, shape):  # the memory map: zip directory + headers (its fallback is timed_load)
        t0, before = time.perf_counter(), spent["npz_read"]
        try:
            return real_open(path, key, shape)
        finally:
            if spent["npz_read"] == before:
                spent["npz_read"] += time.perf_counter() - t0

    howto100m.load_npz_array, howto100m.check_array = timed_load, timed_check
    howto100m.open_npz_array = timed_open
    howto100m.VideoFeatures.rows = counted_rows
    collate = collate_fn_for(dataset)
    order = list(range(len(dataset)))
    clips, t0 = 0, time.perf_counter()
    try:
        for b in range(batches):
            items = [dataset[i] for i in order[b * batch_videos:(b + 1) * batch_videos]]
            c0 = time.perf_counter()
            batch = collate(items)
            spent["collate"] += time.perf_counter() - c0
            clips += int(batch["video"].shape[0])
    finally:
        howto100m.load_npz_array, howto100m.check_array = real_load, real_check
        howto100m.VideoFeatures.rows = real_rows
        howto100m.open_npz_array = real_open
    total = time.perf_counter() - t0
    spent["npz_read"] -= spent["validate"]  # load_npz_array calls check_array
    spent["assemble"] = total - sum(spent.values())
    return {k: v / clips for k, v in spent.items()} | {"total": total / clips, "mapped_bytes": len(pages) * PAGE / clips}


def measure_store(layout: Dict[str, Any], root: Path, csv: Path, videos: int, batch_videos: int, batches: int,
                  workers: List[int]) -> Dict[str, Any]:
    """Convert ``videos`` videos once (10 clips each) and read the store with the same loader."""
    t0 = time.perf_counter()
    convert_dataset("howto100m", csv, root / "store", word_vectors=str(layout["vectors"]), split="train",
                    features_path=str(layout["features"]), audio_path=str(layout["audio"]),
                    caption_path=str(layout["captions"]), clips_per_video=10, max_videos=videos)
    convert_s = time.perf_counter() - t0
    results = {"convert_s_per_video": convert_s / videos, "workers": {}}
    stored = sum(p.stat().st_size for p in (root / "store").rglob("*") if p.is_file())
    for w in workers:
        cfg = store_config(root / "store", batch_videos * 10, w)
        dataset = build_train_dataset(cfg)
        results["workers"][w] = run_loader(cfg, dataset, batches)
        # memory-mapped reads are page faults, not read() calls: count the store's bytes per clip instead
        results["workers"][w]["bytes_per_clip"] = stored / len(dataset)
    results["bytes_per_clip"] = stored / (videos * 10)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=390, help="length of every video")
    parser.add_argument("--distinct", type=int, default=16, help="videos written as real files (others: links)")
    parser.add_argument("--batch-videos", type=int, default=16, help="videos per batch (x 10 clips)")
    parser.add_argument("--batches", type=int, default=6, help="timed batches per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--store-videos", type=int, default=64, help="videos converted for the store figures")
    parser.add_argument("--compressed", action="store_true", help="np.savez_compressed files (default: np.savez)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CI smoke run)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.videos, args.seconds, args.distinct, args.batch_videos, args.batches = 12, 40, 3, 2, 2
        args.workers, args.store_videos = [0, 1], 6
    print(format_machine(machine_description(torch.device("cpu"))))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        layout = write_layout(root, args.videos, args.distinct, args.seconds, args.compressed)
        full_csv = write_csv(root, layout["paths"], args.videos)
        report = run_all(args, root, layout, full_csv)
    print_report(args, report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report))


def run_all(args, root: Path, layout: Dict[str, Any], full_csv: Path) -> Dict[str, Any]:
    report: Dict[str, Any] = {"videos": args.videos, "seconds": args.seconds, "batch_clips": args.batch_videos * 10,
                              "compressed": args.compressed, "raw": {}, "memory_by_videos": {}}
    file_bytes = sum(p.stat().st_size for p in (root / "features").rglob("vid000000_*.npz"))
    file_bytes += sum(p.stat().st_size for p in (root / "audio").rglob("vid000000_*.npz"))
    report["bytes_per_video"] = file_bytes
    report["raw_whole_files"], report["breakdown_whole_files"] = {}, {}
    for mapped, runs in ((False, report["raw_whole_files"]), (True, report["raw"])):
        for w in args.workers:
            cfg = howto_config(layout, full_csv, args.batch_videos, w)
            dataset = build_train_dataset(cfg)
            dataset.memory_map = mapped
            runs[w] = run_loader(cfg, dataset, args.batches)
        cfg = howto_config(layout, full_csv, args.batch_videos, 0)
        dataset = build_train_dataset(cfg)
        dataset.memory_map = mapped
        phases = breakdown(dataset, args.batches, args.batch_videos)
        report["breakdown_s_per_clip" if mapped else "breakdown_whole_files"] = phases
        if mapped:  # page faults on a memory map are no read() calls: the pages the clips cover instead
            for run in runs.values():
                run["bytes_per_clip"] = phases["mapped_bytes"] if run["bytes_per_clip"] is not None else None
    top = max(args.workers)
    for count in sorted({max(args.batch_videos * (args.batches + 1), args.videos // 10), args.videos // 2, args.videos}):
        cfg = howto_config(layout, write_csv(root, layout["paths"], count), args.batch_videos, top)
        report["memory_by_videos"][count] = run_loader(cfg, build_train_dataset(cfg), args.batches)["memory"]
    report["store"] = measure_store(layout, root, full_csv, min(args.store_videos, args.videos), args.batch_videos,
                                    args.batches, args.workers)
    return report


def print_report(args, report: Dict[str, Any]) -> None:
    print(f"HowTo100M layout: {args.videos} videos of {args.seconds} s ({report['bytes_per_video'] / 2**20:.1f} MiB "
          f"of npz{' (compressed)' if args.compressed else ''} each), batches of {report['batch_clips']} clips")
    print("| reader | workers | clips/s | clips/s per worker | bytes read per clip |")
    print("|---|---|---|---|---|")
    readers = (("raw layout, whole files", report["raw_whole_files"]), ("raw layout, memory-mapped", report["raw"]),
               ("converted store", report["store"]["workers"]))
    for name, runs in readers:
        for w, r in runs.items():
            read = "-" if r["bytes_per_clip"] is None else f"{r['bytes_per_clip'] / 1024:.1f} KiB"
            print(f"| {name} | {w} | {r['clips_per_s']:.0f} | {r['clips_per_s'] / max(int(w), 1):.0f} | {read} |")
    for name, key in (("whole files", "breakdown_whole_files"), ("memory-mapped", "breakdown_s_per_clip")):
        b = {k: v for k, v in report[key].items() if k != "mapped_bytes"}
        print(f"raw layout, {name}, one process, ms per clip: " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in b.items()))
    print("resident memory (MiB) as the CSV grows, main process / each worker (RSS, PSS):")
    for count, mem in report["memory_by_videos"].items():
        workers = "; ".join(f"{m['rss']:.0f} / {m['pss']:.0f}" for m in mem["workers"]) or "-"
        print(f"  {count:>7} videos: main {mem['main']['rss']:.0f} / {mem['main']['pss']:.0f}; workers {workers}")
    for name, runs in readers:
        one = runs.get(1) or runs[min(runs)]
        per_worker = one["clips_per_s"]
        need = TARGET_CLIPS_PER_S / per_worker
        print(f"projection, {name}: {TARGET_CLIPS_PER_S} clips/s per GPU needs {need:.1f} workers at "
              f"{per_worker:.0f} clips/s each (one worker measured) and "
              f"{TARGET_CLIPS_PER_S * runs[min(runs)]['bytes_per_clip'] / 2**30:.2f} GiB/s read per GPU")
    print(f"converting: {report['store']['convert_s_per_video'] * 1e3:.0f} ms per video, once")


if __name__ == "__main__":
    main()
