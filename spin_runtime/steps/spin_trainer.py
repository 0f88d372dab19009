"""The training fast path: TRL's `DPOTrainer` with a cheaper log-prob computation on CPU.

TRL 1.16 computes per-token log-probs with a "fused LM head" that, off Triton devices, projects
*every* position through the vocabulary (prompt and padding included, whose log-probs the loss
masks away), folds each [tokens × 32k] tile with about a dozen full-size elementwise passes
(some multiplying by a scale of 1.0) and recomputes the projection in the backward. Here the
same forward signature (`model(..., labels=..., fused_lm_head=True)` → log_probs, entropy,
mean_logits, is_top1) is served differently:

- `CompactLogProbs`: only positions whose label is not -100 are projected; each chunk's
  exp(z − max) is kept for the backward (two GEMMs there instead of three); the logging
  statistics are computed without gradient.
- `pack_pairs`: a pair's chosen and rejected answers share their prompt, so the prompt runs
  through the model once; the rejected answer is masked from the chosen one and continues the
  prompt's positions, which gives every scored token exactly the context it has in TRL's batch.
- Right-padded batches that cannot be packed drop the attention mask (causal attention gives
  real tokens the same keys), so SDPA takes its causal kernel.

The SPIN loss itself is still TRL's `_compute_loss`, unchanged; only the log-probs it reads come
from here (tests pin losses, metrics and gradients to TRL's on the same batch). The fast head is
installed only on CPU models without logit scaling or soft-capping, outside DeepSpeed, and when
no loss weighting needs `log_sum_sq_probs`; otherwise the trainer is TRL's as is.

This is the one module that reaches into TRL's private parts (`_precompute_ref_logps`,
`_prepare_dataset`, `_total_train_tokens`, `fused_lm_head`): pyproject bounds TRL to the release
they were read from, and tests/runtime/test_spin_trainer.py fails loudly when they move.
"""

from __future__ import annotations

import contextvars
import functools
import types
from dataclasses import dataclass
from typing import Any

import torch
from trl import DPOTrainer
from trl.trainer.utils import FusedCausalLMOutput

#: Most rows of the [rows × vocabulary] logits held at once (≈ 256 MB at SmolLM2's 49k vocabulary).
CHUNK_ELEMENTS = 64 * 1024 * 1024
#: Attribute marking a model whose forward already serves the fast head.
_MARK = "_spin_compact_head"
#: Decoders whose positions do not depend on the attention mask (position ids = 0, 1, ...): with
#: right padding their real tokens see the same keys with or without the mask.
CAUSAL_ARANGE_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo", "olmo2"})


class CompactLogProbs(torch.autograd.Function):
    """log p(target) of `hidden @ weight.T` for the given rows only, plus entropy, mean logit
    and whether the target is a most likely token (those three without gradient).

    The forward keeps each chunk's exp(z − max) and its sum for the backward, which turns them
    into the logits' gradient in place: 2 GEMMs there instead of TRL's 3 (it recomputes the
    projection), and 5 passes over a chunk in the forward instead of about 12."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> Any:
        device = hidden.device.type
        # the projection in the autocast dtype (as TRL's), everything after it in fp32
        compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        with torch.autocast(device, enabled=False):
            return CompactLogProbs._forward(ctx, hidden, weight, targets, compute_dtype)

    @staticmethod
    def _forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: Any) -> Any:
        n, vocab = hidden.shape[0], weight.shape[0]
        rows = max(1, CHUNK_ELEMENTS // max(vocab, 1))
        keep = any(ctx.needs_input_grad[:2])
        h_c, w_c = hidden.to(dtype), weight.to(dtype)
        h = hidden.float()
        logp = h.new_empty(n)
        entropy = h.new_empty(n)
        top1 = torch.empty(n, dtype=torch.bool, device=h.device)
        # mean over the vocabulary of h·w_v = h·mean(w): one GEMV instead of a pass over the logits
        mean = h @ weight.float().mean(0)
        exps: list[torch.Tensor] = []
        totals: list[torch.Tensor] = []
        for s in range(0, n, rows):
            e = min(n, s + rows)
            t = targets[s:e]
            z = (h_c[s:e] @ w_c.t()).float()  # [rows, vocab]
            target_z = z.gather(1, t[:, None]).squeeze(1)
            m = z.amax(-1)
            z.sub_(m[:, None])
            ez = torch.exp(z)
            total = ez.sum(-1)
            log_total = torch.log(total)
            # entropy = log Σe^(z−m) − Σ e^(z−m)·(z−m) / Σe^(z−m); the dot without a [rows, vocab] temporary
            dot = torch.bmm(ez[:, None, :], z[:, :, None]).view(-1)
            entropy[s:e] = log_total - dot / total
            logp[s:e] = target_z - m - log_total
            # a tie with another maximum counts as top-1 here (TRL counts only the first); logging only
            top1[s:e] = target_z >= m
            del z
            if keep:
                exps.append(ez)
                totals.append(total)
        del h_c, w_c
        ctx.exps, ctx.totals, ctx.rows = exps, totals, rows
        ctx.save_for_backward(hidden, weight, targets)
        ctx.mark_non_differentiable(entropy, mean, top1)
        return logp, entropy, mean, top1

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_logp: torch.Tensor | None, *_: Any) -> Any:
        hidden, weight, targets = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[:2]
        exps, totals = ctx.exps, ctx.totals
        ctx.exps = ctx.totals = []
        if grad_logp is None or not (need_h or need_w):
            return None, None, None
        w = weight.float()
        h = hidden.float()
        g = grad_logp.float()
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device) if need_h else None
        grad_w: torch.Tensor | None = None
        for i, (ez, total) in enumerate(zip(exps, totals, strict=True)):
            s = i * ctx.rows
            e = s + ez.shape[0]
            gs = g[s:e]
            # d log p_t / dz_j = 1[j = t] − p_j with p = e^(z−m) / Σ: scaled in place, then the target added
            ez.mul_((-gs / total)[:, None])
            ez.scatter_add_(1, targets[s:e, None], gs[:, None])
            if grad_h is not None:
                torch.mm(ez, w, out=grad_h[s:e])
            if need_w:
                if grad_w is None:
                    grad_w = ez.t() @ h[s:e]
                else:
                    grad_w.addmm_(ez.t(), h[s:e])
        if need_w and grad_w is None:
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        return (
            grad_h.to(hidden.dtype) if grad_h is not None else None,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            None,
        )


def _scatter(mask: torch.Tensor, values: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Compact per-token values back into `mask.shape`, zero elsewhere. masked_scatter keeps the
    output connected to the graph even when no label is valid."""
    return tuple(v.new_zeros(mask.shape).masked_scatter(mask, v) for v in values)


def compact_log_probs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-token (log_probs, entropy, mean_logits, is_top1) of shape `labels.shape`, zero where
    the label is -100; `hidden` is [..., H] aligned with `labels` (already shifted)."""
    mask = labels != -100
    return _scatter(mask, CompactLogProbs.apply(hidden[mask], weight, labels[mask]))


@dataclass(frozen=True)
class PackedPairs:
    """A preference batch with each pair's shared prompt computed once: row i holds the prompt,
    the chosen answer, then the rejected answer, whose tokens see the prompt and themselves only
    (not the chosen answer) and continue the prompt's positions. `predictor[j]` is the flat
    index of the hidden state that predicts the j-th scored token, in the order of
    `labels[:, 1:] != -100` over TRL's [chosen rows; rejected rows] batch."""

    input_ids: torch.Tensor  # [pairs, length]
    position_ids: torch.Tensor  # [pairs, length]
    attention_mask: torch.Tensor  # [pairs, 1, length, length], True = may attend
    predictor: torch.Tensor  # [scored tokens]
    #: attention in TRL's layout: packed position of every [row, position] of the unpacked batch,
    #: and the unpacked [row, position] whose attention output each packed position takes
    unpacked_shape: tuple[int, int] = (0, 0)
    to_unpacked: torch.Tensor | None = None  # [rows × width] indices into packed positions
    to_packed: torch.Tensor | None = None  # [pairs × length] indices into unpacked positions
    tokens: int = 0  # real (non-padding) tokens of the packed rows


def pack_pairs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor) -> PackedPairs | None:
    """`PackedPairs` of TRL's right-padded batch [chosen rows; rejected rows], or None when the
    batch does not have that shape (odd rows, a pair whose prompts differ, an answer cut away
    by truncation, scored tokens that are not one run at the end of a row)."""
    rows, width = input_ids.shape
    if rows % 2 or attention_mask is None or not right_padded(attention_mask):
        return None
    pairs = rows // 2
    lengths = attention_mask.sum(1).tolist()
    valid = labels != -100
    starts: list[int] = []
    for r in range(rows):
        scored = valid[r].nonzero().flatten()
        if scored.numel() == 0:
            return None
        first = int(scored[0])
        if first < 1 or int(scored[-1]) != lengths[r] - 1 or scored.numel() != lengths[r] - first:
            return None
        starts.append(first)
    for i in range(pairs):
        p = starts[i]
        if starts[pairs + i] != p or not torch.equal(input_ids[i, :p], input_ids[pairs + i, :p]):
            return None
    packed_len = [lengths[i] + lengths[pairs + i] - starts[i] for i in range(pairs)]
    length = max(packed_len)
    device = input_ids.device
    ids = torch.zeros((pairs, length), dtype=input_ids.dtype, device=device)
    pos = torch.zeros((pairs, length), dtype=torch.long, device=device)
    allow = torch.zeros((pairs, length, length), dtype=torch.bool, device=device)
    chosen_pred: list[torch.Tensor] = []
    rejected_pred: list[torch.Tensor] = []
    uwidth = max(lengths)
    to_unpacked = torch.zeros((rows, uwidth), dtype=torch.long, device=device)
    to_packed = torch.zeros((pairs, length), dtype=torch.long, device=device)
    for i in range(pairs):
        p, lc, lr, lp = starts[i], lengths[i], lengths[pairs + i], packed_len[i]
        ids[i, :lc] = input_ids[i, :lc]
        ids[i, lc:lp] = input_ids[pairs + i, p:lr]
        pos[i, :lc] = torch.arange(lc, device=device)
        pos[i, lc:lp] = torch.arange(p, lr, device=device)
        allow[i, :lp, :lp] = torch.ones((lp, lp), dtype=torch.bool, device=device).tril()
        allow[i, lc:lp, p:lc] = False  # the rejected answer never sees the chosen one
        pad = torch.arange(lp, length, device=device)
        allow[i, pad, pad] = True  # padding attends to itself (no empty softmax rows)
        base = i * length
        # chosen token t (p ≤ t < lc) is predicted by packed position t − 1
        chosen_pred.append(base + torch.arange(p - 1, lc - 1, device=device))
        # rejected token u (p ≤ u < lr) sits at lc + u − p; the first is predicted by the prompt's last
        rest = torch.arange(lc, lc + (lr - p) - 1, device=device)
        rejected_pred.append(base + torch.cat([torch.tensor([p - 1], device=device), rest]))
        # TRL's chosen row i = packed 0..lc−1; its rejected row = the prompt, then packed lc..lp−1
        to_unpacked[i, :lc] = base + torch.arange(lc, device=device)
        to_unpacked[i, lc:] = base
        to_unpacked[pairs + i, :p] = base + torch.arange(p, device=device)
        to_unpacked[pairs + i, p:lr] = base + torch.arange(lc, lp, device=device)
        to_unpacked[pairs + i, lr:] = base
        to_packed[i, :lc] = i * uwidth + torch.arange(lc, device=device)
        to_packed[i, lc:lp] = (pairs + i) * uwidth + torch.arange(p, lr, device=device)
        to_packed[i, lp:] = i * uwidth
    predictor = torch.cat(chosen_pred + rejected_pred)
    return PackedPairs(
        ids, pos, allow[:, None], predictor, (rows, uwidth), to_unpacked.flatten(), to_packed.flatten(), sum(packed_len)
    )


#: The packed batch whose attention `packed_attention` may compute in TRL's layout (set only
#: while the policy's forward runs, and never under activation checkpointing: its recomputation
#: in the backward would find it unset and save different tensors).
_PACKED: contextvars.ContextVar[PackedPairs | None] = contextvars.ContextVar("spin_packed", default=None)
#: Name under which `packed_attention` is registered with transformers' AttentionInterface.
PACKED_ATTENTION = "spin_packed_sdpa"


def packed_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, **kwargs: Any
) -> tuple[torch.Tensor, None]:
    """SDPA for packed pairs: the packed queries, keys and values are laid out as TRL's unpacked
    batch (the prompt's once-computed keys and values copied to both rows), attended causally
    with grouped-query heads, and laid back: a causal kernel over 2·B·L²/2 instead of a masked
    one over B·(2L − prompt)². Anything else goes to transformers' own SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed = _PACKED.get()
    if packed is None or attention_mask is not packed.attention_mask or packed.to_unpacked is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    rows, width = packed.unpacked_shape
    pairs, _, length, dim = query.shape

    def unpack(x: torch.Tensor) -> torch.Tensor:  # [pairs, heads, length, dim] → [rows, heads, width, dim]
        flat = x.transpose(1, 2).reshape(pairs * length, x.shape[1], dim)
        return flat.index_select(0, packed.to_unpacked).view(rows, width, x.shape[1], dim).transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(
        unpack(query), unpack(key), unpack(value), is_causal=True, scale=kwargs.get("scaling"),
        enable_gqa=query.shape[1] != key.shape[1],
    )  # fmt: skip
    flat = out.transpose(1, 2).reshape(rows * width, query.shape[1], dim)
    return flat.index_select(0, packed.to_packed).view(pairs, length, query.shape[1], dim), None


def right_padded(mask: torch.Tensor | None) -> bool:
    """True for a [batch, length] 0/1 mask whose rows are ones then zeros (padding on the right)."""
    if mask is None or mask.dim() != 2:
        return False
    return bool((mask[:, 1:] <= mask[:, :-1]).all()) and bool(mask[:, 0].all())


def _plain_head(model: Any) -> bool:
    """True for a causal LM whose logits are exactly `hidden @ lm_head.weight.T` on CPU."""
    config = model.config.get_text_config()
    if getattr(config, "final_logit_softcapping", None) is not None:
        return False
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        if getattr(config, name, None) not in (None, 1, 1.0):
            return False
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        return False
    if type(head) is not torch.nn.Linear:  # e.g. a PEFT-wrapped head
        return False
    return head.weight.device.type == "cpu"


def _use_packed_attention(model: Any) -> bool:
    """Route the model's SDPA through `packed_attention` (a no-op outside packed forwards)."""
    if model.config._attn_implementation != "sdpa":
        return False
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    model.config._attn_implementation = PACKED_ATTENTION  # not saved: config.json omits it
    return True


def _checkpointing(model: Any) -> bool:
    """Whether the model recomputes its layers in the backward (activation checkpointing)."""
    flag = getattr(type(model), "is_activation_checkpointing", None) or getattr(type(model), "is_gradient_checkpointing", None)
    return bool(flag.fget(model)) if isinstance(flag, property) else False


def install_compact_head(model: Any, share_prompt: bool = True) -> bool:
    """Serve `model(..., labels=..., fused_lm_head=True)` with `compact_log_probs`; every other
    call goes to the forward it had (TRL's patched one, which calls the original). Returns
    False (and changes nothing) when the model's head is not a plain CPU projection."""
    if getattr(model, _MARK, False):
        return True
    if not _plain_head(model):
        return False
    previous = model.forward
    drop_mask = model.config.get_text_config().model_type in CAUSAL_ARANGE_MODELS
    share_prompts = drop_mask and share_prompt
    fast_attention = share_prompts and _use_packed_attention(model)

    @functools.wraps(type(model).forward)
    def forward(self: Any, *args: Any, fused_lm_head: bool = False, labels: Any = None, **kwargs: Any) -> Any:
        if not fused_lm_head or labels is None or kwargs.get("shift_labels") is not None:
            return previous(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        kwargs.pop("num_items_in_batch", None)
        kwargs["use_cache"] = False
        shifted = labels[:, 1:]
        weight = self.get_output_embeddings().weight
        packed = None
        if share_prompts and not args and set(kwargs) <= {"input_ids", "attention_mask", "use_cache"}:
            packed = pack_pairs(kwargs["input_ids"], kwargs.get("attention_mask"), labels)
        given_mask = kwargs.get("attention_mask")
        tokens = packed.tokens if packed is not None else int(given_mask.sum()) if given_mask is not None else 0
        if packed is not None:
            # each pair's prompt once: chosen and rejected answers attend to the same prompt states
            # under activation checkpointing the layers are recomputed in the backward, outside
            # this forward: both passes must take the same (masked) attention
            token = _PACKED.set(packed if fast_attention and not _checkpointing(self) else None)
            try:
                backbone = self.base_model(
                    input_ids=packed.input_ids, position_ids=packed.position_ids,
                    attention_mask=packed.attention_mask, use_cache=False,
                )  # fmt: skip
            finally:
                _PACKED.reset(token)
            states = backbone.last_hidden_state
            mask = shifted != -100
            selected = states.reshape(-1, states.shape[-1]).index_select(0, packed.predictor)
            log_probs, entropy, mean_logits, is_top1 = _scatter(
                mask, CompactLogProbs.apply(selected, weight, shifted[mask])
            )
        else:
            if drop_mask and right_padded(kwargs.get("attention_mask")):
                # causal attention alone gives real tokens the same keys (padding only follows
                # them): SDPA then takes its is_causal kernel with grouped-query heads instead of
                # a materialised mask and repeated key/value heads
                kwargs["attention_mask"] = None
            backbone = self.base_model(*args, **kwargs)
            log_probs, entropy, mean_logits, is_top1 = compact_log_probs(
                backbone.last_hidden_state[:, :-1], weight, shifted
            )
        mask = shifted != -100
        if torch.is_grad_enabled():  # the tokens a training forward ran through the model and its head
            self.spin_work["backbone_tokens"] += tokens or int(shifted.shape[0] * labels.shape[1])
            self.spin_work["head_tokens"] += int(mask.sum())
        loss = -log_probs.sum() / mask.sum().clamp(min=1)
        return FusedCausalLMOutput(
            loss=loss, log_probs=log_probs, entropy=entropy, mean_logits=mean_logits, is_top1=is_top1, label_mask=mask
        )

    model.forward = types.MethodType(forward, model)
    model.spin_work = {"backbone_tokens": 0, "head_tokens": 0}
    setattr(model, _MARK, True)
    return True


class SpinDPOTrainer(DPOTrainer):
    """`DPOTrainer` whose per-token log-probs come from `CompactLogProbs` on CPU (the policy,
    and a live reference model when there is one). Loss, metrics and everything else are TRL's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.compact_head = False
        super().__init__(*args, **kwargs)
        self._install_fast_head()

    def _install_fast_head(self) -> None:
        if getattr(self, "use_weighting", False) or getattr(self, "is_deepspeed_enabled", False):
            return
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.compact_head = install_compact_head(model)
        if self.ref_model is not None:
            install_compact_head(self.ref_model)

    def announce(self, text: str) -> None:
        """Tell callbacks with an `on_phase(text)` method what the trainer is doing (progress)."""
        for callback in self.callback_handler.callbacks:
            hook = getattr(callback, "on_phase", None)
            if callable(hook):
                hook(text)

    def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
        # runs inside DPOTrainer.__init__, after TRL patched the head: install ours first
        self._install_fast_head()
        self.announce(f"opponent log-probs of {len(dataset)} {name} pairs")
        return super()._precompute_ref_logps(dataset, name, batch_size)

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        # rows that are token ids already (collator original, built as the original code did) stay as they are
        if "prompt_ids" in (dataset.column_names or []):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    @property
    def trained_tokens(self) -> float:
        """Non-padding tokens of the policy batches so far, over all ranks (the Trainer's count)."""
        return float(getattr(self, "_total_train_tokens", 0))
