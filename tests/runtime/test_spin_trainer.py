"""The training fast path: `CompactLogProbs` gives TRL's fused-head outputs and gradients, and
`SpinDPOTrainer` trains exactly as TRL's `DPOTrainer` (same losses, margins and weights step by
step on the same batches), with a live or a precomputed reference, tied or untied embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from spin_runtime.steps.spin_trainer import SpinDPOTrainer, compact_log_probs, install_compact_head
from tests.runtime.train_helpers import addition_rows, one_thread  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def _trl_fused(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """TRL's CPU path: every position projected, masked afterwards."""
    from trl.kernels import ChunkedLogProbFunction

    mask = labels != -100
    outs = ChunkedLogProbFunction.apply(
        hidden.reshape(-1, hidden.size(-1)), weight, None, labels.clamp(min=0).reshape(-1), 1.0, 32768, None, 1.0,
        ("log_probs", "entropy", "mean_logits", "is_top1"),
    )  # fmt: skip
    logp, entropy, _, mean, top1 = outs
    return tuple(x.view(mask.shape).masked_fill(~mask, 0) for x in (logp, entropy, mean, top1))


def test_compact_log_probs_equal_trl_fused_head_values_and_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    vocab, hidden_size = 40_000, 32  # wider than one TRL vocabulary chunk (32768)
    hidden = (torch.randn(3, 7, hidden_size, generator=gen)).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=gen) * 0.3).requires_grad_()
    labels = torch.randint(0, vocab, (3, 7), generator=gen)
    labels[:, :3] = -100  # the prompt
    labels[2, 5:] = -100  # padding

    ours = compact_log_probs(hidden, weight, labels)
    (ours[0].sum() * 0.7).backward()
    g_hidden, g_weight = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    theirs = _trl_fused(hidden, weight, labels)
    (theirs[0].sum() * 0.7).backward()

    for name, a, b in zip(("log_probs", "entropy", "mean_logits"), ours[:3], theirs[:3], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    assert torch.equal(ours[3], theirs[3].bool())
    torch.testing.assert_close(g_hidden, hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_weight, weight.grad, rtol=1e-5, atol=1e-6)


def test_compact_log_probs_with_no_valid_label_is_a_differentiable_zero() -> None:
    hidden = torch.randn(2, 4, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)
    out = compact_log_probs(hidden, weight, torch.full((2, 4), -100))[0]
    assert torch.equal(out, torch.zeros(2, 4))
    out.sum().backward()
    assert hidden.grad is not None and not hidden.grad.any()


def _tied_copy(model_dir: Path, out: Path) -> Path:
    """The tiny model with tied input/output embeddings (as SmolLM2 has)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    config.tie_word_embeddings = True
    torch.manual_seed(3)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def _trainer(cls: type, model_dir: Path, tmp: Path, *, precompute: bool, ref_model: Any = None, steps: int = 2) -> Any:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig

    from spin_runtime.modeling.chat import conversational_row

    rows = addition_rows(6, 0)
    ds = Dataset.from_list([conversational_row(r["prompt"], r["real"], r["generated"]) for r in rows])
    args = DPOConfig(
        output_dir=str(tmp), use_cpu=True, bf16=False, per_device_train_batch_size=3, max_steps=steps,
        learning_rate=1e-3, optim="rmsprop", lr_scheduler_type="constant", beta=0.1, logging_steps=1,
        report_to="none", save_strategy="no", precompute_ref_log_probs=precompute, gradient_checkpointing=False,
        seed=42, disable_tqdm=True,
    )  # fmt: skip
    tok = AutoTokenizer.from_pretrained(model_dir)
    trainer = cls(model=str(model_dir), ref_model=ref_model, args=args, train_dataset=ds, processing_class=tok)
    if cls is SpinDPOTrainer:
        assert trainer.compact_head, "the fast head is installed on a CPU Llama"
    return trainer


def _opponent(model_dir: Path) -> Any:
    """A reference model that differs from the policy (so the loss is not log 2)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def _loss_and_grads(trainer: Any) -> tuple[float, dict[str, float], dict[str, torch.Tensor]]:
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if isinstance(v, list) and v}
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.item(), metrics, grads


@pytest.mark.parametrize(
    ("tied", "precompute"), [(False, False), (True, False), (True, True)],
    ids=["untied-live-ref", "tied-live-ref", "tied-precomputed-ref"],
)  # fmt: skip
def test_loss_metrics_and_gradients_equal_trl_on_the_same_batch(
    tmp_path: Path, tiny_model_dir: Path, tied: bool, precompute: bool
) -> None:
    from trl import DPOTrainer

    model_dir = _tied_copy(tiny_model_dir, tmp_path / "tied") if tied else tiny_model_dir
    trl = _trainer(DPOTrainer, model_dir, tmp_path / "trl", precompute=precompute, ref_model=_opponent(model_dir))
    fast = _trainer(SpinDPOTrainer, model_dir, tmp_path / "fast", precompute=precompute, ref_model=_opponent(model_dir))
    trl_loss, trl_metrics, trl_grads = _loss_and_grads(trl)
    fast_loss, fast_metrics, fast_grads = _loss_and_grads(fast)

    assert abs(trl_loss - 0.693147) > 1e-3, "policy and opponent differ"
    assert fast_loss == pytest.approx(trl_loss, abs=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "entropy", "logits/chosen", "logits/rejected", "mean_token_accuracy"):  # fmt: skip
        assert fast_metrics[key] == pytest.approx(trl_metrics[key], rel=1e-5, abs=1e-5), key
    assert fast_metrics["num_tokens"] == trl_metrics["num_tokens"]
    assert fast_grads.keys() == trl_grads.keys()
    for name, g in trl_grads.items():
        torch.testing.assert_close(fast_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_spin_trainer_trains_as_trl_over_steps(tmp_path: Path, tiny_model_dir: Path) -> None:
    from trl import DPOTrainer

    histories = []
    for cls, name in ((DPOTrainer, "trl"), (SpinDPOTrainer, "fast")):
        trainer = _trainer(cls, tiny_model_dir, tmp_path / name, precompute=True)
        trainer.train()
        histories.append([h for h in trainer.state.log_history if "loss" in h])
    trl_hist, fast_hist = histories
    assert [h["step"] for h in fast_hist] == [h["step"] for h in trl_hist] == [1, 2]
    for a, b in zip(trl_hist, fast_hist, strict=True):
        # RMSProp's first update is ±10·lr per weight whatever the gradient's size, so rounding
        # noise in near-zero gradients moves step 2 a little: compare it at 1e-4
        for key in ("loss", "rewards/margins", "logps/chosen", "logps/rejected", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (b["step"], key)


def test_fast_head_is_not_installed_on_a_scaled_head(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.logit_scale = 0.5
    assert install_compact_head(model) is False


def test_pairs_share_their_prompt_in_one_packed_row(tmp_path: Path, tiny_model_dir: Path) -> None:
    from trl import DPOTrainer

    from spin_runtime.steps.spin_trainer import pack_pairs

    trainer = _trainer(DPOTrainer, tiny_model_dir, tmp_path / "t", precompute=False)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, attn = batch["input_ids"], batch["attention_mask"]
    labels = ids.masked_fill(batch["completion_mask"] == 0, -100)
    packed = pack_pairs(ids, attn, labels)
    assert packed is not None
    pairs = ids.shape[0] // 2
    prompt = int((labels[0] != -100).nonzero()[0])
    chosen, rejected = int(attn[0].sum()), int(attn[pairs].sum())
    row = packed.input_ids[0, : chosen + rejected - prompt]
    assert torch.equal(row, torch.cat([ids[0, :chosen], ids[pairs, prompt:rejected]]))
    assert packed.position_ids[0, chosen] == prompt, "the rejected answer continues the prompt's positions"
    mask = packed.attention_mask[0, 0]
    assert mask[chosen, :prompt].all() and not mask[chosen, prompt:chosen].any() and mask[chosen, chosen]
    assert packed.input_ids.numel() < ids.numel()
    assert packed.predictor.numel() == int((labels[:, 1:] != -100).sum())

    other = ids.clone()
    other[pairs, 1] = (other[pairs, 1] + 1) % 1000  # the pair's prompts differ: not packed
    assert pack_pairs(other, attn, labels) is None
    assert pack_pairs(ids, attn, torch.full_like(labels, -100)) is None


def test_packed_and_unpacked_forwards_give_the_same_log_probs_and_gradients(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer

    batch = next(iter(_trainer(DPOTrainer, tiny_model_dir, tmp_path / "t", precompute=False).get_train_dataloader()))
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    results = []
    for share in (True, False):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        assert install_compact_head(model, share_prompt=share)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                    fused_lm_head=True, use_cache=False)  # fmt: skip
        (out.log_probs.sum() * 0.3).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (packed, packed_grads), (plain, plain_grads) = results
    for name in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(packed, name), getattr(plain, name), rtol=1e-5, atol=1e-5, msg=name)
    assert torch.equal(packed.is_top1, plain.is_top1)
    for name, g in plain_grads.items():
        torch.testing.assert_close(packed_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_packed_pairs_train_under_gradient_checkpointing_as_without(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The layers recomputed in the backward take the same attention as the forward did (a
    different one saves other tensors: torch's CheckpointError), and the gradients do not change."""
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer

    batch = next(iter(_trainer(DPOTrainer, tiny_model_dir, tmp_path / "t", precompute=False).get_train_dataloader()))
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    grads = []
    for checkpointing in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        assert install_compact_head(model)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                    fused_lm_head=True, use_cache=False)  # fmt: skip
        out.log_probs.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    plain, recomputed = grads
    for name, g in plain.items():
        torch.testing.assert_close(recomputed[name], g, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_packed_attention_is_used_only_in_training_forwards_and_never_saved(tmp_path: Path, tiny_model_dir: Path) -> None:
    import json

    from transformers import AutoModelForCausalLM

    from spin_runtime.steps import spin_trainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert install_compact_head(model)
    assert model.config._attn_implementation == spin_trainer.PACKED_ATTENTION
    plain = model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits  # outside a packed forward: transformers' SDPA
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.testing.assert_close(plain, reference(input_ids=torch.tensor([[5, 6, 7, 8]])).logits)
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert spin_trainer.PACKED_ATTENTION not in json.dumps(config)


def test_the_private_trl_hook_spin_trainer_overrides_is_still_there() -> None:
    """SpinDPOTrainer overrides DPOTrainer._precompute_ref_logps (TRL is bounded to the minor
    version it was read against): a TRL that moved it must fail here, not train silently without
    the fast head while the opponent's log-probs are precomputed."""
    import inspect

    from trl import DPOTrainer

    hook = getattr(DPOTrainer, "_precompute_ref_logps", None)
    assert callable(hook), "TRL no longer has DPOTrainer._precompute_ref_logps"
    assert list(inspect.signature(hook).parameters) == ["self", "dataset", "name", "batch_size"]
    assert SpinDPOTrainer._precompute_ref_logps is not hook
