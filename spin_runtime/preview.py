"""`spin preview`: what the model really sees for the first rows of a run — the generation prompt
exactly as the engine receives it (`chat.encode_prompts`), and the chosen (real) and rejected
(generated) training sequences as TRL tokenises and collates them (TRL's own `DPOTrainer`
dataset preparation and `DataCollatorForPreference`, fed the rows of `chat.prepare_rows`), with
the prompt/answer boundary, the positions without loss and those not attended marked.

One function per concern, so that options of prompt building, truncation and collation reach
the preview through the same code that generation and training run: `generation_ids` (prompt
building), `training_rows` (pair rows and prompt truncation), `training_sequences` (tokenisation
and collation).
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_runtime.api.spec import SpinRunSpec
from spin_runtime.modeling.chat import encode_prompts
from spin_runtime.plan import hparams, layout
from spin_runtime.steps import trl_args

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: Stands in for the generated answer when no run data exists (and --generate is not given).
PLACEHOLDER = "<the model's generated answer goes here>"
#: Marks in the text view.
NEWLINE = "↵"
PROMPT_MARK = "┊prompt · no loss┊"
ANSWER_MARK = "┊answer · loss┊"
CUT_MARK = "┊cut by training.maxLength · not trained┊"
UNATTENDED = ("⟦", "⟧")


@dataclass(frozen=True)
class TrainingSequence:
    """One training sequence (prompt + answer) as the trainer gets it, and what was cut."""

    input_ids: list[int]
    attention_mask: list[int]
    completion_mask: list[int]
    cut_ids: list[int] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        """Tokens before the first loss position (the prompt)."""
        return next((i for i, m in enumerate(self.completion_mask) if m), len(self.completion_mask))

    @property
    def loss_tokens(self) -> int:
        return sum(self.completion_mask)

    @property
    def unattended(self) -> list[int]:
        """Positions inside the sequence whose attention mask is 0."""
        return [i for i, a in enumerate(self.attention_mask) if not a]


@dataclass(frozen=True)
class RowPreview:
    """The generation prompt and the two training sequences of one row."""

    id: str
    prompt: str
    generation_ids: list[int]
    chosen: TrainingSequence | None
    rejected: TrainingSequence | None
    generated_from: str
    dropped: str | None = None


# --------------------------------------------------------------------------- the three concerns


def generation_ids(tok: PreTrainedTokenizerBase, spec: SpinRunSpec, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids the generation engine receives for each prompt."""
    return encode_prompts(tok, prompts, spec.generation.prompt_format, system=spec.system_prompt)


def training_rows(tok: PreTrainedTokenizerBase, spec: SpinRunSpec, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows training hands to TRL: conversational rows (training.collator trl, truncation
    included) or the original's token ids (training.collator original), as `spin train` builds them."""
    from spin_runtime.steps.train import training_rows

    return training_rows(list(rows), tok, spec)


def training_sequences(
    tok: PreTrainedTokenizerBase, spec: SpinRunSpec, row: dict[str, Any]
) -> tuple[TrainingSequence, TrainingSequence] | None:
    """The chosen and rejected sequences of one prepared row exactly as TRL trains on them: its
    DPOTrainer dataset preparation (chat template, prompt/answer split where the prompt and the
    conversation diverge, rows whose prompt fills maxLength dropped) and its preference collator
    (truncation to maxLength, attention and completion masks), with the DPOConfig values
    `spin train` passes. None when TRL drops the row."""
    import datasets
    from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

    kwargs = trl_args.dpo_config_kwargs(
        spec,
        hparams.hparams(spec, spec.start_iteration),
        on_gpu=spec.training.gpus_per_node > 0,
        output_dir="preview",
        attn_implementation="sdpa",
    )
    args = types.SimpleNamespace(
        dataset_num_proc=None, max_length=kwargs["max_length"], truncation_mode=kwargs["truncation_mode"]
    )
    if "prompt_ids" in row:  # training.collator original: token ids built already, TRL's preparation skipped
        from spin_runtime.modeling.original_collator import original_collator

        example = {k: list(row[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
        collator = original_collator(tok.pad_token_id, tok.eos_token_id, args.max_length)
    else:
        conversational = {k: row[k] for k in ("prompt", "chosen", "rejected")}
        datasets.disable_progress_bars()
        try:
            prepared = DPOTrainer._prepare_dataset(
                types.SimpleNamespace(_tokenizer=tok), datasets.Dataset.from_list([conversational]), tok, args, "preview"
            )
        finally:
            datasets.enable_progress_bars()
        if len(prepared) == 0:
            return None
        example = prepared[0]
        collator = DataCollatorForPreference(
            pad_token_id=tok.pad_token_id, max_length=args.max_length, truncation_mode=args.truncation_mode
        )
    batch = collator([example])
    out: list[TrainingSequence] = []
    for i, answer in enumerate((example["chosen_ids"], example["rejected_ids"])):
        full = list(example["prompt_ids"]) + list(answer)
        kept = len(full) if args.max_length is None else min(len(full), args.max_length)
        cut = full[kept:] if args.truncation_mode == "keep_start" else full[: len(full) - kept]
        out.append(
            TrainingSequence(
                batch["input_ids"][i, :kept].tolist(),
                batch["attention_mask"][i, :kept].tolist(),
                batch["completion_mask"][i, :kept].tolist(),
                cut,
            )
        )
    return out[0], out[1]


# --------------------------------------------------------------------------- rows


def preview_rows(
    tok: PreTrainedTokenizerBase, spec: SpinRunSpec, rows: Sequence[dict[str, Any]], generated_from: str
) -> list[RowPreview]:
    """Generation prompt and training sequences of `rows` (prompt, real, generated)."""
    gen = generation_ids(tok, spec, [r["prompt"] for r in rows])
    prepared = training_rows(tok, spec, rows)
    out: list[RowPreview] = []
    for r, ids, prep in zip(rows, gen, prepared, strict=True):
        seqs = training_sequences(tok, spec, prep)
        dropped = None
        if seqs is None:
            dropped = "TRL drops this row: its prompt alone fills training.maxLength (keep_start truncation)"
        out.append(
            RowPreview(
                id=str(r.get("id")),
                prompt=r["prompt"],
                generation_ids=ids,
                chosen=seqs[0] if seqs else None,
                rejected=seqs[1] if seqs else None,
                generated_from=generated_from,
                dropped=dropped,
            )
        )
    return out


def load_rows(spec: SpinRunSpec, iteration: int, n: int, run_dir: Path | None) -> tuple[list[dict[str, Any]], str]:
    """The first `n` training rows of iteration k and where their generated answers come from:
    the run directory's converted data, the spec's syntheticData, else the SFT data with a
    placeholder answer."""
    from spin_runtime.data.pairs import read_pairs

    if run_dir is not None:
        path = Path(run_dir) / layout.data_path(iteration, "train")
        if path.exists():
            return read_pairs(path)[:n], f"generated answers from {path}"
    given = hparams.synthetic_data_for(spec, iteration)
    if given is not None:
        from spin_runtime.data.synthetic import load_synthetic

        train, _ = load_synthetic(given)
        return [r.to_dict() for r in train[:n]], f"generated answers from syntheticData of iteration {iteration}"
    from spin_runtime.data.sft import load_sft

    train, _ = load_sft(spec)
    rows = [{**r.to_dict(), "generated": PLACEHOLDER} for r in train[:n]]
    return rows, "a placeholder generated answer (no run data; pass --run-dir, or --generate to decode)"


# --------------------------------------------------------------------------- text


def _visible(text: str, indent: str) -> str:
    """Newlines shown as ↵ and continued on an indented line (no trailing blanks)."""
    return "\n".join(line.rstrip() for line in text.replace("\n", f"{NEWLINE}\n{indent}").split("\n")).rstrip()


def render_sequence(tok: PreTrainedTokenizerBase, seq: TrainingSequence, indent: str = "    ") -> str:
    """The sequence as text: the prompt and answer parts marked, tokens not attended in ⟦ ⟧,
    newlines shown as ↵, and what maxLength cut at the end."""
    parts: list[str] = []
    state: tuple[int, int] | None = None
    run: list[int] = []

    def flush() -> None:
        if not run or state is None:
            return
        text = tok.decode(run, skip_special_tokens=False)
        parts.append(f"{UNATTENDED[0]}{text}{UNATTENDED[1]}" if not state[1] else text)

    for tid, att, loss in zip(seq.input_ids, seq.attention_mask, seq.completion_mask, strict=True):
        new = (loss, att)
        if new != state:
            flush()
            if state is None or new[0] != state[0]:
                parts.append(ANSWER_MARK if loss else PROMPT_MARK)
            state, run = new, []
        run.append(tid)
    flush()
    if seq.cut_ids:
        parts.append(CUT_MARK + tok.decode(seq.cut_ids, skip_special_tokens=False))
    return indent + _visible("".join(parts), indent)


def token_table(tok: PreTrainedTokenizerBase, seq: TrainingSequence, indent: str = "    ") -> str:
    """One line per token: position, id, token, attention mask, loss mask."""
    lines = [f"{indent}{'pos':>5} {'id':>7}  attn loss  token"]
    for i, (tid, att, loss) in enumerate(zip(seq.input_ids, seq.attention_mask, seq.completion_mask, strict=True)):
        token = tok.convert_ids_to_tokens(tid)
        lines.append(f"{indent}{i:>5} {tid:>7}  {att:>4} {loss:>4}  {token!r}")
    return "\n".join(lines)


def _prompt_comparison(gen: list[int], seq: TrainingSequence, tok: PreTrainedTokenizerBase) -> str:
    train = seq.input_ids[: seq.prompt_tokens]
    if gen == train:
        return "the training prompt is the generation prompt, token for token"
    i = next((j for j, (a, b) in enumerate(zip(gen, train, strict=False)) if a != b), min(len(gen), len(train)))
    return (
        f"the training prompt differs from the generation prompt from token {i} on "
        f"(generation: {tok.decode(gen[i : i + 8], skip_special_tokens=False)!r}…, "
        f"training: {tok.decode(train[i : i + 8], skip_special_tokens=False)!r}…)"
    )


def format_preview(
    tok: PreTrainedTokenizerBase, spec: SpinRunSpec, previews: Sequence[RowPreview], tokens: bool = False
) -> str:
    """The preview as text, one block per row."""
    generation, training = spec.generation, spec.training
    fmt = "the chat template with the generation prompt" if generation.prompt_format == "chat" else (
        "the instruction string, no special tokens"
    )
    head = [
        f"Generation prompts: generation.promptFormat {generation.prompt_format} ({fmt}); "
        f"systemPrompt {'unset (no system message)' if spec.system_prompt is None else repr(spec.system_prompt)}; "
        f"training: collator {training.collator}, truncation {training.truncation}, maxLength {training.max_length}, "
        f"maxPromptLength {training.max_prompt_length}.",
        f"Marks: {PROMPT_MARK} / {ANSWER_MARK} = where the loss starts; "
        f"{UNATTENDED[0]}…{UNATTENDED[1]} = attention mask 0; {NEWLINE} = newline; {CUT_MARK} = dropped.",
    ]
    if previews:
        head.append(f"Rows: {previews[0].generated_from}.")
    blocks = ["\n".join(head)]
    for i, preview in enumerate(previews):
        lines = [f"── row {i} (id {preview.id}) " + "─" * 20]
        gen_text = tok.decode(preview.generation_ids, skip_special_tokens=False)
        lines.append(f"  generation prompt ({len(preview.generation_ids)} tokens):")
        lines.append("    " + _visible(gen_text, "    "))
        if preview.dropped:
            lines.append(f"  {preview.dropped}")
        for name, seq in (("chosen = real answer", preview.chosen), ("rejected = generated answer", preview.rejected)):
            if seq is None:
                continue
            masked = seq.unattended
            lines.append(
                f"  {name}: {len(seq.input_ids)} tokens = {seq.prompt_tokens} prompt (no loss) + "
                f"{len(seq.input_ids) - seq.prompt_tokens} answer ({seq.loss_tokens} with loss); "
                + (f"attention mask 0 at positions {masked}" if masked else "every token attended")
                + (f"; {len(seq.cut_ids)} tokens cut by maxLength" if seq.cut_ids else "")
            )
            lines.append(render_sequence(tok, seq))
            if tokens:
                lines.append(token_table(tok, seq))
        if preview.chosen is not None:
            lines.append("  " + _prompt_comparison(preview.generation_ids, preview.chosen, tok))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def run_preview(
    spec: SpinRunSpec,
    *,
    rows: int = 3,
    iteration: int | None = None,
    run_dir: Path | None = None,
    generate: bool = False,
    tokens: bool = False,
) -> str:
    """`spin preview`: load the iteration's tokenizer and first rows, and format the preview."""
    from spin_runtime.modeling import models

    k = spec.start_iteration if iteration is None else iteration
    ref = hparams.start_model(spec, k)
    if ref.run_path is not None and (run_dir is None or not (Path(run_dir) / ref.run_path).exists()):
        ref = hparams.ModelRef(source=spec.start_checkpoint or spec.model)  # same tokenizer as the run's start model
    model_path = models.resolve(ref, Path(run_dir) if run_dir else Path("."))
    tok = models.load_tokenizer(model_path, padding_side="right")
    data, source = load_rows(spec, k, rows, run_dir)
    if generate and source.startswith("a placeholder"):
        from spin_runtime.modeling.decoding import transformers_generate

        on_gpu = models.gpu_available()
        model = models.load_model(
            model_path, dtype=models.resolve_dtype(spec.generation.dtype, on_gpu), device="cuda" if on_gpu else "cpu"
        )
        gen_tok = models.load_tokenizer(model_path, padding_side="left")
        gen = spec.generation.model_copy(update={"engine": "transformers"})
        answers = transformers_generate(model, gen_tok, [r["prompt"] for r in data], gen, progress=False)
        data = [{**r, "generated": a} for r, a in zip(data, answers, strict=True)]
        source = f"answers generated now by {ref.describe()} (transformers engine, generation settings of the spec)"
    previews = preview_rows(tok, spec, data, source)
    title = f"spin preview: iteration {k}, tokenizer of {ref.describe()}, first {len(previews)} training row(s)"
    return title + "\n" + format_preview(tok, spec, previews, tokens=tokens)
