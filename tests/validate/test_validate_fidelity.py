"""Fidelity metrics against hand-computed values, and running models by path."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import numpy_helper

from onnxshrink.errors import UsageError
from onnxshrink.validate.fidelity import compare_outputs, cosine, rel_error, run_model
from tests.support.files import save_external
from tests.support.graphs import classifier

F = np.float32


def _two_feeds():
    # baseline rows [1, 0] and [0, 1]; candidate rows [1, 2] and [0, 1], split over two feeds
    base = [
        {"logits": np.array([[1, 0]], F), "pred": np.array([0])},
        {"logits": np.array([[0, 1]], F), "pred": np.array([1])},
    ]
    cand = [
        {"logits": np.array([[1, 2]], F), "pred": np.array([1])},
        {"logits": np.array([[0, 1]], F), "pred": np.array([1])},
    ]
    return base, cand


def test_hand_computed_metrics():
    base, cand = _two_feeds()
    r = compare_outputs(base, cand)
    lg = r["outputs"]["logits"]
    # per feed: feed 0 b = [1,0], c = [1,2]: cos = 1/√5, c-b = [0,2], rel = 2/1; feed 1 equal: cos 1, rel 0
    assert lg["cosine_per_feed"] == pytest.approx([1 / math.sqrt(5), 1.0])
    assert lg["cosine"] == lg["cosine_worst"] == pytest.approx(1 / math.sqrt(5)) and lg["worst_feed"] == 0
    assert lg["cosine_mean"] == pytest.approx((1 / math.sqrt(5) + 1) / 2)
    assert lg["max_abs_error"] == pytest.approx(2.0)
    assert lg["rel_error"] == pytest.approx(2.0)
    assert lg["snr_db"] == pytest.approx(-20 * math.log10(2.0))
    assert lg["top1_agreement"] == pytest.approx(0.5)  # row 0: 0 vs 1; row 1: 1 vs 1
    assert lg["class_scores"] is True
    assert lg["exact_match"] == pytest.approx(0.75)
    pred = r["outputs"]["pred"]  # integer output: exact equality only
    assert (
        pred["cosine"] is None
        and pred["rel_error"] is None
        and pred["top1_agreement"] is None
        and pred["snr_db"] is None
    )
    assert pred["exact_match"] == pytest.approx(0.5) and pred["max_abs_error"] == 1.0
    assert r["cosine"] == lg["cosine"] and r["rel_error"] == lg["rel_error"] and r["snr_db"] == lg["snr_db"]
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
    assert (
        "accuracy" not in r
        and r["top1_agreement"] is None
        and "no output is shaped like class scores" in r["warnings"][0]
        and "rank 1" in r["warnings"][0]
    )


def test_identical_outputs():
    b = [{"y": np.array([[0.3, -1.0, 2.0]], F)}]
    r = compare_outputs(b, [{"y": b[0]["y"].copy()}])
    assert r["cosine"] == pytest.approx(1.0) and r["max_abs_error"] == 0.0 and r["rel_error"] == 0.0
    assert r["top1_agreement"] == 1.0 and r["exact_match"] == 1.0


def test_zero_vectors_and_guards():
    z, one = np.zeros(3), np.array([1.0, 0.0, 0.0])
    assert cosine(z, z) == 1.0 and cosine(z, one) == 0.0 and cosine(one, z) == 0.0
    assert cosine(one, -one) == -1.0
    assert rel_error(z, z) == 0.0 and rel_error(one, one * 1.5) == pytest.approx(0.5)
    assert math.isfinite(rel_error(z, one)) and rel_error(z, one) > 1e5  # the floor keeps it finite, and large


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


def test_one_bad_feed_is_not_hidden_by_good_ones():
    rng = np.random.default_rng(0)
    base = [{"y": rng.standard_normal((1, 64)).astype(F)} for _ in range(20)]
    cand = [{"y": b["y"].copy()} for b in base]
    cand[7]["y"] = -cand[7]["y"]  # one feed's output flipped
    y = compare_outputs(base, cand)["outputs"]["y"]
    assert y["cosine_worst"] == pytest.approx(-1.0) and y["worst_feed"] == 7
    assert y["cosine_mean"] == pytest.approx(0.9)  # (19 - 1) / 20: a mean would hide it, the worst does not
    assert compare_outputs(base, cand)["cosine"] == pytest.approx(-1.0)


def test_near_zero_outputs_compare_equal():
    # the case: the baseline is exactly zero, the candidate 2.7e-7 away from it
    base = [{"y": np.zeros((1, 8), F)}]
    cand = [{"y": np.full((1, 8), 2.7e-7, F)}]
    y = compare_outputs(base, cand)["outputs"]["y"]
    assert y["cosine"] == 1.0 and y["rel_error"] == 0.0 and y["snr_db"] == 300.0
    assert y["max_abs_error"] == pytest.approx(2.7e-7)  # the real difference is still reported
    far = compare_outputs(base, [{"y": np.full((1, 8), 1e-3, F)}])["outputs"]["y"]
    assert far["cosine"] == 0.0 and math.isfinite(far["rel_error"]) and far["rel_error"] == pytest.approx(1e3, rel=1e-3)


@pytest.mark.parametrize(
    "name, shape, producer, expected",
    [
        ("logits", (4, 10), None, None),
        ("mlm_cls", (1, 32, 32), None, None),  # token logits [batch, positions, classes]
        ("probabilities", (1, 2), None, None),
        ("boxes", (100, 4), None, "boxes"),
        ("pred_bbox", (1, 100, 4), None, "bbox"),
        ("lstm_1", (1, 256), None, "lstm"),
        ("hidden_out", (8, 2, 256), None, "hidden"),
        ("sentence_embedding", (1, 384), None, "embedding"),
        ("Y_h", (1, 1, 64), None, "h"),
        ("out", (1, 64), "LSTM", "LSTM"),
        ("538", (1, 2, 64, 80), None, "spatial"),
        ("score", (5,), None, "rank 1"),
        ("single", (4, 1), None, ">= 2 classes"),
        ("pred", (4, 3), "ArgMax", None),
    ],
)
def test_class_score_rule(name, shape, producer, expected):
    from onnxshrink.validate.fidelity import class_scores_reason

    reason = class_scores_reason(name, np.zeros(shape, F), producer)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason
    assert class_scores_reason("ids", np.zeros((2, 3), np.int64)) is not None


def test_lstm_state_and_box_outputs_get_no_top1():
    rng = np.random.default_rng(1)
    base = [
        {
            "dense": rng.random((1, 1, 32)).astype(F),
            "lstm_1": rng.random((1, 256)).astype(F),
            "boxes": rng.random((1, 10, 4)).astype(F),
        }
    ]
    cand = [{k: v + 0.01 for k, v in base[0].items()}]
    r = compare_outputs(base, cand)
    assert r["outputs"]["dense"]["top1_agreement"] == 1.0
    assert r["outputs"]["lstm_1"]["top1_agreement"] is None and "lstm" in r["outputs"]["lstm_1"]["class_scores_rule"]
    assert r["outputs"]["boxes"]["top1_agreement"] is None
    assert r["top1_agreement"] == 1.0
