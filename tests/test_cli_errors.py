"""User errors in every command line: one line ``error: ...``, no traceback, one set of exit codes
(``bnn.errors``: 0 success, 1 partial, 2 invalid input with nothing created, 130 interrupted)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError

from bnn.__main__ import main as bnn_main
from bnn.config import FitConfig
from bnn.data import DatasetLayoutError, DatasetParamError, create_dataset
from bnn.data.layout import layout_error
from bnn.errors import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_PARTIAL, run_cli, user_error
from reports.__main__ import main as reports_main
from studies import StudyFileError, load_study
from studies.__main__ import main as studies_main

REPO = Path(__file__).resolve().parents[1]
FOLDER_PARAMS = "valid: max_samples, seed, train_fraction, val_fraction"
SYNTHETIC_PARAMS = "valid: count, difficulty, generators, image_size, max_samples, seed"
CIFAKE_PARAMS = "valid: max_samples, seed, val_fraction"


pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py


def _write(tmp_path: Path, text: str, name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _one_error_line(err: str) -> str:
    """The stderr of a user error: exactly one line starting with ``error:``, no traceback."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0].removeprefix("error: ")


def _nothing_created(tmp_path: Path) -> None:
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()
    assert not (tmp_path / "runs").exists()


# --- C08: data_params checked where they are written ---------------------------------------

C08 = """\
name: typo
dataset: folder
data_root: base
data_params: {cout: 3}
defaults: {backbone: bnext_micro, resolution: 32, epochs: 1}
"""


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_c08_data_params_typo_is_invalid_in_every_studies_command(tmp_path, command, capsys):
    (tmp_path / "base").mkdir()
    _write(tmp_path, C08)
    assert studies_main([command, "t.yaml"]) == EXIT_INVALID
    expected = f"t.yaml:4: data_params.cout: unknown parameter; {FOLDER_PARAMS}"
    assert _one_error_line(capsys.readouterr().err) == expected
    _nothing_created(tmp_path)


@pytest.mark.integration
def test_c08_validate_as_a_subprocess_prints_one_line_and_exits_2(tmp_path):
    (tmp_path / "base").mkdir()
    _write(tmp_path, C08)
    done = subprocess.run([sys.executable, "-m", "studies", "validate", "t.yaml"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert done.returncode == EXIT_INVALID
    assert _one_error_line(done.stderr) == f"t.yaml:4: data_params.cout: unknown parameter; {FOLDER_PARAMS}"


# Wherever dataset / data_params can be written: (file text, --set, line, key, message).
WRITTEN = {
    "top level": ("dataset: folder\ndata_params: {cout: 3}\n", [], 2, "data_params.cout", FOLDER_PARAMS),
    "defaults": ("defaults:\n  dataset: cifake\n  data_params:\n    count: 10\n", [], 4,
                 "defaults.data_params.count", CIFAKE_PARAMS),
    "default dataset": ("defaults:\n  data_params: {val_fraction: 0.2}\n", [], 2,
                        "defaults.data_params.val_fraction", SYNTHETIC_PARAMS),
    "grid over data_params": (
        "dataset: synthetic\ngrid:\n  data_params:\n    - {count: 64}\n    - {count: 64, difficuly: 0.1}\n",
        [], 5, "grid.data_params.difficuly", SYNTHETIC_PARAMS,
    ),
    "grid over dataset": ("data_params: {count: 64}\ngrid:\n  dataset: [synthetic, cifake]\n", [], 1,
                          "data_params.count", CIFAKE_PARAMS + " (in grid cell {'dataset': 'cifake'})"),
    "dataset switched, old params left": ("dataset: cifake\ndata_params: {count: 64, image_size: 36}\n", [],
                                          2, "data_params.count", CIFAKE_PARAMS),
    "--set data_params.x": ("dataset: folder\ndefaults: {epochs: 1}\n", ["data_params.cout=3"], None,
                            "--set data_params.cout", FOLDER_PARAMS),
    "--set data_params mapping": ("dataset: folder\n", ["data_params={cout: 3}"], None,
                                  "--set data_params", FOLDER_PARAMS),
    "--set dataset": ("data_params: {count: 64}\ndefaults: {epochs: 1}\n", ["dataset=cifake"], 1,
                      "data_params.count", CIFAKE_PARAMS),
    "search over dataset": (
        "data_params: {count: 64}\nsearch:\n  trials: 2\n  space:\n"
        "    dataset: {type: categorical, choices: [synthetic, cifake]}\n",
        [], 5, "search.space.dataset", "value 'cifake' is invalid: data_params.count: unknown parameter",
    ),
    "unknown dataset": ("dataset: cifak\n", [], 1, "dataset", "unknown dataset 'cifak'; registered: cifake"),
    "unknown dataset in defaults": ("defaults:\n  dataset: imagenet\n", [], 2, "defaults.dataset",
                                    "unknown dataset 'imagenet'; registered: cifake, "),
    "unknown dataset in a grid": ("grid:\n  dataset: [synthetic, synthtic]\n", [], 2, "grid.dataset",
                                  "Did you mean 'synthetic'? (in grid cell {'dataset': 'synthtic'})"),
    "unknown dataset by --set": ("defaults: {epochs: 1}\n", ["dataset=nope"], None, "--set dataset",
                                 "unknown dataset 'nope'"),
}


@pytest.mark.parametrize("case", list(WRITTEN))
def test_dataset_and_data_params_are_checked_wherever_written(tmp_path, case, capsys):
    text, sets, line, key, message = WRITTEN[case]
    path = _write(tmp_path, text)
    overrides = dict(s.split("=", 1) for s in sets)
    overrides = {k: yaml.safe_load(v) for k, v in overrides.items()}
    with pytest.raises(StudyFileError) as info:
        load_study(path, overrides)
    assert (info.value.line, info.value.key) == (line, key)
    assert message in str(info.value)
    assert studies_main(["validate", str(path), *(a for s in sets for a in ("--set", s))]) == EXIT_INVALID
    where = f"{path}:{line}" if line else str(path)
    assert _one_error_line(capsys.readouterr().err).startswith(f"{where}: {key}: ")


def test_valid_data_params_still_pass(tmp_path):
    study = load_study(_write(tmp_path, "dataset: folder\ndata_params: {val_fraction: 0.2, max_samples: 10}\n"))
    assert study.cells[0].config.data_params == {"val_fraction": 0.2, "max_samples": 10}
    grid = load_study(_write(tmp_path, "grid:\n  dataset: [synthetic, cifake]\ndata_params: {seed: 3}\n"))
    assert [c.config.dataset for c in grid.cells] == ["synthetic", "cifake"]


# --- the minimum of a study file -----------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# a study, some day\n\n# nothing yet\n", "{}\n", "---\n"])
def test_an_empty_study_file_is_an_error(tmp_path, text, capsys):
    path = _write(tmp_path, text)
    with pytest.raises(StudyFileError, match="empty study file; a study needs at least one of "
                                             "dataset, defaults, grid or search"):
        load_study(path)
    assert studies_main(["run", str(path)]) == EXIT_INVALID
    assert _one_error_line(capsys.readouterr().err).startswith(f"{path}: empty study file; ")
    _nothing_created(tmp_path)


@pytest.mark.parametrize("text", ["name: only_a_name\n", "name: x\ntracking_uri: sqlite:///m.db\nseeds: [0, 1]\n"])
def test_a_study_without_dataset_defaults_grid_or_search_is_an_error(tmp_path, text):
    with pytest.raises(StudyFileError, match="nothing to train; a study needs at least one of dataset"):
        load_study(_write(tmp_path, text))


@pytest.mark.parametrize("text", ["dataset: synthetic\n", "defaults: {epochs: 1}\n", "grid: {lr: [0.1]}\n"])
def test_one_of_dataset_defaults_or_grid_is_enough(tmp_path, text):
    assert len(load_study(_write(tmp_path, text)).cells) == 1


# --- bnn train -------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--set", "data_params={cout: 3}"], f"--set: data_params.cout: unknown parameter; {SYNTHETIC_PARAMS}"),
    (["--set", "dataset=folder", "--set", "data_params.cout=3"],
     f"--set: data_params.cout: unknown parameter; {FOLDER_PARAMS}"),
    (["--set", "dataset=cifak"], "--set: dataset: unknown dataset 'cifak'; registered: cifake"),
    (["--set", "epochs=0", "--set", "lr=-1"], "--set: epochs: Input should be greater than or equal to 1 (and 1 more: lr)"),
    (["--set", "epochs"], "--set expects key=value, got 'epochs'"),
    (["--set", "features=[rgb, fft"], "--set features: invalid YAML value '[rgb, fft'"),
])
def test_bnn_train_invalid_set_is_one_line_and_exit_2(tmp_path, args, message, capsys):
    assert bnn_main(["train", *args]) == EXIT_INVALID
    assert _one_error_line(capsys.readouterr().err).startswith(message)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content, message", [
    (None, "missing.yaml: No such file or directory"),
    ("epochs: 1\nfeatures: [rgb, fft\n", "run.yaml:3: invalid YAML: "),
    ("epochs: 1\ndata_params: {cout: 3}\n", f"run.yaml: data_params.cout: unknown parameter; {SYNTHETIC_PARAMS}"),
    ("- epochs\n", "run.yaml: expected a mapping of FitConfig keys, got list"),
    (b"\x80\x81\xfe\xff", "run.yaml: not a text (YAML) file"),
])
def test_bnn_train_bad_run_file_is_one_line_and_exit_2(tmp_path, content, message, capsys):
    name = "missing.yaml" if content is None else "run.yaml"
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif content is not None:
        (tmp_path / name).write_text(content)
    assert bnn_main(["train", name]) == EXIT_INVALID
    assert _one_error_line(capsys.readouterr().err).startswith(message)


@pytest.mark.integration
def test_bnn_train_data_params_typo_as_a_subprocess(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bnn", "train", "--set", "data_params={cout: 3}"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert done.returncode == EXIT_INVALID
    assert _one_error_line(done.stderr) == f"--set: data_params.cout: unknown parameter; {SYNTHETIC_PARAMS}"


def test_fit_config_checks_data_params_but_not_in_saved_checkpoints():
    with pytest.raises(ValidationError) as info:
        FitConfig(dataset="cifake", data_params={"count": 3})
    assert isinstance(info.value.errors()[0]["ctx"]["error"], DatasetParamError)
    old = FitConfig.from_saved({"dataset": "renamed_since", "data_params": {"gone": 1}})  # still loads
    assert old.data_params == {"gone": 1}
    ok = FitConfig(dataset="synthetic", data_params={"count": 64})
    assert ok.content_id() == FitConfig(data_params={"count": 64}).content_id()


def test_create_dataset_unknown_parameter_is_a_value_and_a_type_error():
    with pytest.raises(DatasetParamError) as info:
        create_dataset("synthetic", "train", cout=3)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    assert str(info.value) == f"unknown parameter(s) cout for dataset 'synthetic'; {SYNTHETIC_PARAMS}"
    assert (info.value.key, info.value.detail) == ("cout", f"unknown parameter; {SYNTHETIC_PARAMS}")


# --- checkpoints and outputs ---------------------------------------------------------------


def _checkpoint(path: Path) -> Path:
    from bnn.detector import create_detector

    config = FitConfig(backbone="bnext_micro", features="rgb", resolution=32)
    model = create_detector(config.backbone, config.features, config.freeze_backbone, compat=config.compat,
                            head=config.head)
    torch.save({"config": config.model_dump(mode="json"), "model": model.state_dict()}, path)
    return path


def _not_a_checkpoint(path: Path, kind: str) -> Path:
    if kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "random bytes":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "a zip, not a torch file")
    elif kind == "torch list":
        torch.save([1, 2, 3], path)
    return path


@pytest.mark.parametrize("kind", ["missing", "text", "random bytes", "empty", "zip", "torch list"])
@pytest.mark.parametrize("command", ["evaluate", "detect", "export"])
def test_a_checkpoint_that_is_not_one_is_one_line_and_exit_2(tmp_path, kind, command, capsys):
    path = tmp_path / "best.pt"
    if kind != "missing":
        _not_a_checkpoint(path, kind)
    (tmp_path / "img.png").write_bytes(b"")
    args = {
        "evaluate": ["evaluate", "--checkpoint", str(path), "--device", "cpu"],
        "detect": ["detect", str(tmp_path / "img.png"), "--checkpoint", str(path), "--device", "cpu"],
        "export": ["export", str(path), "--out", str(tmp_path / "exported")],
    }[command]
    assert bnn_main(args) == EXIT_INVALID
    line = _one_error_line(capsys.readouterr().err)
    assert str(path) in line
    if kind != "missing":
        assert "not a checkpoint written by" in line


def test_export_to_a_folder_that_cannot_be_created_is_one_line_and_exit_2(tmp_path, capsys):
    pytest.importorskip("openvino")
    checkpoint = _checkpoint(tmp_path / "best.pt")
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "exported"
    assert bnn_main(["export", str(checkpoint), "--out", str(out)]) == EXIT_INVALID
    assert str(tmp_path / "a_file") in _one_error_line(capsys.readouterr().err)


# --- studies and reports ---------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["validate", "nonexistent.yaml"], "nonexistent.yaml: no such study file (bundled studies: "),
    (["plan", "quickstart.yaml", "--set", "epochs"], "--set expects key=value, got 'epochs'"),
    (["validate", "quickstart.yaml", "--set", "seeds=[0, 1"], "--set seeds: invalid YAML value"),
    (["validate", "quickstart.yaml", "--set", "data_params.cout=1"], "quickstart.yaml: --set data_params.cout: "
                                                                     f"unknown parameter; {SYNTHETIC_PARAMS}"),
])
def test_studies_bad_arguments_are_one_line_and_exit_2(args, message, capsys):
    assert studies_main(args) == EXIT_INVALID
    assert message in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("content, message", [
    (b"\x80\x81\xfe\xff", "not a text (YAML) file"),
    (None, "is a folder, not a study file"),
])
def test_studies_unreadable_file_is_one_line_and_exit_2(tmp_path, content, message, capsys):
    path = tmp_path / "s.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    assert studies_main(["validate", str(path)]) == EXIT_INVALID
    assert _one_error_line(capsys.readouterr().err) == f"{path}: {message}"


@pytest.mark.parametrize("param, message", [
    ("qualty_metric=test_auc", "--param qualty_metric: unknown notebook parameter; valid: cost_metric, "
                               "quality_metric, literature, front_metrics, include_stale"),
    ("study=other", "--param study: set by render itself (STUDY, --tracking-uri, --out)"),
])
def test_reports_unknown_param_is_one_line_and_exit_2(tmp_path, param, message, capsys):
    assert reports_main(["render", "demo", "--param", param, "--tracking-uri",
                         f"sqlite:///{tmp_path}/absent.db"]) == EXIT_INVALID
    assert _one_error_line(capsys.readouterr().err) == message
    assert not (tmp_path / "absent.db").exists() and not (tmp_path / "reports").exists()


def test_reports_missing_notebook_is_one_line_and_exit_2(tmp_path, capsys):
    assert reports_main(["render", "demo", "--notebook", str(tmp_path / "absent.ipynb")]) == EXIT_INVALID
    assert "absent.ipynb" in _one_error_line(capsys.readouterr().err)


# --- the shared mapping ----------------------------------------------------------------------


def _validation_error() -> ValidationError:
    try:
        FitConfig(epochs=0)
    except ValidationError as err:
        return err
    raise AssertionError


def _yaml_error() -> yaml.YAMLError:
    try:
        yaml.safe_load("a: [1, 2\n")
    except yaml.YAMLError as err:
        return err
    raise AssertionError


MAPPED = {
    "interrupt": (KeyboardInterrupt(), "interrupted", EXIT_INTERRUPTED),
    "pydantic": (_validation_error(), "epochs: Input should be greater than or equal to 1", EXIT_INVALID),
    "yaml": (_yaml_error(), "invalid YAML: ", EXIT_INVALID),
    "layout": (layout_error("root '/x' is not a directory", layout="x/{REAL,FAKE}", env_var="BNN_DATA_X",
                            source="somewhere"), "data missing: root '/x' is not a directory\n  expected layout",
               EXIT_INVALID),
    "missing file": (FileNotFoundError(2, "No such file or directory", "x.pt"), "x.pt: No such file or directory",
                     EXIT_INVALID),
    "permission": (PermissionError(13, "Permission denied", "/out"), "/out: Permission denied", EXIT_INVALID),
    "registry": (KeyError("unknown backbone 'x'; registered: bnext_tiny."), "unknown backbone 'x'", EXIT_INVALID),
    "value": (ValueError("features: unknown feature 'fourier'"), "unknown feature", EXIT_INVALID),
    "study file": (StudyFileError("s.yaml", 3, "grid.lr", "bad"), "s.yaml:3: grid.lr: bad", EXIT_INVALID),
    "data params": (DatasetParamError("folder", ["cout"], ["seed"]), "unknown parameter(s) cout", EXIT_INVALID),
}


@pytest.mark.parametrize("case", list(MAPPED))
def test_user_errors_map_to_a_message_and_an_exit_code(case):
    err, message, code = MAPPED[case]
    got = user_error(err)
    assert got is not None and message in got[0] and got[1] == code


@pytest.mark.parametrize("err", [KeyError("model"), TypeError("unsupported operand"), RuntimeError("CUDA error"),
                                 ZeroDivisionError("division by zero"), AttributeError("x"), OSError("disk")])
def test_bugs_are_not_user_errors_and_keep_their_traceback(err):
    assert user_error(err) is None

    def command() -> int:
        raise err

    with pytest.raises(type(err)):
        run_cli(command)


def test_run_cli_prints_one_line_and_returns_the_code(capsys):
    def command() -> int:
        raise FileNotFoundError(2, "No such file or directory", "run.yaml")

    assert run_cli(command) == EXIT_INVALID
    assert capsys.readouterr().err == "error: run.yaml: No such file or directory\n"
    assert run_cli(lambda: EXIT_PARTIAL) == EXIT_PARTIAL and run_cli(lambda: EXIT_OK) == EXIT_OK


def test_dataset_layout_errors_keep_their_indented_how_to_fix_lines(capsys):
    def command() -> int:
        raise layout_error("no root given and BNN_DATA_X is not set", layout="x/{REAL,FAKE}", env_var="BNN_DATA_X",
                           source="somewhere")

    assert run_cli(command) == EXIT_INVALID
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "error: data missing: no root given and BNN_DATA_X is not set"
    assert len(lines) > 1 and all(line.startswith("  ") for line in lines[1:])
    assert isinstance(DatasetLayoutError("x"), FileNotFoundError)


def test_ctrl_c_exits_130_in_every_command_line(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("bnn.__main__._cost", interrupted)
    assert bnn_main(["cost"]) == EXIT_INTERRUPTED
    monkeypatch.setattr("studies.__main__.cmd_validate", interrupted)
    assert studies_main(["validate", "quickstart.yaml"]) == EXIT_INTERRUPTED
    monkeypatch.setattr(importlib.import_module("reports.render"), "render", interrupted)
    assert reports_main(["render", "demo"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err.splitlines() == ["interrupted"] * 3


@pytest.mark.parametrize("main, args", [
    (bnn_main, ["--help"]), (bnn_main, ["train", "--help"]), (bnn_main, ["detect", "--help"]),
    (studies_main, ["--help"]), (studies_main, ["run", "--help"]), (reports_main, ["render", "--help"]),
])
def test_help_documents_the_exit_codes(main, args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == EXIT_OK
    out = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 success; 1 " in out and "2 invalid input" in out and "130 interrupted" in out
