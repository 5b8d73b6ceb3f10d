"""Multimodal models: image + text question, image + spoken digit, and a joint embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...data import tasks
from ...data.speech import FRAMES, MELS
from ..registry import ModelSpec, register
from ._common import factory, gen


class ImageEncoder(nn.Module):
    """(N, 1, 8, 8) -> (N, dim): two conv/pool stages, flatten, dense."""

    def __init__(self, dim: int = 64, channels: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.proj = nn.Linear(2 * channels * 2 * 2, dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(image).flatten(1))


class TextEncoder(nn.Module):
    """(N, L) int64 word ids -> (N, dim): embedding, flatten (position-aware), dense."""

    def __init__(self, dim: int = 64, vocab_size: int = len(tasks.TEXT_VOCAB),
                 seq_len: int = tasks.TEXT_LEN, embed_dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.proj = nn.Linear(seq_len * embed_dim, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(ids).flatten(1))


class AudioEncoder(nn.Module):
    """(N, frames, mels) log-mel -> (N, dim): two 1-D convs over time, mean over time, dense."""

    def __init__(self, dim: int = 64, mels: int = MELS, channels: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(mels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU(),
        )
        self.proj = nn.Linear(channels, dim)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.features(audio.transpose(1, 2))  # (N, channels, frames)
        return self.proj(x.mean(dim=2))


class _PairClassifier(nn.Module):
    """Fuse two (N, D) vectors as [a, b, a*b] -> dense -> ReLU -> head."""

    OUTPUT_LAYERS = ("head",)

    def _fuse(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fuse(torch.cat([a, b, a * b], dim=1))))


class ImageTextClassifier(_PairClassifier):
    """Image + tokenised yes/no question ("is this a seven") -> 2 logits (no, yes)."""

    def __init__(self, num_classes: int = 2, dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.image_encoder = ImageEncoder(dim)
        self.text_encoder = TextEncoder(dim)
        self.fuse = nn.Linear(3 * dim, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self._fuse(self.image_encoder(image), self.text_encoder(text))


class ImageAudioClassifier(_PairClassifier):
    """Image + spoken digit (log-mel) -> 2 logits (no match, match)."""

    def __init__(self, num_classes: int = 2, dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.image_encoder = ImageEncoder(dim)
        self.audio_encoder = AudioEncoder(dim)
        self.fuse = nn.Linear(3 * dim, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return self._fuse(self.image_encoder(image), self.audio_encoder(audio))


class ImageAudioEmbedding(nn.Module):
    """CLIP-like: image and speech encoders, each projected and L2-normalised into one space."""

    OUTPUT_LAYERS = ("image_head", "audio_head")

    def __init__(self, embed_dim: int = 32, dim: int = 64) -> None:
        super().__init__()
        self.image_encoder = ImageEncoder(dim)
        self.audio_encoder = AudioEncoder(dim)
        self.image_head = nn.Linear(dim, embed_dim)
        self.audio_head = nn.Linear(dim, embed_dim)

    def forward(self, image: torch.Tensor, audio: torch.Tensor):
        a = F.normalize(self.image_head(self.image_encoder(image)), dim=1)
        b = F.normalize(self.audio_head(self.audio_encoder(audio)), dim=1)
        return a, b


def _ex_image_text(batch: int) -> tuple[torch.Tensor, ...]:
    g = gen(0)
    image = torch.rand(batch, 1, 8, 8, generator=g)
    digits = torch.randint(0, 10, (batch,), generator=g).tolist()
    text = torch.tensor([tasks.tokenize(f"is this a {tasks.DIGIT_WORDS[d]}") for d in digits],
                        dtype=torch.int64)
    return image, text


def _ex_image_audio(batch: int) -> tuple[torch.Tensor, ...]:
    g = gen(0)
    return torch.rand(batch, 1, 8, 8, generator=g), torch.randn(batch, FRAMES, MELS, generator=g)


register(ModelSpec(
    name="image_text", family="fusion",
    description="visual question answering: digit image + yes/no question",
    factory=factory(ImageTextClassifier, "image_text"), task=tasks.image_text,
    input_names=("image", "text"), output_names=("logits",), example_inputs=_ex_image_text,
    default_epochs=30, tags=("classification", "multimodal", "vision", "text"),
))
register(ModelSpec(
    name="image_audio", family="fusion",
    description="does the spoken digit match the image (image + log-mel audio)",
    factory=factory(ImageAudioClassifier, "image_audio"), task=tasks.image_audio,
    input_names=("image", "audio"), output_names=("logits",), example_inputs=_ex_image_audio,
    default_epochs=15, tags=("classification", "multimodal", "vision", "audio"),
))
register(ModelSpec(
    name="embedding", family="fusion",
    description="CLIP-like joint embedding of digit images and spoken digits",
    factory=factory(ImageAudioEmbedding, "embedding"), task=tasks.embedding,
    input_names=("image", "audio"), output_names=("image_embedding", "audio_embedding"),
    example_inputs=_ex_image_audio, default_epochs=20,
    tags=("embedding", "multimodal", "vision", "audio"),
))
