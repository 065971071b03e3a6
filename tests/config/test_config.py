"""Config validation and JSON round trips."""

import json

import pytest

from cellrcnn import Config, DataConfig, ModelConfig, TrainConfig


def test_defaults_are_valid_and_documented_values():
    cfg = ModelConfig()
    assert cfg.parts == ("background", "cytoplasm", "nucleus")
    assert cfg.part_weight_vector == (1.0, 1.0, 1.0)
    assert cfg.num_classes == 1 and cfg.class_specific_parts is False
    assert cfg.min_size < 800  # torchvision's photo-sized default is wrong for cell crops
    assert (cfg.mask_size, cfg.mask_alignment, cfg.predictor_init) == (28, "exact", "chance")


@pytest.mark.parametrize("backbone, weights, kind", [
    ("resnet18_fpn", "none", "group"),  # from scratch: batch statistics of 2 images are too noisy
    ("resnet50_fpn", "coco", "frozen"),  # torchvision's choice for pretrained weights
    ("resnet50_fpn", "imagenet", "frozen"),
    ("resnet50_fpn_v2", "coco", "batch"),  # torchvision trains v2's batch norm
    ("resnet18_fpn", "some/weights.pt", "frozen"),
])
def test_auto_norm_follows_the_weights(backbone, weights, kind):
    assert ModelConfig(backbone=backbone, weights=weights).norm_kind == kind
    assert ModelConfig(backbone=backbone, weights=weights, norm="batch").norm_kind == "batch"


def test_a_saved_model_section_without_the_new_fields_rebuilds_the_old_model():
    old = {k: v for k, v in ModelConfig(weights="none").to_dict().items()
           if k not in ("mask_size", "mask_alignment", "norm", "predictor_init")}
    legacy = ModelConfig.from_saved(old)
    assert (legacy.mask_size, legacy.mask_alignment, legacy.norm, legacy.predictor_init) == \
        (28, "torchvision", "batch", "torchvision")
    assert ModelConfig.from_saved({**old, "weights": "coco"}).norm_kind == "frozen"
    # Fields a checkpoint does record are kept, and a plain config file gets today's defaults.
    assert ModelConfig.from_saved({**old, "mask_alignment": "exact", "norm": "group"}).norm == "group"
    assert ModelConfig.from_dict(old).mask_alignment == "exact"
    whole = Config.from_saved({"model": old, "data": DataConfig().to_dict()})
    assert whole.model == legacy


def test_part_weights_fill_unspecified_parts_with_one():
    cfg = ModelConfig(part_weights={"cytoplasm": 2.5})
    assert cfg.part_weight_vector == (1.0, 2.5, 1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"parts": ("background",)}, "at least one cell part"),
        ({"parts": ("cytoplasm", "background", "nucleus")}, "first part must be 'background'"),
        ({"parts": ("background", "nucleus", "nucleus")}, "unique"),
        ({"parts": "background,nucleus"}, "parts must be a sequence"),
        ({"part_weights": {"membrane": 2.0}}, "unknown part"),
        ({"part_weights": {"cytoplasm": 0.0}}, "positive number"),
        ({"part_weights": {"cytoplasm": float("nan")}}, "positive number"),
        ({"part_weights": {"cytoplasm": "heavy"}}, "map part names to numbers"),
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"num_classes": 1.5}, "num_classes must be a positive integer"),
        ({"backbone": "vgg16"}, "backbone must be one of"),
        ({"backbone": "resnet18_fpn", "weights": "coco"}, "no COCO weights for resnet18_fpn"),
        ({"weights": ""}, "weights must be one of"),
        ({"trainable_backbone_layers": 6}, r"must be 0\.\.5"),
        ({"min_size": 0}, "min_size must be a positive integer"),
        ({"min_size": 600, "max_size": 300}, "must be at least min_size"),
        ({"image_mean": (0.5, 0.5)}, "needs 3 numbers"),
        ({"image_std": (0.2, 0.0, 0.2)}, "image_std must be positive"),
        ({"class_specific_parts": "yes"}, "true or false"),
        ({"mask_threshold": 1.0}, r"mask_threshold must lie in \(0, 1\)"),
        ({"box_batch_size_per_image": -4}, "box_batch_size_per_image must be a positive integer"),
        ({"mask_size": 32}, "mask_size must be one of 28, 56"),
        ({"mask_alignment": "detectron2"}, "mask_alignment must be one of exact, torchvision"),
        ({"norm": "layer"}, "norm must be one of auto, batch, group, frozen"),
        ({"predictor_init": "zeros"}, "predictor_init must be one of chance, torchvision"),
        ({"weights": "none", "norm": "frozen"}, "weights='none' has none; use norm='group'"),
        ({"weights": "coco", "norm": "group"}, "trained with batch norm"),
    ],
)
def test_bad_values_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_json_round_trip(tmp_path):
    cfg = Config(model=ModelConfig(parts=("background", "cytoplasm", "nucleus", "granule"),
                                   part_weights={"cytoplasm": 2.0}, num_classes=5, backbone="mobilenet_v3_fpn",
                                   min_size=256, max_size=320, class_specific_parts=True),
                 data=DataConfig(part_values=(0, 64, 128, 255), class_names=("a", "b", "c", "d", "e"),
                                 image_glob="*.bmp", mask_glob="*.png", percentiles=(0.5, 99.5)))
    path = tmp_path / "config.json"
    cfg.to_json(path)
    assert json.loads(path.read_text())["model"]["parts"] == ["background", "cytoplasm", "nucleus", "granule"]
    assert Config.from_json(path) == cfg
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"encoding": "rgb"}, "encoding must be one of"),
        ({"mask_suffix": "_cells"}, "suffixes must be different"),
        ({"part_values": (0, 128, 128)}, "distinct"),
        ({"part_values": (0, -1, 2)}, "non-negative integers"),
        ({"part_values": "0,1,2"}, "part_values must be a sequence"),
        ({"class_names": ()}, "class_names must be distinct"),
        ({"targets": "biggest"}, "targets must be one of"),
        ({"min_area": 0}, "min_area must be a positive integer"),
        ({"percentiles": (99.8, 1.0)}, "low < high"),
        ({"val_fraction": 1.0}, r"val_fraction must lie in \[0, 1\)"),
        ({"augment": "heavy"}, "augment must be one of"),
        ({"image_glob": ""}, "non-empty pattern"),
    ],
)
def test_bad_data_values_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**kwargs)


@pytest.mark.parametrize(
    "model, data, message",
    [
        ({}, {"part_values": (0, 255)}, "one value per part"),
        ({"num_classes": 5}, {}, "must name each of the model's 5 cell classes"),
        ({"parts": ("background", "cell")}, {"encoding": "cells+nuclei", "part_values": (0, 1)}, "gives three parts"),
    ],
)
def test_sections_must_agree(model, data, message):
    with pytest.raises(ValueError, match=message):
        Config(model=ModelConfig(**model), data=DataConfig(**data))


def test_unknown_json_field_is_an_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": {"backbone": "resnet18_fpn", "weights": "none", "lr": 0.1}}))
    with pytest.raises(ValueError, match="unknown ModelConfig field.*lr"):
        Config.from_json(path)


def test_unreadable_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read config .*config.json"):
        Config.from_json(path)
    yaml = tmp_path / "config.yaml"  # a YAML config is told that a JSON file is expected
    yaml.write_text("model:\n  backbone: resnet18_fpn\n")
    with pytest.raises(ValueError, match=r"config.yaml: a config is a JSON file, as a run's config.json, and this "
                                         r"is not JSON \(Expecting value at line 1, column 1\)"):
        Config.from_json(yaml)
    with path.open("r+b") as f:  # 17 MiB, sparse: no config is that large, and it is refused before it is parsed
        f.truncate(17 * 2**20)
    with pytest.raises(ValueError, match=r"config.json: 17 MiB, more than the 16 MiB such a file may hold; a config is"):
        Config.from_json(path)


def test_configs_hash_and_equal_configs_hash_equal():
    a = ModelConfig(part_weights={"cytoplasm": 2.0, "nucleus": 1.5})
    b = ModelConfig(part_weights={"nucleus": 1.5, "cytoplasm": 2.0})
    assert a == b and hash(a) == hash(b) and hash(Config(model=a)) == hash(Config(model=b))
    assert len({a, ModelConfig(), ModelConfig(part_weights={"cytoplasm": 4.0})}) == 3


def test_best_metric_must_be_measured_for_the_parts():
    parts = ("background", "membrane", "nucleus")
    with pytest.raises(ValueError, match="choose one of part_dice, cell_dice, membrane_dice, nucleus_dice, val_loss"):
        Config(model=ModelConfig(parts=parts), train=TrainConfig(best_metric="cytoplasm_dice"))
    assert Config(model=ModelConfig(parts=parts), train=TrainConfig(best_metric="membrane_dice"))
    with pytest.raises(ValueError, match="best_metric must be one of part_dice, cell_dice, val_loss or <part>_dice"):
        TrainConfig(best_metric="accuracy")


def test_part_names_cannot_collide_with_the_metric_names():
    assert ModelConfig(parts=("background", "cell")).num_parts == 2  # a lone "cell" part is the whole cell
    for parts in (("background", "cell", "nucleus"), ("background", "part")):
        with pytest.raises(ValueError, match="cannot name a part"):
            ModelConfig(parts=parts)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 10**9}, "epochs must be at most 100,000, got 1,000,000,000"),
    ({"steps": 10**12}, "steps must be at most 10,000,000"),
    ({"epochs": 0}, "epochs must be a positive integer"),
])
def test_absurd_training_lengths_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)
    assert TrainConfig(epochs=100_000).epochs == 100_000
