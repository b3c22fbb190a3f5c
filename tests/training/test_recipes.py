"""Published recipes: every file in configs/recipes loads and applies; bad recipes name the problem;
compare applies each loss's recipe and records it."""

from __future__ import annotations

from pathlib import Path

import pytest

from detlosses.models import LOSS_NAMES
from detlosses.training import TrainConfig
from detlosses.training.recipes import apply_recipe, load_recipe, recipe_for

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_published_recipe_applies(path):
    recipe = load_recipe(path)
    assert recipe.loss in LOSS_NAMES and recipe.published.get("source")
    base = TrainConfig(model=recipe.model, loss=recipe.loss, batch_size=8, epochs=3, image_size=96, data="synthetic")
    config = apply_recipe(base, recipe)
    assert config.lr == pytest.approx(recipe.lr_per_image * 8)
    assert (config.epochs, config.batch_size, config.image_size, config.data) == (3, 8, 96, "synthetic")  # the budget
    for key, value in recipe.settings.items():
        assert getattr(config, key) == value


def test_every_loss_has_a_retinanet_recipe():
    for loss in LOSS_NAMES:
        assert recipe_for(RECIPES, "retinanet", loss).loss == loss


def test_the_papers_settings_are_there():
    alrp = load_recipe(RECIPES / "retinanet_alrp.yaml")
    assert alrp.lr_per_image == pytest.approx(0.008 / 32) and alrp.settings["anchors_per_octave"] == 2
    rank_sort = load_recipe(RECIPES / "retinanet_rank_sort.yaml")
    assert rank_sort.settings["assigner"] == "atss" and rank_sort.lr_per_image == pytest.approx(0.008 / 16)
    assert load_recipe(RECIPES / "retinanet_alrp_atss.yaml").settings["assigner"] == "atss"


@pytest.mark.parametrize("text, message", [
    ("loss: ap\nmodel: retinanet\nlr_per_image: 0.001\nsettings: {epochs: 100}\n", "belong to the run"),
    ("loss: ap\nmodel: retinanet\nlr_per_image: 0.001\nsettings: {anchor_sizes: 3}\n", "unknown config keys"),
    ("loss: ap\nmodel: retinanet\nsettings: {}\n", "missing keys \\['lr_per_image'\\]"),
    ("loss: ap\nmodel: retinanet\nlr_per_image: fast\n", "lr_per_image must be a number"),
    ("loss: ap\nmodel: retinanet\nlr_per_image: 0\n", "lr_per_image must be > 0"),
    ("[1, 2]\n", "must be a mapping"),
])
def test_bad_recipes_name_the_problem(tmp_path, text, message):
    path = tmp_path / "retinanet_ap.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_recipe(path)


def test_a_recipe_for_another_loss_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is for loss 'alrp'"):
        apply_recipe(TrainConfig(loss="focal"), load_recipe(RECIPES / "retinanet_alrp.yaml"))
    with pytest.raises(ValueError, match="no recipe for loss 'focal' on 'retinanet'.*recipes there: none"):
        recipe_for(tmp_path, "retinanet", "focal")
