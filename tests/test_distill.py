"""Knowledge distillation: the loss (exact), the config's identity, teacher references in study
files, and teachers running before their students (in one process and across two workers)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient
from optuna.trial import TrialState
from pydantic import BaseModel

from analysis.replicates import group_replicates
from analysis.runs import load_runs
from bnn.__main__ import main as bnn_main
from bnn.config import LEGACY_VALUES, DistillConfig, FitConfig
from bnn.detector import create_detector
from bnn.distill import distillation_loss, mix_distillation, teacher_logits
from studies import StudyFileError, load_study
from studies.__main__ import main as studies_main
from studies.runner import Runner

SYNTHETIC = {"count": 64, "image_size": 36, "difficulty": 0.0}
DATA = "dataset: synthetic\ndata_params: {count: 64, image_size: 36, difficulty: 0.0}\n"


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables created once (migrations take seconds)."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path, _empty_mlflow_db) -> Path:
    """``tmp_path`` holding an empty MLflow store (studies here track to ``tmp_path/mlflow.db``)."""
    shutil.copy(_empty_mlflow_db, tmp_path / "mlflow.db")
    return tmp_path


pytestmark = pytest.mark.usefixtures("isolated", "fast_heartbeat")  # tests/conftest.py


# --- the loss ---------------------------------------------------------------------------------


def test_alpha_zero_is_plain_bce_and_alpha_one_is_kd_only():
    z, t, y = torch.randn(16), torch.randn(16), (torch.rand(16) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(z, y, pos_weight=torch.tensor(1.7))
    assert torch.equal(mix_distillation(bce, z, t, DistillConfig(teacher="t.pt", alpha=0.0)), bce)
    kd = distillation_loss(z, t, 3.0)
    assert torch.equal(mix_distillation(bce, z, t, DistillConfig(teacher="t.pt", alpha=1.0, temperature=3.0)), kd)
    half = mix_distillation(bce, z, t, DistillConfig(teacher="t.pt", alpha=0.25, temperature=3.0))
    assert torch.allclose(half, 0.75 * bce + 0.25 * kd)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_is_smallest_where_the_student_equals_the_teacher(temperature):
    t = torch.tensor(0.8)
    z = torch.linspace(-6, 6, 241, dtype=torch.float64)  # includes 0.8 exactly (step 0.05)
    values = torch.stack([distillation_loss(zi.view(1), t.view(1).double(), temperature) for zi in z])
    assert z[values.argmin()].item() == pytest.approx(0.8)
    at_teacher = torch.tensor([0.8], requires_grad=True)
    distillation_loss(at_teacher, t.view(1), temperature).backward()
    assert at_teacher.grad.item() == 0.0  # sigmoid(z / T) - sigmoid(t / T) is exactly 0


def test_kd_gradient_points_towards_the_teacher_with_the_hinton_scale():
    temperature = 2.0
    z = torch.tensor([-2.0, 0.5, 3.0], requires_grad=True)
    t = torch.tensor([1.0, -1.0, 3.5], requires_grad=True)
    distillation_loss(z, t, temperature).backward()
    expected = temperature * (torch.sigmoid(z / temperature) - torch.sigmoid(t / temperature)) / 3
    assert torch.allclose(z.grad, expected.detach(), atol=1e-7)
    assert z.grad[0] < 0 and z.grad[1] > 0 and z.grad[2] < 0  # below the teacher: pushed up, above: down
    assert t.grad is None  # the teacher's logits are detached


def test_kd_is_bnexts_softmax_cross_entropy_of_the_two_class_logits():
    """BNext (utils/KD_loss.py): -sum softmax(teacher) * log_softmax(student); one logit z = (0, z)."""
    z, t, temperature = torch.randn(32), torch.randn(32) * 3, 2.5
    two = lambda v: torch.stack([torch.zeros_like(v), v], dim=1) / temperature  # noqa: E731
    reference = -(F.softmax(two(t), dim=1) * F.log_softmax(two(z), dim=1)).sum(1).mean() * temperature**2
    assert torch.allclose(distillation_loss(z, t, temperature), reference, atol=1e-6)


def test_teacher_logits_build_no_graph():
    teacher = create_detector("resnet18", "rgb").eval()
    out = teacher_logits(teacher, torch.rand(2, 3, 32, 32))
    assert out.shape == (2,) and out.dtype == torch.float32 and not out.requires_grad


# --- config and identity ----------------------------------------------------------------------


def test_no_distillation_keeps_the_content_id_of_configs_from_before_the_key(monkeypatch):
    config = FitConfig(backbone="bnext_micro", resolution=32, data_params=SYNTHETIC)
    now = config.content_id()

    def dump_without_distill(self, **kwargs):  # what the class dumped before ``distill`` existed
        return {k: v for k, v in BaseModel.model_dump(self, **kwargs).items() if k != "distill"}

    monkeypatch.setattr(FitConfig, "model_dump", dump_without_distill)
    monkeypatch.delitem(LEGACY_VALUES, "distill")
    assert config.content_id() == now


def test_the_teacher_identity_is_part_of_the_content_id():
    def cid(**distill):
        return FitConfig(backbone="bnext_micro", distill=distill).content_id()

    # A study teacher: its cell id counts, not the machine-specific path of its checkpoint.
    assert cid(teacher="/a/runs/s/abc/best.pt", teacher_id="abc") == cid(teacher="/b/x/abc/best.pt", teacher_id="abc")
    assert cid(teacher="/a/runs/s/abc/best.pt", teacher_id="abc") != cid(teacher="/a/runs/s/abd/best.pt", teacher_id="abd")
    # A file teacher: its path counts; so do temperature and alpha.
    assert cid(teacher="t1.pt") != cid(teacher="t2.pt")
    assert len({cid(teacher="t.pt"), cid(teacher="t.pt", alpha=0.7), cid(teacher="t.pt", temperature=2)}) == 3
    assert FitConfig(backbone="bnext_micro").content_id() not in {cid(teacher="t.pt")}
    with pytest.raises(ValueError):
        DistillConfig(teacher="t.pt", alpha=1.5)
    with pytest.raises(ValueError):
        DistillConfig(teacher="t.pt", temperature=0)


def _teacher_file(path: Path, backbone: str = "resnet18") -> Path:
    """A ``best.pt`` as ``fit`` writes it (untrained weights: enough for plumbing)."""
    config = FitConfig(backbone=backbone, features="rgb", data_params=SYNTHETIC, resolution=32)
    model = create_detector(backbone, "rgb", head=config.head)  # as load_detector rebuilds it
    torch.save({"model": model.state_dict(), "config": config.model_dump(mode="json"), "epoch": 0}, path)
    return path


@pytest.mark.integration
def test_command_line_distils_from_a_checkpoint_and_names_a_bad_one(tmp_path, capsys):
    teacher = _teacher_file(tmp_path / "teacher.pt")
    common = ["train", "--set", "backbone=bnext_micro", "--set", "resolution=32", "--set", "epochs=1",
              "--set", "data_params={count: 64, image_size: 36, difficulty: 0.0}", "--set", "batch_size=16",
              "--set", "max_train_batches=1", "--set", "output_dir=student"]
    assert bnn_main([*common, "--set", f"distill.teacher={teacher}", "--set", "distill.alpha=0.8"]) == 0
    saved = torch.load(tmp_path / "student" / "best.pt", weights_only=True)["config"]["distill"]
    assert saved == {"teacher": str(teacher), "teacher_id": None, "temperature": 1.0, "alpha": 0.8}

    assert bnn_main([*common, "--set", "distill.teacher=absent.pt", "--set", "output_dir=s2"]) == 2
    err = capsys.readouterr().err
    assert "teacher checkpoint 'absent.pt' not found" in err and "best.pt written by" in err
    binary = _teacher_file(tmp_path / "binary.pt", backbone="bnext_micro")
    assert bnn_main([*common, "--set", f"distill.teacher={binary}", "--set", "output_dir=s3"]) == 2
    assert "a teacher must be full precision" in capsys.readouterr().err


# --- teacher references in study files --------------------------------------------------------

GRID = """\
name: tiny
{data}tracking_uri: sqlite:///{root}/mlflow.db
runs_dir: {root}/runs
defaults: {{resolution: 32, epochs: 1, batch_size: 16, max_train_batches: 2, features: rgb}}
grid:
  backbone: [resnet18, bnext_micro]
  distill:
    - null
    - {{teacher: {{cell: {cell}}}, alpha: 0.5}}
log_checkpoint: false
"""


def _grid(tmp_path, cell: str = "{backbone: resnet18}", name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(GRID.format(data=DATA, root=tmp_path, cell=cell))
    return path


def test_a_cell_reference_resolves_to_the_teacher_cell_and_survives_set(tmp_path):
    study = load_study(_grid(tmp_path))
    teacher = next(c for c in study.cells if c.config.backbone == "resnet18" and c.config.distill is None)
    students = [c for c in study.cells if c.config.distill is not None]
    assert len(study.cells) == 4 and len(students) == 2  # ResNet-18 distilled from itself, and BNext
    for student in students:
        assert student.teacher.cell_id == teacher.cell_id == student.config.distill.teacher_id
        assert Path(student.config.distill.teacher) == tmp_path / "runs" / "tiny" / teacher.cell_id / "best.pt"
        assert student.axes["distill"] == "from backbone=resnet18 alpha=0.5"
    moved = load_study(_grid(tmp_path), overrides={"epochs": 2, "runs_dir": str(tmp_path / "elsewhere")})
    moved_teacher = next(c for c in moved.cells if c.config.backbone == "resnet18" and c.config.distill is None)
    assert moved_teacher.cell_id != teacher.cell_id  # --set changed the teacher, the reference followed it
    assert {c.teacher.cell_id for c in moved.cells if c.teacher} == {moved_teacher.cell_id}
    # Where checkpoints lie is not part of a student's identity.
    elsewhere = load_study(_grid(tmp_path), overrides={"runs_dir": str(tmp_path / "elsewhere")})
    assert [c.cell_id for c in elsewhere.cells] == [c.cell_id for c in study.cells]


BAD_REFERENCES = {
    "no match": ("{backbone: resnet50}", "no cell of this study without distillation match",
                 "candidates: backbone=resnet18|distill=None"),
    "several": ("{features: rgb}", "2 cells of this study", "add keys (e.g. seed) to pick one"),
    "binary": ("{backbone: bnext_micro}", "binary backbone BNext-micro", "a teacher must be full precision"),
    "unknown key": ("{backbon: resnet18}", "not a FitConfig key", "grid.distill.cell.backbon"),
    "bad value": ("{features: [rgb, fourier]}", "invalid value", "fourier"),
}


@pytest.mark.parametrize("case", list(BAD_REFERENCES))
def test_bad_teacher_references_name_file_line_key_and_candidates(tmp_path, case, capsys):
    cell, first, second = BAD_REFERENCES[case]
    path = _grid(tmp_path, cell)
    with pytest.raises(StudyFileError) as info:
        load_study(path)
    err = info.value
    assert err.path == str(path) and err.line == 9 and err.key.startswith("grid.distill")
    assert first in str(err) and second in str(err), str(err)
    assert studies_main(["validate", str(path)]) == 2
    assert f"{path}:9" in capsys.readouterr().err


def test_a_malformed_reference_and_a_teacher_study_in_another_store(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("defaults:\n  backbone: bnext_micro\n  distill: {teacher: {cel: {backbone: resnet18}}}\n")
    with pytest.raises(StudyFileError, match="a teacher is a checkpoint path or") as info:
        load_study(path)
    assert info.value.line == 3 and info.value.key == "defaults.distill.teacher"
    (tmp_path / "t.yaml").write_text("tracking_uri: sqlite:///elsewhere.db\ndefaults: {backbone: resnet18}\n")
    path.write_text("defaults:\n  backbone: bnext_micro\n  distill: {teacher: {study: t.yaml, cell: {backbone: resnet18}}}\n")
    with pytest.raises(StudyFileError, match="must share both") as info:
        load_study(path)
    assert info.value.key == "defaults.distill.teacher.study"


# --- running ----------------------------------------------------------------------------------

TEACHERS = """\
name: teachers
{data}tracking_uri: sqlite:///{root}/mlflow.db
runs_dir: {root}/runs
defaults: {{backbone: resnet18, features: rgb, resolution: 32, epochs: 1, batch_size: 16, max_train_batches: 1}}
log_checkpoint: false
"""
STUDENTS = """\
name: students
{data}tracking_uri: sqlite:///{root}/mlflow.db
runs_dir: {root}/runs
defaults:
  backbone: bnext_micro
  features: rgb+fft
  resolution: 32
  epochs: 1
  batch_size: 16
  max_train_batches: 1
  distill: {{teacher: {{study: teachers.yaml, cell: {{backbone: resnet18}}}}, temperature: 2.0, alpha: 0.5}}
log_checkpoint: false
"""


@pytest.mark.integration
def test_a_bnn_student_distils_from_a_teacher_cell_of_another_study(tmp_path, store):
    (tmp_path / "teachers.yaml").write_text(TEACHERS.format(data=DATA, root=tmp_path))
    (tmp_path / "students.yaml").write_text(STUDENTS.format(data=DATA, root=tmp_path))
    students, teachers = load_study(tmp_path / "students.yaml"), load_study(tmp_path / "teachers.yaml")
    (student,), (teacher,) = students.cells, teachers.cells
    assert student.teacher.study == "teachers" and student.teacher.cell_id == teacher.cell_id

    # The teacher's study has not run: the student fails at once, with what to do.
    summary = Runner(students).run()
    assert list(summary.failed) == [student.cell_id] and not summary.completed
    assert "of study 'teachers' is not run; run `python -m studies run" in summary.failed[student.cell_id]

    assert Runner(teachers).run().completed == [teacher.cell_id]
    assert Runner(students).run().completed == [student.cell_id]  # the next invocation runs it

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("students").experiment_id],
                             filter_string=f"tags.cell_id = '{student.cell_id}'")[0]
    params = run.data.params
    assert params["distill.teacher_id"] == teacher.cell_id and params["distill.alpha"] == "0.5"
    assert params["distill.teacher"] == str(tmp_path / "runs" / "teachers" / teacher.cell_id / "best.pt")
    assert run.info.status == "FINISHED" and run.info.run_name.endswith("distilled")
    assert run.data.tags["bnn.attempts"] == "2"  # the failed attempt's run was reused
    frame = load_runs("students", f"sqlite:///{tmp_path}/mlflow.db")
    assert frame["distill.temperature"].tolist() == [2.0] and frame["distill.teacher_id"].tolist() == [teacher.cell_id]
    assert len(group_replicates(frame)) == 1


PAIR = """\
name: pair
{data}tracking_uri: sqlite:///{root}/mlflow.db
runs_dir: {root}/runs
defaults: {{backbone: resnet18, features: rgb, resolution: 32, epochs: 1, batch_size: 16, max_train_batches: 1{extra}}}
grid:
  distill: [null, {{teacher: {{cell: {{distill: null}}}}, alpha: 0.5}}]  # a teacher and its student
log_checkpoint: false
"""


def _pair(tmp_path, extra: str = "") -> tuple[Path, list]:
    path = tmp_path / "pair.yaml"
    path.write_text(PAIR.format(data=DATA, root=tmp_path, extra=extra))
    study = load_study(path)
    assert [c.teacher is None for c in study.cells] == [True, False]
    return path, study.cells


def _pair_trials(tmp_path) -> list:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    return optuna.load_study(study_name="pair", storage=storage).get_trials()


def test_a_failed_teacher_fails_its_student_with_the_reason(tmp_path, store):
    path, (teacher, student) = _pair(tmp_path, ", max_train_samples: 1")  # fit refuses a one-class split
    summary = Runner(load_study(path)).run()
    assert list(summary.failed) == [teacher.cell_id, student.cell_id] and not summary.completed
    assert summary.failed[student.cell_id].startswith(
        f"teacher cell {teacher.cell_id} (distill=None) failed: ValueError: the train split has no")
    trials = _pair_trials(tmp_path)
    assert len(trials) == 2 and all(t.state == TrialState.FAIL for t in trials)  # each once, no loop
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    failed = client.get_run(trials[1].user_attrs["mlflow_run_id"])
    assert failed.info.status == "FAILED" and failed.data.tags["bnn.failure"] == summary.failed[student.cell_id]


@pytest.mark.slow
@pytest.mark.integration
def test_two_workers_run_the_teacher_before_its_student_each_cell_once(tmp_path, store):
    path, (teacher, student) = _pair(tmp_path)
    workers = [
        subprocess.Popen([sys.executable, "-m", "studies", "run", str(path), "--quiet"], cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    complete = {t.user_attrs["cell_id"]: t for t in _pair_trials(tmp_path) if t.state == TrialState.COMPLETE}
    assert set(complete) == {teacher.cell_id, student.cell_id}
    assert sum(t.state == TrialState.COMPLETE for t in _pair_trials(tmp_path)) == 2  # each cell once
    assert complete[student.cell_id].datetime_start >= complete[teacher.cell_id].datetime_complete
    assert sum(out.count("FINISHED") for out in outputs) == 2
