"""Generative models on 8x8 digits: a VAE, an anomaly-detecting autoencoder and a GAN generator."""

from __future__ import annotations

import copy
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from ...data import tasks
from ..registry import ModelSpec, register
from ._common import factory, gen


class VAE(nn.Module):
    """Dense VAE. Outputs (reconstruction, mu, logvar).

    In train mode the decoder sees ``z = mu + eps * std``; in eval mode it decodes ``mu``, so
    inference (and every exported artifact) is deterministic.
    """

    OUTPUT_LAYERS = ("head", "fc_mu", "fc_logvar")

    def __init__(self, latent_dim: int = 8, hidden: int = 128) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU())
        self.fc_mu = nn.Linear(hidden, latent_dim)
        self.fc_logvar = nn.Linear(hidden, latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 64)

    def forward(self, image: torch.Tensor):
        h = self.encoder(image)
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        recon = torch.sigmoid(self.head(self.decoder(z))).reshape(-1, 1, 8, 8)
        return recon, mu, logvar


class AnomalyAutoencoder(nn.Module):
    """Dense autoencoder. Outputs (reconstruction, anomaly_score).

    ``anomaly_score`` is each sample's mean squared reconstruction error, computed inside the
    model so a device gets the score directly.
    """

    OUTPUT_LAYERS = ("head",)

    def __init__(self, bottleneck: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, bottleneck), nn.ReLU()
        )
        self.decoder = nn.Sequential(nn.Linear(bottleneck, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 64)

    def forward(self, image: torch.Tensor):
        recon = torch.sigmoid(self.head(self.decoder(self.encoder(image)))).reshape(-1, 1, 8, 8)
        score = (recon - image).pow(2).mean(dim=(1, 2, 3))
        return recon, score


class Generator(nn.Module):
    """Noise z (N, z_dim) -> 8x8 image in [0, 1]. The deployable half of the GAN."""

    OUTPUT_LAYERS = ("head",)

    def __init__(self, z_dim: int = tasks.Z_DIM, hidden: int = 128) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 2 * hidden), nn.LeakyReLU(0.2),
        )
        self.head = nn.Linear(2 * hidden, 64)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.body(z))).reshape(-1, 1, 8, 8)


class Discriminator(nn.Module):
    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 2 * hidden), nn.LeakyReLU(0.2), nn.Dropout(0.3),
            nn.Linear(2 * hidden, hidden), nn.LeakyReLU(0.2), nn.Dropout(0.3),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def _score(model: nn.Module, split, task) -> float:
    """The task's metric of the generator (in eval mode, batches of 256) on ``split``."""
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(split.inputs[0][i : i + 256]) for i in range(0, len(split), 256)])
    model.train()
    return float(task.score([out.numpy()], split.targets.numpy(),
                            [t.numpy() for t in split.inputs]))


def fit_gan(model, task, *, epochs=None, batch_size=64, lr=None, seed=0, progress=True,
            teacher=None, distill_weight=0.5, **_):
    """Adversarial training (non-saturating GAN loss) plus the task's MMD loss on the generator.

    A fresh discriminator is built here and thrown away; only the generator is kept. With a
    ``teacher`` generator, ``distill_weight * MSE(G(z), teacher(z))`` joins the generator loss.
    The generator with the best validation chamfer MSE is restored at the end.
    """
    from tqdm.auto import tqdm

    epochs = GAN_EPOCHS if epochs is None else int(epochs)
    lr = 2e-3 if lr is None else lr
    torch.manual_seed(seed)
    disc = Discriminator()
    opt_g = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
    real_all = task.train.targets
    n = len(real_all)
    g = torch.Generator().manual_seed(seed)
    z_dim = task.train.inputs[0].shape[1]
    if teacher is not None:
        teacher.eval()
    history = {"loss": [], "val": [], "metric": task.metric, "best_epoch": -1,
               "best_val": None, "seconds": 0.0}
    best_state, start = None, time.perf_counter()
    bar = tqdm(range(epochs), desc="gan", unit="epoch", file=sys.stderr, disable=not progress,
               leave=False)
    for epoch in bar:
        model.train()
        disc.train()
        perm = torch.randperm(n, generator=g)
        total, count = 0.0, 0
        for i in range(0, n, batch_size):
            real = real_all[perm[i : i + batch_size]]
            b = len(real)
            z = torch.randn(b, z_dim, generator=g)
            fake = model(z)
            d_loss = F.binary_cross_entropy_with_logits(
                disc(real), torch.full((b,), 0.9)
            ) + F.binary_cross_entropy_with_logits(disc(fake.detach()), torch.zeros(b))
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            g_loss = F.binary_cross_entropy_with_logits(disc(fake), torch.ones(b))
            g_loss = g_loss + task.loss(fake, real, (z,))
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(z)
                g_loss = (1 - distill_weight) * g_loss + distill_weight * F.mse_loss(fake, t_out)
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            total += float(g_loss.detach()) * b
            count += b
        val = _score(model, task.val, task)
        history["loss"].append(total / count)
        history["val"].append(val)
        if history["best_val"] is None or val < history["best_val"]:
            history["best_val"], history["best_epoch"] = val, epoch
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{total / count:.4f}", val=f"{val:.4f}")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history["seconds"] = time.perf_counter() - start
    return history


GAN_EPOCHS = 100


def _ex_image(batch: int) -> tuple[torch.Tensor, ...]:
    return (torch.rand(batch, 1, 8, 8, generator=gen(0)),)


def _ex_noise(batch: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, tasks.Z_DIM, generator=gen(0)),)


register(ModelSpec(
    name="vae", family="generative",
    description="variational autoencoder on 8x8 digits (decodes the mean in eval mode)",
    factory=factory(VAE, "vae"), task=tasks.vae,
    input_names=("image",), output_names=("reconstruction", "mu", "logvar"),
    example_inputs=_ex_image, default_epochs=40, tags=("generative", "reconstruction"),
))
register(ModelSpec(
    name="autoencoder", family="generative",
    description="autoencoder anomaly detector: trained on digits 0-4, flags 5-9",
    factory=factory(AnomalyAutoencoder, "autoencoder"), task=tasks.anomaly,
    input_names=("image",), output_names=("reconstruction", "anomaly_score"),
    example_inputs=_ex_image, default_epochs=40, tags=("generative", "anomaly"),
))
register(ModelSpec(
    name="gan", family="generative",
    description="GAN generator: noise vector (16) -> 8x8 digit",
    factory=factory(Generator, "gan"), task=tasks.gan,
    input_names=("z",), output_names=("image",), example_inputs=_ex_noise,
    fit=fit_gan, default_epochs=GAN_EPOCHS, tags=("generative", "generation"),
))
