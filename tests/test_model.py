"""Fast tests of vlm.model: tiny configs, nothing downloaded."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlm.model import (
    LM,
    LMConfig,
    PatchEncoder,
    build_clip,
    build_vlm,
    clip_siglip_loss,
    image_tensor,
    lm_config,
    load_clip,
    masked_lm_loss,
    num_params,
    preprocess_config,
    save_clip,
    tiny_clip_config,
)

VOCAB = 64
IMAGE_ID, PAD_ID, EOS_ID, BOS_ID = 3, 0, 2, 1


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_lm(**overrides) -> LM:
    return LM(lm_config("tiny", vocab_size=VOCAB, max_seq_len=64, **overrides)).eval()


def tiny_clip(image_size: int = 16, patch_size: int = 8):
    cfg = tiny_clip_config(
        image_size=image_size,
        patch_size=patch_size,
        width=32,
        layers=2,
        heads=2,
        embed_dim=32,
        vocab_size=VOCAB,
        context_length=12,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
    )
    return build_clip(cfg), cfg


# ---------------------------------------------------------------- LM


def test_lm_shapes():
    lm = tiny_lm()
    ids = torch.randint(0, VOCAB, (2, 16))
    assert lm.embed(ids).shape == (2, 16, 128)
    assert lm(ids).shape == (2, 16, VOCAB)
    assert lm.cfg.d_head == 32 and lm.cfg.ffn_hidden == 352


def test_lm_is_causal():
    lm = tiny_lm()
    ids = torch.randint(0, VOCAB, (2, 20))
    changed = ids.clone()
    changed[:, 10] = (ids[:, 10] + 1) % VOCAB
    with torch.no_grad():
        a, b = lm(ids), lm(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=1e-6)
    assert (a[:, 10:] - b[:, 10:]).abs().amax() > 1e-4


def test_left_padding_gives_unpadded_logits():
    lm = tiny_lm()
    long, short = torch.randint(4, VOCAB, (12,)), torch.randint(4, VOCAB, (7,))
    ids = torch.full((3, 12), PAD_ID)
    ids[0] = long
    ids[1, 5:] = short
    pad_mask = ids != PAD_ID
    pad_mask[0] = True  # row 2 stays all padding: it must still give finite logits
    with torch.no_grad():
        padded = lm(ids, pad_mask=pad_mask)
        alone_long, alone_short = lm(long[None])[0], lm(short[None])[0]
    torch.testing.assert_close(padded[0], alone_long, rtol=0, atol=1e-5)
    torch.testing.assert_close(padded[1, 5:], alone_short, rtol=0, atol=1e-5)
    assert torch.isfinite(padded).all()


def test_sequence_longer_than_max_seq_len_is_an_error():
    with pytest.raises(ValueError, match="max_seq_len"):
        tiny_lm()(torch.zeros(1, 65, dtype=torch.long))


def test_preset_parameter_counts():
    tiny = LM(lm_config("tiny", vocab_size=1024, max_seq_len=256))
    assert 0.9e6 < num_params(tiny) < 1.2e6
    assert num_params(tiny, exclude_embeddings=True) == num_params(tiny) - 2 * 1024 * 128
    counts = {}
    for preset in ("79m", "1.4b"):
        with torch.device("meta"):  # shapes only: no memory, no init time
            counts[preset] = num_params(LM(lm_config(preset, vocab_size=50_304, max_seq_len=2048)))
    print(counts)
    assert 75e6 < counts["79m"] < 83e6
    assert 1.35e9 < counts["1.4b"] < 1.5e9


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match=r"'1\.4b', '79m', 'tiny'"):
        lm_config("7b", vocab_size=100, max_seq_len=16)


def test_tied_embeddings_share_one_matrix():
    lm = tiny_lm(tie_embeddings=True)
    assert lm.lm_head.weight is lm.tok_emb.weight
    assert num_params(lm) == num_params(tiny_lm()) - VOCAB * 128


def test_config_round_trips_through_a_dict():
    cfg = lm_config("79m", vocab_size=100, max_seq_len=16)
    assert LMConfig(**vars(cfg)) == cfg


# ---------------------------------------------------------------- loss


def test_masked_lm_loss_ignores_unmarked_targets():
    B, T = 2, 10
    ids = torch.randint(0, VOCAB, (B, T))
    mask = torch.ones(B, T)
    mask[0, 3:6] = 0
    mask[1, :4] = 0
    logits = torch.randn(B, T, VOCAB, requires_grad=True)
    loss = masked_lm_loss(logits, ids, mask)
    loss.backward()
    # position t predicts token t + 1: it is free exactly where mask[:, t + 1] == 0
    free = torch.zeros(B, T, dtype=torch.bool)
    free[:, :-1] = mask[:, 1:] == 0
    free[:, -1] = True  # the last position has no target
    assert (logits.grad[free] == 0).all()
    assert (logits.grad[~free].abs().sum(-1) > 0).all()
    moved = logits.detach().clone()
    moved[free] += 5 * torch.randn_like(moved[free])
    torch.testing.assert_close(masked_lm_loss(moved, ids, mask), loss.detach())


def test_masked_lm_loss_all_ones_is_plain_cross_entropy():
    ids = torch.randint(0, VOCAB, (3, 8))
    logits = torch.randn(3, 8, VOCAB)
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(masked_lm_loss(logits, ids, torch.ones(3, 8)), plain)


def test_masked_lm_loss_with_nothing_marked_is_a_differentiable_zero():
    logits = torch.randn(2, 5, VOCAB, requires_grad=True)
    loss = masked_lm_loss(logits, torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5))
    loss.backward()
    assert loss.item() == 0.0 and (logits.grad == 0).all()


# ---------------------------------------------------------------- vision


def test_patch_encoder_gives_penultimate_patch_tokens():
    clip, _ = tiny_clip(image_size=32, patch_size=8)
    enc = PatchEncoder(clip.visual)
    x = torch.randn(3, 3, 32, 32)
    feats = enc(x)
    assert feats.shape == (3, (32 // 8) ** 2, 32) and enc.num_patches == 16 and enc.width == 32
    ref = clip.visual.forward_intermediates(x, indices=[0], intermediates_only=True, output_fmt="NLC")
    torch.testing.assert_close(feats, ref["image_intermediates"][0])
    assert len(clip.visual.transformer.resblocks) == 2  # the CLIP model passed in is left whole


def test_frozen_encoder_stays_in_eval_mode():
    clip, _ = tiny_clip()
    enc = PatchEncoder(clip.visual).freeze()
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())


def test_save_load_round_trip(tmp_path):
    clip, cfg = tiny_clip()
    pp = preprocess_config(16)
    save_clip(clip, cfg, tmp_path / "a", pp)
    save_clip(clip, cfg, tmp_path / "b", pp)
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    loaded, loaded_pp = load_clip(tmp_path / "a")
    assert loaded_pp["mean"] == [0.5, 0.5, 0.5] and loaded_pp["size"] in (16, [16, 16])
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            PatchEncoder(loaded.visual)(x), PatchEncoder(clip.visual)(x), rtol=0, atol=0
        )
        torch.testing.assert_close(loaded.encode_image(x), clip.encode_image(x), rtol=0, atol=0)


def test_load_clip_names_the_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_clip(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        load_clip(tmp_path / "empty")


def test_image_tensor_is_open_clips_eval_transform():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    pp = preprocess_config(16)
    out = image_tensor([Image.fromarray(p) for p in pixels], pp)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    # at the encoder's size: only the normalisation, (x / 255 - 0.5) / 0.5
    torch.testing.assert_close(out, torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1)
    wide = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    expected = open_clip.image_transform(16, is_train=False, mean=pp["mean"], std=pp["std"],
                                         resize_mode="shortest", interpolation="bicubic")(wide)
    torch.testing.assert_close(image_tensor([wide], pp)[0], expected, rtol=0, atol=0)
    assert image_tensor([Image.fromarray(pixels[0], "RGB").convert("L")], pp).shape == (1, 3, 16, 16)


def test_siglip_loss_trains():
    clip, cfg = tiny_clip()
    n = 8
    images = torch.randn(n, 3, 16, 16)
    text = torch.randint(4, VOCAB, (n, 12))
    text[:, 6] = EOS_ID
    text[:, 7:] = PAD_ID
    opt = torch.optim.AdamW(clip.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = clip_siglip_loss(clip, images, text)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="length"):
        clip_siglip_loss(clip, images, text[:, :8])


# ---------------------------------------------------------------- VLM


def vlm_batch(num_image_tokens: int):
    """Two samples with an image (bos, image tokens, caption) and one text-only sample."""
    T = 4 + num_image_tokens
    ids = torch.randint(4, VOCAB, (3, T))
    ids[:2, 0] = BOS_ID
    ids[:2, 1 : 1 + num_image_tokens] = IMAGE_ID
    loss_mask = (ids != IMAGE_ID).float()
    loss_mask[:, 0] = 0
    return ids, loss_mask


def tiny_vlm(freeze: bool = True):
    clip, _ = tiny_clip()
    cfg = lm_config("tiny", vocab_size=VOCAB, max_seq_len=64)
    return build_vlm(cfg, clip, image_token_id=IMAGE_ID, freeze_encoder=freeze)


def test_image_features_land_at_placeholders():
    vlm = tiny_vlm().eval()
    N = vlm.num_image_tokens
    assert N == 4
    ids, _ = vlm_batch(N)
    images = torch.randn(2, 3, 16, 16)
    other = images.clone()
    other[1] = torch.randn(3, 16, 16)  # the second sample's image only
    with torch.no_grad():
        a, b = vlm(ids, images), vlm(ids, other)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)  # sample 0 keeps its image
    torch.testing.assert_close(a[1, :1], b[1, :1], rtol=0, atol=0)  # bos comes before the image
    assert ((a[1, 1:] - b[1, 1:]).abs().amax(-1) > 1e-5).all()  # image positions and after
    with torch.no_grad():  # cached encoder features give the same logits as pixels
        torch.testing.assert_close(vlm(ids, vlm.encoder(images)), a)


def test_text_only_vlm_is_the_lm():
    vlm = tiny_vlm().eval()
    ids = torch.randint(4, VOCAB, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(vlm(ids), vlm.lm(ids), rtol=0, atol=0)


@pytest.mark.parametrize("freeze", [True, False])
def test_every_step_images_gives_zero_gradients_not_none_and_the_same_logits(freeze):
    """Under FSDP (`every_step_images`) a text-only batch still runs the image path, weighted 0: the
    logits stay the same bit for bit, and the projector (and an unfrozen encoder) get gradients of 0."""
    vlm = tiny_vlm(freeze=freeze).train()
    ids = torch.randint(4, VOCAB, (2, 10))
    plain = vlm(ids)
    plain.sum().backward()
    assert all(p.grad is None for p in vlm.projector.parameters())
    vlm.every_step_images = True
    logits = vlm(ids)
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)
    logits.sum().backward()
    image_path = [*vlm.projector.parameters(), *([] if freeze else vlm.encoder.parameters())]
    assert all(p.grad is not None and not p.grad.any() for p in image_path)
    if freeze:
        assert all(p.grad is None for p in vlm.encoder.parameters())


def test_placeholder_count_mismatch_is_an_error():
    vlm = tiny_vlm()
    ids, _ = vlm_batch(vlm.num_image_tokens)
    with pytest.raises(ValueError, match="placeholder"):
        vlm(ids, torch.randn(3, 3, 16, 16))
    with pytest.raises(ValueError, match="placeholder"):
        vlm(ids)
    ids[0, 1] = 5  # one placeholder too few in sample 0, one image too many in sample 1
    ids[1, -1] = IMAGE_ID
    with pytest.raises(ValueError, match="multiple"):
        vlm(ids, torch.randn(2, 3, 16, 16))


@pytest.mark.parametrize("freeze", [True, False])
def test_gradients_reach_projector_and_lm_but_not_a_frozen_encoder(freeze):
    vlm = tiny_vlm(freeze=freeze).train()
    ids, loss_mask = vlm_batch(vlm.num_image_tokens)
    masked_lm_loss(vlm(ids, torch.randn(2, 3, 16, 16)), ids, loss_mask).backward()
    for module in (vlm.projector, vlm.lm.blocks, vlm.lm.lm_head):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    enc_grads = [p.grad for p in vlm.encoder.parameters()]
    if freeze:
        assert all(g is None for g in enc_grads) and not vlm.encoder.training
    else:
        assert all(g is not None for g in enc_grads) and vlm.encoder.training
