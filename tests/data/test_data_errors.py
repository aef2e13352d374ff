"""Every class of bad input raises DataFormatError naming the file and the field; --skip-bad reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from multisk.data.encoders import word_vectors as wv
from multisk.data.formats.eval_pickles import load_msrvtt, load_youcook2
from multisk.data.formats.howto100m import HowTo100MDataset, load_npz_array
from multisk.data.encoders.text import encode_text
from multisk.errors import DataFormatError

from test_data_formats import (  # noqa: E402  (pytest puts tests/ on sys.path)
    make_keyed_vectors,
    msrvtt_record,
    write_howto_fixture,
    write_pickle,
    write_word2vec_binary,
    youcook_record,
)


# converted word vectors go to a per-test cache (tests/conftest.py), not ~/.cache
pytestmark = pytest.mark.usefixtures("isolated_word_vector_cache")


def expect_error(call, *fragments):
    with pytest.raises(DataFormatError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in {message!r}"
    return message


# -- word vectors ---------------------------------------------------------------------------------


def test_word_vectors_missing_empty_and_truncated(tmp_path):
    expect_error(lambda: wv.load_word_vectors(str(tmp_path / "nope.bin"), use_cache=False), "nope.bin", "not found")
    (tmp_path / "empty.txt").write_bytes(b"")
    expect_error(lambda: wv.load_word_vectors(str(tmp_path / "empty.txt"), use_cache=False), "empty.txt")
    write_word2vec_binary(tmp_path / "full.bin")
    data = (tmp_path / "full.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    expect_error(lambda: wv.load_word_vectors(str(tmp_path / "cut.bin"), use_cache=False), "cut.bin")
    (tmp_path / "ragged.txt").write_text("2 3\nfoo 1 2 3\nbar 1 2\n", encoding="utf-8")
    expect_error(lambda: wv.load_word_vectors(str(tmp_path / "ragged.txt"), use_cache=False), "ragged.txt")
    (tmp_path / "nan.txt").write_text("2 2\nfoo 1 nan\nbar 1 2\n", encoding="utf-8")
    expect_error(lambda: wv.load_word_vectors(str(tmp_path / "nan.txt"), use_cache=False), "nan.txt", "'vectors'", "NaN")


def test_empty_and_non_utf8_captions_name_the_field():
    kv = make_keyed_vectors()
    expect_error(lambda: encode_text(kv, "   ", where="f.pkl: item 3 field 'caption'"), "f.pkl", "'caption'", "empty")
    expect_error(lambda: encode_text(kv, b"\xff\xfe bad", where="f.pkl: item 3 field 'caption'"), "f.pkl", "UTF-8")
    expect_error(lambda: encode_text(kv, 12, where="f.pkl: item 3 field 'caption'"), "'caption'", "string")


# -- npz features --------------------------------------------------------------------------------


def test_npz_wrong_key_shape_nan_and_truncation(tmp_path):
    rng = np.random.default_rng(0)
    good = rng.standard_normal((5, 2048)).astype(np.float32)
    np.savez(tmp_path / "wrongkey_2d.npz", feats=good)
    expect_error(lambda: load_npz_array(tmp_path / "wrongkey_2d.npz", "features", (None, 2048)),
                 "wrongkey_2d.npz", "missing field 'features'", "feats")
    np.savez(tmp_path / "dim_2d.npz", features=good[:, :1024])
    expect_error(lambda: load_npz_array(tmp_path / "dim_2d.npz", "features", (None, 2048)),
                 "dim_2d.npz", "'features'", "(T, 2048)", "(5, 1024)")
    bad = good.copy()
    bad[2, 7] = np.inf
    np.savez(tmp_path / "inf_2d.npz", features=bad)
    expect_error(lambda: load_npz_array(tmp_path / "inf_2d.npz", "features", (None, 2048)), "inf_2d.npz", "'features'", "NaN or inf")
    np.savez(tmp_path / "full.npz", features=good)
    raw = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut_2d.npz").write_bytes(raw[: len(raw) // 3])
    expect_error(lambda: load_npz_array(tmp_path / "cut_2d.npz", "features", (None, 2048)), "cut_2d.npz", "'features'")
    expect_error(lambda: load_npz_array(tmp_path / "gone_2d.npz", "features", (None, 2048)), "gone_2d.npz", "not found")


def test_howto_layout_errors(tmp_path):
    fx = write_howto_fixture(tmp_path)
    kv = make_keyed_vectors()
    (tmp_path / "nopath.csv").write_text("video\nx/y\n", encoding="utf-8")
    expect_error(lambda: HowTo100MDataset(tmp_path / "nopath.csv", fx["features"], fx["audio"], fx["captions"], kv),
                 "nopath.csv", "missing field 'path'")
    expect_error(lambda: HowTo100MDataset(fx["csv"], tmp_path / "elsewhere", fx["audio"], fx["captions"], kv),
                 "elsewhere", "'features_path'")
    # audio with 64 mel bins instead of 40
    np.savez(fx["audio"] / "cooking/vidA/vidA_spec.npz", np.zeros((64, 500), np.float32))
    ds = HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], kv)
    expect_error(lambda: ds[0], "vidA_spec.npz", "'arr_0'", "(40, T)")
    # strict: a missing 3D file is an error
    strict = HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], kv, strict_files=True)
    expect_error(lambda: strict[1], "vidB_3d.npz", "'features'", "not found")
    # caption entries: a missing key, mismatched lengths
    captions = dict(fx["caption_data"])
    captions["vidB"] = {"start": np.array([0.0]), "text": np.array(["x"], dtype=object)}
    write_pickle(fx["captions"], captions)
    ds = HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], kv)
    expect_error(lambda: ds[1], "caption.pickle", "vidB", "missing field 'end'")
    captions["vidB"] = {"start": np.array([0.0, 1.0]), "end": np.array([1.0, 2.0]), "text": np.array(["x"], dtype=object)}
    write_pickle(fx["captions"], captions)
    ds = HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], kv)
    expect_error(lambda: ds[1], "caption.pickle", "'text'", "lengths differ")
    raw = fx["captions"].read_bytes()
    fx["captions"].write_bytes(raw[: len(raw) // 2])
    expect_error(lambda: HowTo100MDataset(fx["csv"], fx["features"], fx["audio"], fx["captions"], kv),
                 "caption.pickle", "'caption'", "truncated or corrupt")


# -- evaluation pickles --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate, fragments",
    [
        (lambda r: r.pop("3d"), ["item 1 (id 'v1')", "missing field '3d'"]),
        (lambda r: r.update({"2d": np.zeros((4, 1024), np.float32)}), ["item 1 (id 'v1')", "'2d'", "(T, 2048)"]),
        (lambda r: r.update({"audio": np.zeros((128, 50), np.float32)}), ["item 1 (id 'v1')", "'audio'", "(40, T)"]),
        (lambda r: r["3d"].__setitem__((0, 0), np.nan), ["item 1 (id 'v1')", "'3d'", "NaN or inf"]),
        (lambda r: r.update({"eval_caption": ""}), ["item 1 (id 'v1')", "'eval_caption'", "empty"]),
        (lambda r: r.update({"eval_caption": b"\xc3\x28 broken"}), ["item 1 (id 'v1')", "'eval_caption'", "UTF-8"]),
        (lambda r: r.update({"2d": "not an array"}), ["item 1 (id 'v1')", "'2d'"]),
    ],
)
def test_msrvtt_bad_items_name_file_item_and_field(tmp_path, mutate, fragments):
    rng = np.random.default_rng(0)
    records = [msrvtt_record(rng, f"v{i}", f"a man is cooking {i}") for i in range(3)]
    mutate(records[1])
    path = write_pickle(tmp_path / "msrvtt_jsfusion_test.pkl", records)
    expect_error(lambda: load_msrvtt(path), "msrvtt_jsfusion_test.pkl", *fragments)
    skipped = load_msrvtt(path, skip_bad=True)
    assert [i["id"] for i in skipped.items] == ["v0", "v2"]
    assert skipped.bad[0]["item"] == "v1" and skipped.bad[0]["file"].endswith("msrvtt_jsfusion_test.pkl")


def test_pickle_missing_truncated_and_wrong_type(tmp_path):
    expect_error(lambda: load_youcook2(tmp_path / "none.pkl"), "none.pkl", "not found")
    rng = np.random.default_rng(1)
    path = write_pickle(tmp_path / "youcook_val.pkl", [youcook_record(rng, "a", "stir sauce")])
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    expect_error(lambda: load_youcook2(path), "youcook_val.pkl", "'items'", "truncated or corrupt")
    write_pickle(path, {"not": "a list"})
    expect_error(lambda: load_youcook2(path), "youcook_val.pkl", "'items'", "list")
    record = youcook_record(rng, "b", "stir sauce")
    record.pop("caption")
    write_pickle(path, [record])
    expect_error(lambda: load_youcook2(path), "youcook_val.pkl", "item 0 (id 'b')", "missing field 'caption'")


def test_convert_skip_bad_writes_a_report(tmp_path):
    from multisk.data.formats.convert import convert_dataset, skipped_report_path

    rng = np.random.default_rng(2)
    records = [youcook_record(rng, "ok", "chop onions"), youcook_record(rng, "rule", "boil", with_2d=False),
               youcook_record(rng, "bad", "")]
    path = write_pickle(tmp_path / "youcook_val.pkl", records)
    write_word2vec_binary(tmp_path / "vectors.bin")
    with pytest.raises(DataFormatError, match="item 2 \\(id 'bad'\\) field 'caption'"):
        convert_dataset("youcook2", path, tmp_path / "strict", word_vectors=str(tmp_path / "vectors.bin"))
    info = convert_dataset("youcook2", path, tmp_path / "store", word_vectors=str(tmp_path / "vectors.bin"), skip_bad=True)
    assert info["count"] == 1 and info["skipped_bad"] == 1 and info["skipped_by_rule"] == 1
    report = json.loads(skipped_report_path(tmp_path / "store", "test").read_text(encoding="utf-8"))
    assert report["skipped_by_rule"] == ["rule"]
    (entry,) = report["skipped_bad"]
    assert entry["item"] == "bad" and entry["field"] == "caption" and entry["file"].endswith("youcook_val.pkl")
    assert "empty" in entry["reason"]


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    from multisk.cli import main

    write_word2vec_binary(tmp_path / "vectors.bin")
    code = main(["data", "convert", "msrvtt", str(tmp_path / "missing.pkl"), "--out", str(tmp_path / "o"),
                 "--word-vectors", str(tmp_path / "vectors.bin")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "missing.pkl" in err
    assert main(["data", "info", str(tmp_path / "nowhere")]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_convert_names_an_unknown_storage_dtype(tmp_path):
    from multisk.data.formats.convert import convert_dataset

    with pytest.raises(DataFormatError, match="dtype must be one of float32, float16, got 'int8'"):
        convert_dataset("msrvtt", tmp_path / "x.pkl", tmp_path / "out", word_vectors="unused", dtype="int8")
