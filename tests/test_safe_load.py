"""No torch file the project reads can run code (``bnn.safe_load``): every loader and every command
that takes a checkpoint refuses a crafted pickle before it runs, with one line naming the file and
the type; the project's own checkpoints, the official BNext layout and the authors' Lightning layout
still load (case C13)."""

from __future__ import annotations

import builtins
import json
import os
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from bnn.__main__ import main as bnn_main
from bnn.backbones import create_backbone
from bnn.config import FitConfig
from bnn.detector import create_detector
from bnn.errors import EXIT_INVALID
from bnn.pretrained import PRETRAINED_ENV
from bnn.safe_load import UnreadableCheckpointError, UnsafeCheckpointError, load_torch_file


class _RunsOsSystem:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _OpensAFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


PAYLOADS = {"os.system": (_RunsOsSystem, "system"), "builtins.open": (_OpensAFile, "open")}


def _micro_checkpoint() -> dict:
    config = FitConfig(backbone="bnext_micro", features="rgb", resolution=32)
    model = create_detector(config.backbone, config.features, config.freeze_backbone, compat=config.compat,
                            head=config.head)
    return {"config": config.model_dump(mode="json"), "model": model.state_dict(), "epoch": 0}


def _evil(path: Path, marker: Path, payload: str, layout: str, legacy: bool = False) -> Path:
    """A file shaped like ``layout`` with one extra entry whose unpickling would create ``marker``."""
    cls, _ = PAYLOADS[payload]
    if layout == "bare":
        content = cls(marker)
    elif layout == "project":
        content = {**_micro_checkpoint(), "payload": cls(marker)}
    else:  # official BNext / Lightning: a state_dict plus the payload
        content = {"state_dict": {}, "payload": cls(marker)}
    torch.save(content, path, _use_new_zipfile_serialization=not legacy)
    return path


def _loaders(tmp_path: Path, monkeypatch) -> dict:
    from bnn import load_authors_checkpoint, load_pretrained
    from bnn.checkpoint import load_detector, read_checkpoint, saved_val_threshold
    from bnn.pretrained import read_state_dict

    def pretrained_folder(path: Path, build):
        folder = tmp_path / "pretrained"
        folder.mkdir(exist_ok=True)
        path.replace(folder / "tiny_checkpoint.pth.tar")
        monkeypatch.setenv(PRETRAINED_ENV, str(folder))
        return build()

    return {
        "read_checkpoint": ("project", read_checkpoint),
        "load_detector": ("project", lambda p: load_detector(p, device="cpu")),
        "saved_val_threshold": ("project", saved_val_threshold),
        "load_authors_checkpoint": ("lightning", lambda p: load_authors_checkpoint(p, backbone="bnext_micro",
                                                                                  features="rgb")),
        "read_state_dict": ("official", read_state_dict),
        "load_pretrained": ("official", lambda p: load_pretrained(create_backbone("bnext_micro"), p)),
        "create_backbone(pretrained=True)": (
            "official", lambda p: pretrained_folder(p, lambda: create_backbone("bnext_tiny", pretrained=True))),
        "create_detector(pretrained=True)": (
            "official", lambda p: pretrained_folder(p, lambda: create_detector("bnext_tiny", "rgb", pretrained=True))),
    }


LOADERS = ["read_checkpoint", "load_detector", "saved_val_threshold", "load_authors_checkpoint",
           "read_state_dict", "load_pretrained", "create_backbone(pretrained=True)",
           "create_detector(pretrained=True)"]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.integration
def test_every_loader_refuses_a_pickle_that_would_run_code(tmp_path, monkeypatch, loader, payload, legacy):
    layout, load = _loaders(tmp_path, monkeypatch)[loader]
    marker = tmp_path / "PWNED"
    path = _evil(tmp_path / "evil.pt", marker, payload, layout, legacy)
    with pytest.raises(UnsafeCheckpointError) as info:
        load(path)
    assert not marker.exists()
    message = str(info.value)
    assert "\n" not in message and "refused" in message and PAYLOADS[payload][1] in message
    assert path.name in message or "tiny_checkpoint.pth.tar" in message


@pytest.mark.parametrize("layout", ["bare", "project"])
@pytest.mark.parametrize("command", ["detect", "evaluate", "export"])
def test_commands_refuse_a_crafted_checkpoint_with_one_line_and_exit_2(tmp_path, command, layout, capsys):
    marker = tmp_path / "PWNED"
    path = _evil(tmp_path / "best.pt", marker, "os.system", layout)
    image = tmp_path / "img.png"
    image.write_bytes(b"")
    args = {
        "detect": ["detect", str(image), "--checkpoint", str(path), "--device", "cpu"],
        "evaluate": ["evaluate", "--checkpoint", str(path), "--device", "cpu"],
        "export": ["export", str(path), "--out", str(tmp_path / "exported")],
    }[command]
    assert bnn_main(args) == EXIT_INVALID
    err = capsys.readouterr().err.strip()
    assert not marker.exists()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert str(path) in err and "system" in err and "Traceback" not in err
    assert not (tmp_path / "exported").exists()


@pytest.mark.integration
def test_the_projects_own_checkpoints_need_no_allow_list(tmp_path, monkeypatch):
    from bnn.train import fit

    monkeypatch.setenv("BNN_CACHE_DIR", str(tmp_path / "cache"))
    config = FitConfig(backbone="bnext_micro", features="rgb+fft", dataset="synthetic",
                       data_params={"count": 64, "image_size": 32, "difficulty": 0.0}, resolution=32,
                       epochs=1, batch_size=16, output_dir=str(tmp_path / "run"))
    fit(config)
    for name in ("best.pt", "last.pt"):
        state = torch.load(tmp_path / "run" / name, weights_only=True)  # PyTorch's default allow-list only
        assert {"model", "config", "epoch"} <= set(state)


def _numpy1_names(path: Path) -> None:
    """Rewrites a torch zip file so its pickle names numpy's modules as numpy 1 wrote them."""
    with zipfile.ZipFile(path) as z:
        entries = {info.filename: z.read(info) for info in z.infolist()}
    pkl = next(name for name in entries if name.endswith("data.pkl"))
    entries[pkl] = entries[pkl].replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)


@pytest.mark.parametrize("numpy_names", ["numpy 2", "numpy 1"])
@pytest.mark.integration
def test_the_official_bnext_layout_loads_with_its_training_lists(tmp_path, numpy_names):
    """hpi-xnor/BNext ``save_checkpoint``: epoch, the ``ModuleDict({'module': ...})`` state dict,
    best accuracy, AdamW state, scheduler state and the per-epoch accuracy lists (numpy arrays)."""
    from bnn import load_pretrained

    source = create_backbone("bnext_micro")
    optimizer = torch.optim.AdamW(source.parameters(), lr=1e-3)
    source(torch.rand(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    state = OrderedDict((f"module.{k}", v) for k, v in source.state_dict().items())
    payload = {
        "epoch": 127, "state_dict": state, "best_top1_acc": torch.tensor(72.4),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "epochs_list": list(range(3)),
        "val_top1_acc_list": [np.array(70.1, dtype=np.float32), np.array(71.0, dtype=np.float32)],
        "val_top5_acc_list": [np.float64(89.5)], "lr": np.array([1e-3, 5e-4]),
    }
    path = tmp_path / "tiny_checkpoint.pth.tar"
    torch.save(payload, path)
    if numpy_names == "numpy 1":
        _numpy1_names(path)
    loaded = load_torch_file(path)
    assert loaded["val_top1_acc_list"][1] == np.float32(71.0) and loaded["lr"].tolist() == [1e-3, 5e-4]
    model = load_pretrained(create_backbone("bnext_micro"), path)
    assert all(torch.equal(model.state_dict()[k], source.state_dict()[k]) for k in source.state_dict())


def _lightning_checkpoint(detector, hyper_parameters) -> dict:
    """Lightning 2's ``dump_checkpoint`` keys for the authors' ``BNext4DFR``."""
    state = OrderedDict()
    for key, value in detector.state_dict().items():
        key = "base_model." + key.removeprefix("backbone.") if key.startswith("backbone.") else key
        state[key] = -value if key in ("fc.weight", "fc.bias") else value
    optimizer = torch.optim.AdamW(detector.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.1, total_iters=5)
    progress = {"total": {"ready": 10, "completed": 10}, "current": {"ready": 10, "completed": 10}}
    return {
        "epoch": 4, "global_step": 1250, "pytorch-lightning_version": "2.2.1", "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_loop.batch_progress": progress,
                               "epoch_progress": progress}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_acc', 'mode': 'max', 'every_n_train_steps': 0}": {
            "monitor": "val_acc", "best_model_score": torch.tensor(0.97), "best_model_path": "/x/best.ckpt",
            "current_score": torch.tensor(0.96), "dirpath": "/x", "best_k_models": {"/x/best.ckpt": torch.tensor(0.97)},
            "kth_best_model_path": "/x/best.ckpt", "kth_value": torch.tensor(0.97), "last_model_path": ""}},
        "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [scheduler.state_dict()],
        "hparams_name": "kwargs", "hyper_parameters": hyper_parameters,
    }


@pytest.mark.parametrize("hparams_type", ["dict", "AttributeDict"])
def test_the_authors_lightning_layout_loads(tmp_path, monkeypatch, hparams_type):
    from bnn import load_authors_checkpoint

    hp = {"num_classes": 2, "backbone": "BNext-T", "freeze_backbone": False, "add_magnitude_channel": False,
          "add_fft_channel": True, "add_lbp_channel": False, "learning_rate": 1e-4, "pos_weight": 1.0}
    if hparams_type == "AttributeDict":
        # Lightning's own class, under its own module name, as an older Lightning pickled it.
        module = types.ModuleType("lightning.fabric.utilities.data")
        attribute_dict = type("AttributeDict", (dict,), {"__module__": module.__name__})
        module.AttributeDict = attribute_dict
        for name in ("lightning", "lightning.fabric", "lightning.fabric.utilities", module.__name__):
            monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
        monkeypatch.setitem(sys.modules, module.__name__, module)
        hp = attribute_dict(hp)
    source = create_detector("bnext_micro", "rgb+fft", compat="authors", head="linear").eval()
    path = tmp_path / "authors.ckpt"
    torch.save(_lightning_checkpoint(source, hp), path)
    if hparams_type == "AttributeDict":
        monkeypatch.undo()  # Lightning is not installed where it is read
        assert b"AttributeDict" in zipfile.ZipFile(path).read("authors/data.pkl")
    loaded = load_authors_checkpoint(path, backbone="bnext_micro")
    assert loaded.extra_features == ("fft",) and not loaded.freeze_backbone
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(images), source(images))


@pytest.mark.parametrize("content", [b"", b"plain text\n", bytes(range(256)) * 8, json.dumps({"a": 1}).encode()])
def test_bytes_that_are_not_a_torch_file_are_unreadable_not_unsafe(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(UnreadableCheckpointError, match="is not a PyTorch file"):
        load_torch_file(path)


def test_a_truncated_checkpoint_is_unreadable_at_every_cut(tmp_path):
    """torch's zip reader raises OSError(EINVAL) at some cuts: still a one-line user error."""
    whole = tmp_path / "whole.pt"
    torch.save(_micro_checkpoint(), whole)
    data = whole.read_bytes()
    for cut in range(0, len(data), max(len(data) // 40, 1)):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(UnreadableCheckpointError):
            load_torch_file(path)


def _detect_args(tmp_path: Path, checkpoint: Path) -> list[str]:
    image = tmp_path / "img.png"
    image.write_bytes(b"")
    return ["detect", str(image), "--checkpoint", str(checkpoint), "--device", "cpu"]


def _one_error_line(err: str) -> str:
    """The error line of a command's stderr, after checking there is no traceback or warning."""
    assert "Traceback" not in err and "Warning" not in err, err
    first = err.strip().splitlines()[0]
    assert first.startswith("error: "), err
    return first


def _misfit(state: dict, case: str) -> dict:
    if case == "shapes":  # every tensor cut to one element: loads, fits no model
        return {**state, "model": {k: v.flatten()[:1].clone() for k, v in state["model"].items()}}
    if case == "extra key":
        return {**state, "model": {**state["model"], "not_a_layer.weight": torch.zeros(1)}}
    if case == "config a string":
        return {**state, "config": "bnext_micro"}
    if case == "config a list":
        return {**state, "config": [1, 2]}
    if case == "model a list":
        return {**state, "model": [1, 2]}
    raise AssertionError(case)


@pytest.mark.parametrize("command", ["detect", "evaluate", "export"])
@pytest.mark.parametrize("case", ["shapes", "extra key", "config a string", "config a list", "model a list"])
@pytest.mark.integration
def test_a_checkpoint_that_loads_but_does_not_fit_is_one_error_and_exit_2(tmp_path, capsys, case, command):
    path = tmp_path / "best.pt"
    torch.save(_misfit(_micro_checkpoint(), case), path)
    args = {"detect": _detect_args(tmp_path, path), "evaluate": ["evaluate", "--checkpoint", str(path)],
            "export": ["export", str(path), "--out", str(tmp_path / "exported")]}[command]
    assert bnn_main(args) == EXIT_INVALID
    line = _one_error_line(capsys.readouterr().err)
    assert str(path) in line
    assert not (tmp_path / "exported").exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_a_numpy_object_array_is_refused_as_an_object_array(tmp_path, legacy):
    """Even a harmless object array: its items could be any Python object."""
    items = np.empty(2, dtype=object)
    items[:] = ["a", 1]
    path = tmp_path / "acc.pt"
    torch.save({**_micro_checkpoint(), "acc": items}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError, match="ObjectDType .a numpy object array"):
        load_torch_file(path)


def test_a_plain_pickle_is_refused_without_torchs_protocol_warning(tmp_path, capsys):
    import pickle

    marker = tmp_path / "PWNED"
    path = tmp_path / "best.pt"
    with open(path, "wb") as f:
        pickle.dump({"config": {}, "model": _RunsOsSystem(marker)}, f, protocol=4)
    assert bnn_main(_detect_args(tmp_path, path)) == EXIT_INVALID
    line = _one_error_line(capsys.readouterr().err)
    assert "torch.save did not write" in line and not marker.exists()


def test_a_safetensors_file_given_as_a_detector_says_what_it_is(tmp_path, capsys):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    assert bnn_main(_detect_args(tmp_path, path)) == EXIT_INVALID
    assert "holds weights only" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("weights", ["garbage.safetensors", "misfit.safetensors", "misfit.pth", "evil.pth"])
@pytest.mark.integration
def test_train_with_a_bad_pretrained_file_is_one_error_and_leaves_no_output_folder(tmp_path, monkeypatch, capsys,
                                                                                   weights):
    from safetensors.torch import save_file

    monkeypatch.setenv("BNN_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / weights
    if weights == "garbage.safetensors":
        path.write_bytes(b"\xff" * 64)
    elif weights == "misfit.safetensors":
        save_file({"w": torch.zeros(2)}, str(path))
    elif weights == "misfit.pth":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    else:
        torch.save({"state_dict": _RunsOsSystem(tmp_path / "PWNED")}, path)
    out = tmp_path / "run"
    args = ["train", "--set", "backbone=bnext_micro", "--set", "features=rgb", "--set", "dataset=synthetic",
            "--set", "data_params.count=32", "--set", "data_params.image_size=32", "--set", "resolution=32",
            "--set", "epochs=1", "--set", f"pretrained={path}", "--set", f"output_dir={out}"]
    assert bnn_main(args) == EXIT_INVALID
    line = _one_error_line(capsys.readouterr().err)
    assert str(path) in line
    assert not out.exists() and not (tmp_path / "PWNED").exists()


def test_an_empty_or_text_file_says_what_it_is(tmp_path):
    empty, text = tmp_path / "empty.pt", tmp_path / "text.pt"
    empty.write_bytes(b"")
    text.write_text("hello, this is text\n" * 20)
    with pytest.raises(UnreadableCheckpointError, match=r"empty \(0 bytes\)"):
        load_torch_file(empty)
    with pytest.raises(UnreadableCheckpointError) as info:
        load_torch_file(text)
    assert ":" in info.value.detail and not info.value.detail.isdigit()
