"""The ``deepcovid`` command (also ``python -m deepcovid``): tools run beside the pipeline.

    deepcovid compare --from-dvc-exps                 # or --run NAME=predictions.csv (repeatable)
    deepcovid check-regression [--write-baseline]     # exit 0 pass, 1 regression, 2 usage error
    deepcovid check-reproduction --committed-lock L --committed-metrics DIR
    deepcovid explain IMAGE... --model models --out explain   # occlusion heatmaps of any image
    deepcovid duplicates FOLDER... --out duplicates.csv       # near-duplicate radiographs
    deepcovid evaluate-external FOLDER --model models --out-dir DIR   # a trained model on other data
    deepcovid predict FILE_OR_FOLDER... --model models [--out scores.csv] [--explain DIR]   # new X-rays
    deepcovid mitigation --study DIR --out-dir OUT [--report-only]   # the pre-declared mitigation study

Errors a user can fix are printed in one line (exit status 2), see :func:`deepcovid.runner.run`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deepcovid import runner
from deepcovid.errors import InputError


def _compare(args) -> int:
    from deepcovid.config import load_config
    from deepcovid.evaluation import compare
    from deepcovid.evaluation.evaluate import EvalConfig

    cfg = EvalConfig.from_config(load_config(args.params))
    runs, models = compare.collect_runs(
        args.run,
        from_dvc_exps=args.from_dvc_exps,
        repo=args.repo,
        predictions_path=args.predictions_path,
        include_baseline=not args.no_baseline,
        commits=args.commits,
    )
    table, results = compare.compare_models(runs, cfg, reference=args.reference, paired=args.paired_test, models=models)
    print(compare.write_comparison(Path(args.out_dir), table, results, models, cfg, paired=args.paired_test), end="")
    return 0


def _check_regression(args) -> int:
    from deepcovid.checks.regression import check_regression
    from deepcovid.config import load_config

    return check_regression(
        load_config(args.params).regression, args.metrics, baseline=args.baseline, write_baseline=args.write_baseline
    )


def _check_reproduction(args) -> int:
    from deepcovid.checks.reproduction import check_reproduction
    from deepcovid.config import load_config

    return check_reproduction(
        load_config(args.params).reproduction, args.committed_lock, args.lock, args.committed_metrics, args.metrics
    )


def _mitigation(args) -> int:
    from deepcovid.config import load_config
    from deepcovid.evaluation import mitigation

    params = load_config(args.params)
    study = params.mitigation
    if not args.report_only:
        mitigation.run_study(
            args.study,
            params_path=args.params,
            variants=study.variants,
            external_sources=study.external_sources,
            quick=args.quick,
        )
    table = mitigation.write_study(args.study, study.variants, study.baseline, args.out_dir, params.evaluate.alpha)
    print(mitigation.study_markdown(table), end="")
    if args.baseline:
        tolerance = params.regression.flat_tolerances()["test.auc"]
        failures, lines = mitigation.regressions(table, args.baseline, tolerance)
        print("\n".join(lines))
        if failures:
            print("mitigation: regression against " + args.baseline + ":\n  " + "\n  ".join(failures))
            return 1
        print(f"mitigation: no number worse than {args.baseline} by more than {tolerance} (regression.tolerances)")
    return 0


def _duplicates(args) -> int:
    import sys

    from deepcovid import files
    from deepcovid.config import load_config, override
    from deepcovid.data.duplicates import audit_paths, similarity

    params = load_config(args.params)
    cfg = override(
        params.duplicates,
        "duplicates",
        max_distance=args.max_distance,
        min_correlation=args.min_correlation,
        workers=args.workers,
    )
    max_distance = cfg.max_distance
    groups, unreadable, n_files = audit_paths(
        args.paths, max_distance, cfg.min_correlation, cfg.workers, max_pixels=params.preprocess.max_pixels
    )
    for path, reason in unreadable.items():
        print(f"{path}: left out ({reason})", file=sys.stderr)
    files.write_csv(args.out, groups[["group", "path", "similarity", "closest"]], report=True)
    print(
        f"{groups['group'].nunique()} groups of near-duplicates ({len(groups)} of {n_files - len(unreadable)} "
        f"images; similarity >= {similarity(max_distance):.4f}, pixel correlation >= {cfg.min_correlation}): "
        f"{args.out}"
    )
    return 0


def _evaluate_external(args) -> int:
    from deepcovid.config import load_config
    from deepcovid.evaluation.evaluate import EvalConfig
    from deepcovid.evaluation.external import evaluate_external

    cfg = load_config(args.params)
    metrics = evaluate_external(
        args.folder,
        models=args.model,
        evaluation=args.evaluation,
        out_dir=args.out_dir,
        threshold=args.threshold,
        cfg=EvalConfig.from_config(cfg),
        frontal_views=cfg.filter.frontal_views,
        batch_size=args.batch_size,
    )
    t = metrics["test"]
    print(
        f"{args.folder}: external test AUC {t['auc']:.4f} [{t['auc_low']:.4f}, {t['auc_high']:.4f}], "
        f"sensitivity {t['sensitivity']:.4f} [{t['sensitivity_low']:.4f}, {t['sensitivity_high']:.4f}], "
        f"specificity {t['specificity']:.4f} [{t['specificity_low']:.4f}, {t['specificity_high']:.4f}] at the "
        f"operating point {t['threshold']:.4g} ({t['n_pos']} COVID-19, {t['n_neg']} other): {args.out_dir}"
    )
    return 0


def _explain(args) -> int:
    from deepcovid.config import load_config, override
    from deepcovid.evaluation.predictions import operating_point
    from deepcovid.explain.explain_run import explain_images
    from deepcovid.model.inference import model_sha256

    cfg = override(
        load_config(args.params).explain,
        "explain",
        window=args.window,
        stride=args.stride,
        fill=args.fill,
        method=args.method,
    )  # validated as params.yaml's own values
    threshold = None
    if args.threshold is not None:
        threshold = args.threshold
    elif Path(args.evaluation).is_file():
        threshold = operating_point(args.evaluation, model_sha256=model_sha256(args.model))
    else:
        print(f"explain: {args.evaluation} not found: label flips drawn at threshold 0.5")
    failed = 0
    for path, score, what in explain_images(args.images, cfg, models=args.model, out=args.out, threshold=threshold):
        failed += score is None
        print(f"{path}\t{'' if score is None else f'{score:.6f}'}\t{what}")
    return 1 if failed else 0


def _predict(args) -> int:
    import sys

    from deepcovid import files
    from deepcovid.config import load_config
    from deepcovid.evaluation.predictions import operating_point
    from deepcovid.model.inference import model_sha256
    from deepcovid.model.predict import collect_files, predict_files

    threshold = (
        args.threshold
        if args.threshold is not None
        else operating_point(args.evaluation, model_sha256=model_sha256(args.model))
    )
    if args.out != "-":
        files.check_writable(args.out)  # before scoring, not after
    paths = collect_files(args.paths)
    if not paths:
        raise InputError(f"no image files found in {', '.join(args.paths)}")
    table = predict_files(paths, models=args.model, threshold=threshold, batch_size=args.batch_size, device=args.device)
    if args.explain:
        from deepcovid.explain.explain_run import explain_images

        ok = table.loc[table["error"] == "", "path"].tolist()
        figure = {
            path: (what if score is not None else "")
            for path, score, what in explain_images(
                ok, load_config(args.params).explain, models=args.model, out=args.explain, threshold=threshold
            )
        }
        table["explanation"] = table["path"].map(figure).fillna("")
    if args.out == "-":
        files.neutralise_formulas(table).to_csv(sys.stdout, index=False)
    else:
        files.write_csv(args.out, table, report=True)
    failed, warned = int((table["error"] != "").sum()), int((table["warning"] != "").sum())
    print(
        f"predict: {len(table)} files, {len(table) - failed} scored, {failed} unreadable, {warned} with warnings; "
        f"label COVID-19 at score >= {threshold:.6g}" + ("" if args.out == "-" else f": {args.out}"),
        file=sys.stderr,
    )
    return 1 if failed else 0


PREDICT_HELP = """\
Score new chest X-rays with a trained model:

    deepcovid predict xrays/ more.dcm --model models --out scores.csv [--explain maps]

Files and folders (walked recursively: PNG, JPEG, TIFF, BMP and DICOM, also DICOM files without a
suffix) are decoded and prepared exactly as the pipeline prepares its own images (the settings in
MODEL/model.json): any Pillow mode, 16-bit PNG scaled from its own range, DICOM through its
modality and VOI LUT or window, MONOCHROME1 inverted. Writes a CSV (stdout by default): path,
score (the COVID-19 probability), label at the model's operating point (test.threshold of
metrics/evaluate.json, chosen on validation; --threshold overrides), warning (a lateral view or
a modality or body part that is not a chest X-ray, from the DICOM header; an image smaller than
the model input), error (why a file was not scored: unreadable, multi-frame DICOM, a compressed
transfer syntax the installed handlers cannot decode...). --explain DIR adds an occlusion map
per scored image (params.yaml section `explain`) and its path in the column explanation.
Exit status: 0 all scored, 1 some files not scored, 2 bad input (model, threshold, no files).
For research only: not for clinical diagnosis.
"""


COMPARE_HELP = """\
Compare models side by side (the paper's Table 6) with paired tests of their AUCs.

    dvc exp run --queue -S model=resnet18 && dvc queue start --jobs 1
    deepcovid compare --from-dvc-exps        # baseline commit + every finished experiment of HEAD
    deepcovid compare --run resnet18=a/predictions.csv --run squeezenet=b/predictions.csv

--from-dvc-exps reads each experiment's predictions at its commit from the DVC cache (the
workspace is not touched); queued, running or failed experiments are skipped. Every model is
evaluated as the evaluate stage does (params.yaml section `evaluate`) and tested against the
reference run on the same test images (same image ids and labels, else an error). Writes
table.md, table.csv, compare.json, roc.png, pr.png and reliability_<run>.png under --out-dir.
"""

REGRESSION_HELP = """\
Fail when a metric of metrics/evaluate.json is worse than the committed baseline by more than its
tolerance (params.yaml section `regression`); prints a table either way.
Exit status: 0 pass, 1 regression, 2 usage error (missing file, bad parameter).
"""

REPRODUCTION_HELP = """\
Check that a rebuild reproduced the committed results:

    cp dvc.lock /tmp/committed.lock; cp metrics/{evaluate,train,explain}.json /tmp/committed/
    dvc repro
    deepcovid check-reproduction --committed-lock /tmp/committed.lock --committed-metrics /tmp/committed

The data stages' output hashes (reproduction.exact_stages) must be identical; the numbers of
metrics/evaluate.json, train.json, explain.json, audit.json and repeats.json must agree within reproduction.tolerances.
Exit status: 0 reproduced, 1 something differs, 2 bad input.
"""


EXPLAIN_HELP = """\
Occlusion heatmap of any chest X-ray for the trained model (the paper's Fig. 14):

    deepcovid explain path/to/xray.png [more images] --model models --out explain

Each image is preprocessed as the pipeline does (the settings in MODEL/model.json), an occluder
(params.yaml section `explain`: window, stride, fill, method; options override) slides over it,
and OUT/<stem>_occlusion.png shows the input, the probability drop, the overlay and where the
label flips at the operating point of metrics/evaluate.json. Prints one line per image: path,
COVID-19 probability, figure (or why the image was not read). Exit status 1 if any failed.
"""


DUPLICATES_HELP = """\
Near-duplicate radiographs among image files and folders (every file under a folder), with the
detector of the pipeline's duplicates stage (the same image re-encoded, rescaled, cropped by a
few percent or with another contrast): pairs within the hash distance, confirmed by the
correlation of their thumbnails' pixels, grouped:

    deepcovid duplicates data/cohen/images more/images --out duplicates.csv

Writes one row per image in a group: group, path (as given, joined with its path inside the
folder), similarity (its highest, 1 = identical hash), closest (the image it has it with). Files
that are not readable images are listed on stderr and left out. Hashes are centred on the mean of
the images given, so give all the images to compare in one call.
"""


EXTERNAL_HELP = """\
A trained model on data from elsewhere (your hospital's), at its operating point:

    deepcovid evaluate-external path/to/folder --model models --out-dir external

FOLDER is in the Cohen layout: metadata.csv (file name, patient id, finding, view; modality
optional) and the images it names (under images/ unless a folder column says otherwise). Frontal
X-rays (filter.frontal_views) with a finding are scored, prepared exactly as the pipeline prepares
its own images (MODEL/model.json); label 1 when the finding names COVID-19. OUT_DIR gets the
evaluate stage's outputs for them (evaluate.json, evaluate_details.json, thresholds.csv,
plots/ with ROC, PR, confusion, histograms and figures) at the operating point of
metrics/evaluate.json, plus predictions.csv and rejected.csv (rows left out, with the reason).
"""


MITIGATION_HELP = """\
The pre-declared mitigation study (params.yaml section `mitigation`), in the current DVC project:

    deepcovid mitigation --study study --out-dir reports/public/mitigation

Runs `dvc repro` twice per variant (its parameter overrides): internal (the configuration as is)
and external (mitigation.external_sources held out), every variant's parameters validated first,
keeping each run's metrics and predictions under STUDY/<variant>/<run>/ (a run already there is
not run again; params.yaml is restored at the end). Then writes table.md, table.csv, study.json
and external_auc.png under OUT_DIR: internal and external AUC, the repeated splits' spread, the
audit, the heatmaps, and paired DeLong tests against the baseline (Holm-adjusted). --report-only
writes the report from an existing STUDY folder. --baseline FILE (a committed study.json) exits 1
when a variant's internal, external or repeated-splits AUC is worse than there by more than
regression.tolerances test.auc. --quick stops every run at evaluate (internal and external AUC,
no repeated splits, audit or heatmaps): what CI runs.
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="deepcovid", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, handler, text, summary):
        p = sub.add_parser(name, help=summary, description=text, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(handler=handler)
        return p

    p = command("mitigation", _mitigation, MITIGATION_HELP, "the pre-declared mitigation study")
    p.add_argument("--study", required=True, help="folder of the study's runs (created; reused to resume)")
    p.add_argument("--out-dir", required=True, help="folder for table.md, table.csv, study.json, external_auc.png")
    p.add_argument("--report-only", action="store_true", help="only write the report from STUDY's runs")
    p.add_argument("--quick", action="store_true", help="every run only up to evaluate: the AUCs, as CI checks them")
    p.add_argument(
        "--baseline", help="a committed study.json: fail (exit 1) when an AUC fell below it (regression.tolerances)"
    )
    p.add_argument("--params", default="params.yaml")

    p = command("compare", _compare, COMPARE_HELP, "models side by side with paired AUC tests")
    p.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="NAME=CSV",
        help="a run to compare (repeatable): its name and predictions file",
    )
    p.add_argument(
        "--from-dvc-exps",
        action="store_true",
        help="add the baseline commit and every finished experiment of `dvc exp show`",
    )
    p.add_argument("--no-baseline", action="store_true", help="with --from-dvc-exps: experiments only")
    p.add_argument(
        "--commits",
        type=int,
        default=1,
        help="with --from-dvc-exps: experiments of the last N commits (default 1: HEAD)",
    )
    p.add_argument("--repo", default=".", help="DVC repository for --from-dvc-exps (default: .)")
    p.add_argument(
        "--predictions-path", default="data/predictions.csv", help="the predictions output inside each experiment"
    )
    p.add_argument("--reference", default=None, help="run the others are tested against (default: the first)")
    p.add_argument("--paired-test", choices=("delong", "bootstrap"), default="delong")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out-dir", default="reports/compare")

    p = command("check-regression", _check_regression, REGRESSION_HELP, "metrics against the committed baseline")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--metrics", default="metrics/evaluate.json", help="current metrics")
    p.add_argument("--baseline", default=None, help="baseline metrics (default: regression.baseline in params)")
    p.add_argument("--write-baseline", action="store_true", help="copy the current metrics to the baseline")

    p = command(
        "check-reproduction",
        _check_reproduction,
        REPRODUCTION_HELP,
        "a rebuild against the committed dvc.lock and metrics",
    )
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--committed-lock", required=True, help="the dvc.lock as committed")
    p.add_argument("--lock", default="dvc.lock", help="the dvc.lock after the rebuild")
    p.add_argument(
        "--committed-metrics",
        required=True,
        help="folder with the committed evaluate.json, train.json, explain.json, audit.json, repeats.json",
    )
    p.add_argument("--metrics", default="metrics", help="folder with the rebuilt metrics")

    p = command("duplicates", _duplicates, DUPLICATES_HELP, "near-duplicate images in folders")
    p.add_argument("paths", nargs="+", help="image files and folders")
    p.add_argument("--out", required=True, help="output CSV: group,path,similarity,closest")
    p.add_argument(
        "--max-distance",
        type=int,
        default=None,
        help="hash bits (of 255) that may differ (default: duplicates.max_distance in params)",
    )
    p.add_argument(
        "--min-correlation",
        type=float,
        default=None,
        help="pixel correlation a pair must reach (default: duplicates.min_correlation in params)",
    )
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: duplicates.workers)")
    p.add_argument("--params", default="params.yaml")

    p = command("evaluate-external", _evaluate_external, EXTERNAL_HELP, "a trained model on a Cohen-layout folder")
    p.add_argument("folder", help="folder with metadata.csv and the images")
    p.add_argument("--model", default="models", help="model folder of the train stage (default: models)")
    p.add_argument("--evaluation", default="metrics/evaluate.json", help="the operating point (test.threshold)")
    p.add_argument("--threshold", type=float, default=None, help="label threshold instead of the operating point")
    p.add_argument("--out-dir", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--params", default="params.yaml")

    p = command("predict", _predict, PREDICT_HELP, "score new X-ray files (PNG, JPEG, DICOM)")
    p.add_argument("paths", nargs="+", help="image files and folders")
    p.add_argument("--model", default="models", help="model folder of the train stage (default: models)")
    p.add_argument("--evaluation", default="metrics/evaluate.json", help="the operating point (test.threshold)")
    p.add_argument("--threshold", type=float, default=None, help="label threshold instead of the operating point")
    p.add_argument("--out", default="-", help="output CSV (default: stdout)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="images per forward pass (default 8: on 2 CPU cores EfficientNet-Lite0 scores batches of 32 at 0.6x the "
        "rate of 8, batches of 1 at 1.1x; bench/predict_throughput.py)",
    )
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu) or a torch device")
    p.add_argument("--explain", default=None, metavar="DIR", help="also write an occlusion map per image here")
    p.add_argument("--params", default="params.yaml", help="the explain settings for --explain")

    p = command("explain", _explain, EXPLAIN_HELP, "occlusion heatmaps of image files")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, DICOM, any mode the preprocess stage reads)")
    p.add_argument("--model", default="models", help="model folder of the train stage (default: models)")
    p.add_argument("--out", default="explain", help="folder for the figures (default: explain)")
    p.add_argument("--evaluation", default="metrics/evaluate.json", help="the operating point (test.threshold)")
    p.add_argument("--threshold", type=float, default=None, help="label threshold instead of the operating point")
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--fill", choices=("zero", "blur"), default=None)
    p.add_argument("--method", choices=("exact", "approximate", "batched"), default=None)
    p.add_argument("--params", default="params.yaml")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns 0, or exits with its status (1: check failed, 2: usage or user error)."""
    args = build_parser().parse_args(argv)
    runner.run(lambda: args.handler(args), args.command)
    return 0
