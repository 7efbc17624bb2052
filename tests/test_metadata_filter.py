"""Metadata readers and the positive-selection rules, on small hand-made tables and real files."""

import csv
import io

import pandas as pd
import pytest

from deepcovid.data.metadata import MetadataError, chexpert_root, read_chexpert, read_cohen_style
from deepcovid.data.positives import filter_positives, is_frontal, read_exclusions

FRONTAL = ["PA", "AP", "AP Supine", "AP semi erect", "AP erect"]
COHEN_HEADER = (
    "patientid,offset,sex,age,finding,survival,intubated,intubation_present,went_icu,in_icu,"
    "needed_supplemental_O2,extubated,temperature,pO2_saturation,leukocyte_count,neutrophil_count,"
    "lymphocyte_count,view,modality,date,location,folder,filename,doi,url,license,clinical_notes,other_notes,"
)


def _cohen_row(pid, finding, view, modality, filename, folder="images"):
    cells = (
        [pid, "0", "M", "50", finding] + [""] * 12 + [view, modality, "", "", folder, filename, "", "", "", "", "", ""]
    )
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(cells)
    return buf.getvalue()


@pytest.fixture
def cohen_csv(tmp_path):
    rows = [
        _cohen_row("1", "COVID-19", "PA", "X-ray", "a.jpg"),
        _cohen_row("1", "COVID-19", "L", "X-ray", "a_lat.jpg"),
        _cohen_row("2", "COVID-19, ARDS", "AP Supine", "X-ray", "b.png"),
        _cohen_row("3", "Pneumonia/Viral/COVID-19", "AP", "X-ray", "c.jpg"),
        _cohen_row("4", "COVID-19", "Axial", "CT", "d.jpg", folder="volumes"),
        _cohen_row("5", "SARS", "PA", "X-ray", "e.jpg"),
        _cohen_row("6", "", "PA", "X-ray", "f.jpg"),
        _cohen_row("7", "todo", "PA", "X-ray", "g.jpg"),
        _cohen_row("8", "COVID-19", "PA", "X-ray", "h.jpg"),
    ]
    path = tmp_path / "metadata.csv"
    path.write_text(COHEN_HEADER + "\n" + "\n".join(rows) + "\n")
    return path


def _exclusions(tmp_path, rows=""):
    path = tmp_path / "excl.csv"
    path.write_text("filename,decision,reason,reviewer\n" + rows)
    return read_exclusions(path)


def test_cohen_reader_normalises(cohen_csv):
    meta = read_cohen_style(cohen_csv, "cohen")
    assert list(meta.columns) == ["source", "relpath", "patient", "finding", "view", "modality", "offset"]
    assert len(meta) == 9
    assert meta.loc[4, "relpath"] == "volumes/d.jpg"
    assert meta.loc[6, "finding"] == ""


def test_filter_rules_and_counts(cohen_csv, tmp_path):
    meta = read_cohen_style(cohen_csv, "cohen")
    kept, report = filter_positives(meta, FRONTAL, _exclusions(tmp_path, "h.jpg,exclude,blurred,AB\n"))
    assert sorted(kept["relpath"]) == ["images/a.jpg", "images/b.png", "images/c.jpg"]
    assert report["removed"] == {
        "not X-ray": 1,
        "not COVID-19": 3,
        "not frontal": 1,
        "no file name": 0,
        "radiologist list": 1,
    }
    assert report["kept"] == 3 and set(kept["group"]) == {"covid"} and set(kept["label"]) == {1}


def test_missing_files_counted(cohen_csv, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"x")
    meta = read_cohen_style(cohen_csv, "cohen")
    kept, report = filter_positives(meta, FRONTAL, _exclusions(tmp_path), root=tmp_path)
    assert report["removed"]["image file missing"] == 3 and len(kept) == 1


def test_unmatched_exclusions_reported(cohen_csv, tmp_path):
    meta = read_cohen_style(cohen_csv, "cohen")
    _, report = filter_positives(meta, FRONTAL, _exclusions(tmp_path, "zzz.jpg,exclude,x,AB\na.jpg,include,ok,AB\n"))
    assert report["exclusion_list_unmatched"] == ["zzz.jpg"] and report["kept"] == 4


def test_bad_decision_rejected(tmp_path):
    path = tmp_path / "excl.csv"
    path.write_text("filename,decision,reason,reviewer\na.jpg,maybe,x,AB\n")
    with pytest.raises(MetadataError, match="line 2: decision 'maybe'"):
        read_exclusions(path)


def test_column_variants_and_trailing_column(tmp_path):
    path = tmp_path / "metadata.csv"
    path.write_text("Patient_ID,Findings,View,imagename,\nANON1,No finding,PA,x.png,\n")
    meta = read_cohen_style(path, "actualmed")
    assert meta.loc[0, "relpath"] == "images/x.png" and meta.loc[0, "modality"] == "X-ray"


def test_missing_column_is_one_clear_line(tmp_path):
    path = tmp_path / "metadata.csv"
    path.write_text("patientid,finding,filename\n1,COVID-19,a.jpg\n")
    with pytest.raises(MetadataError) as err:
        read_cohen_style(path, "cohen")
    assert str(path) in str(err.value) and "'view'" in str(err.value) and "\n" not in str(err.value)


def test_frontal_never_lateral():
    views = pd.Series(["PA", "ap supine", "L", "Lateral", "AP  Supine", "Axial"])
    assert is_frontal(views, FRONTAL).tolist() == [True, True, False, False, True, False]


def test_chexpert_reader(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    cats = (
        "No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,"
        "Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices"
    )
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + cats
    row = "CheXpert-v1.0-small/train/patient00007/study1/view1_frontal.jpg,Male,60,Frontal,AP,1.0" + ",," * 6 + ",-1.0"
    (root / "train.csv").write_text(header + "\n" + row + "\n")
    assert chexpert_root(tmp_path) == root and chexpert_root(root) == root
    table = read_chexpert(root)
    assert table.loc[0, "relpath"] == "train/patient00007/study1/view1_frontal.jpg"
    assert table.loc[0, "patient"] == "patient00007" and bool(table.loc[0, "frontal"])
    assert table.loc[0, "No Finding"] == 1.0 and table.loc[0, "Support Devices"] == -1.0
    with pytest.raises(MetadataError, match="fetch.chexpert.path"):
        chexpert_root(tmp_path / "nowhere")


def test_real_cohen_and_actualmed(shared_data):
    frontal = FRONTAL
    excl = pd.DataFrame(columns=["filename", "decision", "reason", "reviewer", "source"])
    cohen = read_cohen_style(shared_data / "cohen" / "metadata.csv", "cohen")
    assert len(cohen) == 575  # the README's row count
    kept, report = filter_positives(cohen, frontal, excl, root=shared_data / "cohen")
    # 451 rows with a COVID-19 finding, all X-ray; the lateral ones go
    assert report["covid_xray_rows"] == 451
    assert report["removed"]["not frontal"] == 24 and report["kept"] == 427
    assert report["removed"]["image file missing"] == 0
    assert not kept["view"].str.upper().isin(["L"]).any()
    actualmed = read_cohen_style(shared_data / "actualmed" / "metadata.csv", "actualmed")
    kept_a, report_a = filter_positives(actualmed, frontal, excl, root=shared_data / "actualmed")
    assert report_a["kept"] == 26 and kept_a["patient"].str.startswith("ANON").all()
