"""``relax`` (continuous relaxation): learn a distribution over each group's widths by gradient.

Each searchable group ``g`` has logits over its width choices ``c_1 < ... < c_K``;
``p_g = softmax(logits_g)``. Channel ``i`` of the group is kept with probability
``P(w_g > i) = sum_{k: c_k > i} p_gk`` -- a soft mask that forward hooks multiply onto the
outputs of the group's normalisers (BN, LayerNorm; the producing conv/linear layers for a
group with none; the inputs of its consumers for attention's heads, which no layer outputs),
on the *full-width* supernet, along each output's channel dimension as the
layer's handler established it when tracing (1 for NCHW, the last for ConvNeXt's
channels-last LayerNorm and Linear). A 0/1 mask after a LayerNorm stands for a narrower
LayerNorm only approximately: its statistics still see the masked channels. Residual adds
keep the mask intact: ``relu(m a + m b) = m relu(a + b)`` for ``m >= 0``. The supernet
weights are frozen; BN layers use batch statistics with ``momentum=0`` (running stats
untouched; they are restored afterwards anyway).

Depth pruning: a group the core marks ``removable`` also gets width 0 (its residual block is
dropped at extraction). Its block's contribution to the residual stream is then scaled by
``P(w_g > 0)``, so a one-hot distribution on 0 makes the block exactly the identity, as the
supernet does at width 0.

Loss per step on held-out batches disjoint from the scored ones (the evaluator's
``fit_batches``): cross-entropy + ``penalty * (E[MACs] / budget - 1)^2``,
where ``E[MACs]`` is exact for independent group widths: the gated quadratic forms the cost
model publishes (``sn.cost.quadratic_form()``, see :mod:`._macs`) applied to each width's
first two moments and its probability of 0. Under a latency budget the penalty is on the
expected predicted latency instead (exact too: each layer's table entry weighted by the
probabilities of its groups' widths); further limits (``--max-params`` ...) are left to the
repair, which keeps every answer inside them.

The answer is each group's most likely width, repaired to the budget: while over it,
narrow the group whose step loses the least log-probability per MAC saved; then, while a
step fits, widen the group whose step gains the most (loses the least) log-probability per
MAC added. Each answer is evaluated once.

Budgets are trained widest first; each later budget starts from the previous logits and
trains ``warm_steps`` (default ``steps // 2``) -- the shared part of the cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from widthsearch.supernet import Supernet

from ._space import IndexSpace
from .base import SearchCall, Strategy, Timer, register_strategy
from .constraints import Constraints
from .evaluator import SubnetEvaluator
from .result import SearchAnswer

__all__ = ["Relax", "SoftMasks", "repair"]


class SoftMasks:
    """Forward hooks that multiply each searchable group's channels by a soft keep-mask.

    Use as a context manager. Before each forward set :attr:`masks` (per searchable group a
    1-D tensor of length ``C_g``) and, for groups that may be 0, :attr:`alive` (a scalar
    ``P(w_g > 0)``; ``None`` elsewhere) -- it scales the group's block output into the
    residual stream.
    """

    def __init__(self, sn: Supernet, space: IndexSpace) -> None:
        self.sn = sn
        self.masks: list[torch.Tensor | None] = [None] * len(space)
        self.alive: list[torch.Tensor | None] = [None] * len(space)
        slot = {int(p): j for j, p in enumerate(space.positions)}
        normalisers: dict[int, list[nn.Module]] = {}
        producers: dict[int, list[nn.Module]] = {}
        for layer, _in_gs, out_gs in sn.layers:
            if not layer.handler.owns_output:  # a tensor its owner reads (layer scale)
                continue
            for out_g in out_gs:
                if out_g in slot:
                    role = normalisers if layer.handler.normaliser else producers
                    role.setdefault(slot[out_g], []).append(layer.module)
        slots_of: dict[int, set[int]] = {}  # id(module) -> the groups it masks
        for j in range(len(space)):
            for module in normalisers.get(j) or producers.get(j, []):
                slots_of.setdefault(id(module), set()).add(j)
        # per masking module: its output's channel dimension, as its handler established it
        # when tracing (1 for conv/BN, the last for a channels-last Linear or LayerNorm), and
        # its output's groups in order: (slot it masks or None, channels)
        self._targets = [
            (
                layer.module,
                layer.out_dim,
                [
                    (slot.get(g) if slot.get(g) in slots_of[id(layer.module)] else None, size)
                    for g, size in ((g, rows.stop - rows.start) for g, rows in sn.segments(out_gs))
                ],
            )
            for layer, _in_gs, out_gs in sn.layers
            if layer.handler.owns_output and id(layer.module) in slots_of
        ]
        # a group no layer outputs (attention's heads, inside their module) is masked where
        # its consumers read it, each channel's features together (``in_factor``)
        hidden = {j for j in range(len(space)) if j not in normalisers and j not in producers}
        self._inputs = [
            (
                layer.module,
                layer.in_dim,
                layer.in_factor,
                [
                    (slot.get(g) if slot.get(g) in hidden else None, rows.stop - rows.start)
                    for g, rows in sn.segments(in_gs)
                ],
            )
            for layer, in_gs, _out_gs in sn.layers
            if layer.handler.owns_output and any(slot.get(g) in hidden for g in in_gs)
        ]
        self._block_outputs = [
            (j, _block_outputs(sn, space.names[j]))
            for j in range(len(space))
            if int(space.choices[j][0]) == 0
        ]
        self._handles: list[Any] = []

    def __enter__(self) -> SoftMasks:
        for module, dim, parts in self._targets:
            self._handles.append(module.register_forward_hook(self._mask_hook(dim, parts)))
        for module, dim, factor, parts in self._inputs:
            hook = self._mask_hook(dim, parts, factor)
            self._handles.append(
                module.register_forward_pre_hook(
                    lambda m, args, hook=hook: (hook(m, (), args[0]), *args[1:])
                )
            )
        for j, modules in self._block_outputs:
            for module in modules:
                self._handles.append(module.register_forward_hook(self._alive_hook(j)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _mask_hook(self, dim: int, parts: list[tuple[int | None, int]], factor: int = 1):
        def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
            masks = [None if j is None else self.masks[j] for j, _ in parts]
            if all(m is None for m in masks):
                return output
            # a concatenated output: each masked group's part times its mask, the rest kept
            mask = torch.cat(
                [
                    output.new_ones(size) if m is None else m
                    for m, (_, size) in zip(masks, parts, strict=True)
                ]
            ).repeat_interleave(factor)
            shape = [1] * output.dim()
            shape[dim] = -1
            return output * mask.view(shape)

        return hook

    def _alive_hook(self, j: int):
        def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
            alive = self.alive[j]
            return output if alive is None else output * alive

        return hook


def _block_outputs(sn: Supernet, group_name: str) -> list[nn.Module]:
    """The layers of a removable group's block whose outputs are its contribution to the
    residual stream.

    The stream is a group also produced outside the block. Its first layer inside the block
    that writes it from another group (ResNet's conv3, ConvNeXt's second Linear) and the
    stream's layers after it are the block's output; of those, the normalisers (bn3) if
    any, else the conv/linear layers. Layers before it that read the stream and write it
    back (ConvNeXt's depthwise conv and LayerNorm) feed the branch, and a tensor the
    block's forward reads (its layer scale) has no output of its own: neither is gated.
    """
    block = sn.space[group_name].block
    inside = [
        (lay, i, o)
        for lay, i, o in sn.layers
        if lay.name.startswith(block + ".") and lay.handler.owns_output
    ]
    outside = {o for lay, _i, o in sn.layers if not lay.name.startswith(block + ".")}
    stream = [(lay, i, o) for lay, i, o in inside if o in outside]
    first = next((k for k, (_lay, i, o) in enumerate(stream) if i != o), 0)
    tail = [lay for lay, _i, _o in stream[first:]]
    normalisers = [lay.module for lay in tail if lay.handler.normaliser]
    return normalisers or [lay.module for lay in tail]


@register_strategy("relax")
class Relax(Strategy):
    """Continuous relaxation of widths.

    Options:
        steps: Gradient steps for the first (widest) budget (default 200).
        warm_steps: Steps for each later budget, warm-started (default ``steps // 2``).
        lr: Adam learning rate of the logits (default 0.1).
        penalty: Weight of the MACs penalty (default 10).
        batch_size: Held-out images per step (default: the evaluator's batch size).
        depth: Let removable groups take width 0 (block removal; default True).
    """

    @dataclass(frozen=True)
    class Options:
        steps: int = 200
        warm_steps: int | None = None
        lr: float = 0.1
        penalty: float = 10.0
        batch_size: int | None = None
        depth: bool = True

        def __post_init__(self) -> None:
            if self.steps < 0 or (self.warm_steps is not None and self.warm_steps < 0):
                raise ValueError("relax: steps and warm_steps must be >= 0")

    def index_space(
        self, supernet: Supernet, constraints: Constraints | None, options: Any
    ) -> IndexSpace:
        return IndexSpace(supernet, removable_zero=options.depth, constraints=constraints)

    def run(self, call: SearchCall) -> list[SearchAnswer]:
        space, evaluator, budgets, opts = call.space, call.evaluator, call.budgets, call.options
        warm_steps = opts.steps // 2 if opts.warm_steps is None else opts.warm_steps
        trainer = _LogitTrainer(
            space.sn,
            evaluator,
            space,
            seed=call.seed,
            lr=opts.lr,
            penalty=opts.penalty,
            batch_size=opts.batch_size or evaluator.batch_size,
        )
        order = sorted(range(len(budgets)), key=lambda i: -budgets[i])
        out: dict[int, SearchAnswer] = {}
        logits = None
        for rank, i in enumerate(order):
            budget = int(budgets[i])
            with Timer() as t:
                logits = trainer.train(budget, opts.steps if rank == 0 else warm_steps, logits)
                logp = [torch.log_softmax(x.detach(), 0).double().numpy() for x in logits]
                idx = repair(space, logp, budget)
            notes = [f"expected cost after training {trainer.last_expected / budget:.1%} of budget"]
            if rank:
                notes.append(f"warm-started from the budget-{int(budgets[order[rank - 1]])} logits")
            removed = [
                n for n, k, c in zip(space.names, idx, space.choices, strict=True) if int(c[k]) == 0
            ]
            if removed:
                notes.append(f"removes blocks of {', '.join(removed)}")
            out[i] = self.result(
                space, evaluator, idx, budget, evaluations=0, seconds=t.seconds, notes=notes
            )
        return [out[i] for i in range(len(budgets))]


def repair(space: IndexSpace, logp: list[np.ndarray], budget: int) -> np.ndarray:
    """Most likely width per group, shrunk to fit ``budget``, then grown while steps fit."""
    idx = np.array([int(np.argmax(lp)) for lp in logp], dtype=np.int64)

    def loss_down(cur: np.ndarray, groups: np.ndarray, saved: np.ndarray) -> np.ndarray:
        return np.array([logp[g][cur[g]] - logp[g][cur[g] - 1] for g in groups]) / saved

    def gain_up(cur: np.ndarray, groups: np.ndarray, added: np.ndarray) -> np.ndarray:
        gain = np.array([logp[g][cur[g] + 1] - logp[g][cur[g]] for g in groups])
        return gain / np.maximum(added, 1.0)

    if space.cost(idx) > budget:
        idx = space.shrink(idx, budget, cost=loss_down)
    return space.grow(idx, budget, priority=gain_up)


class _LogitTrainer:
    """Trains the width logits against one budget at a time on a frozen supernet."""

    def __init__(
        self,
        sn: Supernet,
        evaluator: SubnetEvaluator,
        space: IndexSpace,
        *,
        seed: int,
        lr: float,
        penalty: float,
        batch_size: int,
    ) -> None:
        self.sn, self.space, self.evaluator = sn, space, evaluator
        self.lr, self.penalty = lr, penalty
        # fit on held-out images the scores never see (the scored ones only if none)
        batches = evaluator.fit_batches or evaluator.batches
        self.images = torch.cat([x for x, _ in batches])
        self.labels = torch.cat([y for _, y in batches])
        self.batch_size = min(batch_size, len(self.images))
        self.generator = torch.Generator().manual_seed(seed)
        self.choices = [torch.as_tensor(c, dtype=torch.float64) for c in space.choices]
        self.can_vanish = [int(c[0]) == 0 for c in space.choices]
        # keep[i, k] = 1 when choice k keeps channel i (c_k > i)
        self.keep = [
            (c[None, :] > torch.arange(int(m))[:, None]).to(torch.float32)
            for c, m in zip(self.choices, space.max_channels, strict=True)
        ]
        self.last_expected = float("nan")

    def expected_cost(self, probs: list[torch.Tensor]) -> torch.Tensor:
        return self.space.expected_cost(probs)

    def train(
        self, budget: int, steps: int, start: list[torch.Tensor] | None
    ) -> list[torch.Tensor]:
        if start is None:
            logits = [torch.zeros(len(c), requires_grad=True) for c in self.choices]
        else:
            logits = [s.detach().clone().requires_grad_(True) for s in start]
        sn = self.sn
        frozen = [(p, p.requires_grad) for p in sn.parameters()]
        bns = [m for m in sn.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in bns]
        was_training = sn.training
        opt = torch.optim.Adam(logits, lr=self.lr)
        try:
            for p, _ in frozen:
                p.requires_grad_(False)
            sn.eval()
            for m in bns:  # batch statistics; momentum 0 leaves the running stats as they are
                m.train()
                m.momentum = 0.0
            with sn.active(None), SoftMasks(sn, self.space) as masks:
                for _ in range(steps):
                    pick = torch.randint(
                        len(self.images), (self.batch_size,), generator=self.generator
                    )
                    probs = [torch.softmax(x, 0) for x in logits]
                    masks.masks = [k @ p for k, p in zip(self.keep, probs, strict=True)]
                    masks.alive = [
                        1 - p[0] if v else None for p, v in zip(probs, self.can_vanish, strict=True)
                    ]
                    ce = F.cross_entropy(sn(self.images[pick]), self.labels[pick])
                    ratio = self.expected_cost(probs) / budget
                    loss = ce + self.penalty * (ratio - 1.0) ** 2
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        finally:
            for p, flag in frozen:
                p.requires_grad_(flag)
            for m, momentum in zip(bns, momenta, strict=True):
                m.momentum = momentum
            sn.train(was_training)
            self.evaluator.restore_bn()
        with torch.no_grad():
            self.last_expected = float(self.expected_cost([torch.softmax(x, 0) for x in logits]))
        return logits
