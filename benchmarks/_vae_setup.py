"""The VAE benchmark's data, networks and training steps (`vae.py` runs the comparisons).

The 784-200-200-50 MLP VAE of Burda et al. three ways: vitorch's ``VAE.mlp``, the same
model written by hand (`HandVAE`, `hand_loss`), Pyro's and pythae's; one step builder
per contestant, each running ``inner`` training steps on the same minibatches
(`Batches`); whole-loop runners for ``vt.fit`` and pythae's trainer; and the helpers
that start two models from the same weights. `vae.py`'s docstring gives the settings.

References:
    Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016).
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn
from torch.nn import functional as F

import vitorch as vt
from vitorch.data import FASHION_MNIST_DIR, digits, fashion_mnist
from vitorch.models import vae

LATENT, HIDDEN, BATCH, LR = 50, (200, 200), 128, 1e-3


def load(quick: bool):
    if os.path.isdir(FASHION_MNIST_DIR):
        train = fashion_mnist("train", binarize="fixed", dtype=torch.float32)
        test = fashion_mnist("test", binarize="fixed", dtype=torch.float32)
        name = "fashion-mnist"
    else:
        train = digits("train", binarize="fixed", dtype=torch.float32)
        test = digits("test", binarize="fixed", dtype=torch.float32)
        name = "digits"
    n = 2048 if quick else len(train)
    return name, train.images[:n], test.images


class Batches:
    """The same cyclic sequence of minibatches for every contestant."""

    def __init__(self, x: torch.Tensor, seed: int = 0):
        self.x = x
        self.order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
        self.i = 0

    def __call__(self) -> torch.Tensor:
        if self.i + BATCH > self.x.shape[0]:
            self.i = 0
        idx = self.order[self.i : self.i + BATCH]
        self.i += BATCH
        return self.x[idx]


class HandVAE(nn.Module):
    """The same networks as ``vae.VAE.mlp`` (encoder head ``[loc, raw scale]``, decoder logits),
    with torch's own ``nn.Tanh``: the model as a torch user writes it."""

    def __init__(self, d: int):
        super().__init__()
        self.enc = vae.mlp(d, HIDDEN, 2 * LATENT, nn.Tanh)
        self.dec = vae.mlp(LATENT, HIDDEN[::-1], d, nn.Tanh)

    def guide(self, x):
        loc, raw = self.enc(x).chunk(2, -1)
        return loc, F.softplus(raw) + 1e-4


HALF_LOG_2PI = 0.5 * LATENT * math.log(2 * math.pi)


def hand_loss(net: HandVAE, x: torch.Tensor, K: int) -> torch.Tensor:
    """The negative ELBO (K = 1) or IWAE bound written directly in torch, averaged over the batch."""
    loc, scale = net.guide(x)
    eps = torch.randn(K, *loc.shape)
    z = loc + scale * eps
    logits = net.dec(z)
    log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    log_p = log_lik - 0.5 * z.pow(2).sum(-1) - HALF_LOG_2PI
    log_q = -0.5 * eps.pow(2).sum(-1) - scale.log().sum(-1) - HALF_LOG_2PI
    log_w = log_p - log_q
    bound = log_w.mean(0) if K == 1 else torch.logsumexp(log_w, 0) - math.log(K)
    return -bound.mean()


class HandLoss(nn.Module):
    """`hand_loss` as a module, ``forward(x) -> scalar``: the hand-written step as `compile_step` compiles it."""

    def __init__(self, net: HandVAE, K: int):
        super().__init__()
        self.net, self.K = net, K

    def forward(self, x):
        return hand_loss(self.net, x, self.K)


def torch_step(net: HandVAE, batches: Batches, K: int, kind: str):
    """One training step written directly in torch, the way a careful user would."""
    opt = torch.optim.Adam(net.parameters(), LR)
    enc, dec = list(net.enc.parameters()), list(net.dec.parameters())
    half_log_2pi = HALF_LOG_2PI

    def step():
        x = batches()
        opt.zero_grad(set_to_none=True)
        if kind != "dreg":
            hand_loss(net, x, K).backward()
            opt.step()
            return
        loc, scale = net.guide(x)
        z = loc + scale * torch.randn(K, *loc.shape)
        logits = net.dec(z)
        log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_p = log_lik - 0.5 * z.pow(2).sum(-1) - half_log_2pi
        # DReG: log q at stopped parameters; encoder on w~^2, decoder on w~
        log_q = (-0.5 * ((z - loc.detach()) / scale.detach()).pow(2) - scale.detach().log()).sum(-1)
        log_w = log_p - log_q + half_log_2pi
        w = torch.softmax(log_w.detach(), 0)
        g_enc = torch.autograd.grad(-(w.pow(2) * log_w).sum(0).mean(), enc, retain_graph=True)
        g_dec = torch.autograd.grad(-(w * log_w).sum(0).mean(), dec)
        for p, g in zip(enc + dec, g_enc + g_dec):
            p.grad = g
        opt.step()

    return step


def vitorch_step(model: vae.VAE, batches: Batches, forward=None, fused: bool = False):
    """A vitorch training step; ``fused=True`` takes the optimizer ``vt.fit`` builds by default
    (``vitorch.training.fused_adam``), else torch's default Adam, the peers' optimizer."""
    from vitorch.training import fused_adam

    opt = fused_adam(model.parameters(), LR) if fused else torch.optim.Adam(model.parameters(), LR)
    forward = model if forward is None else forward

    def step():
        x = batches()
        opt.zero_grad(set_to_none=True)
        forward(x).loss.backward()
        opt.step()

    return step


def pyro_step(pyro, d: int, batches: Batches, K: int):
    import pyro.distributions as dist
    from pyro.infer import SVI, RenyiELBO, Trace_ELBO

    pyro.clear_param_store()
    pyro.enable_validation(False)
    net = HandVAE(d)
    zeros, ones = torch.zeros(LATENT), torch.ones(LATENT)

    def model(x):
        pyro.module("dec", net.dec)
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(zeros, ones).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=net.dec(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", net.enc)
        with pyro.plate("data", x.shape[0], dim=-1):
            loc, scale = net.guide(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    elbo = Trace_ELBO() if K == 1 else RenyiELBO(alpha=0.0, num_particles=K, vectorize_particles=True)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), loss=elbo)

    def step():
        return svi.step(batches())

    step.net = net  # the trained networks, for the log-likelihood comparison
    return step, ("Trace_ELBO" if K == 1 else f"RenyiELBO(alpha=0, K={K})")


def pythae_model(d: int, K: int):
    """pythae's ``VAE`` (K = 1) or ``IWAE`` with the same networks as the others."""
    from pythae.models import IWAE, VAE, IWAEConfig, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = vae.mlp(d, HIDDEN, 2 * LATENT, nn.Tanh)

        def forward(self, x):
            loc, log_var = self.net(x).chunk(2, -1)
            return ModelOutput(embedding=loc, log_covariance=log_var)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = vae.mlp(LATENT, HIDDEN[::-1], d, nn.Tanh)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    if K == 1:
        model = VAE(VAEConfig(input_dim=(d,), latent_dim=LATENT, reconstruction_loss="bce"), Encoder(), Decoder())
    else:
        config = IWAEConfig(input_dim=(d,), latent_dim=LATENT, reconstruction_loss="bce", number_samples=K)
        model = IWAE(config, Encoder(), Decoder())
    return model, ("VAE" if K == 1 else f"IWAE(K={K})")


def pythae_step(d: int, batches: Batches, K: int):
    """A training step on pythae's model, without its trainer (the model's own cost)."""
    model, name = pythae_model(d, K)
    opt = torch.optim.Adam(model.parameters(), LR)

    def step():
        x = batches()
        opt.zero_grad(set_to_none=True)
        model({"data": x}).loss.backward()
        opt.step()

    return step, name


def pythae_trainer_epoch(d: int, x: torch.Tensor, K: int, tmp: str):
    """One epoch of pythae's ``BaseTrainer`` over ``x`` (its data set, loader and per-step bookkeeping)."""
    from pythae.data.datasets import BaseDataset
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    model, name = pythae_model(d, K)
    config = BaseTrainerConfig(
        output_dir=tmp, per_device_train_batch_size=BATCH, learning_rate=LR, num_epochs=1, no_cuda=True
    )
    trainer = BaseTrainer(model, BaseDataset(x, torch.zeros(x.shape[0])), training_config=config)
    trainer.prepare_training()  # optimizer, output folder and callbacks (its progress bar), as train() does
    return (lambda: trainer.train_step(0)), f"BaseTrainer({name})"


def fit_epoch(d: int, x: torch.Tensor, K: int):
    """The same epoch through ``vitorch.training.fit`` (shuffled DataLoader, history, finite checks, and a
    progress bar as pythae's trainer shows one)."""
    from vitorch.training import fit

    objective = vt.objectives.elbo if K == 1 else vt.objectives.iwae
    model = vae.VAE.mlp(x.shape[1], LATENT, HIDDEN, objective=objective, num_particles=K)
    steps = x.shape[0] // BATCH
    return lambda: fit(model, x, steps=steps, batch_size=BATCH, lr=LR, progress=True)


def repeat(step, n):
    def run():
        for _ in range(n):
            step()

    return run


def as_vae(net: HandVAE, d: int) -> vae.VAE:
    """Hand-written (or Pyro-trained) networks wrapped as a VAE, so one evaluator scores every contestant."""
    wrapped = vae.VAE(vae.GaussianEncoder(None, d, LATENT), net.dec, latent_dim=LATENT)
    wrapped.encoder.head.net = net.enc
    return wrapped


def same_start(model: vae.VAE, net: HandVAE) -> HandVAE:
    """Copy the vitorch model's initial weights into the hand-written (or Pyro) networks."""
    net.enc.load_state_dict(model.encoder.head.net.state_dict())
    net.dec.load_state_dict(model.decoder.net.state_dict())
    return net
