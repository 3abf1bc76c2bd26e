"""Tests of mbls_nlp.newsgroups: cleaning like the paper's loader and like scikit-learn, the shared file layout."""

import datasets
import pytest

from mbls_nlp.newsgroups import clean_newsgroups, clean_newsgroups_text

RAW = (
    "From: a@b.c\nSubject: hi\n\nIn article <1@x> bob writes:\n> quoted\n| also quoted\nMy answer.\n"
    "He said: yes\n\n-- \nAlice\n\n"
)


def test_cleaning_modes_on_a_hand_made_message():
    assert clean_newsgroups_text(RAW, "none") == RAW
    # The reference loader keeps the text from the first "\n\n" on, the blank line included.
    assert clean_newsgroups_text(RAW, "headers") == RAW[RAW.index("\n\n") :]
    # sklearn: after the header; the footer starts at the last blank/hyphen line ("-- ") once trailing blank lines
    # are stripped, so the blank line before it stays (hence the final "\n"); then the 3 quote lines
    # ("In article", ">", "|") and the "said:" line go.
    assert clean_newsgroups_text(RAW, "all") == "My answer.\n"
    with pytest.raises(ValueError, match="mode.*'none', 'headers', 'all'"):
        clean_newsgroups_text(RAW, "footers")


def test_cleaning_edge_cases_follow_each_reference():
    no_blank = "Subject: only headers\nLines: 1"
    assert clean_newsgroups_text(no_blank, "headers") == no_blank  # reference: `if 0 < i` fails -> unchanged
    assert clean_newsgroups_text(no_blank, "all") == ""  # sklearn: str.partition gives an empty tail
    starts_blank = "\n\nbody"
    assert clean_newsgroups_text(starts_blank, "headers") == starts_blank  # i == 0 -> unchanged
    assert clean_newsgroups_text("H: x\n\n--\nonly a signature", "all") == "--\nonly a signature"  # footer at line 0


def test_cleaning_equals_scikit_learn_on_every_real_train_message(newsgroups):
    twenty = pytest.importorskip("sklearn.datasets._twenty_newsgroups")
    texts = list(newsgroups["train"]["text"])
    assert len(texts) == 11314
    mismatches = [
        i
        for i, text in enumerate(texts)
        if clean_newsgroups_text(text, "all")
        != twenty.strip_newsgroup_quoting(twenty.strip_newsgroup_footer(twenty.strip_newsgroup_header(text)))
    ]
    assert mismatches == []


def test_clean_newsgroups_maps_a_dataset_column(newsgroups):
    small = datasets.DatasetDict(
        train=newsgroups["train"].select(range(50)), test=newsgroups["test"].select(range(20))
    )
    for mode in ("headers", "all"):
        cleaned = clean_newsgroups(small, mode)
        for split in small:
            assert list(cleaned[split]["text"]) == [clean_newsgroups_text(t, mode) for t in small[split]["text"]]
            assert list(cleaned[split]["label"]) == list(small[split]["label"])
    headers = clean_newsgroups(small["train"], "headers")
    assert not any(t.lstrip().startswith("From:") for t in headers["text"])
    assert clean_newsgroups(small, "none") is small
    with pytest.raises(ValueError, match="text_column"):
        clean_newsgroups(small, "all", text_column="body")
    with pytest.raises(ValueError, match="mode"):
        clean_newsgroups(small, "quotes")


def test_load_newsgroups_names_the_labels(newsgroups):
    assert (newsgroups["train"].num_rows, newsgroups["test"].num_rows) == (11314, 7532)
    names = newsgroups["train"].features["label"].names
    assert len(names) == 20 and names == sorted(names)
    assert names[0] == "alt.atheism" and names[-1] == "talk.religion.misc"
    row = newsgroups["test"][100]
    assert names[row["label"]] == row["label_text"]


def test_load_newsgroups_checks_the_labels_against_train(tmp_path):
    import gzip
    import json

    from mbls_nlp.newsgroups import load_newsgroups

    def write(split, labels):
        rows = [{"text": f"m{i}", "label": y, "label_text": f"group.{y}"} for i, y in enumerate(labels)]
        (tmp_path / f"{split}.jsonl.gz").write_bytes(
            gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
        )

    write("train", [0, 1, 2] * 3)
    write("test", [2, 1, 25])  # a class train lacks
    with pytest.raises(ValueError, match=r"the test split \(file '.*test\.jsonl\.gz'\): \[25\] at row 2 \(0-based\)"):
        load_newsgroups(tmp_path, cache_dir=tmp_path / "cache")
    write("test", [2, 1, 0])
    ds = load_newsgroups(tmp_path, cache_dir=tmp_path / "cache")
    assert ds["test"].features["label"].names == ["group.0", "group.1", "group.2"]
