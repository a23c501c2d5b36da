"""The FID Inception-v3 (diffice.models.inception, csrc/nets/inception.c) against a PyTorch float64 transcription of
pytorch-fid's network (tests/inception_reference.py) with random weights, and its loading from a .pth file with
pytorch-fid's key layout. Small inputs (>= 75 px, or a small resize) keep it fast."""

import numpy as np
import pytest
import torch
from conftest import BACKENDS, rel_err
from inception_reference import FIDInception

from diffice.models.inception import FID_WEIGHTS_NAME, InceptionV3

TOL = 1e-4  # float32 through 94 conv layers vs float64


def reference_for(net: InceptionV3) -> FIDInception:
    ref = FIDInception(resize=net.resize).double().eval()
    ref.load_state_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in net.state_dict().items()}, strict=False)
    return ref


def reference_features(ref: FIDInception, x: np.ndarray) -> np.ndarray:
    xt = torch.tensor(x, dtype=torch.float64)
    if xt.shape[1] == 1:  # PIL convert('RGB') of a grayscale image
        xt = xt.repeat(1, 3, 1, 1)
    with torch.no_grad():
        return ref(xt).numpy()


def test_state_dict_layout_is_pytorch_fid():
    net = InceptionV3(resize=0)
    ref = FIDInception()
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert list(net.parameter_shapes()) == list(want)  # same keys, same (state_dict) order
    assert net.parameter_shapes() == want
    assert net.num_parameters() == sum(int(np.prod(s)) for s in want.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_features_match_pytorch_resized_rgb(rng, backend):
    net = InceptionV3.random(in_channels=3, resize=77, seed=int(rng.integers(1 << 30)), backend=backend)
    x = rng.uniform(0, 1, (2, 3, 75, 91)).astype(np.float32)  # resized (bilinear) to 77 x 77 inside
    y = net(x)
    assert y.shape == (2, 2048) and y.dtype == np.float32
    want = reference_features(reference_for(net), x)
    assert np.abs(want).max() > 0.1
    assert rel_err(y, want) <= TOL


def test_features_match_pytorch_grayscale_no_resize(rng):
    net = InceptionV3.random(in_channels=1, resize=0, seed=int(rng.integers(1 << 30)))
    x = rng.uniform(0, 1, (3, 1, 75, 79)).astype(np.float32)
    y = net.features(x, batch_size=2)  # two batches
    assert y.dtype == np.float64
    assert rel_err(y, reference_features(reference_for(net), x)) <= TOL
    # one image alone gives the same features as in a batch
    assert rel_err(net(x[1:2])[0], y[1]) <= 1e-6


def test_loads_pytorch_fid_pth_file(tmp_path, rng):
    """A torch.save'd state_dict with pytorch-fid's keys, its 1008-way fc and num_batches_tracked entries."""
    src = InceptionV3.random(seed=int(rng.integers(1 << 30)), resize=0)
    sd = {}
    for k, v in src.state_dict().items():
        sd[k] = torch.from_numpy(v)
        if k.endswith("running_var"):
            sd[k.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    sd["fc.weight"] = torch.zeros(1008, 2048)
    sd["fc.bias"] = torch.zeros(1008)
    path = tmp_path / FID_WEIGHTS_NAME
    torch.save(sd, path)
    net = InceptionV3.from_file(path, in_channels=1, resize=0)
    for k, v in net.state_dict().items():
        assert np.array_equal(v, sd[k].numpy()), k
    x = rng.uniform(0, 1, (1, 1, 75, 75)).astype(np.float32)
    assert np.array_equal(net(x), src.__class__.from_state_dict(src.state_dict(), 1, 0)(x))


def test_errors_name_the_problem(tmp_path):
    net = InceptionV3(resize=0)
    with pytest.raises(ValueError, match="75x75"):
        net(np.zeros((1, 3, 74, 80), np.float32))
    with pytest.raises(ValueError, match="channels"):
        net(np.zeros((1, 1, 80, 80), np.float32))
    with pytest.raises(ValueError, match="in_channels"):
        InceptionV3(in_channels=2)
    with pytest.raises(ValueError, match="resize"):
        InceptionV3(resize=10)
    sd = net.state_dict()
    del sd["Mixed_7c.branch_pool.bn.running_var"]
    with pytest.raises(ValueError, match="Mixed_7c.branch_pool.bn.running_var"):
        net.load_state_dict(sd)
    with pytest.raises(ValueError, match="forward only"):
        net._c.vjp(
            __import__("diffice").ops._backend.get_backend("cpu"),
            np.zeros((1, 3, 80, 80), np.float32),
            (np.zeros((1, 2048), np.float32),),
        )
    with pytest.raises(FileNotFoundError):
        InceptionV3.from_file(tmp_path / "missing.pth")
