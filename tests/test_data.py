"""mixshare.data: loaders (digits, CIFAR pickles, synthetic), safe unpickling, augmentation."""

import io
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest
import torch

from mixshare import data
from mixshare.data import DatasetError

# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return data.load_digits()


def test_digits_shapes_and_labels(digits):
    assert digits.train_images.shape[1:] == (3, 32, 32)
    assert digits.test_images.shape[1:] == (3, 32, 32)
    assert digits.num_train + digits.num_test == 1797
    assert digits.num_test == pytest.approx(0.25 * 1797, abs=1)
    assert digits.train_images.dtype == torch.float32 and digits.train_labels.dtype == torch.int64
    assert set(digits.train_labels.tolist()) == set(range(10)) == set(digits.test_labels.tolist())
    assert digits.num_classes == 10 and digits.hflip is False and digits.name == "digits"
    # replicated channels
    assert torch.equal(digits.train_images[:, 0], digits.train_images[:, 2])


def test_digits_normalised_with_train_stats(digits):
    x = digits.train_images.double()
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3), correction=0), torch.ones(3, dtype=torch.float64), atol=1e-5)
    assert len(digits.mean) == len(digits.std) == 3
    assert 0 < digits.mean[0] < 1 and 0 < digits.std[0] < 1
    # test split: roughly, not exactly, standardised
    assert digits.test_images.mean().abs() < 0.1


def test_digits_split_deterministic_and_stratified(digits):
    again = data.load_digits()
    assert torch.equal(again.train_images, digits.train_images)
    assert torch.equal(again.test_labels, digits.test_labels)
    other = data.load_digits(seed=1)
    assert not torch.equal(other.test_labels, digits.test_labels)
    train_frac = torch.bincount(digits.train_labels, minlength=10).double() / digits.num_train
    test_frac = torch.bincount(digits.test_labels, minlength=10).double() / digits.num_test
    assert (train_frac - test_frac).abs().max() < 0.01


def test_digits_size_option():
    pytest.importorskip("sklearn")
    small = data.load_digits(size=8, test_fraction=0.5)
    assert small.train_images.shape[1:] == (3, 8, 8)
    assert abs(small.num_train - small.num_test) <= 1


def _fake_sklearn(monkeypatch, num=200):
    """Stand-in sklearn modules: exercises load_digits' own pipeline where sklearn is absent."""
    rng = np.random.default_rng(0)
    bunch = types.SimpleNamespace(
        images=rng.integers(0, 17, size=(num, 8, 8)).astype(np.float64), target=np.arange(num) % 10
    )
    calls = {}

    def train_test_split(idx, test_size, random_state, stratify):
        calls.update(test_size=test_size, random_state=random_state, stratify=stratify)
        order = np.random.default_rng(random_state).permutation(idx)
        test = np.concatenate([order[stratify[order] == c][: int(round(test_size * (stratify == c).sum()))]
                               for c in np.unique(stratify)])
        return np.setdiff1d(order, test), test

    datasets = types.ModuleType("sklearn.datasets")
    datasets.load_digits = lambda: bunch
    selection = types.ModuleType("sklearn.model_selection")
    selection.train_test_split = train_test_split
    root = types.ModuleType("sklearn")
    root.datasets, root.model_selection = datasets, selection
    for name, module in (("sklearn", root), ("sklearn.datasets", datasets), ("sklearn.model_selection", selection)):
        monkeypatch.setitem(sys.modules, name, module)
    return bunch, calls


def test_digits_pipeline_with_stand_in_sklearn(monkeypatch):
    bunch, calls = _fake_sklearn(monkeypatch)
    ds = data.load_digits(test_fraction=0.3, seed=7, size=16)
    assert calls["random_state"] == 7 and calls["test_size"] == 0.3
    assert np.array_equal(calls["stratify"], bunch.target)
    assert ds.train_images.shape == (140, 3, 16, 16) and ds.test_images.shape == (60, 3, 16, 16)
    x = ds.train_images.double()
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3), correction=0), torch.ones(3, dtype=torch.float64), atol=1e-5)
    # pixels scaled to [0, 1] before normalising: undoing the normalisation lands there
    raw = ds.train_images * ds.std[0] + ds.mean[0]
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    # size 8: no interpolation, exact pixels / 16
    ds8 = data.load_digits(size=8)
    recovered = ds8.train_images[:, 0] * ds8.std[0] + ds8.mean[0]
    scaled = torch.from_numpy(bunch.images / 16.0).float()
    first = recovered[0]
    assert any(torch.allclose(first, img, atol=1e-5) for img in scaled)


def test_digits_rejects_bad_arguments():
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits(test_fraction=1.0)
    with pytest.raises(ValueError, match="size"):
        data.load_digits(size=0)


# --------------------------------------------------------------------------- CIFAR files

PER_FILE = 20


class _Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for CIFAR: str (bytes) as BINSTRING, numpy via numpy.core."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def _save_ndarray(self, arr):
        write = self.write
        write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
        write(pickle.GLOBAL + b"numpy\nndarray\n")
        self.save((0,))
        self.save(b"b")
        write(pickle.TUPLE3 + pickle.REDUCE)
        write(pickle.MARK)
        self.save(1)
        self.save(tuple(arr.shape))
        write(pickle.GLOBAL + b"numpy\ndtype\n")
        self.save((arr.dtype.str[1:].encode(), False, True))
        write(pickle.REDUCE)
        self.save((3, arr.dtype.str[:1].encode(), None, None, None, -1, -1, 0))
        write(pickle.BUILD)
        self.save(False)
        self.save(arr.tobytes())
        write(pickle.TUPLE + pickle.BUILD)

    dispatch[bytes] = _save_py2_str
    dispatch[np.ndarray] = _save_ndarray


def _dump(path, obj, protocol=pickle.HIGHEST_PROTOCOL, py2=False):
    if py2:
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(obj)
        path.write_bytes(buf.getvalue())
    else:
        path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _cifar_batch(seed, num_classes, label_key, n=PER_FILE):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"batch %d" % seed,
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def make_cifar10(root, **dump_kwargs):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name] = _cifar_batch(i, 10, b"labels")
        _dump(folder / name, batches[name], **dump_kwargs)
    return folder, batches


def make_cifar100(root, **dump_kwargs):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    batches = {}
    for i, name in enumerate(["train", "test"]):
        batch = _cifar_batch(10 + i, 100, b"fine_labels", n=3 * PER_FILE)
        batch[b"coarse_labels"] = [v // 5 for v in batch[b"fine_labels"]]
        batches[name] = batch
        _dump(folder / name, batch, **dump_kwargs)
    return folder, batches


def _check_against(ds, train_batches, test_batches, label_key):
    train_raw = np.concatenate([b[b"data"] for b in train_batches]).reshape(-1, 3, 32, 32)
    test_raw = np.concatenate([b[b"data"] for b in test_batches]).reshape(-1, 3, 32, 32)
    assert ds.train_images.shape == train_raw.shape and ds.test_images.shape == test_raw.shape
    assert ds.train_images.dtype == torch.float32
    assert ds.train_labels.tolist() == sum((b[label_key] for b in train_batches), [])
    assert ds.test_labels.tolist() == sum((b[label_key] for b in test_batches), [])
    # the official MixMo code's constants, for CIFAR-10 and CIFAR-100 alike
    mean = np.array([0.4913725490196078, 0.4823529411764706, 0.4466666666666667])
    std = np.array([0.2023, 0.1994, 0.2010])
    assert np.allclose(ds.mean, mean, atol=1e-12) and np.allclose(ds.std, std, atol=1e-12)
    for images, raw in ((ds.train_images, train_raw), (ds.test_images, test_raw)):
        expected = (raw / 255.0 - mean[None, :, None, None]) / std[None, :, None, None]
        assert np.allclose(images.numpy(), expected, atol=1e-5)
    assert ds.hflip is True


@pytest.mark.parametrize("point_at_folder", [False, True])
def test_cifar10_loads(tmp_path, point_at_folder):
    folder, batches = make_cifar10(tmp_path)
    ds = data.load_cifar(folder if point_at_folder else tmp_path, "cifar10")
    assert ds.num_classes == 10 and ds.name == "cifar10"
    _check_against(ds, [batches[f"data_batch_{k}"] for k in range(1, 6)], [batches["test_batch"]], b"labels")
    assert ds.num_train == 5 * PER_FILE


@pytest.mark.parametrize("point_at_folder", [False, True])
def test_cifar100_loads(tmp_path, point_at_folder):
    folder, batches = make_cifar100(tmp_path)
    ds = data.load_dataset("cifar100", str(folder if point_at_folder else tmp_path))
    assert ds.num_classes == 100 and ds.name == "cifar100"
    _check_against(ds, [batches["train"]], [batches["test"]], b"fine_labels")


def test_read_cifar_test_gives_the_stored_test_split(tmp_path):
    """The OOD set of a CIFAR-10 run: CIFAR-100's test images as stored (uint8 [N, 3, 32, 32]), fine labels."""
    _, batches = make_cifar100(tmp_path)
    images, labels = data.read_cifar_test(tmp_path, "cifar100")
    assert images.dtype == torch.uint8
    assert np.array_equal(images.numpy(), batches["test"][b"data"].reshape(-1, 3, 32, 32))
    assert labels.tolist() == batches["test"][b"fine_labels"]
    with pytest.raises(ValueError, match="unknown CIFAR dataset 'cifar1'; expected one of cifar10, cifar100"):
        data.read_cifar_test(tmp_path, "cifar1")
    with pytest.raises(DatasetError, match="CIFAR-10 .python version. not found"):
        data.read_cifar_test(tmp_path, "cifar10")


@pytest.mark.parametrize("dump_kwargs", [dict(protocol=2), dict(protocol=4), dict(py2=True)])
def test_cifar_pickle_flavours(tmp_path, dump_kwargs):
    """Protocol 2 (bytes via _codecs.encode), 4, and Python 2 cPickle style (the real files)."""
    folder, batches = make_cifar10(tmp_path, **dump_kwargs)
    ds = data.load_cifar(tmp_path, "cifar10")
    _check_against(ds, [batches[f"data_batch_{k}"] for k in range(1, 6)], [batches["test_batch"]], b"labels")


def test_cifar_str_keys_and_numpy_labels(tmp_path):
    folder, batches = make_cifar100(tmp_path)
    batch = batches["train"]
    _dump(folder / "train", {"data": batch[b"data"], "fine_labels": np.asarray(batch[b"fine_labels"])})
    ds = data.load_cifar(tmp_path, "cifar100")
    assert ds.train_labels.tolist() == batch[b"fine_labels"]


def test_cifar_missing_folder_says_what_is_expected(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-batches-py") as info:
        data.load_cifar(tmp_path, "cifar10")
    assert "data_batch_1" in str(info.value) and "test_batch" in str(info.value)
    with pytest.raises(DatasetError, match="cifar-100-python") as info:
        data.load_cifar(tmp_path / "nowhere", "cifar100")
    assert "does not exist" in str(info.value) and "fine_labels" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_cifar_missing_file(tmp_path):
    folder, _ = make_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="lacks data_batch_3"):
        data.load_cifar(tmp_path, "cifar10")
    with pytest.raises(DatasetError, match="lacks data_batch_3"):
        data.load_cifar(folder, "cifar10")


def _corrupt(tmp_path, mutate, name="data_batch_2"):
    folder, batches = make_cifar10(tmp_path)
    batch = dict(batches[name])
    mutate(batch)
    _dump(folder / name, batch)
    return tmp_path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b.pop(b"labels"), r"missing key\(s\) b'labels'"),
        (lambda b: b.pop(b"data"), r"missing key\(s\) b'data'"),
        (lambda b: b.update({b"data": b[b"data"].reshape(PER_FILE, 3, 32, 32)}), r"\[N, 3072\]"),
        (lambda b: b.update({b"data": b[b"data"][:, :100]}), r"\[N, 3072\]"),
        (lambda b: b.update({b"data": b[b"data"].astype(np.float32)}), "uint8"),
        (lambda b: b.update({b"data": b[b"data"].astype(np.int64) + 1000}), "uint8"),
        (lambda b: b.update({b"labels": b[b"labels"][:-1]}), "one per row"),
        (lambda b: b.update({b"labels": [10] + b[b"labels"][1:]}), r"\[0, 10\)"),
        (lambda b: b.update({b"labels": [-1] + b[b"labels"][1:]}), r"\[0, 10\)"),
        (lambda b: b.update({b"labels": [0.5] * PER_FILE}), "integer labels"),
        (lambda b: b.update({b"data": [[0] * 3072] * PER_FILE}), r"\[N, 3072\]"),
    ],
)
def test_cifar_malformed_content(tmp_path, mutate, message):
    root = _corrupt(tmp_path, mutate)
    with pytest.raises(DatasetError, match=message) as info:
        data.load_cifar(root, "cifar10")
    assert "data_batch_2" in str(info.value)


def test_cifar_not_a_dict_or_truncated(tmp_path):
    folder, _ = make_cifar10(tmp_path)
    _dump(folder / "test_batch", [1, 2, 3])
    with pytest.raises(DatasetError, match="expected a dict"):
        data.load_cifar(tmp_path, "cifar10")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:-20])
    with pytest.raises(DatasetError, match="not a readable CIFAR pickle"):
        data.load_cifar(tmp_path, "cifar10")


def test_cifar100_label_range(tmp_path):
    folder, batches = make_cifar100(tmp_path)
    batch = dict(batches["test"])
    batch[b"fine_labels"] = [100] * len(batch[b"fine_labels"])
    _dump(folder / "test", batch)
    with pytest.raises(DatasetError, match=r"\[0, 100\)"):
        data.load_cifar(tmp_path, "cifar100")


# --------------------------------------------------------------------------- malicious pickles


class _Shell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class _Getattr:
    def __reduce__(self):
        return (getattr, ("text", "upper"))


@pytest.mark.parametrize(
    "payload, refused", [(_Shell, r"(posix|os|nt)\.system"), (_Eval, r"(builtins|__builtin__)\.eval")]
)
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, payload, refused, nested, protocol):
    marker = tmp_path / "pwned.txt"
    folder, batches = make_cifar10(tmp_path / "root")
    obj = payload(marker)
    if nested:
        obj = {**batches["data_batch_1"], b"labels": obj}
    (folder / "data_batch_1").write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(pickle.UnpicklingError, match=refused) as info:
        data.load_cifar(tmp_path / "root", "cifar10")
    assert not isinstance(info.value, DatasetError)
    assert not marker.exists()


@pytest.mark.parametrize(
    "blob",
    [
        pickle.dumps(_Getattr()),
        b"cos\nsystem\n(S'echo hi'\ntR.",
        b"cbuiltins\n__import__\n(S'os'\ntR.",
        b"cnumpy\nload\n(S'x.npy'\ntR.",
        b"c__builtin__\nexec\n(S'1'\ntR.",
        b"c_codecs\ndecode\n(S'x'\ntR.",
    ],
)
def test_safe_unpickler_refuses_other_globals(blob):
    with pytest.raises(data.ForbiddenGlobalError, match="refusing"):
        data.safe_pickle_load(io.BytesIO(blob))


def test_safe_unpickler_refuses_odd_codec_and_persistent_ids():
    with pytest.raises(pickle.UnpicklingError, match="encoding"):
        data.safe_pickle_load(io.BytesIO(b"c_codecs\nencode\n(Vx\nVrot13\ntR."))

    class Persistent(pickle.Pickler):
        def persistent_id(self, obj):
            return "ref" if isinstance(obj, list) else None

    buf = io.BytesIO()
    Persistent(buf).dump({"a": [1]})
    with pytest.raises(pickle.UnpicklingError, match="persistent"):
        data.safe_pickle_load(io.BytesIO(buf.getvalue()))


def test_safe_unpickler_admits_plain_data():
    obj = {b"a": [1, 2.5, "x", (b"y", None, True)], "s": {1, 2}, "f": frozenset({3}), "c": 1j,
           "arr": np.arange(6, dtype=np.int16).reshape(2, 3), "scalar": np.float32(1.5), "ba": bytearray(b"z")}
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        out = data.safe_pickle_load(io.BytesIO(pickle.dumps(obj, protocol=protocol)))
        assert out[b"a"] == obj[b"a"] and out["s"] == obj["s"] and out["f"] == obj["f"] and out["c"] == 1j
        assert np.array_equal(out["arr"], obj["arr"]) and out["arr"].dtype == np.int16
        assert out["scalar"] == np.float32(1.5) and out["ba"] == bytearray(b"z")


# --------------------------------------------------------------------------- load_dataset, synthetic


def test_load_dataset_dispatch_and_errors(tmp_path):
    with pytest.raises(ValueError, match="digits.*cifar10.*cifar100"):
        data.load_dataset("mnist")
    with pytest.raises(DatasetError, match="data_dir.*cifar-10-batches-py"):
        data.load_dataset("cifar10")
    with pytest.raises(DatasetError, match="cifar-100-python"):
        data.load_dataset("cifar100", None)
    make_cifar10(tmp_path)
    assert data.load_dataset("cifar10", tmp_path).name == "cifar10"


def test_synthetic_dataset():
    ds = data.synthetic_dataset(200, 50, 5, size=16, seed=3)
    assert ds.train_images.shape == (200, 3, 16, 16) and ds.test_images.shape == (50, 3, 16, 16)
    assert ds.train_images.dtype == torch.float32 and ds.train_labels.dtype == torch.int64
    assert torch.bincount(ds.train_labels).tolist() == [40] * 5
    assert ds.hflip and ds.num_classes == 5
    x = ds.train_images.double()
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3), correction=0), torch.ones(3, dtype=torch.float64), atol=1e-5)
    again = data.synthetic_dataset(200, 50, 5, size=16, seed=3)
    assert torch.equal(again.train_images, ds.train_images) and torch.equal(again.test_labels, ds.test_labels)
    assert not torch.equal(data.synthetic_dataset(200, 50, 5, size=16, seed=4).train_images, ds.train_images)
    # learnable: nearest class mean (from train) classifies the test split well
    means = torch.stack([ds.train_images[ds.train_labels == c].mean(0) for c in range(5)]).flatten(1)
    dist = torch.cdist(ds.test_images.flatten(1), means)
    assert (dist.argmin(1) == ds.test_labels).double().mean() > 0.9
    # mirror-symmetric class templates: flips are label-preserving
    clean = data.synthetic_dataset(10, 0, 5, size=16, noise=0.0).train_images
    assert torch.allclose(clean, clean.flip(-1), atol=1e-5) and clean.std() > 0.5


def test_dataset_to_moves_tensors():
    ds = data.synthetic_dataset(8, 4, 2, size=8)
    moved = ds.to("cpu")
    assert moved.device == torch.device("cpu") and moved.name == ds.name and moved.mean == ds.mean
    assert moved.image_shape == (3, 8, 8) and moved.num_train == 8 and moved.num_test == 4
    if torch.cuda.is_available():
        gpu = ds.to("cuda")
        assert all(t.is_cuda for t in (gpu.train_images, gpu.train_labels, gpu.test_images, gpu.test_labels))


# --------------------------------------------------------------------------- augment


def _gen(seed=0, device="cpu"):
    return torch.Generator(device).manual_seed(seed)


def _all_crops(image, padding):
    """Every padded crop and its mirror, [K, C, H, W]."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    crops = [padded[:, y : y + h, x : x + w] for y in range(2 * padding + 1) for x in range(2 * padding + 1)]
    crops = torch.stack(crops)
    return crops, crops.flip(-1)


def _match(out, image, padding):
    """(offset id, flipped) of the crop of ``image`` that ``out`` equals; raises if none."""
    crops, flipped = _all_crops(image, padding)
    for is_flipped, candidates in ((False, crops), (True, flipped)):
        hits = (candidates == out).flatten(1).all(1).nonzero().flatten().tolist()
        if hits:
            return hits[0], is_flipped
    raise AssertionError("output is no crop of the padded input")


def test_augment_identity_without_padding_or_flip():
    x = torch.randn(6, 3, 8, 8)
    out = data.augment(x, False, _gen(0), padding=0)
    assert torch.equal(out, x) and out.dtype == x.dtype and out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_augment_keeps_shape_and_dtype(dtype):
    x = torch.randn(5, 3, 9, 7).to(dtype)
    out = data.augment(x, True, _gen(0))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device


@pytest.mark.parametrize("hflip", [False, True])
def test_augment_outputs_are_padded_crops(hflip):
    torch.manual_seed(0)
    n, padding = 48, 2
    x = torch.rand(n, 3, 6, 5) + 0.5  # positive: zero padding is distinguishable
    out = data.augment(x, hflip, _gen(11), padding=padding)
    matches = [_match(out[i], x[i], padding) for i in range(n)]
    offsets = {m[0] for m in matches}
    flips = [m[1] for m in matches]
    assert len(offsets) > 5  # offsets vary per sample
    if hflip:
        assert 0.2 < np.mean(flips) < 0.8
    else:
        assert not any(flips)


def test_augment_matches_manual_slicing_with_same_draws():
    n, c, h, w, p = 10, 2, 5, 6, 3
    x = torch.randn(n, c, h, w)
    out = data.augment(x, True, _gen(21), padding=p)
    gen = _gen(21)  # documented draw order: top, left, flip
    top = torch.randint(0, 2 * p + 1, (n, 1), generator=gen).flatten()
    left = torch.randint(0, 2 * p + 1, (n, 1), generator=gen).flatten()
    flip = torch.rand(n, 1, generator=gen).flatten() < 0.5
    padded = torch.nn.functional.pad(x, (p,) * 4)
    for i in range(n):
        crop = padded[i, :, top[i] : top[i] + h, left[i] : left[i] + w]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)


def test_augment_flip_only():
    x = torch.randn(64, 3, 4, 4)
    out = data.augment(x, True, _gen(3), padding=0)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()
    assert torch.equal(data.augment(x, False, _gen(3), padding=0), x)


def test_augment_deterministic_and_layouts():
    x = torch.randn(16, 3, 8, 8)
    a = data.augment(x, True, _gen(9))
    assert torch.equal(a, data.augment(x, True, _gen(9)))
    assert not torch.equal(a, data.augment(x, True, _gen(10)))
    cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(data.augment(cl, True, _gen(9)), a)
    assert data.augment(x[:0], True, _gen(9)).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match="N, C, H, W"):
        data.augment(x[0], True, _gen(9))


def test_augment_pads_with_the_fill_value_per_channel():
    x = torch.full((64, 3, 6, 5), 7.0)
    fill = (-1.0, -2.0, -3.0)
    out = data.augment(x, True, _gen(4), padding=2, fill=fill)
    for c, value in enumerate(fill):
        assert set(out[:, c].unique().tolist()) == {7.0, value}  # image or padding, nothing else
    # a crop at offset (top, left) has exactly the rows/columns outside the image filled
    gen = _gen(4)
    top = torch.randint(0, 5, (64, 1), generator=gen).flatten()
    left = torch.randint(0, 5, (64, 1), generator=gen).flatten()
    flip = torch.rand(64, 1, generator=gen).flatten() < 0.5
    for i in range(64):
        rows = torch.arange(6) + top[i] - 2
        cols = torch.arange(5) + left[i] - 2
        cols = cols.flip(0) if flip[i] else cols
        inside = ((rows >= 0) & (rows < 6))[:, None] & ((cols >= 0) & (cols < 5))[None, :]
        assert torch.equal(out[i, 0] == 7.0, inside)
    with pytest.raises(ValueError, match="fill"):
        data.augment(x, True, _gen(4), fill=(0.0, 1.0))


def test_dataset_pad_value_is_black_after_normalisation(digits):
    """The official RandomCrop pads uint8 pixels with 0: black, -mean/std once normalised."""
    expected = tuple(-m / s for m, s in zip(digits.mean, digits.std))
    assert digits.pad_value == pytest.approx(expected)
    # the digits' background is pixel value 0: the darkest normalised value of each channel
    darkest = digits.train_images.amin(dim=(0, 2, 3))
    torch.testing.assert_close(darkest, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert all(v < 0 for v in digits.pad_value)  # not the mean (0 after normalisation)
