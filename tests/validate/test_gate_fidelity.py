"""Gate metrics with an output selector, providers told from output names, and true reasons."""

from __future__ import annotations

import numpy as np
import pytest

from onnxshrink.errors import UsageError
from onnxshrink.validate import load_feeds, validate
from onnxshrink.validate.gate import evaluate_gates, parse_gate
from tests.support.files import save
from tests.support.graphs import classifier


def fidelity_report(**fidelity):
    outputs = {
        "sentence_embedding": {
            "cosine": 0.97,
            "cosine_worst": 0.97,
            "cosine_mean": 0.995,
            "max_abs_error": 0.3,
            "rel_error": 0.2,
            "snr_db": 14.0,
            "top1_agreement": None,
            "class_scores": False,
            "class_scores_rule": "its name marks another kind of tensor (embedding)",
            "dtype": "float32",
        },
        "logits": {
            "cosine": 0.9999,
            "cosine_worst": 0.9999,
            "cosine_mean": 0.99995,
            "max_abs_error": 0.01,
            "rel_error": 0.001,
            "snr_db": 60.0,
            "top1_agreement": 1.0,
            "class_scores": True,
            "dtype": "float32",
        },
        "ids": {
            "cosine": None,
            "cosine_worst": None,
            "max_abs_error": 0.0,
            "rel_error": None,
            "snr_db": None,
            "top1_agreement": None,
            "dtype": "int64",
        },
    }
    base = {
        "status": "ok",
        "outputs": outputs,
        "cosine": 0.97,
        "cosine_mean": 0.995,
        "max_abs_error": 0.3,
        "rel_error": 0.2,
        "snr_db": 14.0,
        "top1_agreement": 1.0,
        "labels": False,
        "warnings": [],
    }
    base.update(fidelity)
    return {"validation": {"fidelity": base, "latency": {"cpu": {"status": "ok", "ratio": 1.0}}}}


def one(expr, report=None, **kwargs):
    return evaluate_gates([parse_gate(expr)], report or fidelity_report(), **kwargs)["checks"][0]


def test_selector_is_a_provider_for_latency_and_an_output_for_fidelity():
    assert parse_gate("latency_ratio[cpu]<=1").provider == "cpu" and parse_gate("latency_ratio[cpu]<=1").output is None
    check = parse_gate("cosine[sentence_embedding]>=0.99")
    assert (
        check.output == "sentence_embedding"
        and check.provider is None
        and check.label == "cosine[sentence_embedding] >= 0.99"
    )
    assert parse_gate("cosine[StatefulPartitionedCall:0]>=0.9").output == "StatefulPartitionedCall:0"
    with pytest.raises(UsageError, match="unknown provider 'logits'; known providers: cpu, cuda, tensorrt"):
        parse_gate("latency_ratio[logits]<=1")
    with pytest.raises(UsageError, match="takes no \\[selector\\]"):
        parse_gate("accuracy[logits]>=0.9")
    with pytest.raises(UsageError, match="empty \\[output\\]"):
        parse_gate("cosine[ ]>=0.9")


def test_output_selector_reads_that_output_and_plain_metric_is_the_worst():
    assert one("cosine[sentence_embedding]>=0.99")["status"] == "fail"  # the worst feed of that output: 0.97
    assert one("cosine[logits]>=0.99")["status"] == "pass"
    assert one("cosine>=0.99")["value"] == 0.97  # plain: worst over outputs and feeds
    assert one("cosine_mean[sentence_embedding]>=0.99")["value"] == 0.995
    assert one("snr_db[logits]>=40")["value"] == 60.0 and one("snr_db>=40")["status"] == "fail"
    assert one("rel_error[logits]<=0.01")["passed"] is True


def test_missing_values_say_the_true_reason():
    c = one("cosine[pooler]>=0.9")
    assert c["status"] == "missing" and "no output 'pooler'" in c["reason"] and "'logits'" in c["reason"]
    c = one("top1_agreement[sentence_embedding]>=0.9")
    assert c["status"] == "missing" and "not shaped like class scores" in c["reason"] and "embedding" in c["reason"]
    c = one("cosine[ids]>=0.9")
    assert c["status"] == "missing" and "int64" in c["reason"]
    assert "no labels in the data" in one("accuracy>=0.9")["reason"]
    labelled = fidelity_report(
        labels=True,
        warnings=["labels given but no output is shaped like class scores ('y': rank 1: ...): accuracy not computed"],
    )
    c = one("accuracy_drop<=0.01", labelled)
    assert (
        c["status"] == "missing"
        and "no labels" not in c["reason"]
        and "the data has labels" in c["reason"]
        and "rank 1" in c["reason"]
    )
    failed = fidelity_report(
        status="failed", error="output 'y' on feed 0: candidate shape [2, 1] differs from baseline [1, 2]", cosine=None
    )
    for expr in ("cosine>=0.9", "accuracy>=0.5", "top1_agreement>=0.9"):
        c = one(expr, failed)
        assert (
            c["status"] == "missing"
            and "fidelity could not be measured" in c["reason"]
            and "candidate shape [2, 1]" in c["reason"]
        ), expr


def test_real_validation_feeds_the_selector(tmp_path):
    base = save(classifier(), tmp_path / "a.onnx")
    cand = save(classifier(perturb=0.05), tmp_path / "b.onnx")
    x = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=np.zeros(12, np.int64))
    ds = load_feeds(tmp_path / "d.npz", classifier(), batch_size=4)
    report = {"validation": validate(base, cand, ds, measure_latency=False)}
    fid = report["validation"]["fidelity"]
    logits = fid["outputs"]["logits"]
    assert (
        len(logits["cosine_per_feed"]) == 3
        and logits["cosine_worst"] == min(logits["cosine_per_feed"]) == fid["cosine"]
    )
    assert fid["labels"] is True and "accuracy" in fid
    c = evaluate_gates([parse_gate("cosine[logits]>=0.5"), parse_gate("accuracy_drop<=1")], report)
    assert c["passed"] is True and c["checks"][0]["value"] == logits["cosine_worst"]
