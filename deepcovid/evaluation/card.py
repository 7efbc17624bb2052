"""The model card (``models/MODEL_CARD.md``), generated from the pipeline's outputs, never by hand.

The text is the template ``templates/model_card.md.j2``; this module computes what fills it.

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
from deepcovid.config import DatasetSources, Params
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


def limitations(
    *, dataset: str, evaluation: dict, audit: dict | None, repeats: dict | None, explain: dict | None, train: dict
) -> list[str]:
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
        out.append(
            f"Over {r['splits']} repeated patient-grouped splits the test AUC ranged over "
            f"[{r['auc']['p2_5']:.3f}, {r['auc']['p97_5']:.3f}] and the specificity at the validation-chosen "
            f"operating point over [{r['specificity']['p2_5']:.3f}, {r['specificity']['p97_5']:.3f}] "
            f"(2.5th-97.5th percentiles): a single split's numbers move with the split."
        )
    if explain is not None and explain.get("pointing_lung") is not None:
        out.append(
            f"Occlusion heatmaps of {explain['images']} test images put {explain['lung_mass']:.0%} of their mass "
            f"inside the lungs (which cover {explain['lung_area']:.0%} of them); their maximum lies in the lungs "
            f"for {explain['pointing_lung']:.0%} (randomised head: {explain['random_pointing_lung']:.0%})."
        )
    if "external" not in evaluation:
        out.append("No external test: every test image comes from the same collections as the training images.")
    if train.get("best_epoch") == train.get("epochs_run"):
        out.append("The best validation epoch is the last one: training had not converged.")
    out.append("Frontal views only (PA / AP): lateral images and other body parts are out of scope.")
    out.append("Not validated prospectively, on other hospitals' data at scale, or against radiologists.")
    return out


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("deepcovid.evaluation", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(ci=_ci, f3=lambda v: f"{v:.3f}", g=lambda v: f"{v:g}")
    return env


def model_card(
    *,
    model_json: dict,
    model_sha256: str,
    dataset: str,
    sources: DatasetSources,
    augment_copies: int,
    exclusions_file: str,
    target_sensitivity: float,
    data: dict,
    filter_report: dict,
    exclusions: tuple[int, str],
    train: dict,
    evaluation: dict,
    audit: dict | None,
    repeats: dict | None,
    explain: dict | None,
    registered_name: str,
) -> str:
    """The Markdown text of the card: ``templates/model_card.md.j2`` filled with the numbers.
    ``dataset`` and ``sources``: the configuration the model was trained on."""
    weights, prep = model_json["weights"], model_json["preprocessing"]
    test = evaluation["test"]
    performance = [("test", test)] + ([("external test", evaluation["external"])] if "external" in evaluation else [])
    readability = [
        (what, part, sec)
        for what in ("source", "view")
        for part, sec in (audit or {}).get(f"{what}_readability", {}).items()
        if "auc" in sec
    ]
    style, pa_only = (audit or {}).get("style_baseline", {}), (audit or {}).get("pa_only", {})
    n_exclusions, exclusions_sha256 = exclusions
    context = {
        "registered_name": registered_name,
        "dataset": dataset,
        "arch": model_json["architecture"],
        "model": model_json,
        "cfg": model_json["train"],
        "prep": prep,
        "train": train,
        "weights": {
            k: weights.get(k) for k in ("weights", "weights_source", "weights_sha256", "weights_verified", "head")
        },
        "augment_copies": augment_copies,
        "model_sha256": model_sha256,
        "mean": [round(m, 4) for m in prep["mean"]],
        "std": [round(s, 4) for s in prep["std"]],
        "sources": sources,
        "filter_sources": [
            {**src, "removed_text": ", ".join(f"{k} {v}" for k, v in src["removed"].items() if v)}
            for src in filter_report.get("sources", [])
        ],
        "exclusions_file": exclusions_file,
        "n_exclusions": n_exclusions,
        "exclusions_sha256": exclusions_sha256,
        "near_duplicates": {"groups": 0, "images": 0, **data.get("near_duplicates", {})},
        "shared": {"images": 0, "excluded": False, **data.get("negatives_of_covid_patients", {})},
        "counts": [
            (split, data[split])
            for split in ("train", "val", "test", "external")
            if data.get(split) and data[split].get("images")
        ],
        "test": test,
        "chosen_on_val": bool(test.get("threshold_chosen_on_val")),
        "val": evaluation.get("val"),
        "target_sensitivity": target_sensitivity,
        "performance": performance,
        "repeats": repeats["repeats"] if repeats is not None and "repeats" in repeats else None,
        "audit": audit,
        "readability": readability,
        "style": style if "auc" in style else None,
        "pa_only": pa_only if "auc" in pa_only else None,
        "limitations": limitations(
            dataset=dataset, evaluation=evaluation, audit=audit, repeats=repeats, explain=explain, train=train
        ),
    }
    return _environment().get_template("model_card.md.j2").render(context)


def write_card(
    *,
    models: str | Path,
    data_json,
    filter_report,
    train_json,
    evaluation_json,
    audit_json,
    repeats_json,
    explain_json,
    params: Params,
    out: str | Path,
) -> str:
    """Read the inputs, write the card to ``out`` (atomically) and return the SHA-256 of the
    model's state_dict it describes (the MLflow run's ``model_sha256`` tag)."""
    from deepcovid.model.tracking import registered_name

    models = Path(models)
    model_json = _read_json(models / "model.json")
    pt = models / "model.pt"
    if not pt.is_file():
        raise CardError(f"{pt} not found: run dvc repro train")
    digest = files.sha256_file(pt)
    dataset = model_json.get("dataset") or params.dataset
    text = model_card(
        model_json=model_json,
        model_sha256=digest,
        dataset=dataset,
        sources=params.datasets[dataset],
        augment_copies=params.augment.copies,
        exclusions_file=params.filter.exclusions,
        target_sensitivity=params.evaluate.target_sensitivity,
        data=_read_json(data_json),
        filter_report=_read_json(filter_report),
        exclusions=_exclusions(Path(params.filter.exclusions)),
        train=_read_json(train_json),
        evaluation=_read_json(evaluation_json),
        audit=_read_json(audit_json, required=False),
        repeats=_read_json(repeats_json, required=False),
        explain=_read_json(explain_json, required=False),
        registered_name=registered_name(model_json["architecture"]),
    )
    files.write_text(out, text)
    return digest
