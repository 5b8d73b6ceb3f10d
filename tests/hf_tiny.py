"""Tiny random-config Hugging Face models the tests share (``transformers`` required)."""

from __future__ import annotations

import torch
from torch import nn


class Gpt2(nn.Module):
    """GPT-2 (two layers, 32 wide, vocabulary 100) returning its logits, seed 0."""

    def __init__(self) -> None:
        import transformers

        super().__init__()
        torch.manual_seed(0)
        config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                                         n_positions=64)
        self.lm = transformers.GPT2LMHeadModel(config)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(ids).logits


def token_ids(seed: int, n: int = 12) -> torch.Tensor:
    """One row of ``n`` token ids in the vocabulary."""
    return torch.randint(0, 100, (1, n), generator=torch.Generator().manual_seed(seed))


class Phi(nn.Module):
    """Phi (two layers, 32 wide, partial rotary embedding) returning its logits, seed 0."""

    def __init__(self) -> None:
        import transformers

        super().__init__()
        torch.manual_seed(0)
        config = transformers.PhiConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=64,
                                        max_position_embeddings=64)
        self.lm = transformers.PhiForCausalLM(config)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(ids).logits


class Deit(nn.Module):
    """DeiT (two layers, 32 wide, 32x32 images in 8x8 patches, 5 classes) returning its
    logits, seed 0: its class and distillation tokens start at zero, so their values in the
    residual stream are far smaller than the patches'."""

    def __init__(self) -> None:
        import transformers

        super().__init__()
        torch.manual_seed(0)
        config = transformers.DeiTConfig(image_size=32, patch_size=8, hidden_size=32,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, num_labels=5)
        self.vit = transformers.DeiTForImageClassification(config)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vit(pixels).logits


class Dinov2(nn.Module):
    """DINOv2 (two layers, 32 wide, 32x32 images in 8x8 patches) returning its pooled output
    (the class token after the last norm), seed 0."""

    def __init__(self) -> None:
        import transformers

        super().__init__()
        torch.manual_seed(0)
        config = transformers.Dinov2Config(image_size=32, patch_size=8, hidden_size=32,
                                           num_hidden_layers=2, num_attention_heads=4,
                                           mlp_ratio=2)
        self.vit = transformers.Dinov2Model(config)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vit(pixels).pooler_output
