"""The model card (``models/MODEL_CARD.md``), generated from the pipeline's outputs, never by hand.

Everything in it is read from a file the pipeline wrote (model.json, the metrics of the split,
train, evaluate, audit, repeats and explain stages, the filter's report and the radiologist
list) or from params.yaml; sections whose stage did not run say so. The limitations are derived
from the same numbers: a flagged shortcut, synthetic data, a small test set, a wide spread over
repeated splits, heatmaps that miss the lungs. The text holds no date or path of the machine, so
the same inputs give the same bytes.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from deepcovid import files
from deepcovid.errors import InputError

log = logging.getLogger(__name__)


class CardError(InputError):
    """An input the card needs is missing or unreadable (one line, names the file)."""


def _read_json(path: Path, required: bool = True) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise CardError(f"{path} not found: run dvc repro up to the stage that writes it") from None
        return None
    except json.JSONDecodeError as exc:
        raise CardError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def _ci(section: dict, key: str, digits: int = 3) -> str:
    v, lo, hi = section[key], section.get(f"{key}_low"), section.get(f"{key}_high")
    if lo is None or hi is None:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _exclusions(path: Path) -> tuple[int, str]:
    """Number of decisions in the radiologist list and its SHA-256 (an absent list: 0, "absent")."""
    if not path.is_file():
        return 0, "absent"
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if any((v or "").strip() for v in r.values())]
    return len(rows), files.sha256_file(path)


def _counts_table(data: dict) -> list[str]:
    lines = ["| split | images | patients | COVID-19 | normal | other disease |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for split in ("train", "val", "test", "external"):
        r = data.get(split)
        if r and r.get("images"):
            lines.append(f"| {split} | {r['images']} | {r['patients']} | {r['covid']} | {r['normal']} | "
                         f"{r['other-disease']} |")
    return lines


def _performance(section: dict, name: str) -> str:
    counts = f"{section['n_pos']} / {section['n_neg']}" if "n_pos" in section else ""
    return (f"| {name} | {counts} | {_ci(section, 'auc')} | "
            f"{_ci(section, 'sensitivity')} | {_ci(section, 'specificity')} | {section['ap']:.3f} | "
            f"{section['ece']:.3f} |")


def limitations(*, dataset: str, evaluation: dict, audit: dict | None, repeats: dict | None,
                explain: dict | None, train: dict) -> list[str]:
    """The known limitations, derived from the numbers (each a sentence)."""
    out = []
    test = evaluation["test"]
    if dataset == "synthetic":
        out.append("Trained and tested on generated (synthetic) images: the numbers say nothing about real X-rays.")
    if audit is not None:
        flags = audit["flags"]
        if flags.get("any"):
            out.append(f"The confounder audit flags it. {audit['verdict']}")
    else:
        out.append("No confounder audit was run for this model.")
    if test["n_pos"] < 200 or test["n_neg"] < 200:
        out.append(f"Small test set ({test['n_pos']} COVID-19, {test['n_neg']} other images): the intervals are wide.")
    if repeats is not None and "repeats" in repeats:
        r = repeats["repeats"]
        out.append(f"Over {r['splits']} repeated patient-grouped splits the test AUC ranged over "
                   f"[{r['auc']['p2_5']:.3f}, {r['auc']['p97_5']:.3f}] and the specificity at the validation-chosen "
                   f"operating point over [{r['specificity']['p2_5']:.3f}, {r['specificity']['p97_5']:.3f}] "
                   f"(2.5th-97.5th percentiles): a single split's numbers move with the split.")
    if explain is not None and explain.get("pointing_lung") is not None:
        out.append(f"Occlusion heatmaps of {explain['images']} test images put {explain['lung_mass']:.0%} of their mass "
                   f"inside the lungs (which cover {explain['lung_area']:.0%} of them); their maximum lies in the lungs "
                   f"for {explain['pointing_lung']:.0%} (randomised head: {explain['random_pointing_lung']:.0%}).")
    if "external" not in evaluation:
        out.append("No external test: every test image comes from the same collections as the training images.")
    if train.get("best_epoch") == train.get("epochs_run"):
        out.append("The best validation epoch is the last one: training had not converged.")
    out.append("Frontal views only (PA / AP): lateral images and other body parts are out of scope.")
    out.append("Not validated prospectively, on other hospitals' data at scale, or against radiologists.")
    return out


def model_card(*, model_json: dict, model_sha256: str, params: dict, data: dict, filter_report: dict,
               exclusions: tuple[int, str], train: dict, evaluation: dict, audit: dict | None,
               repeats: dict | None, explain: dict | None, registered_name: str) -> str:
    """The Markdown text of the card."""
    arch, dataset = model_json["architecture"], model_json.get("dataset") or params["dataset"]
    weights, cfg, prep = model_json["weights"], model_json["train"], model_json["preprocessing"]
    test = evaluation["test"]
    sources = params["datasets"][dataset]
    lines = [f"# Model card: {registered_name} (`dataset: {dataset}`)", "",
             "Generated by the `card` stage (`deepcovid/evaluation/card.py`) from the pipeline's outputs; do not edit "
             "by hand: `dvc repro` rewrites it.", "",
             "## Intended use", "",
             "**For research only. Not for clinical diagnosis, triage or any decision about a patient.** It is a "
             "rebuild of the Deep-COVID study (Minaee et al., 2020) to measure what such a classifier learns; "
             "COVID-19 classifiers built this way are known to learn the source, view and processing of an image "
             "rather than disease (DeGrave et al., 2021; Roberts et al., 2021). Read the audit and limitations below "
             "before using any number.", "",
             "## Model", "",
             f"- Architecture: `{arch}`; output: softmax probability of COVID-19 (classes {', '.join(model_json['classes'])}).",
             f"- Weights: {weights['weights']} from `{weights.get('weights_source')}`"
             + (f" (SHA-256 `{weights['weights_sha256'][:16]}...`, verified: {weights.get('weights_verified')})"
                if weights.get("weights_sha256") else "") + f"; head: {weights.get('head')}.",
             f"- Training: `train.mode: {cfg['mode']}` ({'last layer on frozen features, as the paper' if cfg['mode'] == 'last_layer' else 'whole network'}), "
             f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, Adam lr {cfg['lr']:g}, weight decay {cfg['weight_decay']:g}, "
             f"class weight {cfg['class_weight']}, seed {model_json['seed']}; best validation epoch {train['best_epoch']} "
             f"of {train['epochs_run']}; {train['train_images']} training images (with augmented copies: "
             f"{params['augment']['copies']} per COVID-19 training image).",
             f"- Input: {prep['input_size']} px, {'grayscale replicated to 3 channels' if prep['grayscale'] else 'RGB'}, "
             f"resize `{prep['resize']}` via a {prep['cache_size']} px cache, {prep['interpolation']} interpolation, "
             f"normalised with mean {[round(m, 4) for m in prep['mean']]} and std {[round(s, 4) for s in prep['std']]}.",
             f"- Files: `models/model.pt` (state_dict, SHA-256 `{model_sha256}`), `models/model.json`; MLflow registry "
             f"name `{registered_name}` (loads without unpickling code).",
             "",
             "## Data", "",
             f"- Configuration `{dataset}`: positives from {', '.join(sources['positives'])}; negatives from "
             f"{', '.join(sources['negatives'])}.",
             ]
    for src in filter_report.get("sources", []):
        removed = ", ".join(f"{k} {v}" for k, v in src["removed"].items() if v)
        lines.append(f"- {src['source']}: {src['rows']} metadata rows; kept {src['kept']} COVID-19 X-rays of "
                     f"{src['kept_patients']} patients (removed: {removed or 'none'}).")
    n_excl, digest = exclusions
    lines.append(f"- Radiologist exclusion list `{params['filter']['exclusions']}`: {n_excl} decisions"
                 + (f" (SHA-256 `{digest[:16]}...`)" if n_excl else "") + ".")
    nd = data.get("near_duplicates", {})
    shared = data.get("negatives_of_covid_patients", {})
    lines.append(f"- Split by patient and near-duplicate group ({nd.get('groups', 0)} groups, {nd.get('images', 0)} "
                 f"images); {shared.get('images', 0)} negatives of patients with COVID-19 images "
                 f"{'left out' if shared.get('excluded') else 'kept with that patient'}.")
    lines += ["", *_counts_table(data), "",
              "## Performance", "",
              f"Operating point {test['threshold']:.4g}, chosen on validation for sensitivity >= "
              f"{params['evaluate']['target_sensitivity']:g} "
              f"({'validation' if test.get('threshold_chosen_on_val') else 'NOT validation: the test split'}); "
              f"95% intervals (AUC: DeLong; proportions: Wilson or as configured).", "",
              "| split | COVID-19 / other | AUC | sensitivity | specificity | AP | ECE (calibration) |",
              "| --- | --- | --- | --- | --- | ---: | ---: |",
              _performance(test, "test")]
    if "external" in evaluation:
        lines.append(_performance(evaluation["external"], "external test"))
    if repeats is not None and "repeats" in repeats:
        r = repeats["repeats"]
        lines += ["", f"Over {r['splits']} repeated patient-grouped splits (last layer retrained, original images only): "
                  f"AUC mean {r['auc']['mean']:.3f} (SD {r['auc']['sd']:.3f}), sensitivity {r['sensitivity']['mean']:.3f}, "
                  f"specificity {r['specificity']['mean']:.3f} (2.5th-97.5th percentiles "
                  f"[{r['specificity']['p2_5']:.3f}, {r['specificity']['p97_5']:.3f}])."]
    lines += ["", "## Calibration", "",
              f"Expected calibration error on test {test['ece']:.3f}"
              + (f", on validation {evaluation['val']['ece']:.3f}" if "val" in evaluation else "")
              + ". The score is a probability only under the training prevalence "
              f"({test['n_pos'] / (test['n_pos'] + test['n_neg']):.2f} COVID-19 in test); recalibrate before reading it as a risk elsewhere.", ""]
    lines += ["## Confounder audit", ""]
    if audit is None:
        lines += ["Not run.", ""]
    else:
        m = audit["metadata_baseline"]
        lines.append(f"- Verdict: {audit['verdict']}")
        for what in ("source", "view"):
            for part, sec in audit[f"{what}_readability"].items():
                if "auc" in sec:
                    lines.append(f"- {what.capitalize()} read from the image features ({part}): AUC {_ci(sec, 'auc')}.")
        lines.append(f"- Metadata-only baseline ({', '.join(audit['settings']['metadata'])}): AUC {_ci(m, 'auc')}; "
                     f"the model {m['model_auc']:.3f}, difference {m['difference']:+.3f} "
                     f"[{m['difference_low']:+.3f}, {m['difference_high']:+.3f}].")
        st = audit.get("style_baseline", {})
        if "auc" in st:
            lines.append(f"- Image-statistics (style) baseline (intensity distribution, border, sharpness, stored size): "
                         f"AUC {_ci(st, 'auc')}; difference of the model {st['difference']:+.3f} "
                         f"[{st['difference_low']:+.3f}, {st['difference_high']:+.3f}].")
        if "auc" in audit.get("pa_only", {}):
            lines.append(f"- PA images only: AUC {_ci(audit['pa_only'], 'auc')}.")
        lines.append("")
    lines += ["## Known limitations", ""]
    lines += [f"- {s}" for s in limitations(dataset=dataset, evaluation=evaluation, audit=audit, repeats=repeats,
                                          explain=explain, train=train)]
    return "\n".join(lines) + "\n"


def write_card(*, models: str | Path, data_json, filter_report, exclusions, train_json, evaluation_json, audit_json,
               repeats_json, explain_json, params: dict, out: str | Path) -> str:
    """Read the inputs, write the card to ``out`` (atomically) and return the SHA-256 of the
    model's state_dict it describes (the MLflow run's ``model_sha256`` tag)."""
    from deepcovid.tracking import registered_name

    models = Path(models)
    model_json = _read_json(models / "model.json")
    pt = models / "model.pt"
    if not pt.is_file():
        raise CardError(f"{pt} not found: run dvc repro train")
    digest = files.sha256_file(pt)
    text = model_card(model_json=model_json, model_sha256=digest, params=params,
                      data=_read_json(data_json), filter_report=_read_json(filter_report),
                      exclusions=_exclusions(Path(exclusions)), train=_read_json(train_json),
                      evaluation=_read_json(evaluation_json), audit=_read_json(audit_json, required=False),
                      repeats=_read_json(repeats_json, required=False), explain=_read_json(explain_json, required=False),
                      registered_name=registered_name(model_json["architecture"]))
    files.write_text(out, text)
    return digest
