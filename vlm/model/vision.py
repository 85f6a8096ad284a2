"""The image side: open_clip encoders, their local save/load, and penultimate-layer patch features.

The embedded default trains a tiny SigLIP-style open_clip model (`tiny_clip_config`, `clip_siglip_loss`)
and saves it in the folder layout open_clip reads with `create_model("local-dir:PATH")`; a real run
points `load_clip` at a local folder holding pretrained SigLIP weights in that same layout.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import open_clip
import torch
from open_clip.loss import SigLipLoss
from PIL import Image
from safetensors.torch import save_file
from torch import Tensor, nn

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


def tiny_clip_config(
    image_size: int,
    patch_size: int,
    width: int,
    layers: int,
    heads: int,
    embed_dim: int,
    vocab_size: int,
    context_length: int,
    pad_id: int,
    eos_id: int,
) -> dict:
    """An open_clip `model_cfg` for a small SigLIP-style CLIP whose text tower reads OUR token ids.

    As SigLIP: no pre-transformer LayerNorm, sigmoid-loss logit scale log(10) and bias -10. Unlike
    SigLIP's MAP head, the image embedding is the mean of the patch tokens ("avg"), which needs no
    extra parameters at this size. The text tower is causal and pools the first eos token, so right
    padding after eos cannot change the text embedding (open_clip's CLIP text tower has no pad mask).
    Text ids must be exactly `context_length` long and contain an eos.
    """
    if width % heads:
        raise ValueError(f"width {width} is not divisible by heads {heads}")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
    if layers < 2:
        raise ValueError("the encoder needs at least 2 layers: the VLM reads the penultimate one")
    return {
        "embed_dim": embed_dim,
        "init_logit_scale": math.log(10.0),
        "init_logit_bias": -10.0,
        "vision_cfg": {
            "image_size": image_size,
            "patch_size": patch_size,
            "width": width,
            "layers": layers,
            "head_width": width // heads,
            "mlp_ratio": 4.0,
            "no_ln_pre": True,
            "pool_type": "avg",
            "norm_kwargs": {"eps": 1e-6},
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": vocab_size,
            "width": width,
            "heads": heads,
            "layers": layers,
            "mlp_ratio": 4.0,
            "pad_id": pad_id,
            "eos_id": eos_id,
            "pool_type": "eos",
            "proj_bias": True,
            "norm_kwargs": {"eps": 1e-6},
        },
    }


def preprocess_config(
    size: int, mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.5, 0.5, 0.5)
) -> dict:
    """An open_clip preprocess_cfg; the defaults are SigLIP's normalisation."""
    return {
        "size": size,
        "mean": list(mean),
        "std": list(std),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }


def build_clip(model_cfg: dict) -> open_clip.CLIP:
    """A randomly initialised open_clip CLIP from a model_cfg (nothing is downloaded)."""
    cfg = copy.deepcopy(model_cfg)
    cfg.pop("custom_text", None)
    return open_clip.CLIP(**cfg)


def save_clip(model: open_clip.CLIP, model_cfg: dict, out_dir: Path, preprocess_cfg: dict) -> None:
    """Write open_clip's local-dir layout: open_clip_config.json and open_clip_model.safetensors."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pp = {"interpolation": "bicubic", "resize_mode": "shortest", **preprocess_cfg}
    pp["mean"], pp["std"] = list(pp["mean"]), list(pp["std"])
    config = {"model_cfg": model_cfg, "preprocess_cfg": pp}
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_NAME))


def load_clip(path: Path) -> tuple[nn.Module, dict]:
    """Load an open_clip model and its preprocess_cfg from a local folder (never downloads).

    The folder holds open_clip_config.json ({"model_cfg", "preprocess_cfg"}) and a weights file
    (*.safetensors, *.bin or *.pth), as `save_clip` writes and as open_clip's hub folders ship.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"image encoder folder not found: {path}")
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"image encoder folder {path} has no {CONFIG_NAME}")
    if not any(any(path.glob(f"*.{ext}")) for ext in ("safetensors", "bin", "pth")):
        raise FileNotFoundError(f"image encoder folder {path} has no weights (*.safetensors, *.bin, *.pth)")
    model = open_clip.create_model("local-dir:" + str(path))
    return model, preprocess_cfg_of(model)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".npz")


def load_named(model_name: str, checkpoint: Path) -> tuple[nn.Module, dict, dict]:
    """(model, model_cfg, preprocess_cfg) of an open_clip built-in model (e.g. ViT-B-16-SigLIP) with
    its weights from a local checkpoint: a file, or a folder holding exactly one weights file.

    Nothing is downloaded: hub names are refused, and the image preprocessing (mean, std, resize)
    is the one open_clip registers for the model's published weights, read from its own tables.
    """
    if model_name.startswith(("hf-hub:", "local-dir:")) or open_clip.get_model_config(model_name) is None:
        raise ValueError(f"{model_name!r} is not one of open_clip's built-in model names (open_clip.list_models(); "
                         "hub names would download)")
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        found = sorted(p for p in checkpoint.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if len(found) != 1:
            raise FileNotFoundError(f"{checkpoint}: expected one weights file ({', '.join(WEIGHT_SUFFIXES)}), "
                                    f"found {len(found)}")
        checkpoint = found[0]
    force = {}
    if tags := open_clip.list_pretrained_tags_by_model(model_name):
        published = open_clip.get_pretrained_cfg(model_name, tags[0])
        force = {k: published[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in published}
    model = open_clip.create_model(model_name, pretrained=str(checkpoint), force_preprocess_cfg=force)
    return model, open_clip.get_model_config(model_name), preprocess_cfg_of(model)


def preprocess_cfg_of(model: nn.Module) -> dict:
    """The preprocess_cfg open_clip attached to a model (or its visual tower) when loading it."""
    pp = dict(open_clip.get_model_preprocess_cfg(model))
    if not isinstance(pp["size"], int):
        pp["size"] = list(pp["size"])
    pp["mean"], pp["std"] = list(pp["mean"]), list(pp["std"])
    return pp


def image_tensor(images: list[Image.Image], preprocess_cfg: dict) -> Tensor:
    """PIL images -> normalised float (B, 3, H, W) through the encoder's own open_clip eval transform
    (resize, centre crop, RGB, normalise), built from its `preprocess_cfg`."""
    size = preprocess_cfg["size"]
    transform = open_clip.image_transform(
        size if isinstance(size, int) else tuple(size), is_train=False, mean=preprocess_cfg["mean"],
        std=preprocess_cfg["std"], resize_mode=preprocess_cfg.get("resize_mode", "shortest"),
        interpolation=preprocess_cfg.get("interpolation", "bicubic"),
    )
    return torch.stack([transform(im) for im in images])


def patch_count(visual: nn.Module) -> int:
    """Patch tokens per image of an open_clip ViT tower (open_clip's own or a timm trunk)."""
    if hasattr(visual, "trunk"):
        return visual.trunk.patch_embed.num_patches
    if hasattr(visual, "grid_size"):
        return visual.grid_size[0] * visual.grid_size[1]
    raise TypeError(f"a ViT image tower is needed, got {type(visual).__name__}")


class PatchEncoder(nn.Module):
    """Penultimate-block patch tokens (no class token) of an open_clip ViT: (B, 3, H, W) -> (B, N, width).

    Holds a copy of the visual tower cut after the penultimate block (its last block, final norm and
    pooling head are dropped), so every parameter it holds is used and the CLIP model passed in is
    left untouched. Works for open_clip's own VisionTransformer and for timm towers (real SigLIP).
    """

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = copy.deepcopy(visual)
        self.frozen = False
        if hasattr(self.visual, "trunk"):  # open_clip TimmModel
            trunk = self.visual.trunk
            n_blocks = len(trunk.blocks)
            self._width, self._num_patches = trunk.embed_dim, patch_count(self.visual)
            trunk.prune_intermediate_layers([n_blocks - 2], prune_norm=True, prune_head=True)
            self.visual.head = nn.Identity()
        elif hasattr(self.visual, "transformer"):  # open_clip VisionTransformer
            n_blocks = len(self.visual.transformer.resblocks)
            self._width = self.visual.transformer.width
            self._num_patches = patch_count(self.visual)
            self.visual.prune_intermediate_layers([n_blocks - 2], prune_norm=True, prune_head=True)
        else:
            raise TypeError(f"PatchEncoder needs a ViT image tower, got {type(visual).__name__}")
        if n_blocks < 2:
            raise ValueError("the image tower needs at least 2 blocks to have a penultimate one")
        self._index = n_blocks - 2

    @property
    def num_patches(self) -> int:
        return self._num_patches

    @property
    def width(self) -> int:
        return self._width

    def blank(self) -> Tensor:
        """One all-zero image of the size the tower takes: (1, 3, H, W)."""
        trunk = getattr(self.visual, "trunk", None)
        size = trunk.patch_embed.img_size if trunk is not None else self.visual.image_size
        p = next(self.parameters())
        return torch.zeros(1, 3, *size, device=p.device, dtype=p.dtype)

    def freeze(self) -> PatchEncoder:
        """No gradients, eval mode, and it stays in eval mode under `.train()`."""
        self.requires_grad_(False)
        self.frozen = True
        return self.eval()

    def train(self, mode: bool = True) -> PatchEncoder:
        return super().train(mode and not self.frozen)

    def forward(self, images: Tensor) -> Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.visual.forward_intermediates(
                images, indices=[self._index], stop_early=True, intermediates_only=True, output_fmt="NLC"
            )
        return out["image_intermediates"][0]


def clip_siglip_loss(model: nn.Module, images: Tensor, text_ids: Tensor) -> Tensor:
    """open_clip's SigLipLoss of a SigLIP-style CLIP on one batch of matching (image, text) pairs.

    The loss is local to this process's batch (no negatives exchanged across ranks).
    """
    context_length = getattr(model, "context_length", None)
    if context_length is not None and text_ids.shape[1] != context_length:
        raise ValueError(f"text_ids have length {text_ids.shape[1]}, the text tower expects {context_length}")
    out = model(image=images, text=text_ids)
    if isinstance(out, dict):
        feats = out["image_features"], out["text_features"], out["logit_scale"], out.get("logit_bias")
    else:
        feats = (*out, None) if len(out) == 3 else tuple(out)
    if feats[3] is None:
        raise ValueError("clip_siglip_loss needs a model with a logit_bias (init_logit_bias in its config)")
    return SigLipLoss()(*feats)
