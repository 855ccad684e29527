"""Efficient-block substitution: one Conv2d replaced by a MobileNet, SqueezeNet or ShuffleNet block.

* dwsep (Howard et al. 2017): a kxk conv (in -> out) becomes a depthwise kxk conv with `multiplier` (m)
  filters per input channel (in -> in*m, groups = in), then a 1x1 conv (in*m -> out). Initialised per
  input channel c from the best rank-m approximation of the (out) x (k*k) slice W[:, c]: its right
  singular vectors are the depthwise filters, its scaled left ones the pointwise weights. At
  m >= min(out, k*k) the block reproduces the layer exactly.
* fire (Iandola et al. 2016): a kxk conv becomes a 1x1 squeeze (in -> s, s = ceil(squeeze * in)) feeding a
  1x1 expand and a kxk expand; their outputs, concatenated and put back in the layer's channel order, are
  the layer's outputs, round(expand3 * out) of them from the kxk expand (those with the most kernel energy
  off the centre tap). Initialised from the kernel's input-mode SVD (Tucker-2's input factor): the squeeze
  is its top s left singular vectors, the expands the kernel (or its centre tap) projected on them.
  Convs with "same" zero padding, odd square kernels and no dilation only.
* shuffle (Zhang et al. 2018): a 1x1 conv becomes a grouped 1x1 conv of `groups` groups followed by a
  channel shuffle, arranged so that output o reads input group (o mod groups). Initialised with the
  layer's weights restricted to that group.

No block has a nonlinearity inside: each is a factorisation of the layer it replaces, so fine-tuning
(distilled from the original) starts from the layer's function. With calibration rows (and not in skeleton
mode) each block's output layers are then refit by least squares to the replaced layer's outputs on its
own inputs (sampled positions of the calibration rows, captured before any substitution). A layer a block
does not apply to (a grouped or dilated conv; dwsep or fire on a 1x1, shuffle on a kxk; channels not
divisible by the groups), or whose block would hold as many weights as it or more, is left unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from autocomp.primitives.configs import Substitute
from autocomp.primitives.registry import CompressContext, model_handler

FIT_IMAGES = 64  # calibration rows whose layer inputs are kept for the least-squares refit
FIT_POSITIONS = 16_384  # output positions (rows of the least-squares problem) sampled from them
RIDGE = 1e-6  # relative to the mean diagonal of the normal equations: keeps a rank-poor fit solvable


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: (n, g*k, h, w) -> the k channels of each of g groups interleaved."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Interleave the channels of the groups."""
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        """Show the group count when the module is printed."""
        return f"groups={self.groups}"


class Fire(nn.Module):
    """Squeeze 1x1, then 1x1 and kxk expands whose concatenation is reordered by `order` (a buffer)."""

    def __init__(self, squeeze: nn.Conv2d, expand1: nn.Conv2d | None, expand3: nn.Conv2d | None,
                 order: torch.Tensor) -> None:
        super().__init__()
        self.squeeze, self.expand1, self.expand3 = squeeze, expand1, expand3
        self.register_buffer("order", order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Squeeze, then the expands concatenated and put back in the replaced layer's channel order."""
        s = self.squeeze(x)
        parts = [branch(s) for branch in (self.expand1, self.expand3) if branch is not None]
        return torch.cat(parts, dim=1).index_select(1, self.order)


def _weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))


def _plain(conv: nn.Conv2d) -> bool:
    return conv.groups == 1 and conv.dilation == (1, 1) and conv.padding_mode == "zeros"


def _conv(src: nn.Conv2d, cin: int, cout: int, kernel: tuple[int, int], *, stride=1, padding=0, groups=1,
          bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=bias).to(
        device=src.weight.device, dtype=src.weight.dtype)


def depthwise_separable(conv: nn.Conv2d, multiplier: int) -> nn.Module:
    """A depthwise kxk conv (`multiplier` filters per input channel) then a 1x1, initialised by per-channel SVD."""
    out, cin, kh, kw = conv.weight.shape
    m = multiplier
    depthwise = _conv(conv, cin, cin * m, (kh, kw), stride=conv.stride, padding=conv.padding, groups=cin)
    pointwise = _conv(conv, cin * m, out, (1, 1), bias=conv.bias is not None)
    w = conv.weight.detach().to(torch.float64).permute(1, 0, 2, 3).reshape(cin, out, kh * kw)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)  # per input channel: (out) x (k*k)
    r = min(m, s.shape[1])
    dw = torch.zeros(cin, m, kh * kw, dtype=torch.float64)
    pw = torch.zeros(out, cin, m, dtype=torch.float64)
    dw[:, :r] = vh[:, :r]
    pw[:, :, :r] = (u[:, :, :r] * s[:, None, :r]).permute(1, 0, 2)
    with torch.no_grad():
        depthwise.weight.copy_(dw.reshape(cin * m, 1, kh, kw))
        pointwise.weight.copy_(pw.reshape(out, cin * m, 1, 1))
        if conv.bias is not None:
            pointwise.bias.copy_(conv.bias)
    return nn.Sequential(depthwise, pointwise)


def fire(conv: nn.Conv2d, squeeze: float, expand3: float) -> nn.Module:
    """A fire block (1x1 squeeze, 1x1 and kxk expands) for a kxk conv, initialised from the kernel's input-mode SVD."""
    out, cin, k, _ = conv.weight.shape
    s = max(1, math.ceil(squeeze * cin - 1e-9))
    w = conv.weight.detach().to(torch.float64)
    centre = w[:, :, k // 2, k // 2]
    off_centre = w.square().sum(dim=(1, 2, 3)) - centre.square().sum(dim=1)
    n3 = min(out, max(0, round(expand3 * out)))
    spatial = torch.argsort(off_centre, descending=True, stable=True)[:n3].sort().values
    pointlike = torch.tensor(sorted(set(range(out)) - set(spatial.tolist())), dtype=torch.long)
    u = torch.linalg.svd(w.permute(1, 0, 2, 3).reshape(cin, -1), full_matrices=False)[0][:, :s]  # in x s
    squeeze_conv = _conv(conv, cin, s, (1, 1))
    has_bias = conv.bias is not None
    expand1 = _conv(conv, s, len(pointlike), (1, 1), stride=conv.stride, bias=has_bias) if len(pointlike) else None
    expand3_conv = _conv(conv, s, n3, (k, k), stride=conv.stride, padding=conv.padding, bias=has_bias) \
        if n3 else None
    with torch.no_grad():
        squeeze_conv.weight.copy_(u.T.reshape(s, cin, 1, 1))
        if expand1 is not None:
            expand1.weight.copy_((centre[pointlike] @ u).reshape(len(pointlike), s, 1, 1))
            if has_bias:
                expand1.bias.copy_(conv.bias[pointlike])
        if expand3_conv is not None:
            expand3_conv.weight.copy_(torch.einsum("ocij,cs->osij", w[spatial], u))
            if has_bias:
                expand3_conv.bias.copy_(conv.bias[spatial])
    concatenated = torch.cat([pointlike, spatial])  # channel i of the concatenation is layer output concatenated[i]
    order = torch.argsort(concatenated).to(conv.weight.device)
    return Fire(squeeze_conv, expand1, expand3_conv, order)


def shuffled_group_conv(conv: nn.Conv2d, groups: int) -> nn.Module:
    """A grouped 1x1 conv then a channel shuffle for a 1x1 conv, holding the layer's weights within each group."""
    out, cin = conv.weight.shape[:2]
    grouped = _conv(conv, cin, out, (1, 1), stride=conv.stride, groups=groups, bias=conv.bias is not None)
    sources = _shuffle_sources(out, groups)
    ig = cin // groups
    with torch.no_grad():
        for p, o in enumerate(sources.tolist()):  # grouped output p becomes layer output o after the shuffle
            g = p // (out // groups)
            grouped.weight[p] = conv.weight[o, g * ig:(g + 1) * ig]
            if conv.bias is not None:
                grouped.bias[p] = conv.bias[o]
    return nn.Sequential(grouped, ChannelShuffle(groups))


def _shuffle_sources(out: int, groups: int) -> torch.Tensor:
    """For each pre-shuffle channel p, the output channel it lands on after the shuffle."""
    k = out // groups
    p = torch.arange(out)
    return (p % k) * groups + p // k


def substitute_conv(conv: nn.Conv2d, config: Substitute) -> nn.Module:
    """The block `config` names in place of `conv`, or `conv` itself where the block does not apply."""
    if not isinstance(conv, nn.Conv2d) or config.is_identity() or not _plain(conv):
        return conv
    out, cin, kh, kw = conv.weight.shape
    pointwise = (kh, kw) == (1, 1)
    if config.block == "dwsep" and not pointwise:
        block = depthwise_separable(conv, config.multiplier)
    elif config.block == "fire" and not pointwise and kh == kw and kh % 2 and conv.padding == (kh // 2, kw // 2):
        block = fire(conv, config.squeeze, config.expand3)
    elif config.block == "shuffle" and pointwise and config.groups > 1 and not (cin % config.groups
                                                                                 or out % config.groups):
        block = shuffled_group_conv(conv, config.groups)
    else:
        return conv
    return block if _weights(block) < conv.weight.numel() else conv


def _fit(conv: nn.Conv2d, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> None:
    """Refit `conv`'s weights (and bias) so that conv(x) matches y, by ridge least squares per group."""
    cols = nn.functional.unfold(x.to(torch.float64), conv.kernel_size, padding=conv.padding, stride=conv.stride)
    n, features, positions = cols.shape
    targets = y.to(torch.float64).reshape(n, y.shape[1], -1)
    pick = torch.randperm(n * positions, generator=generator)[:FIT_POSITIONS]
    a = cols.permute(0, 2, 1).reshape(-1, features)[pick]
    b = targets.permute(0, 2, 1).reshape(-1, y.shape[1])[pick]
    g, og = conv.groups, conv.out_channels // conv.groups
    fg = features // g
    with torch.no_grad():
        for i in range(g):
            ai = a[:, i * fg:(i + 1) * fg]
            if conv.bias is not None:
                ai = torch.cat([ai, torch.ones(len(ai), 1, dtype=ai.dtype)], dim=1)
            gram = ai.T @ ai
            gram += RIDGE * gram.diagonal().mean().clamp(min=1e-12) * torch.eye(len(gram), dtype=gram.dtype)
            solution = torch.linalg.solve(gram, ai.T @ b[:, i * og:(i + 1) * og])  # (features [+1]) x og
            conv.weight[i * og:(i + 1) * og] = solution[:fg].T.reshape(og, *conv.weight.shape[1:]).to(
                conv.weight.dtype)
            if conv.bias is not None:
                conv.bias[i * og:(i + 1) * og] = solution[fg].to(conv.bias.dtype)


def refit(block: nn.Module, conv: nn.Conv2d, x: torch.Tensor, generator: torch.Generator) -> None:
    """Refit the block's output layers to the replaced layer's outputs on its inputs `x`."""
    with torch.no_grad():
        y = conv(x)
        if isinstance(block, Fire):
            s = block.squeeze(x)
            concatenated = y.index_select(1, torch.argsort(block.order))
            split = block.expand1.out_channels if block.expand1 is not None else 0
            if block.expand1 is not None:
                _fit(block.expand1, s, concatenated[:, :split], generator)
            if block.expand3 is not None:
                _fit(block.expand3, s, concatenated[:, split:], generator)
        elif isinstance(block[-1], ChannelShuffle):
            grouped = block[0]
            _fit(grouped, x, y.index_select(1, _shuffle_sources(y.shape[1], grouped.groups).to(y.device)), generator)
        else:
            _fit(block[1], block[0](x), y, generator)


def _layer_inputs(model: nn.Module, names: list[str], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    captured: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(name).register_forward_pre_hook(
        lambda _m, args, name=name: captured.setdefault(name, args[0].detach())) for name in names]
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()(rows)
            model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return captured


@model_handler(Substitute)
def substitute_model(model: nn.Module, configs: Mapping[str, Substitute], context: CompressContext) -> nn.Module:
    targets = {name: config for name, config in configs.items() if isinstance(model.get_submodule(name), nn.Conv2d)}
    fitting = context.calibration is not None and not context.skeleton
    inputs = _layer_inputs(model, list(targets), context.calibration[0][:FIT_IMAGES]) if fitting else {}
    generator = torch.Generator().manual_seed(0)
    for name, config in targets.items():
        conv = model.get_submodule(name)
        block = substitute_conv(conv, config)
        if block is conv:
            continue
        if name in inputs:
            refit(block, conv, inputs[name], generator)
        model.set_submodule(name, block)
    return model


__all__ = ["ChannelShuffle", "Fire", "depthwise_separable", "fire", "shuffled_group_conv", "substitute_conv"]
