"""The size model: a ridge regression from an image's style to its cell size (pure parts, and its place in the
model's state)."""

import dataclasses

import numpy as np
import pytest
import torch

from cellrcnn import DataConfig
from cellrcnn.engine.size import MIN_SIZE_IMAGES, fit_size_model
from cellrcnn.io.folders import find_pairs
from cellrcnn.modeling.build import build_model
from cellrcnn.modeling.size_model import STYLE_LEVELS, SizeModel, fit_ridge

from conftest import SAMPLE


def test_ridge_recovers_a_linear_size_and_the_module_gives_what_numpy_gives():
    rng = np.random.default_rng(0)
    styles = rng.normal(2.0, 3.0, (200, 12))
    weights = rng.normal(0, 0.1, 12)
    sizes = styles @ weights + 4.0
    fit = fit_ridge(styles, sizes, penalty=1e-6)
    np.testing.assert_allclose(((styles - fit["mean"]) / fit["std"]) @ fit["coef"] + fit["intercept"], sizes, atol=1e-6)
    module = SizeModel(12)
    assert not module.is_fitted
    module.load_fit(fit)
    assert module.is_fitted
    np.testing.assert_allclose(module(torch.as_tensor(styles[:5], dtype=torch.float32)).numpy(), sizes[:5], atol=1e-3)
    assert module.diameter(torch.as_tensor(styles[0], dtype=torch.float32)) == pytest.approx(np.exp(sizes[0]), rel=1e-3)
    # a heavy penalty pulls every prediction towards the mean size
    flat = fit_ridge(styles, sizes, penalty=1e9)
    assert np.abs(flat["coef"]).max() < 1e-6 and flat["intercept"] == pytest.approx(sizes.mean())
    with pytest.raises(ValueError, match="two or more"):
        fit_ridge(styles[:1], sizes[:1])


def test_models_saved_before_the_size_model_load_unfitted_and_a_fit_travels_with_the_state(tiny_config):
    model = build_model(tiny_config, load_weights=False)
    assert model.size_model.mean.shape == (len(STYLE_LEVELS) * model.backbone.out_channels,)
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("size_model.")}
    again = build_model(tiny_config, load_weights=False)
    again.load_state_dict(old)  # strict: the missing buffers are filled, unfitted
    assert not again.size_model.is_fitted
    # fitted on the sample (12 images, every one with cells) by an untrained network: it runs, and the fit is
    # part of the state that checkpoints and packages save
    pairs = find_pairs(SAMPLE, DataConfig())[:MIN_SIZE_IMAGES]
    config = dataclasses.replace(tiny_config, input_scale=0.25, cell_size=10.0)  # small views: a quick test
    assert fit_size_model(model, pairs, DataConfig(), config, seed=0) == 3 * len(pairs)
    assert model.size_model.is_fitted and model.training  # the model is left in the mode it was in
    copy = build_model(tiny_config, load_weights=False)
    copy.load_state_dict(model.state_dict())
    assert copy.size_model.is_fitted and torch.equal(copy.size_model.coef, model.size_model.coef)
    assert fit_size_model(copy, pairs[:-1], DataConfig(), config) == 0  # too few to learn from
