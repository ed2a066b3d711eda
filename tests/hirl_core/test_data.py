"""Data: the idx reader on real Fashion-MNIST and on synthetic files; data-path errors."""
import gzip
import struct

import numpy as np
import pytest

from hirl_core.config import Config, ConfigError
from hirl_core.data import check_data
from hirl_core.data.fashion_mnist import default_root, load_fashion_mnist, missing_files


def _write_idx(path, array, gz):
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    (gzip.open if gz else open)(path, "wb").write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, 7)
    suffix = ".gz" if gz else ""
    for split, (img, lbl) in {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}.items():
        _write_idx(tmp_path / (img + suffix), images, gz)
        _write_idx(tmp_path / (lbl + suffix), labels, gz)
    x, y = load_fashion_mnist(tmp_path, "train")
    assert np.array_equal(x, images) and np.array_equal(y, labels) and missing_files(tmp_path) == []


def test_truncated_idx_is_an_error(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28)), False)
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-10])
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3), False)
    with pytest.raises(ValueError, match="truncated"):
        load_fashion_mnist(tmp_path, "train")


@pytest.mark.fashion_mnist  # skipped without the files; HIRL_REQUIRE_DATA=1 fails (tests/needs_data.py)
def test_real_fashion_mnist_shapes():
    x, y = load_fashion_mnist(default_root(), "test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert sorted(np.bincount(y)) == [1000] * 10


def test_check_data_errors_name_the_path(tmp_path):
    with pytest.raises(ConfigError, match="dataset-fashion-mnist"):
        check_data(Config({"dataset": "fashion_mnist", "root": str(tmp_path)}))
    with pytest.raises(ConfigError, match=f"{tmp_path}/train"):
        check_data(Config({"dataset": "imagefolder", "root": str(tmp_path)}))
    with pytest.raises(ConfigError, match="allowed: fashion_mnist, imagefolder"):
        check_data(Config({"dataset": "cifar"}))
    (tmp_path / "train" / "a").mkdir(parents=True)
    check_data(Config({"dataset": "imagefolder", "root": str(tmp_path)}))


def test_the_evaluation_transform_resizes_bicubically_as_the_seed():
    # the seed's KNN, linear-probe val, fine-tuning val and clustering: Resize 256 (bicubic) + CenterCrop 224
    from PIL import Image
    from torchvision.transforms import functional as F

    from hirl_core.data.transforms import eval_pil_transform

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    got = eval_pil_transform(224)(image)
    bicubic = F.center_crop(F.resize(image, 256, interpolation=F.InterpolationMode.BICUBIC), 224)
    expected = F.normalize(F.to_tensor(bicubic), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert got.shape == (3, 224, 224) and np.allclose(got.numpy(), expected.numpy(), atol=1e-6)
