"""Fidelity metrics against hand-computed values, and running models by path."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import numpy_helper

from onnxshrink.errors import UsageError
from onnxshrink.validate.fidelity import compare_outputs, cosine, rel_error, run_model
from tests.conftest_validate_helpers import classifier, save_external

F = np.float32


def _two_feeds():
    # baseline rows [1, 0] and [0, 1]; candidate rows [1, 2] and [0, 1], split over two feeds
    base = [{"logits": np.array([[1, 0]], F), "pred": np.array([0])}, {"logits": np.array([[0, 1]], F), "pred": np.array([1])}]
    cand = [{"logits": np.array([[1, 2]], F), "pred": np.array([1])}, {"logits": np.array([[0, 1]], F), "pred": np.array([1])}]
    return base, cand


def test_hand_computed_metrics():
    base, cand = _two_feeds()
    r = compare_outputs(base, cand)
    lg = r["outputs"]["logits"]
    # b = [1,0,0,1], c = [1,2,0,1]: b·c = 2, |b| = √2, |c| = √6 → cos = 2/√12; c-b = [0,2,0,0]
    assert lg["cosine"] == pytest.approx(2 / math.sqrt(12))
    assert lg["max_abs_error"] == pytest.approx(2.0)
    assert lg["rel_error"] == pytest.approx(2 / math.sqrt(2))
    assert lg["top1_agreement"] == pytest.approx(0.5)  # row 0: 0 vs 1; row 1: 1 vs 1
    assert lg["exact_match"] == pytest.approx(0.75)
    pred = r["outputs"]["pred"]  # integer output: exact equality only
    assert pred["cosine"] is None and pred["rel_error"] is None and pred["top1_agreement"] is None
    assert pred["exact_match"] == pytest.approx(0.5) and pred["max_abs_error"] == 1.0
    assert r["cosine"] == lg["cosine"] and r["rel_error"] == lg["rel_error"]
    assert r["max_abs_error"] == 2.0 and r["top1_agreement"] == 0.5 and r["exact_match"] == 0.5
    assert "accuracy" not in r


def test_accuracy_from_first_class_output():
    base, cand = _two_feeds()
    r = compare_outputs(base, cand, labels=np.array([0, 1]))
    assert r["accuracy"] == {"output": "logits", "baseline": 1.0, "candidate": 0.5, "drop": 0.5}
    onehot = np.array([[1, 0], [0, 1]])
    assert compare_outputs(base, cand, labels=onehot)["accuracy"]["candidate"] == 0.5
    with pytest.raises(UsageError, match="labels hold 3 entries but output 'logits' has 2 rows"):
        compare_outputs(base, cand, labels=np.array([0, 1, 1]))


def test_labels_without_class_output_warns():
    b = [{"y": np.array([1.0, 2.0], F)}]
    r = compare_outputs(b, b, labels=np.array([0, 1]))
    assert "accuracy" not in r and r["top1_agreement"] is None and "no output holds class scores" in r["warnings"][0]


def test_identical_outputs():
    b = [{"y": np.array([[0.3, -1.0, 2.0]], F)}]
    r = compare_outputs(b, [{"y": b[0]["y"].copy()}])
    assert r["cosine"] == pytest.approx(1.0) and r["max_abs_error"] == 0.0 and r["rel_error"] == 0.0
    assert r["top1_agreement"] == 1.0 and r["exact_match"] == 1.0


def test_zero_vectors_and_guards():
    z, one = np.zeros(3), np.array([1.0, 0.0, 0.0])
    assert cosine(z, z) == 1.0 and cosine(z, one) == 0.0 and cosine(one, z) == 0.0
    assert cosine(one, -one) == -1.0
    assert rel_error(z, z) == 0.0 and rel_error(z, one) == math.inf
    assert rel_error(one, one * 1.5) == pytest.approx(0.5)


def test_nonfinite_values():
    b = [{"y": np.array([1.0, np.nan, np.inf, 2.0], F)}]
    same = compare_outputs(b, [{"y": np.array([1.0, np.nan, np.inf, 2.0], F)}])["outputs"]["y"]
    assert same["cosine"] == pytest.approx(1.0) and same["nonfinite_mismatch"] == 0
    bad = compare_outputs(b, [{"y": np.array([1.0, np.nan, np.inf, np.nan], F)}])["outputs"]["y"]
    assert bad["cosine"] == 0.0 and bad["max_abs_error"] == math.inf and bad["nonfinite_mismatch"] == 1


def test_output_mismatch_errors():
    b = [{"y": np.zeros((1, 2), F)}]
    with pytest.raises(UsageError, match=r"candidate lacks output\(s\) \['y'\]"):
        compare_outputs(b, [{"z": np.zeros((1, 2), F)}])
    with pytest.raises(UsageError, match=r"output 'y' on feed 0: candidate shape \[2, 1\]"):
        compare_outputs(b, [{"y": np.zeros((2, 1), F)}])
    with pytest.raises(UsageError, match="baseline ran 1 feeds but candidate 2"):
        compare_outputs(b, b * 2)


def test_run_model_by_path_with_external_data(tmp_path):
    m = classifier(seed=5)
    w, bias = (numpy_helper.to_array(t) for t in m.graph.initializer)
    path = save_external(m, tmp_path / "m.onnx")  # saving with external data moves the weights out of m
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(F)
    out = run_model(path, [{"x": x}, {"x": x[:1]}])
    assert [sorted(o) for o in out] == [["logits"], ["logits"]]
    np.testing.assert_allclose(out[0]["logits"], x @ w + bias, rtol=1e-5, atol=1e-6)
    assert out[1]["logits"].shape == (1, 3)
