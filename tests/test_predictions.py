"""Reading and checking a predictions table (deepcovid/evaluation/predictions.py): each rule of
read_predictions on a small hand-written CSV, the values it returns and the numbers its messages
carry (file, column, count, first bad value and its image_id).

Written to kill the surviving mutants of mutation testing (bench/mutation.sh).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from deepcovid.evaluation.predictions import SplitData, load_predictions, read_predictions

HEAD = "image_id,label,split,score,group\n"
GOOD = HEAD + "a,1,test,0.9,covid\nb,0,test,0.2,normal\nc,1,val,0.7,covid\nd,0,val,0.0,other-disease\n"


def read(text: str, name: str = "preds.csv") -> pd.DataFrame:
    return read_predictions(io.StringIO(text), name=name)


def test_good_table_values():
    """Bugs: labels or scores not converted (int64 / float64), rows re-ordered or dropped."""
    df = read(GOOD)
    assert list(df["image_id"]) == ["a", "b", "c", "d"]
    assert df["label"].dtype == np.int64 and list(df["label"]) == [1, 0, 1, 0]
    assert df["score"].dtype == np.float64 and list(df["score"]) == [0.9, 0.2, 0.7, 0.0]
    assert list(df["split"]) == ["test", "test", "val", "val"]
    assert list(df["group"]) == ["covid", "normal", "covid", "other-disease"]


def test_text_kept_as_text():
    """Bugs: ids read as numbers ('007' -> 7) or 'NA' read as missing; blanks around values and
    column names, and the case of the split, not normalised."""
    text = (
        " image_id , label ,split, score ,group\n007,1, TEST ,0.5 , covid \nNA, 0 ,Val,1,normal\nnull,0,test,0,normal\n"
    )
    df = read(text)
    assert list(df.columns[:4]) == ["image_id", "label", "split", "score"]
    assert list(df["image_id"]) == ["007", "NA", "null"]
    assert list(df["split"]) == ["test", "val", "test"]
    assert list(df["label"]) == [1, 0, 0] and list(df["score"]) == [0.5, 1.0, 0.0]
    assert list(df["group"]) == ["covid", "normal", "normal"]


def test_other_splits_dropped_and_logged(caplog):
    """Bugs: train rows kept (or val/test rows dropped), the index not reset, the log count wrong."""
    text = GOOD + "e,1,train,0.5,covid\nf,0,TRAIN,0.5,normal\ng,0,holdout,0.3,normal\n"
    with caplog.at_level("INFO", logger="evaluate"):
        df = read(text, name="p.csv")
    assert list(df["image_id"]) == ["a", "b", "c", "d"] and list(df.index) == [0, 1, 2, 3]
    assert list(df.columns) == ["image_id", "label", "split", "score", "group"]
    msg = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert msg == ["p.csv: ignoring 3 rows of split 'holdout', 'train' (only val, test and external are evaluated)"]
    caplog.clear()
    with caplog.at_level("INFO", logger="evaluate"):
        read(GOOD)
    assert not any("ignoring" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "not a readable CSV file"),
        ('image_id,label,split,score\n"a,1,test,0.5\n', "not a readable CSV file"),
        ("image_id,split,group\na,test,covid\n", "missing column 'label'"),
        ("image_id,label,split\na,1,test\n", "missing column 'score'"),
        ("label,split,score\n1,test,0.5\n", "missing column 'image_id'"),
        (HEAD + "a,1,val,0.9,covid\nb,0,train,0.1,normal\n", "column 'split' has no 'test' rows"),
        (
            HEAD + "a,1,test,0.9,covid\nb,x,test,0.1,normal\nc,,test,0.1,normal\n",
            "column 'label' has 2 empty or non-numeric values (first: 'x' at image_id 'b')",
        ),
        (
            HEAD + "a,1,test,0.9,covid\nb,0,test,inf,normal\nc,0,test,abc,normal\n",
            "column 'score' has 2 empty or non-numeric values (first: 'inf' at image_id 'b')",
        ),
        (
            HEAD + "a,1,test,,covid\nb,0,test,0.1,normal\n",
            "column 'score' has 1 empty or non-numeric values (first: '' at image_id 'a')",
        ),
        (
            HEAD + "a,2,test,0.9,covid\nb,0,test,0.1,normal\nc,-1,test,0.1,normal\nd,0.5,test,0.1,normal\n",
            "column 'label' must hold 0 or 1 (1 = COVID-19); found [-1.0, 0.5, 2.0]",
        ),
        (HEAD + "a,1,test,1.01,covid\nb,0,test,0.1,normal\n", "found range [0.1, 1.01]"),
        (HEAD + "a,1,test,0.9,covid\nb,0,test,-0.01,normal\n", "found range [-0.01, 0.9]"),
        (
            HEAD + "a,1,test,0.9,covid\nb,0,test,0.1,normal\nb,0,test,0.2,normal\na,1,test,0.3,covid\n",
            "column 'image_id' repeats within a split (2 duplicates, e.g. 'b')",
        ),
        (HEAD + "a,1,test,0.9,covid\nb,0,test,0.1, \n", "column 'group' has empty values"),
    ],
)
def test_rejected_tables(text, fragment):
    """Bugs: a broken table accepted, or the message not naming the file, the column, the count and
    the first offending value."""
    with pytest.raises(ValueError) as err:
        read(text, name="dir/run.csv")
    message = str(err.value)
    assert message.startswith("dir/run.csv: ") and fragment in message, message


def test_bad_labels_listed_up_to_five():
    """Bug: more than the first five distinct bad labels listed."""
    rows = "".join(f"r{i},{v},test,0.5,normal\n" for i, v in enumerate([2, 3, 4, 5, 6, 7, 0, 1]))
    with pytest.raises(ValueError, match=r"found \[2.0, 3.0, 4.0, 5.0, 6.0\]$"):
        read(HEAD + rows)


def test_unreadable_bytes(tmp_path):
    """Bug: a non-UTF-8 file raising UnicodeDecodeError instead of a one-line error naming it."""
    path = tmp_path / "bad.csv"
    path.write_bytes(b"image_id,label,split,score\n\xff\xfe,1,test,0.5\n")
    with pytest.raises(ValueError, match=r"bad.csv: not a readable CSV file \(.*codec") as err:
        load_predictions(path)
    assert str(path) in str(err.value)


def test_limits_accepted():
    """Bugs: scores of exactly 0 or 1 rejected; the same image_id in val and test rejected."""
    df = read(HEAD + "a,1,test,1.0,covid\nb,0,test,0,normal\na,1,val,1,covid\nb,0,val,0.0,normal\n")
    assert list(df["score"]) == [1.0, 0.0, 1.0, 0.0]


def test_group_disagreeing_with_label_warned(caplog):
    """Bug: rows whose group disagrees with their label not counted in the warning."""
    text = HEAD + "a,1,test,0.9,normal\nb,0,test,0.1,covid\nc,1,test,0.8,covid\nd,0,test,0.2,normal\n"
    with caplog.at_level("WARNING", logger="evaluate"):
        df = read(text, name="p.csv")
    assert list(df["group"]) == ["normal", "covid", "covid", "normal"]
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["p.csv: 2 rows whose group disagrees with the label (e.g. a: group 'normal', label 1)"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="evaluate"):
        read(GOOD)
    assert not caplog.records


def test_group_derived_from_label(caplog):
    """Bug: without a group column, the groups not derived from the label (covid / non-covid)."""
    text = "image_id,label,split,score\na,1,test,0.9\nb,0,test,0.2\nc,0,val,0.7\n"
    with caplog.at_level("WARNING", logger="evaluate"):
        df = read(text, name="p.csv")
    assert list(df["group"]) == ["covid", "non-covid", "non-covid"]
    assert [r.getMessage() for r in caplog.records] == [
        "p.csv: no 'group' column; score histograms use covid / non-covid from the label"
    ]


def test_load_predictions_path(tmp_path):
    """Bugs: a missing file not reported as such; the path not used as the name in messages."""
    with pytest.raises(FileNotFoundError, match="nope.csv: predictions file not found"):
        load_predictions(tmp_path / "nope.csv")
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError):
        load_predictions(tmp_path / "d")
    path = tmp_path / "p.csv"
    path.write_text(GOOD.replace("0.9", "1.5"))
    with pytest.raises(ValueError, match="^" + str(path).replace(".", r"\.") + ": column 'score'"):
        load_predictions(str(path))
    path.write_text(GOOD)
    assert list(load_predictions(path)["label"]) == [1, 0, 1, 0]


def test_split_data():
    """Bugs: SplitData's arrays of the wrong type, or both_classes true with one class or none."""
    df = read(GOOD)
    test = SplitData(df[df["split"] == "test"])
    assert test.labels.dtype == np.int64 and list(test.labels) == [1, 0]
    assert test.scores.dtype == np.float64 and list(test.scores) == [0.9, 0.2]
    assert test.both_classes
    assert not SplitData(df.iloc[:0]).both_classes
    assert not SplitData(df[df["label"] == 1]).both_classes
    assert not SplitData(df[df["label"] == 0]).both_classes
    assert not SplitData(df.iloc[:1]).both_classes
