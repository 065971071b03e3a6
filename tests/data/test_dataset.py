"""Dataset, augmentation and split on synthetic folders, and the real WBC folder."""


import albumentations as A
import numpy as np
import pytest
import tifffile
import torch
from conftest import WBC_DIR, run_command

from cellrcnn import (CellDataset, DataConfig, DataError, build_augmentation, collate, find_pairs, make_splits,
                      synthetic_sample, write_split_csv)
from cellrcnn.data.augment import apply_augmentation
from cellrcnn.data.splits import split_pairs

WBC = DataConfig(image_glob="*.bmp", mask_glob="*.png", part_values=(0, 128, 255))


def write_folder(root, count=4, encoding="parts"):
    """Synthetic images as 16-bit TIFFs, masks in the given encoding (values 0/100/200 for parts)."""
    for i in range(count):
        sample = synthetic_sample(i, size=(64, 64), max_cells=2)
        image = (sample["image"].astype(np.uint16) * 200)
        tifffile.imwrite(root / "images" / f"img_{i}.tif", image) if (root / "images").exists() else None
        parts = sample["parts"]
        if encoding == "parts":
            tifffile.imwrite(root / "masks" / f"img_{i}.tif", (parts * 100).astype(np.uint8))
        else:
            from skimage.measure import label
            cells = label(parts > 0).astype(np.uint16)
            tifffile.imwrite(root / "masks" / f"img_{i}_cells.tif", cells)
            if encoding == "cells+parts":
                tifffile.imwrite(root / "masks" / f"img_{i}_masks.tif", (parts * 100).astype(np.uint8))
            else:
                tifffile.imwrite(root / "masks" / f"img_{i}_nuclei.tif", label(parts == 2).astype(np.uint16))
    return root


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    return tmp_path


@pytest.mark.parametrize("encoding", ["parts", "cells+parts", "cells+nuclei"])
def test_every_encoding_gives_the_same_targets(folder, encoding):
    write_folder(folder, encoding=encoding)
    config = DataConfig(encoding=encoding, part_values=(0, 100, 200), min_area=10)
    dataset = CellDataset(find_pairs(folder, config), config)
    assert len(dataset) == 4
    for i in range(4):
        image, target = dataset[i]
        expected = synthetic_sample(i, size=(64, 64), max_cells=2)["parts"]
        assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
        assert 0 <= image.min() and image.max() <= 1
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape[1:] == (64, 64)
        assert target["image_id"].item() == i
        combined = target["masks"].max(dim=0).values.numpy() if len(target["masks"]) else np.zeros((64, 64))
        np.testing.assert_array_equal(combined, expected * (combined > 0))
        assert (combined > 0).sum() >= (expected > 0).sum() - 10 * 3  # only specks below min_area are lost


def test_collate_keeps_lists_for_torchvision(folder):
    write_folder(folder, count=2)
    config = DataConfig(part_values=(0, 100, 200))
    images, targets = collate([CellDataset(find_pairs(folder, config), config)[i] for i in range(2)])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == 2


def test_largest_targets_keep_one_cell(folder):
    write_folder(folder)
    config = DataConfig(part_values=(0, 100, 200), targets="largest")
    for image, target in CellDataset(find_pairs(folder, config), config):
        assert len(target["boxes"]) == 1


def test_size_mismatch_names_both_files(folder):
    tifffile.imwrite(folder / "images" / "a.tif", np.zeros((32, 40), dtype=np.uint16))
    tifffile.imwrite(folder / "masks" / "a.tif", np.zeros((32, 32), dtype=np.uint8))
    config = DataConfig()
    with pytest.raises(DataError, match=r"masks/a.tif: mask is 32x32 pixels but its image a.tif is 40x32"):
        CellDataset(find_pairs(folder, config), config)[0]


@pytest.mark.parametrize("preset", ["light", "adapt", "strong"])
def test_augmentation_moves_image_and_labels_together(preset):
    sample = synthetic_sample(5, size=(96, 96))
    image = sample["image"].astype(np.float32) / 255
    cells = np.zeros((96, 96), dtype=np.int64)
    cells[sample["parts"] > 0] = 70000  # an id beyond 16 bits stays exact
    pipeline = build_augmentation(preset)
    np.random.seed(0)
    pipeline.set_random_seed(0)
    changed = 0
    for _ in range(10):
        out, (parts, inst) = apply_augmentation(pipeline, image, [sample["parts"], cells])
        assert out.dtype == np.float32 and out.shape == (96, 96, 3) and 0 <= out.min() and out.max() <= 1
        assert set(np.unique(parts)) <= {0, 1, 2} and set(np.unique(inst)) <= {0, 70000}
        assert parts.dtype == np.uint8 and inst.dtype == np.int64
        np.testing.assert_array_equal(parts > 0, inst > 0)  # nearest neighbour: the maps stay aligned
        # The nucleus stays darker than the cytoplasm in the image wherever the labels put them.
        assert out[parts == 2].mean() < out[parts == 1].mean() - 0.1
        changed += not np.array_equal(parts, sample["parts"])
    assert changed >= 5


def test_seeded_augmentation_depends_on_seed_epoch_and_image_only(folder):
    """albumentations ignores torch and numpy seeding: the dataset seeds it per (seed, epoch, image), so runs
    repeat, loader workers do not replay one stream, and their number changes nothing."""
    write_folder(folder, count=4)
    config = DataConfig(part_values=(0, 100, 200))
    pairs = find_pairs(folder, config)

    def epoch(seed, number, workers=0):
        dataset = CellDataset(pairs, config, augment="strong", seed=seed)
        dataset.set_epoch(number)
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=collate)
        return [images[0] for images, _ in loader]

    first = epoch(0, 0)
    for a, b in zip(first, epoch(0, 0, workers=2)):  # same seed and epoch, two worker processes
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not any(torch.equal(a, b) for a, b in zip(first, epoch(0, 1)))  # each epoch augments anew
    assert not any(torch.equal(a, b) for a, b in zip(first, epoch(1, 0)))  # and each seed
    # Unseeded, the two workers still draw apart: they once replayed one stream, so items 2k (worker 0) and
    # 2k + 1 (worker 1) came out alike. Two draws can coincide (about 1 in 20 here), four pairs in a row cannot.
    unseeded = CellDataset(pairs[:1] * 8, config, augment="strong")
    loader = torch.utils.data.DataLoader(unseeded, batch_size=1, num_workers=2, collate_fn=collate)
    images = [i[0] for i, _ in loader]
    assert not all(torch.equal(images[k], images[k + 1]) for k in range(0, 8, 2))


def test_a_users_own_compose_is_used_and_none_means_none():
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    image = np.random.default_rng(0).random((8, 8, 3), dtype=np.float32)
    labels = np.arange(64).reshape(8, 8)
    out, (flipped,) = apply_augmentation(build_augmentation(flip), image, [labels])
    np.testing.assert_array_equal(flipped, labels[:, ::-1])
    assert build_augmentation("none") is None
    with pytest.raises(ValueError, match="augmentation must be one of"):
        build_augmentation("wild")


def test_split_is_reproducible_and_written(folder, tmp_path):
    write_folder(folder, count=10)
    config = DataConfig(part_values=(0, 100, 200), val_fraction=0.3, split_seed=7)
    first, again = make_splits(folder, config), make_splits(folder, config)
    assert first == again and len(first["val"]) == 3 and len(first["train"]) == 7
    assert not set(first["val"]) & set(first["train"])
    other = split_pairs(find_pairs(folder, config), 0.3, seed=8)
    assert other["val"] != first["val"]
    path = write_split_csv(tmp_path / "split.csv", first)
    lines = path.read_text().splitlines()
    assert lines[0] == "image,masks,split" and len(lines) == 11 and sum(",val" in l for l in lines) == 3
    with pytest.raises(FileExistsError):
        write_split_csv(tmp_path / "split.csv", first)


def test_explicit_validation_folder(folder, tmp_path):
    write_folder(folder, count=3)
    val = tmp_path / "val"
    (val / "images").mkdir(parents=True)
    (val / "masks").mkdir()
    write_folder(val, count=2)
    splits = make_splits(folder, DataConfig(part_values=(0, 100, 200), val_dir=str(val)))
    assert len(splits["train"]) == 3 and [p.image.parent for p in splits["val"]] == [val / "images"] * 2


def test_classes_csv_sets_labels_and_missing_rows_fail_early(folder, tmp_path):
    write_folder(folder, count=2)
    csv_path = tmp_path / "classes.csv"
    csv_path.write_text("image,class\nimg_0,2\nimg_1,1\n")
    config = DataConfig(part_values=(0, 100, 200), classes_csv=str(csv_path), class_names=("a", "b"))
    dataset = CellDataset(find_pairs(folder, config), config)
    assert set(dataset[0][1]["labels"].tolist()) == {2} and set(dataset[1][1]["labels"].tolist()) == {1}
    csv_path.write_text("img_0,2\n")
    with pytest.raises(DataError, match="no class for image img_1"):
        CellDataset(find_pairs(folder, config), config)


@pytest.mark.wbc
def test_wbc_folder_as_published_loads_one_whole_cell_with_three_parts_each():
    config = DataConfig(image_glob="*.bmp", mask_glob="*.png", part_values=(0, 128, 255),
                        classes_csv=str(WBC_DIR / "class_labels.csv"),
                        class_names=("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"))
    pairs = find_pairs(WBC_DIR, config)
    assert len(pairs) == 240 and pairs[0].image.name == "001.bmp" and pairs[0].parts.name == "001.png"
    dataset = CellDataset(pairs, config)
    classes = set()
    for image, target in dataset:
        assert image.shape[0] == 3 and image.shape[1:] == target["masks"].shape[1:]
        assert len(target["boxes"]) == 1
        assert set(torch.unique(target["masks"]).tolist()) == {0, 1, 2}
        x0, y0, x1, y1 = target["boxes"][0].tolist()
        assert 0 <= x0 < x1 <= image.shape[2] and 0 <= y0 < y1 <= image.shape[1]
        classes.add(target["labels"].item())
    assert classes <= {1, 2, 3, 4, 5} and len(classes) >= 3


def check_data(*args):
    return run_command("check-data", *args)


@pytest.mark.wbc
def test_check_data_on_wbc_is_clean_with_the_right_values_and_flags_them_without():
    good = check_data(WBC_DIR, "--image-glob", "*.bmp", "--mask-glob", "*.png", "--part-values", "0,128,255")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "240 usable images, 240 cells" in good.stdout and "no problems found" in good.stdout
    bad = check_data(WBC_DIR, "--image-glob", "*.bmp", "--mask-glob", "*.png")
    assert bad.returncode == 1 and "mask values 128, 255 are not among" in bad.stderr  # problems on stderr
    # the library names the config field, the command its own flag
    assert "--snap-values" in bad.stderr and "data.snap_values" not in bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


def test_check_data_reports_every_bad_file_and_checks_the_rest(folder):
    write_folder(folder, count=3)
    (folder / "images" / "img_1.tif").write_bytes(b"II*\x00garbage")  # corrupt TIFF
    tifffile.imwrite(folder / "masks" / "img_2.tif", np.full((64, 64), 7, dtype=np.uint8))  # undeclared value
    tifffile.imwrite(folder / "images" / "extra.tif", np.zeros((64, 64), dtype=np.uint16))  # no mask
    result = check_data(folder, "--part-values", "0,100,200")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "1 usable images" in result.stdout and "problem:" not in result.stdout
    assert "img_1.tif: cannot read the file" in out and "img_2.tif: mask values 7" in out
    assert "extra.tif: no parts mask" in out and "3 problem(s) found" in out
    assert "Traceback" not in out + result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--part-values", "0,x"], "expected comma-separated integers"),
        (["--part-values", "0,1,1"], "distinct"),
        (["--targets", "all"], "invalid choice"),
        (["--parts", "background,cell"], "--parts names 2 parts but --part-values gives 3"),
    ],
)
def test_check_data_bad_arguments_exit_2_with_one_line(folder, args, message):
    result = check_data(folder, *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_check_data_on_a_missing_or_empty_folder(tmp_path):
    missing = check_data(tmp_path / "nope")
    assert missing.returncode == 2 and "folder not found" in missing.stderr
    empty = check_data(tmp_path)
    assert empty.returncode == 1 and "no images matching" in empty.stderr


def test_crops_rebuild_targets_and_follow_the_seed(tmp_path):
    from cellrcnn.sample_data.field import synthetic_field
    from cellrcnn.sample_data.files import write_field

    write_field(tmp_path, synthetic_field(256, seed=2, cell_diameter=30), name="field")
    config = DataConfig(encoding="cells+parts", crop=64, min_area=20)
    pairs = find_pairs(tmp_path, config)
    dataset = CellDataset(pairs, config, seed=5)
    image, target = dataset[0]
    assert image.shape == (3, 64, 64) and target["masks"].shape[1:] == (64, 64)
    assert len(target["boxes"]) >= 1 and (target["boxes"] >= 0).all() and (target["boxes"] <= 64).all()
    assert ((target["masks"] > 0).flatten(1).sum(1) >= 20).all()  # cut cells keep only visible parts of min_area
    again, _ = dataset[0]
    assert torch.equal(image, again)
    dataset.set_epoch(1)
    assert not torch.equal(image, dataset[0][0])
    whole = CellDataset(pairs, DataConfig(encoding="cells+parts"))[0][0]
    assert any(torch.equal(image, whole[:, y:y + 64, x:x + 64]) for y in range(193) for x in range(193))
