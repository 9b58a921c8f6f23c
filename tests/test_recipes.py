"""Training recipes: typed augmentation presets, content ids that survive new keys, the BatchNorm
head, learning-rate schedules, parameter groups, soft binarisation and progress lines in logs."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from PIL import Image

from bnn.backbones.binary import BinaryConv2d, set_weight_temperature
from bnn.config import LEGACY_VALUES, RECIPES, AugmentConfig, FitConfig
from bnn.data.transforms import AUGMENT_PRESETS, build_transform, resize_size
from bnn.detector import create_detector
from bnn.device import seed_everything
from bnn.optim import lr_at, parameter_groups
from bnn.progress import ProgressLog
from bnn.splits import load_splits, make_loader
from studies.spec import load_study


def _image(seed: int = 0, size=(40, 52)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))


def _authors_pipeline(resolution: int) -> T.Compose:
    """The training transform as it was before presets existed (the paper's, with expand=True)."""
    rotate = T.RandomChoice(
        [T.RandomRotation((-90, -90), expand=True), T.RandomRotation((90, 90), expand=True)], p=[0.5, 0.5]
    )
    return T.Compose([
        T.Resize(resize_size(resolution), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.RandomHorizontalFlip(p=0.5), T.RandomVerticalFlip(p=0.5), rotate, T.RandomCrop(resolution),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2),
        T.ToImage(), T.ToDtype(torch.float32, scale=True),
    ])


@pytest.mark.parametrize("seed", range(6))
def test_paper_preset_is_the_previous_pipeline_draw_for_draw(seed):
    image = _image(seed)
    torch.manual_seed(seed)
    expected = _authors_pipeline(32)(image)
    torch.manual_seed(seed)
    got = build_transform(32, train=True, augment=AugmentConfig(preset="paper").resolved())(image)
    torch.manual_seed(seed)
    default = build_transform(32, train=True)(image)  # augment=None is the paper's
    assert torch.equal(got, expected) and torch.equal(default, expected)


def test_standard_preset_only_crops_and_flips_horizontally():
    """Every output is a crop of the resized image, possibly mirrored left-right: no rotation, no
    vertical flip, no colour change (pixel values are copied, never transformed)."""
    image = _image(1, size=(30, 30))
    resized = T.Compose([T.Resize(resize_size(24), antialias=True), T.ToImage(), T.ToDtype(torch.float32, scale=True)])(image)
    crops = {
        (flip, top, left)
        for flip in (False, True)
        for top in range(resized.shape[1] - 23)
        for left in range(resized.shape[2] - 23)
    }
    transform = build_transform(24, train=True, augment=AugmentConfig(preset="standard").resolved())
    flips = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = transform(image)
        matches = [
            flip for flip, top, left in crops
            if torch.equal(out, (resized.flip(-1) if flip else resized)[:, top:top + 24, left:left + 24])
        ]
        assert matches, f"seed {seed}: output is not a (mirrored) crop of the resized image"
        flips.update(matches)
    assert flips == {False, True}


def test_none_preset_is_the_evaluation_transform():
    image = _image(2)
    none = build_transform(32, train=True, augment=AugmentConfig(preset="none").resolved())
    assert torch.equal(none(image), build_transform(32, train=False)(image))


def test_knobs_override_the_preset_and_are_validated():
    knobs = AugmentConfig(preset="paper", rotate90_p=0.0, color_jitter=0.0).resolved()
    assert knobs == {**AUGMENT_PRESETS["paper"], "rotate90_p": 0.0, "color_jitter": 0.0}
    with pytest.raises(ValueError, match="augment needs exactly the keys"):
        build_transform(32, train=True, augment={"hflip_p": 0.5})
    with pytest.raises(ValueError, match="rotate90_p"):
        FitConfig.from_mapping({"augment": {"rotate90_p": 2}}, "test.yaml")
    with pytest.raises(ValueError, match="preset"):
        FitConfig.from_mapping({"augment": {"preset": "heavy"}}, "test.yaml")


# ------------------------------------------------------------------------------ content ids

def test_content_ids_of_existing_cells_are_unchanged():
    """Ids computed by the code before ``augment``/``head``/schedules existed (commit 8034faf)."""
    legacy = FitConfig(backbone="bnext_micro", epochs=2, lr=1e-3, recipe="paper")
    assert legacy.content_id() == "218d68fbaa8f"
    spelt_out = FitConfig(backbone="bnext_micro", epochs=2, lr=1e-3, head="linear",
                          augment={"preset": "standard", "vflip_p": 0.5, "rotate90_p": 1.0, "color_jitter": 0.2})
    assert spelt_out.content_id() == "218d68fbaa8f"
    for name, first_ids in {
        "ablation_cocofake.yaml": ["b966704f7e42", "b7f4c3a82740"],
        "results_cifake.yaml": ["f57f86e74081", "f210bbd6b160"],
        "baselines_dffd.yaml": ["4db7759190aa", "a2b6cb6ba19a"],
    }.items():
        assert [c.cell_id for c in load_study(name).cells][:2] == first_ids, name


def test_new_settings_change_the_content_id():
    base = FitConfig(backbone="bnext_micro", recipe="paper")
    ids = {base.content_id()}
    for change in ({"head": "bn_linear"}, {"augment": {"preset": "standard"}}, {"lr_schedule": "cosine"},
                   {"warmup_epochs": 1.0}, {"binary_weight_decay": 0.0}, {"weight_temperature": 1.0},
                   {"input_quantizer": "approx_sign"}):
        ids.add(FitConfig(**{**base.model_dump(), **change}).content_id())
    assert len(ids) == 8
    assert set(LEGACY_VALUES) <= set(FitConfig.model_fields)


def test_recipe_fills_only_the_keys_left_out():
    scratch = FitConfig(recipe="scratch", lr=5e-4)
    assert scratch.lr == 5e-4  # given explicitly: kept
    assert scratch.lr_schedule == RECIPES["scratch"]["lr_schedule"] and scratch.head == "bn_linear"
    assert scratch.content_id() == FitConfig(**{**RECIPES["scratch"], "lr": 5e-4}).content_id()
    with pytest.raises(ValueError, match="recipe"):
        FitConfig.from_mapping({"recipe": "fast"}, "test.yaml")


# ------------------------------------------------------------------------------ head and loss

def test_bn_head_starts_at_logit_zero_and_linear_head_does_not():
    images = torch.rand(8, 3, 64, 64)
    fresh = create_detector("bnext_micro", "rgb+fft", head="bn_linear").train()
    logits = fresh(images)
    assert torch.equal(logits, torch.zeros(8))
    assert F.binary_cross_entropy_with_logits(logits, torch.ones(8)).item() == pytest.approx(math.log(2), abs=1e-7)
    authors = create_detector("bnext_micro", "rgb+fft", head="linear").train()
    assert authors(images).abs().max() > 0
    assert FitConfig().head == "bn_linear" and FitConfig(recipe="paper").head == "linear"


@pytest.mark.slow
@pytest.mark.parametrize("head", ["bn_linear"])
@pytest.mark.integration
def test_first_steps_from_scratch_keep_the_loss_bounded(tmp_path_factory, monkeypatch, head):
    """The cause the diagnosis confirmed: BNext-T from scratch with the authors' linear head blows
    its logits up within 3 AdamW steps (std ~30, batch loss 7-18 at lr 3e-4 on the quickstart's
    data); the default head keeps the first steps' losses near ln 2. With ``head="linear"`` this
    test fails (losses 0.97, 1.33, 7.8, 18.3)."""
    monkeypatch.setenv("BNN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "bnn-cache"))
    config = FitConfig(backbone="bnext_tiny", features="rgb+fft+lbp", head=head, resolution=32, batch_size=32,
                       lr=3e-4, augment={"preset": "paper"},
                       data_params={"count": 800, "image_size": 36, "difficulty": 0.0})
    seed_everything(0)
    model = create_detector(config.backbone, config.features, head=config.head).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.lr)
    losses = []
    for images, labels, _, _ in make_loader(load_splits(config)["train"], config, torch.device("cpu"), shuffle=True):
        loss = F.binary_cross_entropy_with_logits(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if len(losses) == 4:
            break
    assert max(losses) < 0.8, losses


# ------------------------------------------------------------------------------ optimisation

def test_lr_schedules():
    linear = FitConfig(lr=1e-3, min_lr=1e-4, lr_decay_epochs=3, epochs=5)
    assert [lr_at(linear, e) for e in (0, 0.9, 1, 3, 4)] == pytest.approx([1e-3, 1e-3, 7e-4, 1e-4, 1e-4])
    cosine = FitConfig(lr=1e-3, min_lr=0.0, epochs=4, lr_schedule="cosine", warmup_epochs=1.0)
    assert lr_at(cosine, 0.0) == 0.0 and lr_at(cosine, 0.5) == pytest.approx(5e-4)
    assert lr_at(cosine, 1.0) == pytest.approx(1e-3)
    assert lr_at(cosine, 2.5) == pytest.approx(5e-4)  # half-way through the cosine
    assert lr_at(cosine, 4.0) == pytest.approx(0.0, abs=1e-12)


def test_binary_weights_get_their_own_weight_decay():
    model = create_detector("bnext_micro", "rgb")
    binary = {id(m.weight) for m in model.modules() if isinstance(m, BinaryConv2d)}
    one = parameter_groups(model, FitConfig(weight_decay=1e-2))
    assert len(one) == 1 and one[0]["weight_decay"] == 1e-2
    other, latent = parameter_groups(model, FitConfig(weight_decay=1e-2, binary_weight_decay=0.0))
    assert {id(p) for p in latent["params"]} == binary and latent["weight_decay"] == 0.0
    assert binary.isdisjoint(id(p) for p in other["params"]) and other["weight_decay"] == 1e-2
    assert len(latent["params"]) + len(other["params"]) == len(list(model.parameters()))


def test_soft_binarisation_in_training_exact_sign_in_evaluation():
    conv = BinaryConv2d(2, 3, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(-0.5, 0.5, conv.weight.numel()).view_as(conv.weight))
    conv.weight.data[0, 0, 0, 0] = 0.0
    assert set_weight_temperature(conv, 0.25) == 1
    conv.train()
    soft = conv.binary_weight()
    assert torch.equal(soft, (conv.weight / 0.25).clamp(-1, 1))
    soft.sum().backward()  # straight-through: identity gradient to the latent weight
    assert torch.equal(conv.weight.grad, torch.ones_like(conv.weight))
    conv.eval()
    hard = conv.binary_weight()
    assert set(hard.unique().tolist()) == {-1.0, 1.0} and hard[0, 0, 0, 0] == 1.0
    set_weight_temperature(conv, 0.0)
    conv.train()
    assert set(conv.binary_weight().unique().tolist()) == {-1.0, 1.0}


# ------------------------------------------------------------------------------ progress

def test_progress_lines_when_stderr_is_not_a_terminal(caplog):
    clock = iter([0.0, 0.5, 2.0, 2.5, 4.0]).__next__
    progress = ProgressLog("epoch 0", total=96, interval=1.0, enabled=True, clock=clock)  # start 0.0
    with caplog.at_level(logging.INFO, logger="bnn.progress"):
        for done in (24, 48, 72, 96):  # at t = 0.5 (too soon), 2.0, 2.5 (too soon), 4.0
            progress.update(done, 0.5)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["epoch 0: 48/96 images, 24.0 img/s, running loss 0.5000",
                     "epoch 0: 96/96 images, 24.0 img/s, running loss 0.5000"]
    quiet = ProgressLog("epoch 0", total=96, interval=0.0, enabled=False)
    with caplog.at_level(logging.INFO, logger="bnn.progress"):
        quiet.update(32, 0.5)
    assert len(caplog.records) == 2


def test_checkpoints_of_older_versions_load_as_they_were_trained(tmp_path):
    """A ``best.pt`` written before ``head``/``augment``/... existed has none of those keys in its
    config: it must rebuild the authors' linear head, not the new default."""
    from bnn.checkpoint import load_detector

    old = FitConfig(backbone="bnext_micro", features="rgb+fft", resolution=32, recipe="paper")
    saved = {k: v for k, v in old.model_dump(mode="json").items() if k not in LEGACY_VALUES and k != "recipe"}
    model = create_detector("bnext_micro", "rgb+fft", head="linear").eval()
    torch.save({"model": model.state_dict(), "config": saved, "epoch": 0}, tmp_path / "best.pt")
    loaded, config = load_detector(tmp_path / "best.pt", device="cpu")
    assert config.head == "linear" and config.augment.resolved() == AUGMENT_PRESETS["paper"]
    assert config.content_id() == old.content_id()
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(images), model(images))


@pytest.mark.integration
def test_a_training_batch_of_one_image_is_left_out(tmp_path, monkeypatch):
    """Case C07's kind: train size = k * batch_size + 1 (34 images, batch 33). Train-mode BatchNorm
    cannot normalise one value per channel; the batch is left out and the epoch finishes."""
    from bnn.train import fit

    monkeypatch.setenv("BNN_CACHE_DIR", str(tmp_path / "cache"))
    config = FitConfig(backbone="bnext_micro", features="rgb", dataset="synthetic", resolution=32, epochs=1,
                       batch_size=33, data_params={"count": 48, "image_size": 36}, output_dir=str(tmp_path / "run"))
    result = fit(config)
    assert len(result.history) == 1 and result.checkpoint.exists()
