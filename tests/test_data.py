from pathlib import Path

import pytest
import torch
from PIL import Image

from shufflenet.data import (
    DIGITS_CLASSES,
    build_eval_transform,
    build_train_transform,
    check_image_folder,
    digits_datasets,
    folder_datasets,
    load_data,
    load_eval_data,
    make_preprocessing,
)


def _image(path: Path, color=(200, 30, 40), size=(20, 16), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def _tree(root: Path, train=("cat", "dog"), val=("cat", "dog"), per_class=3) -> Path:
    for split, classes in (("train", train), ("val", val)):
        for c, name in enumerate(classes):
            for i in range(per_class):
                _image(root / split / name / f"{i}.png", color=(40 * c, 10 * i, 90))
    return root


def test_digits_split_is_fixed_stratified_80_20():
    train, val = digits_datasets(None, None)
    assert (len(train), len(val)) == (1437, 360)
    assert train.classes == DIGITS_CLASSES == [str(d) for d in range(10)]
    train_counts = torch.bincount(train.labels, minlength=10)
    val_counts = torch.bincount(val.labels, minlength=10)
    ratio = val_counts.double() / (train_counts + val_counts).double()
    assert ratio.min() > 0.18 and ratio.max() < 0.22
    # 3 identical uint8 channels holding 0..16 scaled to 0..255.
    assert train.images.shape[1:] == (3, 8, 8) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], train.images[:, 2])
    assert int(train.images.max()) == 255
    again, _ = digits_datasets(None, None)
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    # no image is both in train and val (rows of the raw digits are unique enough to tell)
    train_rows = {tuple(x.flatten().tolist()) for x in train.images[:, 0]}
    overlap = sum(tuple(x.flatten().tolist()) in train_rows for x in val.images[:, 0])
    assert overlap < 5  # load_digits holds a handful of exact duplicates, nothing more


def test_eval_transform_from_metadata_matches_the_val_pipeline():
    splits = load_data("digits", 32)
    pre = splits.preprocessing
    assert set(pre) == {"input_size", "resize", "mean", "std", "scale", "channel_order"}
    assert pre["input_size"] == [32, 32] and pre["channel_order"] == "RGB"
    transform = build_eval_transform(pre)
    for i in (0, 7, 200):
        x, label = splits.val[i]
        raw = splits.val.images[i, 0].numpy()
        # a grayscale PIL image of the same digit goes through the same pipeline
        assert torch.equal(transform(Image.fromarray(raw, mode="L")), x)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert label == int(splits.val.labels[i])
    everything = torch.stack([splits.val[i][0] for i in range(len(splits.val))])
    assert abs(float(everything.mean())) < 0.15  # normalised by the digits' own statistics


def test_eval_transform_honours_scale_mean_std_and_bgr():
    pre = {
        "input_size": [4, 6],
        "resize": None,
        "mean": [10.0, 20.0, 30.0],
        "std": [2.0, 2.0, 2.0],
        "scale": 1.0,
        "channel_order": "BGR",
    }
    out = build_eval_transform(pre)(Image.new("RGB", (9, 9), (100, 150, 200)))
    assert out.shape == (3, 4, 6)
    assert out[:, 0, 0].tolist() == pytest.approx([(200 - 10) / 2, (150 - 20) / 2, (100 - 30) / 2])
    with pytest.raises(ValueError, match="channel_order"):
        build_eval_transform({**pre, "channel_order": "RGBA"})
    with pytest.raises(ValueError, match="lacks std"):
        build_eval_transform({k: v for k, v in pre.items() if k != "std"})


def test_folder_preprocessing_is_imagenet_style():
    pre = make_preprocessing("some/folder", 224)
    assert pre["resize"] == 256 and pre["input_size"] == [224, 224]
    assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_train_transforms_augment():
    pre = make_preprocessing("photos", 32)
    photo = Image.new("RGB", (50, 40), (10, 120, 240))
    photo.paste((255, 255, 255), (0, 0, 25, 40))
    imagenet = build_train_transform(pre, "imagenet")
    torch.manual_seed(0)
    a, b = imagenet(photo), imagenet(photo)
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)
    digits = load_data("digits", 32, augment="light").train
    torch.manual_seed(1)
    first = digits[0][0]
    torch.manual_seed(2)
    assert first.shape == (3, 32, 32) and not torch.equal(first, digits[0][0])
    assert torch.equal(build_train_transform(pre, "none")(photo), build_eval_transform(pre)(photo))
    with pytest.raises(ValueError, match="augment"):
        build_train_transform(pre, "heavy")


def test_good_folder(tmp_path):
    root = _tree(tmp_path / "data")
    (root / "train" / "cat" / "notes.txt").write_text("not an image, ignored")
    report = check_image_folder(root)
    assert report.classes == ["cat", "dog"]
    assert report.num_images == {"train": 6, "val": 6} and not report.bad_images
    splits = load_data(str(root), 32)
    assert splits.classes == ["cat", "dog"] and splits.num_train == 6
    x, y = splits.val[4]
    assert x.shape == (3, 32, 32) and y == 1


def test_corrupt_image_and_empty_class_named_in_one_error(tmp_path):
    root = _tree(tmp_path / "data")
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    good = _image(tmp_path / "full.png", size=(64, 64))
    (root / "val" / "dog" / "cut.png").write_bytes(good.read_bytes()[:80])  # truncated
    (root / "train" / "bird").mkdir()
    (root / "val" / "bird").mkdir()
    with pytest.raises(ValueError) as err:
        check_image_folder(root)
    text = str(err.value)
    assert "train/cat/broken.jpg" in text and "val/dog/cut.png" in text
    assert "2 unreadable" in text and "skip_bad_images=True" in text
    assert "without images: train/bird, val/bird" in text
    # skipping bad images does not hide an empty class
    with pytest.raises(ValueError, match="without images"):
        check_image_folder(root, skip_bad_images=True)


def test_skip_bad_images(tmp_path):
    root = _tree(tmp_path / "data")
    (root / "train" / "dog" / "zero.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"train/dog/zero\.png"):
        load_data(str(root), 32)
    splits = load_data(str(root), 32, skip_bad_images=True)
    assert [p.name for p, _ in splits.skipped] == ["zero.png"]
    assert splits.num_train == 6
    # a class whose only images are bad stays an error
    for p in (root / "val" / "cat").iterdir():
        p.write_bytes(b"junk")
    with pytest.raises(ValueError, match="no readable image: val/cat"):
        check_image_folder(root, skip_bad_images=True)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: _tree(r, val=("cat", "fox")), r"only in train: dog; only in val: fox"),
        (lambda r: (r / "train").mkdir(parents=True), "missing: val"),
        (lambda r: [(r / s).mkdir(parents=True) for s in ("train", "val")], "no class folders"),
    ],
)
def test_tree_errors(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(ValueError, match=message):
        check_image_folder(root)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data folder"):
        load_data(str(tmp_path / "nope"), 32)
    with pytest.raises(ValueError, match=r"image_size must be within 32\.\.4096"):
        load_data("digits", 16)


def test_eval_data_from_a_folder_of_classes(tmp_path):
    root = _tree(tmp_path / "data")
    pre = make_preprocessing(str(root), 32)
    with_val, classes, _ = load_eval_data(str(root), pre)
    assert classes == ["cat", "dog"] and len(with_val) == 6
    direct, classes2, _ = load_eval_data(str(root / "train"), pre)
    assert classes2 == ["cat", "dog"] and len(direct) == 6
    digits, names, _ = load_eval_data("digits", make_preprocessing("digits", 32))
    assert len(digits) == 360 and names == DIGITS_CLASSES


def test_folder_datasets_returns_report(tmp_path):
    root = _tree(tmp_path / "data", per_class=2)
    pre = make_preprocessing(str(root), 32)
    train, val, report = folder_datasets(
        root, build_train_transform(pre, "imagenet"), build_eval_transform(pre)
    )
    assert len(train) == len(val) == 4 and report.root == root
    assert train.classes == ["cat", "dog"]
