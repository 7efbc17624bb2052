"""What `dvc repro` costs as the data grows: every stage's wall time and peak memory at three
sizes of generated data, and the slope of log(time) against log(images).

    python bench/scale.py                          # default (~700), paper (~5,000), 30k
    python bench/scale.py --sizes default paper    # the 30k point takes about an hour more
    python bench/scale.py --sizes paper --stages fetch_params fetch filter negatives duplicates
    python bench/scale.py --sizes 30k --add-to scale.json --out scale3.json   # a size more, later
    python bench/scale.py --sizes paper --whole    # one plain `dvc repro` of every stage, timed as a whole

Each size runs in a fresh copy of this working tree (tracked and untracked files, not the
outputs) under ``--workdir``, with params.yaml changed as below, one ``dvc repro --single-item --force``
per stage in pipeline order, each timed (wall clock) with its peak resident memory (the
largest of the stage's processes and dvc's own, from ``wait4``). The sizes:

- ``default``: params.yaml as it is (about 700 images in the manifest);
- ``paper``: the paper's counts: 6,000 + 200 generated CheXpert patients, the negatives of
  ``negatives.counts.paper`` (700 + 13 x 100 for training, 1,700 + 13 x 100 for test), 100
  COVID-19 test images (about 4,800 images);
- ``30k``: 40,000 + 2,000 generated CheXpert patients, negatives 5,000 + 13 x 800 and
  7,000 + 13 x 600 (about 30,000 images).

The slope of each stage is fitted over the sizes run (the number of images in the split's
manifest on the x axis). A stage whose slope is near 1 grows linearly; 2 would be quadratic;
stages with a fixed amount of work (explain: 8 images) stay near 0. Figures are printed last,
as a Markdown table, and written to ``--out`` (JSON, and a PNG plot beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]

SIZES = {
    "default": {},
    "paper": {
        "synthetic.chexpert.train_patients": 6000,
        "synthetic.chexpert.valid_patients": 200,
        "negatives.counts.synthetic": {
            "train": {"no_finding": 700, "per_category": 100},
            "test": {"no_finding": 1700, "per_category": 100},
        },
    },
    "30k": {
        "synthetic.chexpert.train_patients": 40000,
        "synthetic.chexpert.valid_patients": 2000,
        "negatives.counts.synthetic": {
            "train": {"no_finding": 5000, "per_category": 800},
            "test": {"no_finding": 7000, "per_category": 600},
        },
    },
}


def _stages() -> list[str]:
    return list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


def _set(params: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = params
    for key in path:
        node = node[key]
    if last not in node:
        raise KeyError(f"params.yaml has no {dotted}")
    node[last] = value


def _copy_tree(dest: Path) -> None:
    listed = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "scale"],
        cwd=dest,
        check=True,
    )


def _timed(cmd: list[str], cwd: Path, log) -> tuple[float, float, int]:
    """(seconds, peak RSS in GB, exit status) of a command and the processes it waited for."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss / 1024**2, proc.returncode


def run_size(name: str, workdir: Path, stages: list[str], whole: bool = False) -> dict:
    dest = workdir / name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    _copy_tree(dest)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for key, value in SIZES[name].items():
        _set(params, key, value)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = str(Path(sys.executable).with_name("dvc"))
    env_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["PATH"] = env_path
    result = {"stages": {}, "images": None}
    with open(dest / "scale.log", "w") as log:
        if whole:
            seconds, peak, code = _timed([dvc, "repro"], dest, log)
            if code != 0:
                raise SystemExit(f"[{name}] dvc repro failed (exit {code}); see {dest / 'scale.log'}")
            with open(dest / "data/manifest.csv") as f:
                images = sum(1 for _ in f) - 1
            return {"whole": {"seconds": round(seconds, 2), "peak_rss_gb": round(peak, 3)}, "images": images}
        for stage in stages:
            seconds, peak, code = _timed([dvc, "repro", "--single-item", "--force", stage], dest, log)
            log.flush()
            result["stages"][stage] = {"seconds": round(seconds, 2), "peak_rss_gb": round(peak, 3)}
            print(f"[{name}] {stage}: {seconds:.1f} s, peak RSS {peak:.2f} GB", flush=True)
            if code != 0:
                raise SystemExit(f"[{name}] {stage} failed (exit {code}); see {dest / 'scale.log'}")
            if stage == "split" or (result["images"] is None and (dest / "data/manifest.csv").exists()):
                with open(dest / "data/manifest.csv") as f:
                    result["images"] = sum(1 for _ in f) - 1
            if stage == "duplicates":
                result["duplicates"] = _duplicate_summary(dest)
    data = dest / "metrics" / "data.json"
    if data.exists():
        result["data"] = json.loads(data.read_text())
    return result


def _duplicate_summary(dest: Path) -> dict:
    import pandas as pd

    groups = pd.read_csv(dest / "data/duplicates.csv", dtype=str, keep_default_na=False)
    if groups.empty:
        return {"groups": 0, "largest": 0, "spanning_patients": 0}
    sizes = groups.groupby("group").size()
    patients = groups.groupby("group")[["source", "patient"]].apply(lambda g: len(g.drop_duplicates()))
    return {"groups": int(len(sizes)), "largest": int(sizes.max()), "spanning_patients": int((patients > 1).sum())}


def slopes(results: dict, stages: list[str]) -> dict:
    """Least-squares slope of log(seconds) on log(images) per stage, over the sizes run."""
    out = {}
    names = [n for n in results if results[n].get("images")]
    if len(names) < 2:
        return out
    x = np.log([results[n]["images"] for n in names])
    for stage in stages:
        y = [results[n]["stages"].get(stage, {}).get("seconds") for n in names]
        if None in y:
            continue
        out[stage] = round(float(np.polyfit(x, np.log(np.maximum(y, 1e-3)), 1)[0]), 2)
    return out


def table(results: dict, stages: list[str], slope: dict) -> str:
    names = list(results)
    head = "| stage | " + " | ".join(f"{n} ({results[n].get('images') or '?'} images)" for n in names) + " | slope |"
    lines = [head, "|" + " --- |" * (len(names) + 2)]
    for stage in stages + ["total"]:
        cells = []
        for n in names:
            s = results[n]["stages"]
            if stage == "total":
                cells.append(
                    f"{sum(v['seconds'] for v in s.values()):.0f} s, {max(v['peak_rss_gb'] for v in s.values()):.2f} GB"
                )
            elif stage in s:
                cells.append(f"{s[stage]['seconds']:.1f} s, {s[stage]['peak_rss_gb']:.2f} GB")
            else:
                cells.append("-")
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {slope.get(stage, '')} |")
    return "\n".join(lines)


def plot(results: dict, stages: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in results if results[n].get("images")]
    fig, ax = plt.subplots(figsize=(7, 5))
    colours = plt.cm.tab20(np.linspace(0, 1, 20))
    for k, stage in enumerate(stages):
        pts = [
            (results[n]["images"], results[n]["stages"][stage]["seconds"])
            for n in names
            if stage in results[n]["stages"]
        ]
        if pts:
            ax.plot(
                *zip(*pts), marker="osD^v"[k % 5], linestyle=("-", "--", ":")[k % 3], color=colours[k % 20], label=stage
            )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="images in the manifest",
        ylabel="wall time of the stage (s)",
        title="dvc repro, stage by stage (2 cores)",
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--stages", nargs="+", default=None, help="stages to run, in order (default: all)")
    ap.add_argument("--workdir", default=None, help="where the copies are made (default: a temporary folder)")
    ap.add_argument("--out", default="scale.json", help="JSON of the figures (a PNG plot beside it)")
    ap.add_argument(
        "--add-to",
        default=None,
        help="an earlier run's JSON: its sizes join this run's in the table, the slopes and the plot",
    )
    ap.add_argument(
        "--whole", action="store_true", help="one plain `dvc repro` per size, timed as a whole (no per-stage figures)"
    )
    args = ap.parse_args()
    stages = args.stages or _stages()
    workdir = Path(args.workdir) if args.workdir else Path(os.environ.get("TMPDIR", "/tmp")) / "deepcovid-scale"
    if args.whole:
        runs = {name: run_size(name, workdir, stages, whole=True) for name in args.sizes}
        for name, r in runs.items():
            print(
                f"{name} ({r['images']} images): dvc repro of every stage in {r['whole']['seconds'] / 60:.1f} min "
                f"({r['whole']['seconds']:.0f} s), peak RSS {r['whole']['peak_rss_gb']:.2f} GB"
            )
        return
    results = json.loads(Path(args.add_to).read_text())["results"] if args.add_to else {}
    for name in args.sizes:
        started = time.perf_counter()
        results[name] = run_size(name, workdir, stages)
        results[name]["wall_seconds"] = round(time.perf_counter() - started, 1)
    slope = slopes(results, stages)
    out = Path(args.out)
    out.write_text(json.dumps({"results": results, "slopes": slope}, indent=2) + "\n")
    plot(results, stages, out.with_suffix(".png"))
    for name, r in results.items():
        if "duplicates" in r:
            print(
                f"{name}: duplicates {r['duplicates']}; manifest {r.get('images')} images; "
                f"whole run {r['wall_seconds']:.0f} s"
            )
    print(table(results, stages, slope))


if __name__ == "__main__":
    main()
