"""Plain supervised fine-tuning (loss on the answer tokens only), used by the replication
benchmark to make an imperfect SFT start model and the equal-compute continued-SFT baseline.

Same chat-template formatting as SPIN's training data, so both start from the same text.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch

from spin_runtime.modeling import models
from spin_runtime.store.atomic import atomic_dir


def encode_pair(tok, prompt: str, answer: str, max_length: int = 128) -> tuple[list[int], list[int]]:
    """Token ids of the chat-formatted pair and labels with the prompt masked (-100)."""
    prefix = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tokenize=False
    )
    p_ids = tok(prefix, add_special_tokens=False)["input_ids"]
    f_ids = tok(full, add_special_tokens=False)["input_ids"][:max_length]
    labels = [-100] * min(len(p_ids), len(f_ids)) + f_ids[len(p_ids) :]
    return f_ids, labels


def sft(
    model_path: str,
    pairs: list[tuple[str, str]],
    out_dir: Path,
    *,
    epochs: float = 1.0,
    max_steps: int | None = None,
    lr: float = 5e-5,
    batch_size: int = 8,
    seed: int = 0,
    threads: int | None = None,
) -> dict:
    """Fine-tune `model_path` on (prompt, answer) pairs and save the result to `out_dir`."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tok = models.load_tokenizer(model_path, padding_side="right")
    model = models.load_model(model_path)
    model.train()
    model.config.use_cache = False
    encoded = [encode_pair(tok, p, a) for p, a in pairs]
    steps_per_epoch = math.ceil(len(encoded) / batch_size)
    total = max_steps or max(1, int(round(steps_per_epoch * epochs)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, total // 10)) * max(0.0, 1 - s / total))
    rng = random.Random(seed)
    order: list[int] = []
    losses: list[float] = []
    t0 = time.time()
    tokens = 0
    for _ in range(total):
        if len(order) < batch_size:
            fresh = list(range(len(encoded)))
            rng.shuffle(fresh)
            order += fresh
        batch = [encoded[i] for i in order[:batch_size]]
        del order[:batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        lab = torch.full((len(batch), width), -100)
        att = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (i_, l_) in enumerate(batch):
            ids[r, : len(i_)] = torch.tensor(i_)
            lab[r, : len(l_)] = torch.tensor(l_)
            att[r, : len(i_)] = 1
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        tokens += int(att.sum())
    model.eval()
    with atomic_dir(Path(out_dir)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return {"steps": total, "final_loss": losses[-1], "losses": losses, "seconds": time.time() - t0, "tokens": tokens}
