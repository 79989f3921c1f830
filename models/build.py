#!/usr/bin/env python3
"""Train and export the three small test models that onnxshrink's tests and benchmarks use.

Everything is trained on scikit-learn's bundled 8x8 digits data set (no download) with fixed seeds,
deterministic kernels and a single thread, then exported with PyTorch's TorchScript ONNX exporter
at opset 17 and checked in onnxruntime. Run it from anywhere:

    python models/build.py            # writes models/*.onnx, models/*_eval.npz, models/*_calib.npz
    python models/build.py --out DIR  # same, into DIR (e.g. to compare two builds)

torch is needed ONLY by this script (see models/requirements.txt). The outputs are committed, so the
onnxshrink package, its tests and CI never import torch.

Outputs per model NAME in {cnn, mlp, transformer}:
  NAME.onnx        float32, input "input" (batch dim "batch"), output "logits" [batch, 10]
  NAME_eval.npz    "input": the whole eval split in the model's input shape, "labels": int64
  NAME_calib.npz   128 samples of the TRAIN split, same keys, for calibration
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import random
import sys
import time
import warnings
import zipfile
from pathlib import Path

# Determinism first: single thread everywhere, deterministic cuBLAS workspace (harmless on CPU).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent
SEED = 0
OPSET = 17
N_CALIB = 128
ACCURACY_FLOOR = {"cnn": 0.95, "mlp": 0.95, "transformer": 0.90}


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: Conv-BN-ReLU-Conv-BN + shortcut, then ReLU.

    The shortcut is the identity, or a 1x1 Conv + BN projection when the channel count changes.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module | None = None
        if c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
            # bn2.bias and the shortcut BN's bias are summed by the Add, so they get identical
            # gradients; starting both at zero they would stay bit-identical and the exporter
            # would deduplicate them into an Identity node. A different start avoids that.
            nn.init.normal_(self.shortcut[1].bias, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(y + identity)


class DigitsResNet(nn.Module):
    """Stem (32 ch) -> 2 blocks at 32 ch -> 1 block 32->64 (projection) -> 1 block at 64 ch -> GAP -> FC."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(32, 32), BasicBlock(32, 32))
        self.layer2 = nn.Sequential(BasicBlock(32, 64), BasicBlock(64, 64))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.flatten(self.pool(x)))


class DigitsMLP(nn.Module):
    """64 -> 256 -> 128 -> 10 with ReLU (exports as Gemm, Relu)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# Transformer geometry: 8x8 image -> 4x4 grid of 2x2 patches -> 16 tokens of dim 4.
PATCH = 2
GRID = 8 // PATCH
TOKENS = GRID * GRID
D_MODEL = 64
HEADS = 4
HEAD_DIM = D_MODEL // HEADS
D_FF = 128


class SelfAttention(nn.Module):
    """Multi-head self-attention written out as MatMul / Reshape / Transpose / Softmax.

    Reshapes use -1 for the batch dimension so the exported graph has constant shape tensors
    (no Shape/Gather/Concat chains) while the batch stays dynamic.
    """

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(D_MODEL, D_MODEL)
        self.k = nn.Linear(D_MODEL, D_MODEL)
        self.v = nn.Linear(D_MODEL, D_MODEL)
        self.proj = nn.Linear(D_MODEL, D_MODEL)
        self.scale = HEAD_DIM**-0.5

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, H, T, Dh]
        return t.reshape(-1, TOKENS, HEADS, HEAD_DIM).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale  # [B, H, T, T]
        attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn, v)  # [B, H, T, Dh]
        out = out.transpose(1, 2).reshape(-1, TOKENS, D_MODEL)
        return self.proj(out)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(D_MODEL)
        self.attn = SelfAttention()
        self.ln2 = nn.LayerNorm(D_MODEL)
        self.fc1 = nn.Linear(D_MODEL, D_FF)
        self.fc2 = nn.Linear(D_FF, D_MODEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class DigitsTransformer(nn.Module):
    """2x2 patches -> linear embed (d=64) + learned positions -> 2 pre-LN blocks -> LN -> mean -> FC."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(PATCH * PATCH, D_MODEL)
        self.pos = nn.Parameter(torch.zeros(1, TOKENS, D_MODEL))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(EncoderBlock(), EncoderBlock())
        self.ln = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 1, 8, 8]
        # [B,1,8,8] -> [B,4,2,4,2] (grid row, row in patch, grid col, col in patch)
        p = x.reshape(-1, GRID, PATCH, GRID, PATCH)
        p = p.permute(0, 1, 3, 2, 4)  # [B, 4, 4, 2, 2]
        p = p.reshape(-1, TOKENS, PATCH * PATCH)  # [B, 16, 4]
        h = self.embed(p) + self.pos
        h = self.ln(self.blocks(h))
        return self.head(h.mean(dim=1))


# --------------------------------------------------------------------------------------------------
# Data, training, export
# --------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to 0..1 as float32 [N, 64]; fixed stratified 75/25 split."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_ev, y_tr, y_ev = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return x_tr, x_ev, y_tr, y_ev


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    batch_size: int = 64,
) -> nn.Module:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def export(model: nn.Module, example: torch.Tensor, path: Path, *, keep_batchnorm: bool) -> None:
    """TorchScript exporter, opset 17, dynamic batch.

    With the model in eval mode the exporter's constant-folding step runs an "eval peephole" pass
    that folds BatchNormalization into the preceding Conv. For the CNN we switch constant folding
    off so every BatchNormalization stays a separate node (what BN-folding passes want to see).
    """
    model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, but the dynamo
        # exporter cannot write opset 17 (it targets >= 18) and always folds BN into Conv.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=not keep_batchnorm,
            training=torch.onnx.TrainingMode.EVAL,
        )
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    path.write_bytes(buf.getvalue())


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like np.savez, but byte-deterministic: fixed zip timestamps and member order."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"input": x})
    assert logits.shape == (len(x), 10), logits.shape
    return float((logits.argmax(axis=1) == y).mean())


def check_graph(name: str, proto: onnx.ModelProto) -> collections.Counter:
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    domains = {n.domain for n in proto.graph.node} - {"", "ai.onnx"}
    assert not domains, f"{name}: non-default op domains {domains}"
    assert [i.name for i in proto.graph.input] == ["input"], name
    assert [o.name for o in proto.graph.output] == ["logits"], name
    for vi in (proto.graph.input[0], proto.graph.output[0]):
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, name
        assert vi.type.tensor_type.shape.dim[0].dim_param == "batch", name
    assert "Identity" not in ops, f"{name}: unexpected Identity nodes"
    if name == "cnn":
        assert ops["BatchNormalization"] == ops["Conv"], f"cnn: BN was folded: {ops}"
        assert ops["Add"] >= 2, ops
    if name == "transformer":
        assert ops["LayerNormalization"] == 5, ops
        assert ops["MatMul"] >= 4 and ops["Softmax"] == 2, ops
    return ops


def main(argv: list[str]) -> int:
    global OUT_DIR
    if argv[:1] == ["--out"] and len(argv) == 2:
        OUT_DIR = Path(argv[1]).resolve()
        OUT_DIR.mkdir(parents=True, exist_ok=True)
    elif argv:
        print("usage: build.py [--out DIR]   (default: the folder holding build.py)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.use_deterministic_algorithms(True)

    x_tr, x_ev, y_tr, y_ev = load_data()
    calib_idx = np.random.default_rng(SEED).choice(len(x_tr), size=N_CALIB, replace=False)
    calib_idx.sort()

    image = (-1, 1, 8, 8)
    specs = {
        # name: (constructor, input shape, train kwargs)
        "cnn": (DigitsResNet, image, dict(epochs=30, lr=3e-3, weight_decay=1e-4)),
        "mlp": (DigitsMLP, (-1, 64), dict(epochs=60, lr=2e-3, weight_decay=1e-4)),
        "transformer": (DigitsTransformer, image, dict(epochs=80, lr=2e-3, weight_decay=1e-4)),
    }

    rows = []
    histograms = {}
    for name, (ctor, shape, kw) in specs.items():
        t = time.perf_counter()
        seed_everything(SEED)
        model = ctor()
        train(model, x_tr.reshape(shape), y_tr, **kw)
        with torch.no_grad():
            torch_acc = float((model(torch.from_numpy(x_ev.reshape(shape))).argmax(1).numpy() == y_ev).mean())

        onnx_path = OUT_DIR / f"{name}.onnx"
        export(model, torch.from_numpy(x_ev[:2].reshape(shape)), onnx_path, keep_batchnorm=(name == "cnn"))
        x_eval = np.ascontiguousarray(x_ev.reshape(shape), dtype=np.float32)
        x_calib = np.ascontiguousarray(x_tr[calib_idx].reshape(shape), dtype=np.float32)
        save_npz(OUT_DIR / f"{name}_eval.npz", input=x_eval, labels=y_ev)
        save_npz(OUT_DIR / f"{name}_calib.npz", input=x_calib, labels=y_tr[calib_idx])

        proto = onnx.load(str(onnx_path))
        histograms[name] = check_graph(name, proto)
        acc = onnx_accuracy(onnx_path, x_eval, y_ev)
        params = sum(p.numel() for p in model.parameters())
        init_elems = sum(int(np.prod(i.dims)) for i in proto.graph.initializer)
        size = onnx_path.stat().st_size
        sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        opset = {o.domain: o.version for o in proto.opset_import}.get("", None)
        rows.append((name, acc, torch_acc, params, init_elems, size, opset, proto.ir_version, sha))
        print(
            f"[{name}] trained+exported in {time.perf_counter() - t:.1f}s "
            f"(torch acc {torch_acc:.4f}, onnxruntime acc {acc:.4f})",
            flush=True,
        )

    print()
    print(f"eval split: {len(y_ev)} samples, train split: {len(y_tr)}, calib: {N_CALIB} (from train)")
    print()
    print(
        "| model | file | eval accuracy (onnxruntime) | trainable params | initializer elements "
        "| file size (bytes) | opset | IR |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, acc, _, params, init_elems, size, opset, ir, _ in rows:
        print(
            f"| {name} | models/{name}.onnx | {acc:.4f} ({round(acc * len(y_ev))}/{len(y_ev)}) "
            f"| {params:,} | {init_elems:,} | {size:,} | {opset} | {ir} |"
        )
    print()
    for name, *_, sha in rows:
        print(f"sha256 {name}.onnx {sha}")
    print()
    for name, ops in histograms.items():
        print(f"ops {name}: {dict(sorted(ops.items()))}")
    print()
    print(
        f"versions: torch {torch.__version__}, onnx {onnx.__version__}, "
        f"onnxruntime {ort.__version__}, numpy {np.__version__}"
    )
    print(f"total build time {time.perf_counter() - t0:.1f}s")

    failed = [r[0] for r in rows if r[1] < ACCURACY_FLOOR[r[0]]]
    if failed:
        print(f"ERROR: accuracy below floor for {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
