"""Image-suite data: IDX / Tiny-ImageNet / ImageFolder loading, Appendix-D splits, batched augmentation, sharding."""

import gzip
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from classification.batches import Normalize, epoch_generator, random_crop_flip, shard_for_eval, train_order
from classification.datasets import DatasetNotFoundError, load_dataset, read_idx


# ---------------------------------------------------------------------------------------------------------------
# Small datasets in the standard on-disk formats (also used by test_classification_train.py)

def write_idx(path, array, gz=True):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def make_fashion_mnist(folder, n_train=400, n_test=120, seed=0, gz=True):
    """Learnable 28x28 images whose label survives crops and flips: class k has brightness ~ 24 k, plus noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 30, (n, 28, 28)) + 24 * labels[:, None, None]
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return folder


def make_image_tree(folder, classes=3, per_class=6, size=12, seed=0, tiny_imagenet=False):
    """An ImageFolder tree (train/ + test/) or a tiny-imagenet-200 layout with PNG / JPEG files."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    names = [f"n{index:08d}" for index in range(classes)]

    def image(k):
        pixels = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        pixels[:, :, k % 3] += 150
        return Image.fromarray(pixels)

    if tiny_imagenet:
        (folder / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
        (folder / "wnids.txt").write_text("\n".join(names) + "\n")
        lines = []
        (folder / "val" / "images").mkdir(parents=True)
        for k, name in enumerate(names):
            (folder / "train" / name / "images").mkdir(parents=True)
            for i in range(per_class):
                image(k).save(folder / "train" / name / "images" / f"{name}_{i}.JPEG")
            for i in range(2):
                file = f"val_{k}_{i}.JPEG"
                image(k).convert("L").save(folder / "val" / "images" / file)  # greyscale, as some real ones
                lines.append(f"{file}\t{name}\t0\t0\t10\t10")
        (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
        return folder
    for split, count in (("train", per_class), ("test", 2)):
        for k, name in enumerate(names):
            (folder / split / name).mkdir(parents=True)
            for i in range(count):
                image(k).save(folder / split / name / f"{i}.png")
    return folder


# ---------------------------------------------------------------------------------------------------------------

def test_read_idx_matches_the_written_array_gz_and_raw(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte", array, gz=True)
    write_idx(tmp_path / "b-idx3-ubyte", array, gz=False)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), array)
    assert np.array_equal(read_idx(tmp_path / "b-idx3-ubyte"), array)
    (tmp_path / "c").write_bytes((tmp_path / "b-idx3-ubyte").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "c")
    (tmp_path / "d").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "d")


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_split_is_seeded_disjoint_and_complete(tmp_path, gz):
    make_fashion_mnist(tmp_path, n_train=300, n_test=50, gz=gz)
    data = load_dataset("fashion-mnist", data_dir=tmp_path, val_size=40, split_seed=3)
    assert (len(data.train), len(data.val), len(data.test)) == (260, 40, 50)
    assert data.train.images.shape == (260, 1, 28, 28) and data.train.images.dtype == torch.uint8
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 28)
    raw = torch.from_numpy(read_idx(next(tmp_path.glob("train-images*"))).copy())
    # every training image lands in exactly one of train / val
    rows = torch.cat([data.train.images, data.val.images]).flatten(1)
    assert sorted(map(bytes, rows.numpy())) == sorted(map(bytes, raw.flatten(1).numpy()))
    again = load_dataset("fashion-mnist", data_dir=tmp_path, val_size=40, split_seed=3)
    other = load_dataset("fashion-mnist", data_dir=tmp_path, val_size=40, split_seed=4)
    assert torch.equal(again.val.images, data.val.images) and not torch.equal(other.val.images, data.val.images)


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=f"{tmp_path}.*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset("cifar10", data_dir=tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match="CIFAR10 not found.*cifar-10-batches-py.*--download"):
        load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="Tiny-ImageNet not found.*wnids.txt.*tiny-imagenet-200.zip"):
        load_dataset("tiny-imagenet", data_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="train"):
        load_dataset("imagefolder", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_tiny_imagenet_layout_holds_out_per_class(tmp_path):
    root = make_image_tree(tmp_path / "tiny-imagenet-200", classes=3, per_class=5, size=64, tiny_imagenet=True)
    data = load_dataset("tiny-imagenet", data_dir=tmp_path, val_size=2)  # parent folder works too
    assert (len(data.train), len(data.val), len(data.test)) == (9, 6, 6)
    assert torch.bincount(data.val.labels).tolist() == [2, 2, 2]
    assert sorted(data.test.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    image, label = data.test.dataset[int(data.test.indices[0])]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8  # greyscale JPEG -> RGB
    assert data.class_names == sorted(p.name for p in (root / "train").iterdir())


def test_image_folder_resizes_to_image_size(tmp_path):
    make_image_tree(tmp_path, classes=2, per_class=5, size=20)
    data = load_dataset("imagefolder", data_dir=tmp_path, val_size=3, image_size=16)
    assert (len(data.train), len(data.val), len(data.test), data.num_classes) == (7, 3, 4, 2)
    image, _ = data.train.dataset[0]
    assert image.shape == (3, 16, 16)


def test_bad_val_size(tmp_path):
    make_fashion_mnist(tmp_path, n_train=50, n_test=10)
    for bad in (0, 50):
        with pytest.raises(ValueError, match=f"--val-size {bad}|--val-size must be"):
            load_dataset("fashion-mnist", data_dir=tmp_path, val_size=bad)


def test_random_crop_flip_equals_per_sample_pad_crop_flip():
    images = torch.randint(0, 256, (6, 2, 5, 7), dtype=torch.uint8)
    out = random_crop_flip(images, 2, epoch_generator(1, 2))
    # replay the same draws: offsets (top, left) then the flips, per sample
    generator = epoch_generator(1, 2)
    top = torch.randint(0, 5, (6,), generator=generator)
    left = torch.randint(0, 5, (6,), generator=generator)
    flip = torch.rand(6, generator=generator) < 0.5
    for i in range(6):
        padded = F.pad(images[i], (2, 2, 2, 2))
        crop = padded[:, top[i]:top[i] + 5, left[i]:left[i] + 7]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)
    unpadded = random_crop_flip(images, 0, epoch_generator(0, 0))  # padding 0: the image or its mirror image
    assert all(torch.equal(o, x) or torch.equal(o, x.flip(-1)) for o, x in zip(unpadded, images))


def test_normalize_matches_the_formula():
    images = torch.randint(0, 256, (3, 2, 4, 4), dtype=torch.uint8)
    out = Normalize((0.1, 0.5), (0.2, 0.3), "cpu")(images)
    expected = (images.float() / 255 - torch.tensor([0.1, 0.5])[:, None, None]) / torch.tensor([0.2, 0.3])[:, None,
                                                                                                            None]
    torch.testing.assert_close(out, expected)


def test_train_order_shards_are_disjoint_equal_and_seeded():
    shards = [train_order(103, seed=5, epoch=2, rank=r, world_size=4) for r in range(4)]
    assert all(len(s) == 25 for s in shards)
    union = torch.cat(shards)
    assert len(set(union.tolist())) == 100
    assert torch.equal(train_order(103, 5, 2, 1, 4), shards[1])
    assert not torch.equal(train_order(103, 5, 3, 1, 4), shards[1])  # a new order each epoch
    assert sorted(train_order(10, 5, 0, 0, 1).tolist()) == list(range(10))
    assert sorted(torch.cat([shard_for_eval(10, r, 3) for r in range(3)]).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="cannot be shared"):
        train_order(2, 0, 0, 0, 4)
