"""Reading images and masks, and pairing them in the three folder layouts; channels, stacks and windowed fields."""

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

import cellrcnn.io.fields
from cellrcnn import DataConfig, DataError, find_pairs, read_image, read_labels
from cellrcnn.io.fields import LEVEL_PIXELS, field_from_array, open_field
from cellrcnn.io.folders import read_classes_csv
from cellrcnn.io.intensity import image_from_array, normalize_image
from cellrcnn.io.layouts import select_channels
from cellrcnn.io.masks import map_part_values
from cellrcnn.utils.files import atomic_write


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
    image = read_image(save(tmp_path / "two_channels_first.tif", stack), DataConfig(percentiles=(0, 100)))
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
        (np.zeros((5, 4, 8, 8), dtype=np.uint16),
         r"shape \(5, 4, 8, 8\) \(axes QQYX\) is not a 2-D image.*ImageJ hyperstack"),
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
    with pytest.raises(DataError, match=r"m.png: mask values 3, 127, 250 are not among .*data.snap_values=True"):
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
    with pytest.raises(DataError, match="lonely.tif: no parts mask .*data.skip_unpaired=True"):
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


def test_concurrent_atomic_writes_never_share_a_temporary_file_nor_replace_each_other(tmp_path):
    """Issue 37 (7): a second writer that finishes while the first is still writing."""
    target, temporaries = tmp_path / "cells.csv", []

    def first(tmp, overwrite=False):
        tmp.write_text("first, half")
        temporaries.append(tmp)
        atomic_write(target, lambda other: (temporaries.append(other), other.write_text("second")), overwrite)
        tmp.write_text("first")

    with pytest.raises(FileExistsError, match="cells.csv exists"):  # the second got there first
        atomic_write(target, first)
    assert target.read_text() == "second" and temporaries[0] != temporaries[1]
    atomic_write(target, lambda tmp: first(tmp, overwrite=True), overwrite=True)  # the last writer's whole file
    assert target.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["cells.csv"]


# --- channels, stacks and windows ---------------------------------------------------------------------

def two_channels(h=24, w=20):
    """Two uint16 channels with different ranges, [2, H, W]."""
    rng = np.random.default_rng(1)
    return np.stack([rng.integers(100, 900, (h, w)), rng.integers(2000, 50000, (h, w))]).astype(np.uint16)


def minmax(channel):
    channel = channel.astype(np.float64)
    return (channel - channel.min()) / (channel.max() - channel.min())


FULL_RANGE = {"percentiles": (0, 100)}


@pytest.mark.parametrize("layout", ["imagej CYX", "ome CYX", "metadata YXC", "plain CYX", "plain YXC"])
def test_channels_are_found_whatever_the_layout_and_taken_in_the_order_asked(tmp_path, layout):
    stack = two_channels()
    path = tmp_path / "img.tif"
    if layout == "imagej CYX":
        tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "CYX"})
    elif layout == "ome CYX":
        tifffile.imwrite(path, stack, ome=True, metadata={"axes": "CYX"})
    elif layout == "metadata YXC":
        tifffile.imwrite(path, np.moveaxis(stack, 0, -1), metadata={"axes": "YXC"})
    elif layout == "plain CYX":
        tifffile.imwrite(path, stack, metadata=None, photometric="minisblack")
    else:  # tifffile labels this one QYX: only the shape tells that the last axis holds the channels
        tifffile.imwrite(path, np.moveaxis(stack, 0, -1), photometric="minisblack")
    default = read_image(path, DataConfig(**FULL_RANGE))
    swapped = read_image(path, DataConfig(channels=(1, 0), **FULL_RANGE))
    assert default.shape == swapped.shape == (24, 20, 3)
    np.testing.assert_allclose(default[..., 0], minmax(stack[0]), atol=1e-6)
    np.testing.assert_allclose(default[..., 1], minmax(stack[1]), atol=1e-6)
    np.testing.assert_allclose(swapped[..., 0], minmax(stack[1]), atol=1e-6)
    np.testing.assert_allclose(swapped[..., 1], minmax(stack[0]), atol=1e-6)
    assert not default[..., 2].any() and not swapped[..., 2].any()  # a zero third channel, not a copy


def test_imagej_rgb_samples_are_channels(tmp_path):
    rgb = np.moveaxis(np.concatenate([two_channels(), two_channels()[:1] + 7]), 0, -1)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, imagej=True, metadata={"axes": "YXS"})
    image = read_image(path, DataConfig(channels=(2, 1, 0), **FULL_RANGE))
    for out, channel in enumerate((2, 1, 0)):
        np.testing.assert_allclose(image[..., out], minmax(rgb[..., channel]), atol=1e-6)


def test_one_chosen_channel_is_repeated_to_three(tmp_path):
    stack = two_channels()
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "CYX"})
    image = read_image(path, DataConfig(channels=(1,), **FULL_RANGE))
    for c in range(3):
        np.testing.assert_allclose(image[..., c], minmax(stack[1]), atol=1e-6)


def test_a_channel_out_of_range_names_the_file_and_the_channels_there_are(tmp_path):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, two_channels(), imagej=True, metadata={"axes": "CYX"})
    with pytest.raises(DataError, match=r"img.tif: has 2 channels \(0-1\); data.channels='0,2' asks for channel 2$"):
        read_image(path, DataConfig(channels=(0, 2)))
    gray = save(tmp_path / "gray.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"gray.png: has 1 channel \(0\); data.channels='1' asks for channel 1"):
        read_image(gray, DataConfig(channels=(1,)))


def test_more_than_four_channels_need_a_choice(tmp_path):
    stack = np.stack([two_channels()[0] + 10 * c for c in range(6)])
    path = tmp_path / "six.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "CYX"})
    with pytest.raises(DataError, match="six.tif: has 6 channels; choose up to 3 with data.channels"):
        read_image(path)
    image = read_image(path, DataConfig(channels=(5, 0), **FULL_RANGE))
    np.testing.assert_allclose(image[..., 0], minmax(stack[5]), atol=1e-6)


def test_a_z_stack_is_refused_unless_projected_and_the_projection_is_the_maximum(tmp_path):
    rng = np.random.default_rng(2)
    stack = rng.integers(0, 4000, (12, 2, 16, 18)).astype(np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(DataError, match=r"stack.tif: a Z-stack of 12 planes \(axes ZCYX\); cellrcnn segments 2-D "
                                        r"images: set data.projection='max' .*save single planes$"):
        read_image(path)
    projected = np.max(stack, axis=0)
    np.testing.assert_array_equal(select_channels(stack, "ZCYX", None, "max"), np.moveaxis(projected, 0, -1))
    image = read_image(path, DataConfig(projection="max", **FULL_RANGE))
    np.testing.assert_allclose(image[..., 0], minmax(projected[0]), atol=1e-6)
    np.testing.assert_allclose(image[..., 1], minmax(projected[1]), atol=1e-6)


def test_a_time_series_is_refused_unless_projected(tmp_path):
    rng = np.random.default_rng(3)
    movie = rng.integers(0, 255, (5, 16, 18)).astype(np.uint8)
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie, imagej=True, metadata={"axes": "TYX"})
    with pytest.raises(DataError, match=r"movie.tif: a time series of 5 frames \(axes TYX\);.*data.projection='max'"):
        read_image(path)
    np.testing.assert_allclose(read_image(path, DataConfig(projection="max"))[..., 1], movie.max(axis=0) / 255,
                               atol=1e-7)
    both = rng.integers(0, 255, (3, 4, 2, 8, 9)).astype(np.uint8)
    np.testing.assert_array_equal(select_channels(both, "TZCYX", (1,), "max"),
                                  both.max(axis=(0, 1))[1][..., None])


def test_arrays_without_axes_follow_the_shape():
    stack = two_channels()
    np.testing.assert_array_equal(select_channels(stack), np.moveaxis(stack, 0, -1))
    np.testing.assert_array_equal(select_channels(np.moveaxis(stack, 0, -1), channels=(1,)), stack[1][..., None])
    with pytest.raises(DataError, match=r"cube: shape \(12, 64, 64\) is not a 2-D image"):
        select_channels(np.zeros((12, 64, 64), np.uint16), name="cube")
    np.testing.assert_array_equal(image_from_array(stack, DataConfig(channels=(1, 0))),
                                  image_from_array(stack[::-1]))


def tiles(shape, step):
    H, W = shape
    return [(y, min(y + step[0], H), x, min(x + step[1], W))
            for y in range(0, H, step[0]) for x in range(0, W, step[1])]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_a_field_read_window_by_window_equals_the_whole_image_read(tmp_path, dtype):
    rng = np.random.default_rng(4)
    stack = (rng.random((2, 70, 90)) * (200 if dtype == "uint8" else 30000)).astype(dtype)
    stack[1, :5] = 0  # a dark border: the low percentile differs between channels
    path = tmp_path / "field.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "CYX"})
    for config in (DataConfig(), DataConfig(channels=(1,)), DataConfig(channels=(1, 0))):
        whole = read_image(path, config)
        field = open_field(path, config)
        assert field.mapped and field.shape == (70, 90) and field.name == "field" and field.path == path
        assembled = np.zeros_like(whole)
        for y0, y1, x0, x1 in tiles(field.shape, (32, 40)):
            window = field.read(y0, y1, x0, x1)
            assert window.dtype == np.float32 and window.shape == (y1 - y0, x1 - x0, 3)
            assembled[y0:y1, x0:x1] = window
        np.testing.assert_array_equal(assembled, whole)
        in_memory = field_from_array(stack, config, name="mine")
        assert not in_memory.mapped and in_memory.path is None and in_memory.name == "mine"
        np.testing.assert_array_equal(in_memory.read(3, 40, 50, 90), whole[3:40, 50:90])


def test_compressed_tiffs_and_other_files_are_read_whole_and_still_right(tmp_path):
    stack = two_channels(40, 50)
    compressed = tmp_path / "zlib.tif"
    tifffile.imwrite(compressed, stack, imagej=True, metadata={"axes": "CYX"}, compression="zlib")
    field = open_field(compressed, DataConfig(channels=(1, 0)))
    assert not field.mapped
    whole = read_image(compressed, DataConfig(channels=(1, 0)))
    np.testing.assert_array_equal(field.read(5, 30, 10, 50), whole[5:30, 10:50])
    png = save(tmp_path / "rgb.png", (np.arange(40 * 50 * 3) % 251).astype(np.uint8).reshape(40, 50, 3))
    field = open_field(png)
    assert not field.mapped and field.name == "rgb"
    np.testing.assert_array_equal(field.read(0, 40, 0, 50), read_image(png))
    with pytest.raises(ValueError, match=r"rgb.png: window rows 0:41, columns 0:50 is not inside the 40x50 image"):
        field.read(0, 41, 0, 50)


def test_fields_refuse_what_read_image_refuses(tmp_path):
    stack = np.zeros((3, 2, 8, 8), np.uint16)
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(DataError, match=r"z.tif: a Z-stack of 3 planes.*data.projection='max'"):
        open_field(path, DataConfig())
    assert open_field(path, DataConfig(projection="max")).shape == (8, 8)
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, np.full((4, 4), np.nan, np.float32))
    with pytest.raises(DataError, match="nan.tif: contains NaN"):
        open_field(nan, DataConfig())


def test_a_large_field_takes_its_levels_from_a_regular_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(cellrcnn.io.fields, "_BAND_BYTES", 2**20)  # sample in several bands, as a huge image would be
    rng = np.random.default_rng(5)
    H = W = 3000
    assert H * W > LEVEL_PIXELS  # the sampled path, not every pixel
    y = np.linspace(0, 1, H, dtype=np.float32)[:, None]
    image = (rng.gamma(2.0, 1500.0, (H, W)).astype(np.float32) + 20000 * y).clip(0, 65535).astype(np.uint16)
    path = tmp_path / "large.tif"
    tifffile.imwrite(path, image)
    field = open_field(path, DataConfig())
    exact = read_image(path, DataConfig())  # percentiles of every pixel
    for y0, y1, x0, x1 in [(0, 400, 0, 3000), (1300, 1700, 1000, 2000), (2600, 3000, 0, 3000)]:
        np.testing.assert_allclose(field.read(y0, y1, x0, x1), exact[y0:y1, x0:x1], atol=2e-3)
    low, high = np.percentile(image, (1.0, 99.8))
    assert abs(field._low[0] - low) < 0.002 * (high - low) and abs(field._high[0] - high) < 0.002 * (high - low)


def test_write_pair_makes_a_folder_that_trains_as_it_is(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 4000, (40, 50, 2), dtype=np.uint16)
    parts = rng.integers(0, 3, (40, 50)).astype(np.int64)
    pair = cellrcnn.io.write_pair(tmp_path / "data", "my cells #1", image, parts)
    assert (pair.image.name, pair.parts.name) == ("my_cells__1.tif", "my_cells__1_masks.tif")
    found = find_pairs(tmp_path / "data", DataConfig())
    assert [(p.image, p.parts) for p in found] == [(pair.image, pair.parts)]
    np.testing.assert_array_equal(tifffile.imread(pair.image), image)
    np.testing.assert_array_equal(read_labels(pair.parts), parts)
    with pytest.raises(FileExistsError):
        cellrcnn.io.write_pair(tmp_path / "data", "my cells #1", image, parts)
    with pytest.raises(DataError, match="wrong: the labels must be 2-D integers of the image's size 40x50"):
        cellrcnn.io.write_pair(tmp_path / "other", "wrong", image, parts[:20])
    with pytest.raises(DataError, match="0..255"):
        cellrcnn.io.write_pair(tmp_path / "other", "big", image, parts * 200)
    assert not (tmp_path / "other").exists()


def test_nan_pixels_are_named_with_what_to_do_wherever_the_image_is_read():
    pixels = np.ones((16, 16), np.float32)
    pixels[3, 4] = np.nan
    with pytest.raises(DataError, match=r"x.tif: contains NaN or infinite pixels; replace them \(in Fiji: "
                                        r"Process > Noise > Remove NaNs\) and save the image again") as err:
        image_from_array(pixels, name="x.tif")
    assert "training" not in str(err.value)  # the same words for prediction as for training


def test_images_and_masks_over_the_pixel_limit_are_refused_from_their_header(tmp_path):
    """data.max_pixels holds for masks as for images: nothing is read past the header."""
    imsave(tmp_path / "mask.png", np.zeros((10, 12), np.uint8), check_contrast=False)
    tifffile.imwrite(tmp_path / "image.tif", np.zeros((10, 12), np.uint8), compression="zlib")
    assert read_labels(tmp_path / "mask.png", max_pixels=120).shape == (10, 12)
    with pytest.raises(DataError, match=r"mask.png: its header claims 10 x 12 pixels .* --max-pixels"):
        read_labels(tmp_path / "mask.png", max_pixels=119)
    with pytest.raises(DataError, match=r"image.tif: its header claims 10 x 12 pixels"):
        read_image(tmp_path / "image.tif", DataConfig(max_pixels=119))
