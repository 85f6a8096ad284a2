"""The frozen-encoder feature cache: each distinct image encoded once, looked up by its file's bytes.

The cached path must give the model what the pixel path gives it (the encoder's output for the same
image, blanked images included), and a store made for other images or another encoder must fail
with a message that says so. The loss trajectory of a whole cooldown with and without the cache is
compared in tests/test_pipeline.py.
"""

from __future__ import annotations

import functools
import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vlm.data.batches import GREY, Collator, decode_image
from vlm.data.features import FeatureStore, folder_fingerprint, image_key, write_disabled, write_store
from vlm.model.vision import PatchEncoder, build_clip, image_tensor, preprocess_config, save_clip, tiny_clip_config

IDS = {"bos": 10, "eos": 11, "pad": 12, "image": 13, "user": 14, "assistant": 15}
SIZE = 16
PP = preprocess_config(SIZE)
to_tensor = functools.partial(image_tensor, preprocess_cfg=PP)


def png(seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tiny_clip_config(SIZE, 8, 32, 2, 2, 16, vocab_size=64, context_length=8, pad_id=0, eos_id=1)
    out = tmp_path_factory.mktemp("encoder")
    save_clip(build_clip(cfg), cfg, out, PP)
    return out


@pytest.fixture(scope="module")
def encoder(encoder_dir):
    from vlm.model.vision import load_clip

    clip, _ = load_clip(encoder_dir)
    return PatchEncoder(clip.visual).freeze()


def encode_files(encoder):
    @torch.no_grad()
    def encode(files: list[bytes]) -> torch.Tensor:
        return encoder(to_tensor([decode_image(f) for f in files]))
    return encode


def grey_features(encoder) -> torch.Tensor:
    with torch.no_grad():
        return encoder(to_tensor([Image.new("RGB", (SIZE, SIZE), GREY)]))[0]


IMAGES = [png(0), png(1), png(0), png(2), png(1)]  # two repeats


def pairs_of(images: list[bytes]):
    """(key, read) pairs, as encode-images yields them."""
    return ((image_key(b), functools.partial(bytes, b)) for b in images)


def make_store(tmp_path, encoder, encoder_dir, images=IMAGES, batch_size=2):
    out = tmp_path / "features"
    out.mkdir()
    stats = write_store(out, pairs_of(images), encode_files(encoder), grey_features(encoder),
                        folder_fingerprint(encoder_dir), batch_size, log=lambda _: None)
    return out, stats


def test_each_distinct_image_is_encoded_once_and_looked_up_by_its_bytes(tmp_path, encoder, encoder_dir):
    calls = []
    encode = encode_files(encoder)
    out = tmp_path / "features"
    out.mkdir()
    stats = write_store(out, pairs_of(IMAGES), lambda files: calls.append(len(files)) or encode(files),
                        grey_features(encoder), folder_fingerprint(encoder_dir), 2, log=lambda _: None)
    assert stats["images"] == 5 and stats["distinct_images"] == 3 and sum(calls) == 3
    assert (stats["patches"], stats["width"]) == (encoder.num_patches, encoder.width) == (4, 32)
    store = FeatureStore(out, encoder_dir)
    cached = store(IMAGES)
    assert cached.shape == (5, 4, 32) and cached.dtype == torch.float32
    torch.testing.assert_close(cached, encode(IMAGES))  # what the encoder gives the pixels, batched otherwise
    assert not torch.allclose(cached[0], cached[1])


def test_the_same_inputs_write_the_same_bytes(tmp_path, encoder, encoder_dir):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a, _ = make_store(tmp_path / "a", encoder, encoder_dir)
    b, _ = make_store(tmp_path / "b", encoder, encoder_dir)
    for name in ("features.npy", "index.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_collator_gives_the_encoders_output_of_its_pixels(tmp_path, encoder, encoder_dir):
    out, _ = make_store(tmp_path, encoder, encoder_dir)
    samples = [
        {"tokens": np.array([10, 13, 30, 11], np.int32), "mask": np.array([0, 0, 1, 1], np.uint8), "image": IMAGES[3]},
        {"tokens": np.array([10, 20, 21, 11], np.int32), "mask": np.ones(4, np.uint8), "image": b""},
        {"tokens": np.array([10, 13, 31, 11], np.int32), "mask": np.array([0, 0, 1, 1], np.uint8), "image": IMAGES[0]},
    ]
    for blank in (False, True):
        pixels = Collator(IDS, 4, to_tensor, blank_images=blank)(samples)
        cached = Collator(IDS, 4, to_tensor, blank_images=blank, features=FeatureStore(out))(samples)
        assert cached["images"].shape == (2, 4, 32) and pixels["images"].shape == (2, 3, SIZE, SIZE)
        for key in ("input_ids", "loss_mask", "kind"):
            assert torch.equal(cached[key], pixels[key])
        with torch.no_grad():
            torch.testing.assert_close(cached["images"], encoder(pixels["images"]))
        parts = Collator(IDS, 4, to_tensor, features=FeatureStore(out)).split(cached, 2)
        assert [p["images"].shape[0] for p in parts] == [1, 1]  # each microbatch its own rows' features
    grey = Collator(IDS, 4, to_tensor, blank_images=True, features=FeatureStore(out))(samples)["images"]
    assert torch.equal(grey[0], grey[1])


def test_a_blank_image_of_any_size_is_the_stored_grey_row(tmp_path, encoder, encoder_dir):
    """The uncached control blanks each image at its own size before resizing; the store holds one
    grey row made at the encoder's size. Resizing a uniform image keeps it uniform, so they agree."""
    out, _ = make_store(tmp_path, encoder, encoder_dir)
    odd = png(5, size=(40, 24))
    pixels = Collator(IDS, 4, to_tensor, blank_images=True).image_input([odd])
    with torch.no_grad():
        torch.testing.assert_close(FeatureStore(out)([odd], blank=True), encoder(pixels))


def test_an_image_the_store_does_not_hold_is_an_error_naming_it(tmp_path, encoder, encoder_dir):
    out, _ = make_store(tmp_path, encoder, encoder_dir)
    other = png(9)
    with pytest.raises(KeyError, match=f"{image_key(other)} is not in the feature cache .*re-run encode-images"):
        FeatureStore(out)([IMAGES[0], other])
    with pytest.raises(TypeError, match="file bytes"):
        FeatureStore(out)([decode_image(IMAGES[0])])


def test_a_store_of_another_encoder_or_a_disabled_one_is_refused(tmp_path, encoder, encoder_dir):
    out, _ = make_store(tmp_path, encoder, encoder_dir)
    changed = tmp_path / "encoder2"
    shutil.copytree(encoder_dir, changed)
    weights = next(changed.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(ValueError, match=f"made by another encoder than {changed}"):
        FeatureStore(out, changed)
    FeatureStore(out, encoder_dir)  # its own encoder is fine
    disabled = tmp_path / "off"
    disabled.mkdir()
    write_disabled(disabled, "vision.freeze is false")
    with pytest.raises(ValueError, match="written disabled \\(vision.freeze is false\\)"):
        FeatureStore(disabled)
    with pytest.raises(FileNotFoundError, match="run the stage encode-images"):
        FeatureStore(tmp_path / "missing")
