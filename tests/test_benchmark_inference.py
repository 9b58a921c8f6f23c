"""``benchmarks/inference.py`` measures what ``python -m bnn detect`` runs, and ``detect
--engine openvino`` compiles its network once whatever the batch sizes it meets."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("openvino")

from bnn.__main__ import main  # noqa: E402
from bnn.config import FitConfig  # noqa: E402
from bnn.data import build_transform, load_rgb  # noqa: E402
from bnn.detector import create_detector  # noqa: E402
from bnn.export import OpenVINODetector, export_openvino  # noqa: E402

SIZE = 32


def _benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "inference.py"
    spec = importlib.util.spec_from_file_location("benchmark_inference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _benchmark()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, bench):
    """Five 40x40 JPEGs, a random bnext_micro (non-zero head, calibrated BatchNorm), its best.pt and binary export."""
    tmp = tmp_path_factory.mktemp("bench")
    paths = bench.write_jpegs(tmp / "jpeg", 5, 40, 90)
    torch.manual_seed(0)
    detector = create_detector("bnext_micro", "rgb+fft+lbp").eval()
    transform = build_transform(SIZE, train=False)
    images = torch.stack([transform(load_rgb(p)) for p in paths])
    with torch.no_grad():
        bench.calibrate_batchnorm(detector, detector.input_channels(images), batch=5)
    config = FitConfig(backbone="bnext_micro", features="rgb+fft+lbp", resolution=SIZE)
    torch.save({"model": detector.state_dict(), "config": config.model_dump()}, tmp / "best.pt")
    export_openvino(detector, tmp / "ov", (SIZE, SIZE))
    return tmp, paths, detector, images


@pytest.mark.integration
def test_write_jpegs_gives_decodable_photo_crops(setup):
    _, paths, _, _ = setup
    assert [p.name for p in paths] == [f"img{i:04d}.jpg" for i in range(5)]
    for p in paths:
        with Image.open(p) as image:
            assert image.format == "JPEG" and image.size == (40, 40)
    assert len({p.read_bytes() for p in paths}) == 5  # different crops


@pytest.mark.integration
def test_calibrated_random_detector_gives_distinct_logits(setup):
    _, _, detector, images = setup
    with torch.no_grad():
        logits = detector(images)
    assert logits.abs().min() > 0 and logits.std() > 0.01 and logits.abs().max() < 50


@pytest.mark.integration
def test_end_to_end_times_each_stage_of_detect(setup, bench):
    _, paths, detector, _ = setup
    transform = build_transform(SIZE, train=False)
    for b in (1, 2):
        result = bench.end_to_end(detector, paths, transform, b, repeats=3, warmup=1)
        assert set(result) == {*bench.STAGES, "total"} and all(v > 0 for v in result.values())
        assert sum(result[s] for s in bench.STAGES) <= result["total"] * 1.5


def test_run_detect_in_process_matches_between_engines(setup, bench):
    tmp, paths, _, _ = setup
    seconds, lines = bench.run_detect(tmp / "jpeg", tmp / "ov", "openvino", 2, subprocess_=False)
    _, torch_lines = bench.run_detect(tmp / "jpeg", tmp / "best.pt", "torch", 2, subprocess_=False)
    assert seconds > 0
    rows, torch_rows = ([json.loads(line) for line in out] for out in (lines, torch_lines))
    assert [r["path"] for r in rows] == [r["path"] for r in torch_rows] == [str(p) for p in paths]
    assert max(abs(a["prob_fake"] - b["prob_fake"]) for a, b in zip(rows, torch_rows, strict=True)) < 1e-4


def test_detect_openvino_compiles_once_and_padding_keeps_probabilities(setup, monkeypatch, capsys):
    tmp, paths, _, _ = setup
    folder = tmp / "mixed"
    folder.mkdir()
    for p in paths:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "img0001x.jpg").write_bytes(b"not an image")  # a batch with an unreadable file
    compiled = []
    original = OpenVINODetector.compiled_for

    def record(self, batch_size):
        compiled.append(batch_size)
        return original(self, batch_size)

    monkeypatch.setattr(OpenVINODetector, "compiled_for", record)
    probs = {}
    for batch_size in (1, 4):
        compiled.clear()
        status = main(["detect", str(folder), "--checkpoint", str(tmp / "ov"), "--engine", "openvino", "--json",
                       "--batch-size", str(batch_size)])
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert status == 1 and set(compiled) == {batch_size}  # 6 files: batches 4 (one unreadable) + 2
        assert [Path(r["path"]).name for r in rows] == sorted(p.name for p in folder.iterdir())
        probs[batch_size] = {r["path"]: r.get("prob_fake") for r in rows}
    assert probs[4].keys() == probs[1].keys()
    for path, prob in probs[1].items():
        assert (prob is None) == (probs[4][path] is None)
        if prob is not None:
            assert abs(prob - probs[4][path]) < 1e-6
