"""Compare models side by side (the paper's Table 6) with paired tests of their AUCs.

Not a pipeline stage: run it after experiments, e.g.

    dvc exp run --queue -S model=resnet18
    dvc exp run --queue -S model=squeezenet
    dvc queue start --jobs 1 && dvc queue status      # wait until they are done
    python stages/compare.py --from-dvc-exps           # baseline commit + every experiment of HEAD

or on any prediction files (columns as in deepcovid/evaluation/evaluate.py):

    python stages/compare.py --run resnet18=a/predictions.csv --run squeezenet=b/predictions.csv

--from-dvc-exps lists the experiments with `dvc exp show --json` and reads each one's
data/predictions.csv at the experiment's commit with dvc.api.open(rev=...), from the local DVC
cache (no `dvc exp apply`, the workspace is not touched; with a remote, a missing file is
pulled from it). Experiments still queued, running or failed are skipped (logged).

Every model is evaluated as the evaluate stage does (params.yaml section `evaluate`: the
operating point is chosen on each model's validation split). Each model's AUC is compared with
the reference run's (--reference; default: the first run, with --from-dvc-exps the baseline
commit) by DeLong's paired test (or --paired-test bootstrap) on the same test images: the
models must have scored exactly the same test image ids with the same labels, else an error.

Writes under --out-dir (default reports/compare/): table.md, table.csv, compare.json, roc.png,
pr.png and reliability_<run>.png per run.
"""

import argparse
import io as _io
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from deepcovid import runner

from deepcovid.evaluation import figures

from deepcovid import files
from deepcovid.evaluation.evaluate import (EvalConfig, comparison_markdown, compare_models, load_predictions,
                                  read_predictions)
from deepcovid.params import load_params

log = logging.getLogger("compare")


def dvc_binary() -> str:
    return shutil.which("dvc", path=str(Path(sys.executable).parent)) or "dvc"


def parse_run(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ValueError(f"--run expects NAME=PREDICTIONS_CSV, got {text!r}")
    return name.strip(), path.strip()


def _state(group: dict) -> str | None:
    executor = group.get("executor")
    if isinstance(executor, dict):
        return executor.get("state")
    return executor


def dvc_experiments(repo: str, path: str, include_baseline: bool = True, commits: int = 1) -> list[dict]:
    """``[{"name", "rev", "model"}]`` of the baseline commit(s) and finished experiments holding ``path``.

    ``commits``: experiments based on the last N commits of HEAD (``dvc exp show -n N``).
    """
    cmd = [dvc_binary(), "exp", "show", "--json", "-n", str(commits)]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"`dvc exp show --json` failed in {repo}: {last}")
    try:
        rows = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise RuntimeError("`dvc exp show --json` did not print JSON") from None

    def entry(rev: dict, name: str) -> dict | None:
        data = rev.get("data") or {}
        out = (data.get("outs") or {}).get(path) or {}
        if rev.get("error") or not out.get("hash"):
            why = (rev.get("error") or {}).get("msg") if isinstance(rev.get("error"), dict) else rev.get("error")
            log.warning("skipping %s (%s): %s", name, str(rev.get("rev"))[:7], why or f"no {path} recorded")
            return None
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        return {"name": name, "rev": rev["rev"], "model": str(params.get("model", ""))}

    found = []
    for base in rows:
        if base.get("rev") == "workspace":
            continue
        if include_baseline:
            e = entry(base, base.get("name") or str(base["rev"])[:7])
            if e:
                found.append(e)
        for group in base.get("experiments") or []:
            state = _state(group)
            for rev in group.get("revs") or []:
                name = rev.get("name") or group.get("name") or str(rev.get("rev"))[:7]
                if state not in (None, "success"):
                    log.warning("skipping experiment %s: %s", name, state)
                    continue
                e = entry(rev, name)
                if e:
                    found.append(e)
    return found


def read_dvc_predictions(repo: str, path: str, rev: str, name: str) -> pd.DataFrame:
    import dvc.api

    with dvc.api.open(path, repo=repo, rev=rev) as f:
        text = f.read()
    return read_predictions(_io.StringIO(text), name=f"{name} ({rev[:7]}):{path}")


def safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", default=[], metavar="NAME=CSV",
                    help="a run to compare (repeatable): its name and predictions file")
    ap.add_argument("--from-dvc-exps", action="store_true",
                    help="add the baseline commit and every finished experiment of `dvc exp show`")
    ap.add_argument("--no-baseline", action="store_true", help="with --from-dvc-exps: experiments only")
    ap.add_argument("--commits", type=int, default=1,
                    help="with --from-dvc-exps: experiments of the last N commits (default 1: HEAD)")
    ap.add_argument("--repo", default=".", help="DVC repository for --from-dvc-exps (default: .)")
    ap.add_argument("--predictions-path", default="data/predictions.csv",
                    help="the predictions output inside each experiment")
    ap.add_argument("--reference", default=None, help="run the others are tested against (default: the first)")
    ap.add_argument("--paired-test", choices=("delong", "bootstrap"), default="delong")
    ap.add_argument("--params", default=None, help="parameter file (default params.yaml if present)")
    ap.add_argument("--out-dir", default="reports/compare")
    args = ap.parse_args()

    if args.params is None and not Path("params.yaml").is_file():
        cfg = EvalConfig.defaults()
    else:
        cfg = EvalConfig.from_params(load_params(args.params or "params.yaml"))

    runs: dict[str, pd.DataFrame] = {}
    models: dict[str, str] = {}

    def add(name: str, frame: pd.DataFrame, model: str = "") -> None:
        if name in runs:
            raise ValueError(f"two runs are named {name!r}; names must be unique")
        runs[name], models[name] = frame, model

    if args.from_dvc_exps:
        exps = dvc_experiments(args.repo, args.predictions_path, include_baseline=not args.no_baseline,
                               commits=args.commits)
        for e in exps:
            log.info("reading %s at %s (%s)", args.predictions_path, e["name"], e["rev"][:7])
            try:
                frame = read_dvc_predictions(args.repo, args.predictions_path, e["rev"], e["name"])
            except ValueError:
                raise
            except Exception as exc:  # DVC errors: not in the local cache, no remote, ...
                message = " ".join(str(exc).split()) or type(exc).__name__
                log.warning("skipping %s (%s): cannot read %s (%s); is it in the local cache? "
                            "(dvc exp pull / dvc pull)", e["name"], e["rev"][:7], args.predictions_path, message)
                continue
            add(e["name"], frame, e["model"])
    for text in args.run:
        name, path = parse_run(text)
        add(name, load_predictions(path))
    if len(runs) < 1:
        raise ValueError("nothing to compare: give --run NAME=CSV and/or --from-dvc-exps")

    table, results = compare_models(runs, cfg, reference=args.reference, paired=args.paired_test, models=models)
    markdown = comparison_markdown(table, cfg, paired=args.paired_test)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files.write_text(out / "table.md", markdown)
    files.write_csv(out / "table.csv", table)
    files.write_json(out / "compare.json", {
        "reference": str(table.loc[table["reference"], "run"].iloc[0]),
        "paired_test": args.paired_test,
        "runs": {name: {"model": models.get(name, ""), **results[name].details} for name in runs},
        "comparisons": [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
                        for r in table.to_dict("records")],
    })

    label = {name: f"{name} ({models[name]})" if models.get(name) and models[name] != name else name
             for name in runs}
    curves = []
    for name in runs:
        t = results[name].details["test"]
        curves.append({"label": f"{label[name]}: AUC {t['auc']:.3f}", "fpr": results[name].roc["fpr"],
                       "tpr": results[name].roc["tpr"], "recall": results[name].pr["recall"],
                       "precision": results[name].pr["precision"], "point": (t["fp"] / t["n_neg"], t["sensitivity"]),
                       "ap": t["ap"]})
    figures.roc_curves(curves, out / "roc.png", title="ROC curves (test); dots: operating points")
    figures.pr_curves([{**c, "label": f"{c['label'].split(': AUC')[0]}: AP {c['ap']:.3f}"} for c in curves],
                      out / "pr.png", prevalence=results[next(iter(runs))].details["test"]["prevalence"],
                      title="Precision-recall curves (test)")
    keep = set()
    for name in runs:
        t = results[name].details["test"]
        target = out / f"reliability_{safe(name)}.png"
        keep.add(target.name)
        figures.reliability_diagram(results[name].calibration, t["ece"], target,
                                    title=f"{label[name]}: reliability (test), ECE = {t['ece']:.4f}")
    for stale in out.glob("reliability_*.png"):
        if stale.name not in keep:
            stale.unlink()
    print(markdown, end="")
    log.info("wrote %s/{table.md, table.csv, compare.json, roc.png, pr.png, reliability_*.png}", out)


if __name__ == "__main__":
    runner.run(main, "compare")
