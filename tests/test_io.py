"""Reading images and masks, and pairing them in the three folder layouts."""

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

from cellrcnn import DataConfig, DataError, find_pairs, read_image, read_labels
from cellrcnn.io import atomic_write, map_part_values, normalize_image, read_classes_csv


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
    else:
        imsave(path, array, check_contrast=False)
    return path


# --- images -------------------------------------------------------------------------------------------

def test_8bit_rgb_is_divided_by_255(tmp_path):
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4
    for ext in (".png", ".bmp", ".tif"):
        image = read_image(save(tmp_path / f"a{ext}", rgb))
        assert image.dtype == np.float32 and image.shape == (4, 5, 3)
        np.testing.assert_allclose(image, rgb / 255.0, atol=1e-7)


def test_jpeg_is_read(tmp_path):
    rgb = np.full((16, 16, 3), 200, dtype=np.uint8)
    image = read_image(save(tmp_path / "a.jpg", rgb))
    assert image.shape == (16, 16, 3) and abs(image.mean() - 200 / 255) < 0.02


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6)
    image = read_image(save(tmp_path / "g.png", gray))
    assert image.shape == (5, 6, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_16bit_is_scaled_per_channel_by_percentiles(tmp_path):
    rng = np.random.default_rng(0)
    stack = np.stack([rng.integers(100, 200, (32, 32)), rng.integers(1000, 60000, (32, 32))]).astype(np.uint16)
    image = read_image(save(tmp_path / "two_channels_first.tif", stack), percentiles=(0, 100))
    assert image.shape == (32, 32, 3)  # channels first -> last, a zero third channel added
    for c in range(2):
        assert image[..., c].min() == 0.0 and image[..., c].max() == 1.0
    assert image[..., 2].max() == 0.0
    clipped = read_image(tmp_path / "two_channels_first.tif")  # 1st..99.8th percentile: some pixels saturate
    assert (clipped[..., 1] == 1.0).mean() > 0.001 and (clipped[..., 1] == 0.0).mean() > 0.005


def test_float_and_constant_channels(tmp_path):
    data = np.zeros((8, 8, 3), dtype=np.float32)
    data[..., 0] = np.linspace(-5, 5, 64).reshape(8, 8)
    image = normalize_image(data, (0, 100))
    assert image[..., 0].min() == 0 and image[..., 0].max() == 1 and image[..., 1].max() == 0


def test_rgba_png_drops_alpha(tmp_path):
    rgba = np.zeros((6, 6, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    image = read_image(save(tmp_path / "rgba.png", rgba))
    assert image.shape == (6, 6, 3) and image[..., 0].min() == 1.0


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 4), dtype=np.complex64), "unsupported pixel type complex64"),
        (np.zeros((5, 4, 8, 8), dtype=np.uint16), "split z-stacks"),
        (np.full((4, 4), np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_unusable_images_name_the_file(tmp_path, array, message):
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, array, photometric="minisblack")
    with pytest.raises(DataError, match=f"bad.tif: .*{message}"):
        read_image(path)


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_corrupt_or_truncated_files_name_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    if content == "truncated":
        save(path, np.zeros((64, 64, 3), dtype=np.uint8) + 7)
        path.write_bytes(path.read_bytes()[:60])
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match="broken.png: cannot read the file .*corrupt or truncated"):
        read_image(path)


# --- masks --------------------------------------------------------------------------------------------

def test_part_values_map_to_part_indices():
    mask = np.array([[0, 128, 255], [255, 0, 128]])
    np.testing.assert_array_equal(map_part_values(mask, (0, 128, 255)), [[0, 1, 2], [2, 0, 1]])


def test_undeclared_values_are_an_error_naming_file_and_values_unless_snapped():
    mask = np.array([[0, 127, 255], [250, 3, 128]])
    with pytest.raises(DataError, match=r"m.png: mask values 3, 127, 250 are not among .*--snap-values"):
        map_part_values(mask, (0, 128, 255), name="m.png")
    np.testing.assert_array_equal(map_part_values(mask, (0, 128, 255), snap=True), [[0, 1, 2], [2, 0, 1]])


def test_rgb_saved_masks_with_equal_channels_are_accepted(tmp_path):
    labels = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    path = save(tmp_path / "m.png", np.repeat(labels[..., None], 3, axis=-1))
    np.testing.assert_array_equal(read_labels(path), labels)
    colour = np.zeros((2, 2, 3), dtype=np.uint8)
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(DataError, match="single-channel"):
        read_labels(save(tmp_path / "c.png", colour))


# --- pairing ------------------------------------------------------------------------------------------

IMG = np.zeros((8, 8, 3), dtype=np.uint8)
MASK = np.zeros((8, 8), dtype=np.uint8)


def test_layout_a_images_and_masks_folders(tmp_path):
    for stem in ("b", "a"):
        save(tmp_path / "images" / f"{stem}.tif", IMG)
        save(tmp_path / "masks" / f"{stem}.png", MASK)
    pairs = find_pairs(tmp_path, DataConfig())
    assert [(p.image.name, p.parts.name) for p in pairs] == [("a.tif", "a.png"), ("b.tif", "b.png")]


def test_layout_b_mask_suffix(tmp_path):
    for stem in ("cell_001", "cell_002"):
        save(tmp_path / f"{stem}.tif", IMG)
        save(tmp_path / f"{stem}_masks.tif", MASK)
    pairs = find_pairs(tmp_path, DataConfig())
    assert [(p.image.name, p.parts.name) for p in pairs] == [("cell_001.tif", "cell_001_masks.tif"),
                                                              ("cell_002.tif", "cell_002_masks.tif")]
    custom = tmp_path / "custom"
    save(custom / "x.tif", IMG)
    save(custom / "x_seg.png", MASK)
    assert find_pairs(custom, DataConfig(mask_suffix="_seg"))[0].parts.name == "x_seg.png"


def test_layout_c_same_stem_other_extension(tmp_path):
    for stem in ("001", "002"):
        save(tmp_path / f"{stem}.bmp", IMG)
        save(tmp_path / f"{stem}.png", MASK)
    pairs = find_pairs(tmp_path, DataConfig(image_glob="*.bmp", mask_glob="*.png"))
    assert [(p.image.name, p.parts.name) for p in pairs] == [("001.bmp", "001.png"), ("002.bmp", "002.png")]
    # Without the globs, nothing says which file is the mask: every file is an image without a mask.
    with pytest.raises(DataError, match="001.bmp: no parts mask .*expected 001_masks"):
        find_pairs(tmp_path, DataConfig())


def test_instance_encodings_find_their_extra_masks(tmp_path):
    save(tmp_path / "images" / "a.tif", IMG)
    for suffix in ("_masks", "_cells", "_nuclei"):
        save(tmp_path / "masks" / f"a{suffix}.tif", MASK)
    cp = find_pairs(tmp_path, DataConfig(encoding="cells+parts"))[0]
    assert (cp.parts.name, cp.cells.name, cp.nuclei) == ("a_masks.tif", "a_cells.tif", None)
    cn = find_pairs(tmp_path, DataConfig(encoding="cells+nuclei"))[0]
    assert (cn.parts, cn.cells.name, cn.nuclei.name) == (None, "a_cells.tif", "a_nuclei.tif")


def test_unpaired_image_is_an_error_or_skipped_on_request(tmp_path, caplog):
    save(tmp_path / "a.tif", IMG)
    save(tmp_path / "a_masks.tif", MASK)
    save(tmp_path / "lonely.tif", IMG)
    with pytest.raises(DataError, match="lonely.tif: no parts mask .*--skip-unpaired"):
        find_pairs(tmp_path, DataConfig())
    pairs = find_pairs(tmp_path, DataConfig(skip_unpaired=True))
    assert [p.image.name for p in pairs] == ["a.tif"]
    assert "skipping" in caplog.text and "lonely.tif" in caplog.text


def test_empty_or_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no images matching"):
        find_pairs(tmp_path, DataConfig())
    with pytest.raises(DataError, match="folder not found"):
        find_pairs(tmp_path / "nope", DataConfig())
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="has images/ but no masks/ folder"):
        find_pairs(tmp_path, DataConfig())


def test_ambiguous_masks_are_an_error(tmp_path):
    save(tmp_path / "images" / "a.tif", IMG)
    save(tmp_path / "masks" / "a.png", MASK)
    save(tmp_path / "masks" / "a.tif", MASK)
    with pytest.raises(DataError, match="several masks for a: a.png, a.tif"):
        find_pairs(tmp_path, DataConfig())


# --- classes and writing ------------------------------------------------------------------------------

def test_classes_csv_with_header_and_numeric_ids(tmp_path):
    path = tmp_path / "classes.csv"
    path.write_text("image ID,class label\n1,2\n002,1\nx7,3\n")
    assert read_classes_csv(path, 3) == {"1": 2, "2": 1, "x7": 3}
    path.write_text("1,9\n")
    with pytest.raises(DataError, match="line 1: class label 9 is outside 1..3"):
        read_classes_csv(path, 3)


def test_atomic_write_never_overwrites_silently(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write(target, lambda p: p.write_text("one"))
    with pytest.raises(FileExistsError, match="pass overwrite"):
        atomic_write(target, lambda p: p.write_text("two"))
    with pytest.raises(RuntimeError):
        atomic_write(target, lambda p: (p.write_text("half"), (_ for _ in ()).throw(RuntimeError("boom"))),
                     overwrite=True)
    assert target.read_text() == "one" and sorted(x.name for x in tmp_path.iterdir()) == ["out.txt"]
