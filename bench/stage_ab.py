"""One stage's wall time under two versions of the code, side by side on the same data.

    python bench/stage_ab.py WORKDIR duplicates --baseline HEAD~1 [--rounds 2]

WORKDIR is a project folder whose inputs for the stage exist (e.g. a size of ``bench/scale.py``,
left under its ``--workdir``). The stage's command from WORKDIR's dvc.yaml runs alternately
with this working tree's ``deepcovid`` package and stage script and with those of ``--baseline``
(a git revision, checked out into a temporary worktree), ``--rounds`` times each. Prints each run,
the medians and their ratio, and whether both versions wrote the same bytes into every output
of the stage. The machine may be busy: only the ratio, measured in one run, compares.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path)).encode() if path.is_dir() else b"")
        h.update(f.read_bytes())
    return h.hexdigest()


def _run(tree: Path, workdir: Path, cmd: str, outs: list[str]) -> tuple[float, dict[str, str]]:
    argv = shlex.split(cmd)
    if argv[0] != "python" or not argv[1].startswith("stages/"):
        sys.exit(f"not a stage script command: {cmd}")
    argv = [sys.executable, str(tree / argv[1]), *argv[2:]]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{tree}: the stage failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, {o: _digest(workdir / o) for o in outs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("stage")
    parser.add_argument("--baseline", required=True, help="a git revision of this repository")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    stage = yaml.safe_load((args.workdir / "dvc.yaml").read_text())["stages"][args.stage]
    cmd = " ".join(stage["cmd"].split())
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]
    with tempfile.TemporaryDirectory(prefix="stage-ab-") as tmp:
        base = Path(tmp) / "baseline"
        git = ["git", "-C", str(REPO), "worktree"]
        subprocess.run([*git, "add", "-q", "--detach", str(base), args.baseline], check=True)
        try:
            times: dict[str, list[float]] = {"baseline": [], "this tree": []}
            digests: dict[str, dict[str, str]] = {}
            for r in range(args.rounds):
                for name, tree in (("baseline", base), ("this tree", REPO)):
                    seconds, digests[name] = _run(tree, args.workdir, cmd, outs)
                    times[name].append(seconds)
                    print(f"round {r + 1}, {name}: {seconds:.1f} s", flush=True)
        finally:
            subprocess.run([*git, "remove", "--force", str(base)], check=False)
    old, new = statistics.median(times["baseline"]), statistics.median(times["this tree"])
    same = digests["baseline"] == digests["this tree"]
    print(f"\n{args.stage}: baseline ({args.baseline}) {old:.1f} s, this tree {new:.1f} s (medians of {args.rounds})")
    print(f"speed-up: {old / new:.2f}x; the same bytes in {', '.join(outs)}: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
