"""Input data: .npz / folder / stacked / synthetic loading, batching, labels, split, and every error."""

from __future__ import annotations

import numpy as np
import pytest

from onnxshrink.errors import UsageError
from onnxshrink.validate.data import SYNTHETIC_WARNING, load_feeds, parse_input_shape, split_calibration
from tests.support.graphs import classifier, two_inputs


def _x(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


def test_npz_single_batch_split_by_batch_size(tmp_path):
    x = _x(10)
    labels = np.arange(10) % 3
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    ds = load_feeds(tmp_path / "d.npz", classifier(), batch_size=4)
    assert [f["x"].shape[0] for f in ds.feeds] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in ds.feeds]), x)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.samples == 10 and ds.samples_per_feed == [4, 4, 2]
    assert not ds.synthetic and ds.source == str(tmp_path / "d.npz") and ds.warnings == []


def test_static_batch_kept_whole(tmp_path):
    np.savez(tmp_path / "d.npz", x=_x(8))
    ds = load_feeds(tmp_path / "d.npz", classifier(batch=8), batch_size=4)
    assert len(ds.feeds) == 1 and ds.feeds[0]["x"].shape == (8, 4)


def test_stacked_feeds_for_fixed_batch_one(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 1, 4)).astype(np.float32)  # 5 feeds of batch 1
    np.savez(tmp_path / "d.npz", x=x, labels=np.array([0, 1, 2, 0, 1]))
    ds = load_feeds(tmp_path / "d.npz", classifier(batch=1))
    assert len(ds.feeds) == 5 and all(f["x"].shape == (1, 4) for f in ds.feeds)
    np.testing.assert_array_equal(ds.feeds[3]["x"], x[3])
    assert ds.samples == 5 and list(ds.labels) == [0, 1, 2, 0, 1]


def test_stacked_multi_input_and_initializer_input_not_required(tmp_path):
    ids = np.zeros((3, 2, 5), np.int64)
    mask = np.ones((3, 2, 5), bool)
    np.savez(tmp_path / "d.npz", ids=ids, mask=mask)  # no 'scale': it has an initializer
    ds = load_feeds(tmp_path / "d.npz", two_inputs())
    assert len(ds.feeds) == 3 and set(ds.feeds[0]) == {"ids", "mask"} and ds.samples == 6


def test_folder_of_npz_sorted_and_concatenated(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    np.savez(d / "b.npz", x=_x(2, 2), labels=np.array([2, 2]))
    np.savez(d / "a.npz", x=_x(3, 1), labels=np.array([1, 1, 1]))
    ds = load_feeds(d, classifier())
    assert [f["x"].shape[0] for f in ds.feeds] == [3, 2]
    np.testing.assert_array_equal(ds.feeds[0]["x"], _x(3, 1))
    assert list(ds.labels) == [1, 1, 1, 2, 2]


def test_folder_of_npy(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    np.save(d / "x.npy", _x(4))
    np.save(d / "labels.npy", np.array([0, 1, 2, 0]))
    ds = load_feeds(d, classifier())
    assert len(ds.feeds) == 1 and ds.samples == 4 and list(ds.labels) == [0, 1, 2, 0]


def test_max_samples_keeps_whole_feeds(tmp_path):
    np.savez(tmp_path / "d.npz", x=_x(10), labels=np.arange(10))
    ds = load_feeds(tmp_path / "d.npz", classifier(), batch_size=4, max_samples=9)
    assert ds.samples_per_feed == [4, 4] and list(ds.labels) == list(range(8))


def test_float64_cast_with_warning(tmp_path):
    np.savez(tmp_path / "d.npz", x=_x(2).astype(np.float64))
    ds = load_feeds(tmp_path / "d.npz", classifier())
    assert ds.feeds[0]["x"].dtype == np.float32
    assert [w for w in ds.warnings if "float64" in w] == [
        "input 'x' given as float64, cast to float32 as the model declares"
    ]
    d = tmp_path / "many"
    d.mkdir()
    for i in range(3):
        np.savez(d / f"{i}.npz", x=_x(1).astype(np.float64))
    assert len(load_feeds(d, classifier()).warnings) == 1  # one note, not one per file
    ds = load_feeds(tmp_path / "d.npz", classifier(), input_shapes={"x": (5, 4)})
    assert any("ignored" in w for w in ds.warnings)


def test_synthetic_is_deterministic_and_flagged():
    m = two_inputs()
    a = load_feeds(None, m, input_shapes={"ids": (2, 5)}, seed=3)
    b = load_feeds(None, m, input_shapes={"ids": (2, 5)}, seed=3)
    c = load_feeds(None, m, input_shapes={"ids": (2, 5)}, seed=4)
    assert a.synthetic and a.source is None and SYNTHETIC_WARNING in a.warnings
    assert a.feeds[0]["ids"].shape == (2, 5) and a.feeds[0]["ids"].dtype == np.int64
    assert a.feeds[0]["mask"].shape == (2, 5) and a.feeds[0]["mask"].dtype == np.bool_  # the symbol N is 2 on ids
    assert a.feeds[0]["mask"].all()  # masks (and bools) are ones
    assert a.feeds[0]["ids"].min() >= 0 and a.feeds[0]["ids"].max() < 4
    assert all(np.array_equal(fa["ids"], fb["ids"]) for fa, fb in zip(a.feeds, b.feeds))
    assert not all(np.array_equal(fa["ids"], fc["ids"]) for fa, fc in zip(a.feeds, c.feeds))
    x = load_feeds(None, classifier(), max_samples=3).feeds
    assert len(x) == 3 and x[0]["x"].dtype == np.float32 and x[0]["x"].shape == (1, 4)


def test_synthetic_shape_errors():
    with pytest.raises(UsageError, match="'nope'"):
        load_feeds(None, classifier(), input_shapes={"nope": (1, 4)})
    with pytest.raises(UsageError, match=r"'x': dim 1 is 5, the model declares 4"):
        load_feeds(None, classifier(), input_shapes={"x": (2, 5)})
    with pytest.raises(UsageError, match="'x' has rank 3"):
        load_feeds(None, classifier(), input_shapes={"x": (2, 4, 1)})


# ------------------------------------------------------------------------------------------ errors


def test_missing_input_names_input_file_and_keys(tmp_path):
    f = tmp_path / "d.npz"
    np.savez(f, ids=np.zeros((2, 5), np.int64), other=np.zeros(2))
    with pytest.raises(UsageError) as e:
        load_feeds(f, two_inputs())
    msg = str(e.value)
    assert "'mask'" in msg and str(f) in msg and "'ids'" in msg and "'other'" in msg and "\n" not in msg


def test_wrong_dtype_names_input_expected_and_got(tmp_path):
    f = tmp_path / "d.npz"
    np.savez(f, ids=np.zeros((2, 5), np.int32), mask=np.ones((2, 5), bool))
    with pytest.raises(UsageError) as e:
        load_feeds(f, two_inputs())
    msg = str(e.value)
    assert "'ids'" in msg and "int32" in msg and "int64" in msg and str(f) in msg


def test_wrong_static_dim_names_input_dim_expected_got(tmp_path):
    f = tmp_path / "d.npz"
    np.savez(f, x=np.zeros((2, 7), np.float32))
    with pytest.raises(UsageError) as e:
        load_feeds(f, classifier())
    msg = str(e.value)
    assert "'x'" in msg and "dim 1 is 7" in msg and "declares 4" in msg and str(f) in msg


def test_wrong_rank(tmp_path):
    f = tmp_path / "d.npz"
    np.savez(f, x=np.zeros((2, 2, 2, 4), np.float32))
    with pytest.raises(UsageError, match=r"input 'x' has shape \[2, 2, 2, 4\]"):
        load_feeds(f, classifier())


def test_extra_key_named(tmp_path):
    f = tmp_path / "d.npz"
    np.savez(f, x=_x(2), bogus=np.zeros(1))
    with pytest.raises(UsageError, match=r"\['bogus'\] that are not graph inputs"):
        load_feeds(f, classifier())


def test_missing_file_and_bad_files(tmp_path):
    with pytest.raises(UsageError, match="nothere.npz"):
        load_feeds(tmp_path / "nothere.npz", classifier())
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="bad.npz"):
        load_feeds(bad, classifier())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no .npz or .npy"):
        load_feeds(tmp_path / "empty", classifier())
    txt = tmp_path / "d.txt"
    txt.write_text("1")
    with pytest.raises(UsageError, match="must be a .npz file or a folder"):
        load_feeds(txt, classifier())


def test_labels_count_mismatch_and_mixed_layouts(tmp_path):
    f = tmp_path / "d.npz"
    np.savez(f, x=_x(4), labels=np.arange(3))
    with pytest.raises(UsageError, match="'labels' has shape \\[3\\] but the inputs hold 4 samples"):
        load_feeds(f, classifier())
    np.savez(f, ids=np.zeros((3, 2, 5), np.int64), mask=np.ones((2, 5), bool))
    with pytest.raises(UsageError, match="stacks of feeds"):
        load_feeds(f, two_inputs())


# -------------------------------------------------------------------------------------- split/parse


def test_split_calibration_rule(tmp_path):
    np.savez(tmp_path / "d.npz", x=_x(10), labels=np.arange(10))
    ds = load_feeds(tmp_path / "d.npz", classifier(), batch_size=2)  # 5 feeds
    cal, ev = split_calibration(ds)
    assert len(cal.feeds) == 2 and len(ev.feeds) == 3  # floor(5 * 0.5) = 2
    assert list(cal.labels) == [0, 1, 2, 3] and list(ev.labels) == [4, 5, 6, 7, 8, 9]
    assert cal.role == "calibration" and ev.role == "evaluation"
    np.testing.assert_array_equal(ev.feeds[0]["x"], _x(10)[4:6])
    cal, ev = split_calibration(ds, 0.01)
    assert len(cal.feeds) == 1 and len(ev.feeds) == 4  # at least one each


def test_split_single_feed_uses_it_for_both():
    ds = load_feeds(None, classifier(), max_samples=1)
    cal, ev = split_calibration(ds)
    assert cal.feeds == ev.feeds == ds.feeds
    assert any("same data" in w for w in ev.warnings)


def test_parse_input_shape():
    assert parse_input_shape("input=1x3x224x224") == ("input", (1, 3, 224, 224))
    assert parse_input_shape("a:0 = 2X5") == ("a:0", (2, 5))
    assert parse_input_shape("s=") == ("s", ())
    for bad in ("input", "=1x2", "x=1xx2", "x=1x0", "x=ax2"):
        with pytest.raises(UsageError, match="bad input shape"):
            parse_input_shape(bad)
