"""Low-rank factorisation of Linear and Conv2d layers into a few smaller layers of the same kinds.

* Linear, and 1x1 Conv2d: truncated SVD (Denton et al. 2014) into two layers.
* kxk Conv2d, Tucker-2 (Kim et al. 2016): HOSVD of the kernel on its output and input modes, giving
  1x1 conv (in -> r_in) -> kxk core conv (r_in -> r_out) -> 1x1 conv (r_out -> out).
* kxk Conv2d, spatial SVD (Jaderberg et al. 2014): the kernel as an (in*kh, out*kw) matrix, giving a
  (kh x 1) conv (in -> r) then a (1 x kw) conv (r -> out).

Every factor is a plain nn.Linear / nn.Conv2d inside a `FactorizedLinear` / `FactorizedConv2d`, an
nn.Sequential of the factors that keeps the replaced layer's face: what code around a layer reads
(`weight` as the product of the factors, computed on access, `bias`, `in_features`/`out_features` or
`in_channels`/`out_channels`, `kernel_size`, `stride`, `padding`, `dilation`, `groups`, `padding_mode`,
`dtype`, `device`). Its forward runs the factors (the cheap path); a model that calls
`F.linear(x, layer.weight, layer.bias)` itself (nn.MultiheadAttention's out_proj) gets the product. The later
stages (prune, share, quantize) act on each factor, and the state_dict holds the factors only (`<layer>.0.weight`,
...). `weight` is read-only: a model that writes a layer's weight cannot keep a factorised one.
Decompositions are computed in float64 on the CPU; the factors are float32 on the layer's device. Only the
last factor has a bias (the layer's own); the others have none, so at full rank the factorisation
reproduces the layer up to rounding (zero or reflect padding included).

`method` per layer kind (a fallback, never an error, since a search may pair any method with any layer):

=============  ===========  ==========  ==========  ==========
layer          auto         svd         tucker2     spatial
=============  ===========  ==========  ==========  ==========
Linear         SVD          SVD         SVD         SVD
Conv2d 1x1     SVD          SVD         SVD         SVD
Conv2d kxk     Tucker-2     Tucker-2    Tucker-2    spatial
=============  ===========  ==========  ==========  ==========

(spatial SVD of a 1x1 kernel is plain SVD, and Tucker-2 of one only adds a third layer.) Grouped
convolutions and other layer types are returned unchanged, as is any layer whose factors would hold as
many weights as it does or more (biases are not counted: the layer's bias moves to the last factor).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from autocomp.primitives.configs import LowRank
from autocomp.primitives.registry import handler

_RATIO_SLACK = 1e-9  # ceil(0.1 * 30) must be 3, not 4
_ENERGY_SLACK = 1e-12  # an energy met up to rounding (this, or 8 eps of the values' dtype) counts as met


def choose_rank(singular_values: torch.Tensor, rank_ratio: float, energy: float) -> int:
    """The rank to keep, given descending singular values: min(ceil(rank_ratio * full), energy rank), >= 1.

    full = the number of singular values; the energy rank is the smallest r whose top r singular values
    hold at least `energy` of the sum of squares (energy >= 1 asks for all of them).
    """
    s = torch.as_tensor(singular_values)
    slack = max(_ENERGY_SLACK, 8 * torch.finfo(s.dtype).eps) if s.is_floating_point() else _ENERGY_SLACK
    s = s.to(torch.float64).flatten()
    full = s.numel()
    by_ratio = math.ceil(rank_ratio * full - _RATIO_SLACK)
    by_energy = full
    squares = s.square()
    total = float(squares.sum())
    if energy < 1.0 and total > 0.0:
        kept = torch.cumsum(squares, 0) / total
        by_energy = int(torch.searchsorted(kept, torch.tensor([energy - slack], dtype=torch.float64)))
        by_energy += 1
    return max(1, min(by_ratio, by_energy, full))


# -- weights the factors hold (biases excluded: the layer's bias moves to the last factor unchanged) --------


def svd_weights(n_in: int, n_out: int, rank: int) -> int:
    """Weights of a rank-`rank` SVD factorisation of an n_in -> n_out layer."""
    return rank * (n_in + n_out)


def tucker2_weights(layer: nn.Conv2d, r_out: int, r_in: int) -> int:
    """Weights of the Tucker-2 factorisation of `layer` at ranks (r_out, r_in): two 1x1 convs and the core."""
    kh, kw = layer.kernel_size
    return layer.in_channels * r_in + r_in * r_out * kh * kw + r_out * layer.out_channels


def spatial_weights(layer: nn.Conv2d, rank: int) -> int:
    """Weights of the spatial SVD of `layer` at `rank`: a (kh x 1) and a (1 x kw) conv."""
    kh, kw = layer.kernel_size
    return layer.in_channels * kh * rank + rank * kw * layer.out_channels


def layer_weights(layer: nn.Linear | nn.Conv2d) -> int:
    """Weights of the layer as it is, to compare a factorisation against."""
    return layer.weight.numel()


# -- decompositions ---------------------------------------------------------------------------------------


def _core(part: nn.Module) -> nn.Module:
    """The Linear/Conv2d inside a factor (a later stage may have wrapped it, e.g. activation quantization)."""
    return next(m for m in part.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def compose_kernels(weights: list[torch.Tensor]) -> torch.Tensor:
    """The one kernel that a chain of factor kernels applies, first factor first.

    Each kernel is (out, in[, kh, kw]); of two consecutive ones, at most one is wider than 1 in each spatial
    dimension (1x1, kx1 then 1xk, ...), so the chain is one (out, in, kh, kw) kernel (a matrix for Linear).
    """
    matrix = weights[0].dim() == 2
    total = weights[0] if not matrix else weights[0][:, :, None, None]
    for nxt in weights[1:]:
        nxt = nxt if not matrix else nxt[:, :, None, None]
        (o, _, a, b), (_, i, c, d) = nxt.shape, total.shape
        total = torch.einsum("orab,ricd->oiacbd", nxt, total).reshape(o, i, a * c, b * d)
    return total[:, :, 0, 0] if matrix else total


class _Factorized(nn.Sequential):
    """Factors run in order (nn.Sequential), with the replaced layer's weight, bias, dtype and device."""

    def __getitem__(self, idx):  # noqa: D105
        if isinstance(idx, slice):  # a few factors are not the layer: a plain Sequential of them
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    @property
    def weight(self) -> torch.Tensor:
        """The product of the factors' weights: the layer these factors stand for (computed on each access)."""
        return compose_kernels([_core(part).weight for part in self])

    @property
    def bias(self) -> torch.Tensor | None:
        """The layer's bias (the last factor holds it)."""
        return _core(self[-1]).bias

    @property
    def dtype(self) -> torch.dtype:
        """The factors' dtype."""
        return _core(self[0]).weight.dtype

    @property
    def device(self) -> torch.device:
        """The factors' device."""
        return _core(self[0]).weight.device


class FactorizedLinear(_Factorized):
    """A Linear layer as two Linear factors (x -> x A^T -> x A^T B^T + b), keeping nn.Linear's face."""

    @property
    def in_features(self) -> int:
        """Input features (the first factor's)."""
        return _core(self[0]).in_features

    @property
    def out_features(self) -> int:
        """Output features (the last factor's)."""
        return _core(self[-1]).out_features


class FactorizedConv2d(_Factorized):
    """A Conv2d layer as 1x1 / kx1 / 1xk / kxk factors, keeping nn.Conv2d's face (the layer's own geometry)."""

    def __init__(self, layer: nn.Conv2d, *factors: nn.Module) -> None:
        """The factors of `layer`, which lend its geometry (kernel size, stride, padding, dilation)."""
        super().__init__(*factors)
        self.kernel_size = tuple(layer.kernel_size)
        self.stride = tuple(layer.stride)
        self.padding = layer.padding
        self.dilation = tuple(layer.dilation)
        self.padding_mode = layer.padding_mode
        self.groups = 1
        self.transposed = False
        self.output_padding = (0, 0)

    @property
    def in_channels(self) -> int:
        """Input channels (the first factor's)."""
        return _core(self[0]).in_channels

    @property
    def out_channels(self) -> int:
        """Output channels (the last factor's)."""
        return _core(self[-1]).out_channels


def _factorized(layer: nn.Module, *factors: nn.Module) -> FactorizedLinear | FactorizedConv2d:
    if isinstance(layer, nn.Conv2d):
        return FactorizedConv2d(layer, *factors)
    return FactorizedLinear(*factors)


def _weight64(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().to(device="cpu", dtype=torch.float64)


def _svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.linalg.svd(matrix, full_matrices=False)


def _new(cls: type[nn.Module], layer: nn.Module, *args, **kwargs) -> nn.Module:
    """A float32 module on `layer`'s device, its parameters left uninitialised (they are filled next)."""
    return nn.utils.skip_init(cls, *args, device=layer.weight.device, dtype=torch.float32, **kwargs)


def _fill(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    with torch.no_grad():
        module.weight.copy_(weight.reshape(module.weight.shape))
        if bias is not None:
            module.bias.copy_(bias.detach())


def _balanced(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U sqrt(S), sqrt(S) V^T) truncated to `rank`: the singular values split evenly between the two factors.

    So neither has a much wider range than the other (which keeps both quantization-friendly).
    """
    root = s[:rank].sqrt()
    return u[:, :rank] * root[None, :], root[:, None] * vh[:rank]


def _svd_factors(layer: nn.Module, matrix: torch.Tensor, rank: int, svd=None) -> _Factorized:
    u, s, vh = svd if svd is not None else _svd(matrix)
    rank = min(rank, s.numel())
    second_w, first_w = _balanced(u, s, vh, rank)
    n_out, n_in = matrix.shape
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first = _new(nn.Linear, layer, n_in, rank, bias=False)
        second = _new(nn.Linear, layer, rank, n_out, bias=has_bias)
    else:  # 1x1 conv: the first factor keeps the stride and padding, the second is pointwise
        first = _new(nn.Conv2d, layer, n_in, rank, 1, stride=layer.stride, padding=layer.padding,
                     dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode)
        second = _new(nn.Conv2d, layer, rank, n_out, 1, bias=has_bias)
    _fill(first, first_w)
    _fill(second, second_w, layer.bias)
    return _factorized(layer, first, second)


def factorize_linear(layer: nn.Linear | nn.Conv2d, rank: int) -> _Factorized:
    """W ~= B @ A with A = sqrt(S) V^T (rank x in, no bias) and B = U sqrt(S) (out x rank, with W's bias).

    Also takes a 1x1 Conv2d (groups 1), giving two 1x1 convs. `rank` is capped at min(in, out).
    """
    weight = _weight64(layer)
    return _svd_factors(layer, weight.reshape(weight.shape[0], weight.shape[1]), rank)


def _tucker2_modes(weight: torch.Tensor) -> tuple[tuple, tuple]:
    """SVDs of the (out, in*kh*kw) and (in, out*kh*kw) unfoldings of an (out, in, kh, kw) kernel."""
    out_unfold = weight.reshape(weight.shape[0], -1)
    in_unfold = weight.transpose(0, 1).reshape(weight.shape[1], -1)
    return _svd(out_unfold), _svd(in_unfold)


def _tucker2_build(layer: nn.Conv2d, weight: torch.Tensor, u_out: torch.Tensor, u_in: torch.Tensor,
                   r_out: int, r_in: int) -> FactorizedConv2d:
    r_out, r_in = min(r_out, u_out.shape[1]), min(r_in, u_in.shape[1])
    a_out, a_in = u_out[:, :r_out], u_in[:, :r_in]  # (out, r_out), (in, r_in), orthonormal columns
    core = torch.einsum("oihw,or,is->rshw", weight, a_out, a_in)  # W x_0 U_out^T x_1 U_in^T
    kh, kw = layer.kernel_size
    first = _new(nn.Conv2d, layer, layer.in_channels, r_in, 1, bias=False)
    middle = _new(nn.Conv2d, layer, r_in, r_out, (kh, kw), stride=layer.stride, padding=layer.padding,
                  dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode)
    last = _new(nn.Conv2d, layer, r_out, layer.out_channels, 1, bias=layer.bias is not None)
    _fill(first, a_in.T)
    _fill(middle, core)
    _fill(last, a_out, layer.bias)
    return FactorizedConv2d(layer, first, middle, last)


def tucker2_conv(layer: nn.Conv2d, r_out: int, r_in: int) -> FactorizedConv2d:
    """Tucker-2 of a Conv2d kernel (groups 1): a 1x1 conv, a kxk core, a 1x1 conv.

    1x1 (in -> r_in) -> core (r_in -> r_out, the layer's kernel size, stride, padding and dilation) -> 1x1
    (r_out -> out, the layer's bias).

    Each rank is capped at its unfolding's rank bound (min(out, in*kh*kw) and min(in, out*kh*kw)).
    """
    weight = _weight64(layer)
    (u_out, _, _), (u_in, _, _) = _tucker2_modes(weight)
    return _tucker2_build(layer, weight, u_out, u_in, r_out, r_in)


def _spatial_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, kh, kw) -> (in*kh, out*kw), rows indexed (i, y), columns (o, x)."""
    o, i, kh, kw = weight.shape
    return weight.permute(1, 2, 0, 3).reshape(i * kh, o * kw)


def _pair(value) -> tuple:
    return value if isinstance(value, str) else tuple(value)


def _spatial_build(layer: nn.Conv2d, svd: tuple, rank: int) -> FactorizedConv2d:
    u, s, vh = svd
    rank = min(rank, s.numel())
    vertical_w, horizontal_w = _balanced(u, s, vh, rank)  # (in*kh, r), (r, out*kw)
    n_in, n_out = layer.in_channels, layer.out_channels
    kh, kw = layer.kernel_size
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    padding = _pair(layer.padding)  # "same" / "valid" mean the same thing for each one-dimensional part
    pad_h, pad_w = (padding, padding) if isinstance(padding, str) else ((padding[0], 0), (0, padding[1]))
    first = _new(nn.Conv2d, layer, n_in, rank, (kh, 1), stride=(sh, 1), padding=pad_h, dilation=(dh, 1),
                 bias=False, padding_mode=layer.padding_mode)
    second = _new(nn.Conv2d, layer, rank, n_out, (1, kw), stride=(1, sw), padding=pad_w, dilation=(1, dw),
                  bias=layer.bias is not None, padding_mode=layer.padding_mode)
    _fill(first, vertical_w.T.reshape(rank, n_in, kh, 1))
    _fill(second, horizontal_w.reshape(rank, n_out, kw).permute(1, 0, 2).reshape(n_out, rank, 1, kw),
          layer.bias)
    return FactorizedConv2d(layer, first, second)


def spatial_svd_conv(layer: nn.Conv2d, rank: int) -> FactorizedConv2d:
    """Spatial SVD of a Conv2d kernel (groups 1): a (kh x 1) conv, then a (1 x kw) conv.

    (kh x 1) conv in -> rank (height stride/padding/dilation), then (1 x kw) conv rank -> out (width
    stride/padding/dilation, the layer's bias).

    `rank` is capped at min(in*kh, out*kw).
    """
    return _spatial_build(layer, _svd(_spatial_matrix(_weight64(layer))), rank)


# -- the handler ------------------------------------------------------------------------------------------


def _lowrank_svd(layer: nn.Linear | nn.Conv2d, config: LowRank) -> nn.Module:
    weight = _weight64(layer)
    matrix = weight.reshape(weight.shape[0], weight.shape[1])
    svd = _svd(matrix)
    rank = choose_rank(svd[1], config.rank_ratio, config.energy)
    if svd_weights(matrix.shape[1], matrix.shape[0], rank) >= layer_weights(layer):
        return layer
    return _svd_factors(layer, matrix, rank, svd)


def _lowrank_tucker2(layer: nn.Conv2d, config: LowRank) -> nn.Module:
    weight = _weight64(layer)
    (u_out, s_out, _), (u_in, s_in, _) = _tucker2_modes(weight)
    r_out = choose_rank(s_out, config.rank_ratio, config.energy)
    r_in = choose_rank(s_in, config.rank_ratio, config.energy)
    if tucker2_weights(layer, r_out, r_in) >= layer_weights(layer):
        return layer
    return _tucker2_build(layer, weight, u_out, u_in, r_out, r_in)


def _lowrank_spatial(layer: nn.Conv2d, config: LowRank) -> nn.Module:
    svd = _svd(_spatial_matrix(_weight64(layer)))
    rank = choose_rank(svd[1], config.rank_ratio, config.energy)
    if spatial_weights(layer, rank) >= layer_weights(layer):
        return layer
    return _spatial_build(layer, svd, rank)


@handler(LowRank)
def lowrank_layer(layer: nn.Module, config: LowRank) -> nn.Module:
    """Factorise a Linear or groups-1 Conv2d by `config` (SVD for Linear/1x1, else spatial or Tucker-2)."""
    if isinstance(layer, nn.Linear):
        return _lowrank_svd(layer, config)
    if not isinstance(layer, nn.Conv2d) or layer.groups != 1:
        return layer  # the space binder rejects other types; this guards direct use
    if tuple(layer.kernel_size) == (1, 1):
        return _lowrank_svd(layer, config)
    if config.method == "spatial":
        return _lowrank_spatial(layer, config)
    return _lowrank_tucker2(layer, config)  # auto, tucker2, and svd (which has no kxk form of its own)
