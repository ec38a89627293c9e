"""Deterministic forecasters of the next ``T_out`` frames from ``T_in``, split where BeamVQ puts its code bank:

    z = model.encode(x)            # x [B, T_in, C, H, W] -> latent state z [B, D, *positions]
    y = model.decode(z, x)         # translator + decoder -> [B, T_out, C, H, W]
    y = model(x)                   # decode(encode(x), x): the backbone alone

Two families, both with circular padding (the fields are periodic):

- :class:`SimVP` (Gao et al. 2022): a per-frame strided-conv encoder to ``H/4 × W/4``, a translator of
  Inception-style grouped convolutions over the frames stacked as channels, a per-frame transposed-conv decoder with
  SimVP's skip from the first encoder layer (of the last input frame, so ``T_out`` may differ from ``T_in``). The latent state is the encoder's output, one ``D``-vector per frame
  and position.
- :class:`FNO` (Li et al. 2021): a pointwise lift of the stacked input frames and the coordinates, then Fourier
  layers (spectral convolution over the lowest modes plus a pointwise path), then a pointwise projection to the
  output frames. The encoder is the lift and the first Fourier layer (a non-local state, not the raw input); the
  translator the remaining layers.

``decode`` receives the input too, for SimVP's skip; FNO ignores it. Sizes come from :data:`PRESETS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FrameShape:
    """What a forecaster reads and writes."""

    t_in: int
    t_out: int
    channels: int
    size: int  # H = W


class Forecaster(nn.Module):
    """Base of the backbones: ``encode`` to a latent state ``[B, latent_dim, *positions]``, ``decode`` from it."""

    latent_dim: int

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x)


def _conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, padding_mode="circular")


class ConvNormAct(nn.Sequential):
    """conv → GroupNorm → LeakyReLU(0.2), SimVP's basic block."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(_conv(c_in, c_out, kernel, stride, groups), nn.GroupNorm(min(4, c_out), c_out),
                         nn.LeakyReLU(0.2))


class UpNormAct(nn.Sequential):
    """×2 transposed conv → GroupNorm → LeakyReLU(0.2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.GroupNorm(min(4, c_out), c_out),
                         nn.LeakyReLU(0.2))


class Inception(nn.Module):
    """SimVP's translator block: a 1×1 bottleneck, then grouped convolutions of several kernel sizes, summed."""

    def __init__(self, c_in: int, c_hidden: int, c_out: int, kernels: tuple[int, ...] = (3, 5), groups: int = 4):
        super().__init__()
        self.reduce = nn.Conv2d(c_in, c_hidden, 1)
        self.branches = nn.ModuleList(ConvNormAct(c_hidden, c_out, k, groups=groups) for k in kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.reduce(x)
        return sum(branch(h) for branch in self.branches)


class SimVP(Forecaster):
    """Encoder (per frame) → translator (frames as channels) → decoder (per frame), SimVP-style.

    Full-resolution layers are ``stem`` wide and the two coarser levels ``hidden`` wide: on a CPU the full-resolution
    convolutions dominate the cost."""

    def __init__(self, shape: FrameShape, stem: int = 16, hidden: int = 32, latent_dim: int = 16,
                 translator_hidden: int = 64, translator_blocks: int = 2) -> None:
        super().__init__()
        if shape.size % 4:
            raise ValueError(f"SimVP downsamples by 4: the grid size must be a multiple of 4, got {shape.size}")
        self.shape, self.latent_dim = shape, latent_dim
        self.stem = ConvNormAct(shape.channels, stem)
        self.down = nn.Sequential(ConvNormAct(stem, hidden, stride=2), ConvNormAct(hidden, hidden, stride=2))
        self.to_latent = nn.Conv2d(hidden, latent_dim, 1)
        c_in, c_out = shape.t_in * latent_dim, shape.t_out * hidden
        blocks = [Inception(c_in, translator_hidden // 2, translator_hidden)]
        blocks += [Inception(translator_hidden, translator_hidden // 2, translator_hidden)
                   for _ in range(translator_blocks - 1)]
        self.translator = nn.Sequential(*blocks, nn.Conv2d(translator_hidden, c_out, 1))
        self.up = nn.Sequential(UpNormAct(hidden, hidden), UpNormAct(hidden, stem))
        self.readout = nn.Sequential(nn.Conv2d(2 * stem, stem, 1), nn.GroupNorm(min(4, stem), stem), nn.LeakyReLU(0.2),
                                     nn.Conv2d(stem, shape.channels, 1))

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = x.shape
        return x.reshape(b * t, c, h, w)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        z = self.to_latent(self.down(self.stem(self._frames(x))))  # [B·T, D, H/4, W/4]
        return z.reshape(b, t, *z.shape[1:]).transpose(1, 2)  # [B, D, T, H/4, W/4]

    def decode(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = self.shape
        b, d, t, h, w = z.shape
        hid = self.translator(z.transpose(1, 2).reshape(b, t * d, h, w))  # [B, T_out·hidden, h, w]
        hid = self.up(hid.reshape(b * s.t_out, -1, h, w))  # [B·T_out, stem, H, W]
        skip = self.stem(x[:, -1]).repeat_interleave(s.t_out, dim=0)  # the last input frame's features
        y = self.readout(torch.cat([hid, skip], dim=1))  # [B·T_out, C, H, W]
        return y.reshape(b, s.t_out, s.channels, s.size, s.size)


class SpectralConv(nn.Module):
    """``F⁻¹(R · F(v))`` over the lowest ``modes`` Fourier modes in each direction (both signs along y).

    The complex weights are kept as real pairs (``[..., 2]``): a parameter store of real numbers (PSParameters)
    would otherwise drop their imaginary parts."""

    def __init__(self, width: int, modes: int) -> None:
        super().__init__()
        self.modes = modes
        scale = 1.0 / (width * width)
        self.weight = nn.Parameter(scale * torch.rand(2, width, width, modes, modes, 2))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        b, c, h, w = v.shape
        m = self.modes
        weight = torch.view_as_complex(self.weight)
        spec = torch.fft.rfft2(v)
        out = torch.zeros(b, c, h, w // 2 + 1, dtype=spec.dtype)
        out[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", spec[:, :, :m, :m], weight[0])
        out[:, :, -m:, :m] = torch.einsum("bixy,ioxy->boxy", spec[:, :, -m:, :m], weight[1])
        return torch.fft.irfft2(out, s=(h, w))


class FourierLayer(nn.Module):
    """``σ(K v + W v)``: a spectral convolution plus a pointwise linear path."""

    def __init__(self, width: int, modes: int, activate: bool = True) -> None:
        super().__init__()
        self.spectral, self.pointwise = SpectralConv(width, modes), nn.Conv2d(width, width, 1)
        self.act = nn.GELU() if activate else nn.Identity()

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.act(self.spectral(v) + self.pointwise(v))


class FNO(Forecaster):
    """Lift → Fourier layers → projection, over the stacked input frames and the (x, y) coordinates."""

    def __init__(self, shape: FrameShape, width: int = 32, modes: int = 10, layers: int = 4) -> None:
        super().__init__()
        if modes > shape.size // 2:
            raise ValueError(f"FNO modes {modes} exceed half the grid size {shape.size}")
        if layers < 2:
            raise ValueError(f"FNO needs >= 2 Fourier layers (one encodes, the rest translate), got {layers}")
        self.shape, self.latent_dim = shape, width
        self.lift = nn.Conv2d(shape.t_in * shape.channels + 2, width, 1)
        self.first = FourierLayer(width, modes)
        self.layers = nn.Sequential(*(FourierLayer(width, modes, activate=i < layers - 2) for i in range(layers - 1)))
        self.project = nn.Sequential(nn.Conv2d(width, 4 * width, 1), nn.GELU(),
                                     nn.Conv2d(4 * width, shape.t_out * shape.channels, 1))
        coords = (torch.arange(shape.size, dtype=torch.float32) + 0.5) / shape.size
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        self.register_buffer("coords", torch.stack([xx, yy])[None], persistent=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = x.shape
        stacked = torch.cat([x.reshape(b, t * c, h, w), self.coords.expand(b, -1, -1, -1)], dim=1)
        return self.first(self.lift(stacked))  # [B, width, H, W]

    def decode(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = self.shape
        y = self.project(self.layers(z))  # [B, T_out·C, H, W]
        return y.reshape(z.shape[0], s.t_out, s.channels, s.size, s.size)


#: backbone name -> (class, keyword sizes); small enough for a 2-core CPU at 32×32
PRESETS: dict[str, tuple[type[Forecaster], dict[str, int]]] = {
    "simvp": (SimVP, {"stem": 16, "hidden": 32, "latent_dim": 16, "translator_hidden": 64, "translator_blocks": 2}),
    "fno": (FNO, {"width": 16, "modes": 8, "layers": 4}),
}


def build_backbone(name: str, shape: FrameShape, **overrides: int) -> Forecaster:
    """The preset ``name`` (:data:`PRESETS`) for ``shape``, with size ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"backbone {name!r} is not one of {sorted(PRESETS)}")
    cls, sizes = PRESETS[name]
    try:
        return cls(shape, **{**sizes, **overrides})
    except TypeError as exc:
        raise ValueError(f"backbone {name!r}: {exc}; its sizes are {sorted(sizes)}") from None


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
