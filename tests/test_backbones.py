"""The backbone registry: every row builds and describes, with its own preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.backbones import BACKBONES, get_backbone, parse_backbones, resolve_input_size
from cbir.weights import Weights, WeightsError, WeightsKind
from cbir.trunks import ExtractorCache, build_extractor
from cbir.recipe import Recipe


def recipe(name: str, size: int, weights: str = "none") -> Recipe:
    return Recipe.create(name, input_size=size, weights=weights)


STUDY = [b.name for b in parse_backbones("study")]  # the newer rows are tested in test_dinov2.py


def test_registry_holds_the_six_networks_of_the_study():
    assert {name: (b.input_size, b.dim) for name, b in BACKBONES.items() if name in STUDY} == {
        "vgg16": (224, 4096),
        "xception": (299, 2048),
        "inception_v3": (299, 2048),
        "inception_resnet_v2": (299, 1536),
        "resnet152_v2": (224, 2048),
        "efficientnet_v2_l": (480, 1280),
    }
    assert BACKBONES["vgg16"].feature_layer == "fc1"


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="known backbones: vgg16, xception, inception_v3"):
        get_backbone("resnet50")
    assert [b.name for b in parse_backbones("all")] == list(BACKBONES)
    assert [b.name for b in parse_backbones("vgg16, xception")] == ["vgg16", "xception"]


def test_input_size_rules():
    assert resolve_input_size(BACKBONES["xception"], None) == 299
    assert resolve_input_size(BACKBONES["xception"], 96) == 96
    with pytest.raises(ValueError, match="at least 71"):
        resolve_input_size(BACKBONES["xception"], 64)
    with pytest.raises(ValueError, match="only 224"):
        resolve_input_size(BACKBONES["vgg16"], 128)


def test_weights_parsing(tmp_path):
    assert Weights.parse("imagenet").identity == "imagenet"
    untrained = Weights.parse("none")
    assert untrained.untrained and "untrained" in untrained.identity
    weights_file = tmp_path / "my.weights.h5"
    weights_file.write_bytes(b"123")
    from_file = Weights.parse(str(weights_file))
    assert from_file.kind is WeightsKind.FILE and from_file.identity.startswith("file my.weights.h5 sha256:a665a459")
    assert Weights.from_json(from_file.to_json()) == from_file
    with pytest.raises(ValueError, match="'imagenet', 'none' or a path"):
        Weights.parse(str(tmp_path / "missing.h5"))


def test_each_network_gets_its_own_preprocessing():
    import keras

    pixel = np.full((1, 1, 1, 3), [255.0, 0.0, 0.0], np.float32)
    # "caffe" style for VGG16: RGB -> BGR, ImageNet mean subtracted, no scaling.
    vgg = keras.applications.vgg16.preprocess_input(pixel.copy())
    assert vgg[0, 0, 0].tolist() == pytest.approx([-103.939, -116.779, 255 - 123.68])
    # "tf" style for the Inception family and ResNetV2: scaled to [-1, 1].
    for name in ("xception", "inception_v3", "inception_resnet_v2", "resnet152_v2"):
        module = getattr(keras.applications, BACKBONES[name].module)
        assert module.preprocess_input(pixel.copy())[0, 0, 0].tolist() == pytest.approx([1, -1, -1])
    # EfficientNetV2 rescales inside the network: its preprocess_input passes pixels through.
    module = getattr(keras.applications, BACKBONES["efficientnet_v2_l"].module)
    assert module.preprocess_input(pixel.copy())[0, 0, 0].tolist() == [255, 0, 0]


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDY)
def test_every_backbone_builds_and_describes(name):
    backbone = BACKBONES[name]
    size = backbone.input_size if backbone.fixed_input_size else max(backbone.min_input_size, 80)
    extractor = build_extractor(recipe(name, size))
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, size=(3, size, size, 3), dtype=np.uint8)
    batch[2] = batch[0]
    kept = batch.copy()
    descriptors = extractor.describe(batch)
    assert descriptors.shape == (3, backbone.dim) and descriptors.dtype == np.float32
    assert np.isfinite(descriptors).all()
    assert np.array_equal(batch, kept), "describe must not write into the caller's pixels"
    assert not np.allclose(descriptors[0], descriptors[1])
    if name == "efficientnet_v2_l":
        # Untrained EfficientNetV2-L's activations reach 1e8-1e9 and its output is dominated by
        # round-off: on an AMD EPYC the same image twice in one batch already gives different
        # descriptors, on an Intel Xeon batch 1 and batch 3 disagree. The comparisons below mean
        # nothing for it; with ImageNet weights it is well conditioned like the others.
        return
    assert np.allclose(descriptors[0], descriptors[2], rtol=1e-5, atol=1e-5 * np.abs(descriptors).max())
    # Images in one batch must not influence each other (no batch statistics at inference time):
    # replacing the middle image leaves the others' descriptors as they were.
    swapped = batch.copy()
    swapped[1] = rng.integers(0, 256, size=swapped[1].shape, dtype=np.uint8)
    again = extractor.describe(swapped)
    assert not np.allclose(again[1], descriptors[1])
    for row in (0, 2):
        assert cosine(again[row], descriptors[row]) > 0.99999
    # Batch size must not change a descriptor beyond float noise.
    assert cosine(extractor.describe(batch[1])[0], descriptors[1]) > 0.999


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Directions, not values: untrained networks reach activations near 1e9."""
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.slow
def test_untrained_weights_are_the_same_in_every_build():
    pixels = np.random.default_rng(1).integers(0, 256, size=(1, 80, 80, 3), dtype=np.uint8)
    first = build_extractor(recipe("xception", 80)).describe(pixels)
    second = build_extractor(recipe("xception", 80)).describe(pixels)
    assert np.array_equal(first, second)


@pytest.mark.slow
def test_cache_builds_once():
    cache = ExtractorCache()
    first = cache.get(recipe("xception", 80))
    assert cache.get(recipe("xception", 80)).trunk is first.trunk
    # Fully convolutional: one trunk serves every size and pooling of a backbone.
    assert cache.get(recipe("xception", 96)).trunk is first.trunk
    assert cache.get(Recipe.create("xception", pooling="gem", input_size=120, weights="none")).trunk is first.trunk
    assert len(cache) == 1
    # VGG16's study descriptor reads fc1, which fixes the input: a trunk of its own.
    study, mac = cache.get(recipe("vgg16", 224)), cache.get(Recipe.create("vgg16", pooling="mac", weights="none"))
    assert study.trunk is not mac.trunk and study.trunk.input_size == 224 and mac.trunk.input_size is None
    assert len(cache) == 3


def test_a_network_being_built_holds_back_only_its_own_requests(monkeypatch):
    import threading
    import time

    import cbir.trunks

    built, release = [], threading.Event()

    def slow_build(recipe):  # stands in for building (or downloading) a network
        built.append(recipe.backbone)
        if recipe.backbone == "vgg16":
            release.wait(10)
        return object()

    monkeypatch.setattr(cbir.trunks, "trunk_for", slow_build)
    cache = ExtractorCache()
    cache.get(recipe("xception", 80))
    waiting = [threading.Thread(target=cache.get, args=(recipe("vgg16", 224),)) for _ in range(3)]
    for thread in waiting:
        thread.start()
    time.sleep(0.2)
    started = time.perf_counter()
    cache.get(recipe("xception", 96))  # built already: answered while vgg16 is being built
    assert time.perf_counter() - started < 1
    release.set()
    for thread in waiting:
        thread.join(10)
    assert built == ["xception", "vgg16"]  # three simultaneous first requests: built once


@pytest.mark.slow
def test_a_local_weights_file_gives_the_same_network(tmp_path):
    # The air-gapped path: weights saved on one machine, loaded from a file on another.
    source = build_extractor(recipe("xception", 80))
    path = tmp_path / "xception_notop.weights.h5"
    source.model.save_weights(path)
    loaded = build_extractor(recipe("xception", 80, weights=str(path)))
    assert loaded.weights.kind is WeightsKind.FILE and not loaded.weights.untrained
    pixels = np.random.default_rng(2).integers(0, 256, size=(2, 80, 80, 3), dtype=np.uint8)
    assert np.allclose(loaded.describe(pixels), source.describe(pixels), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_imagenet_weights_unreachable_gives_a_clear_message(tmp_path, monkeypatch):
    # No internet in tests: an empty Keras cache and a proxy that refuses every connection make
    # the real download path fail here, on this machine, as it would on an air-gapped one.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(WeightsError) as raised:
        build_extractor(recipe("xception", 80, weights="imagenet"))
    message = str(raised.value)
    assert "could not build xception with weights imagenet" in message
    assert "--weights PATH" in message
