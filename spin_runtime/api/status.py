"""The SpinRun status: phases, step names, condition types, reasons and per-iteration progress;
the one place that names a phase, a step, a condition type or a reason."""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import ConfigDict, Field

from spin_runtime.api.base import MAX_ITERATIONS, SpinModel

Phase = Literal["Pending", "Generating", "Converting", "Training", "Evaluating", "Complete", "Failed", "Suspended"]
#: Every phase, in display order.
PHASES: tuple[Phase, ...] = ("Pending", "Generating", "Converting", "Training", "Evaluating", "Complete", "Failed", "Suspended")

StepName = Literal["generate", "convert", "train", "sft", "evaluate"]
#: The steps of an iteration, in order (sft: the continued-SFT arm, when evaluation.sftBaseline asks).
STEP_ORDER: tuple[StepName, ...] = ("generate", "convert", "train", "sft", "evaluate")
#: The steps that train a model (torchrun, the training launcher and resources, resumable checkpoints).
TRAINING_STEPS: frozenset[StepName] = frozenset({"train", "sft"})
#: The step whose output is the iteration's model: its success is recorded as status.lastCheckpoint.
MODEL_STEP: StepName = "train"
#: status.phase while a step runs.
STEP_PHASE: dict[StepName, Phase] = {
    "generate": "Generating",
    "convert": "Converting",
    "train": "Training",
    "sft": "Training",
    "evaluate": "Evaluating",
}


class _Vocabulary(str, enum.Enum):
    """Names written into the status as strings: members compare, hash and format as their value
    (StrEnum, which Python 3.10 lacks). As kopf's `Reason`: no bare strings, no typos."""

    def __str__(self) -> str:
        return str(self.value)

    __format__ = str.__format__


class ConditionType(_Vocabulary):
    """The type of each condition a SpinRun carries."""

    COMPLETE = "Complete"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    PROGRESSING = "Progressing"
    VALIDATION_FAILED = "ValidationFailed"
    QUEUE_UNMANAGED = "QueueUnmanaged"


class Reason(_Vocabulary):
    """Every CamelCase reason the operator writes: of the phase (status.reason), of a condition,
    and of an Event."""

    # the run
    STARTED = "Started"
    RUN_COMPLETED = "RunCompleted"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    TTL_EXPIRED = "TTLExpired"
    VALIDATION_FAILED = "ValidationFailed"
    VALID = "Valid"
    WAITING_FOR_OLD_OBJECTS = "WaitingForOldObjects"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    # the claim and the pinned spec
    CLAIM_CREATED = "ClaimCreated"
    CLAIM_REUSED = "ClaimReused"
    SPEC_CONFIG_MAP_INVALID = "SpecConfigMapInvalid"
    # iterations and steps
    ITERATION_STARTED = "IterationStarted"
    ITERATION_COMPLETED = "IterationCompleted"
    STOPPING_ITERATIONS = "StoppingIterations"
    STEP_STARTED = "StepStarted"
    STEP_RUNNING = "StepRunning"
    STEP_SUCCEEDED = "StepSucceeded"
    STEP_RETRYING = "StepRetrying"
    STEP_FAILED = "StepFailed"
    WAITING_FOR_PODS = "WaitingForPods"
    WAITING_FOR_PREVIOUS_ATTEMPT = "WaitingForPreviousAttempt"
    # queues, launchers, gangs
    WAITING_FOR_QUOTA = "WaitingForQuota"
    KUEUE_DISABLED = "KueueDisabled"
    KUEUE_ENABLED = "KueueEnabled"
    NOT_QUEUED = "NotQueued"
    LAUNCHER_DISABLED = "LauncherDisabled"
    LAUNCHER_UNAVAILABLE = "LauncherUnavailable"
    GANG_SCHEDULING_DISABLED = "GangSchedulingDisabled"
    # a pod that cannot start (kube.objects.PodState.trouble)
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
    CREATE_CONTAINER_ERROR = "CreateContainerError"
    UNSCHEDULABLE = "Unschedulable"
    CLAIM_PENDING = "ClaimPending"
    # an action the API server refused (reconcile.refusals)
    CREATE_REFUSED = "CreateRefused"
    CREATE_RETRYING = "CreateRetrying"
    REQUEST_RETRYING = "RequestRetrying"


#: The type of a Kubernetes Event.
EventType = Literal["Normal", "Warning"]


class Condition(SpinModel):
    """A Kubernetes-style condition."""

    type: ConditionType = Field(..., description="Condition type.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field("", max_length=128, description="CamelCase reason.")
    message: str = Field("", max_length=4096, description="Human-readable message.")
    last_transition_time: str | None = Field(None, description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, description="Spec generation the condition was computed from.")


class Checkpoint(SpinModel):
    """Where the newest trained model is."""

    iteration: int = Field(..., description="Iteration that produced it.")
    path: str = Field(..., description="Path on the run volume.")
    time: str | None = Field(None, description="When it was recorded (RFC 3339).")


class StepStatus(SpinModel):
    """One step of one iteration."""

    step: StepName = Field(..., description="generate, convert, train, sft or evaluate.")
    job_name: str | None = Field(None, description="Job running the step.")
    start_time: str | None = Field(None, description="When the step's Job was created.")
    completion_time: str | None = Field(None, description="When it succeeded.")
    retries: int = Field(0, description="Failed attempts so far.")


class IterationStatus(SpinModel):
    """Progress of one iteration."""

    iteration: int = Field(..., description="Iteration index.")
    generation: int | None = Field(None, description="Spec generation the iteration started under; its steps keep those settings.")
    steps: list[StepStatus] = Field(default_factory=list, description="Steps started so far.")
    metrics: dict[str, float] = Field(default_factory=dict, description="A few metrics (reward margin, accuracy, exact match).")


class StepProgress(SpinModel):
    """Live progress of the running step, as its pods report it (absent while none runs)."""

    iteration: int = Field(..., description="Iteration of the running step.")
    step: StepName = Field(..., description="The running step.")
    unit: str = Field("", max_length=32, description="What done/total count: prompts (generate), steps (train), examples.")
    done: int | None = Field(None, ge=0, description="Work done so far (all shards of generation together).")
    total: int | None = Field(None, ge=0, description="Work in all (None until the step knows it).")
    shards_done: int | None = Field(None, ge=0, description="Generation shards finished.")
    shards_total: int | None = Field(None, ge=0, description="Generation shards in all.")
    loss: float | None = Field(None, description="Training loss at the last logged step.")
    margin: float | None = Field(None, description="Training reward margin (chosen − rejected) at the last logged step.")
    eta_seconds: int | None = Field(None, ge=0, description="Seconds left at the current rate (None until known).")
    eta: str | None = Field(None, max_length=16, description="eta_seconds for people: 42s, 3m05s, 1h02m.")
    summary: str = Field("", max_length=256, description="One line: e.g. `shards 1/4 · 812/2000 prompts` or `step 40/120 · loss 0.41 · margin 0.93`.")
    updated: str | None = Field(None, description="When a pod last reported (RFC 3339).")


class SpinRunStatus(SpinModel):
    """Observed state of a SpinRun, written only by the operator's reconcile."""

    model_config = ConfigDict(extra="ignore")  # tolerate kopf's own bookkeeping keys

    observed_generation: int | None = Field(None, description="Spec generation last acted on.")
    phase: Phase = Field("Pending", description="Pending, Generating, Converting, Training, Evaluating, Complete, Failed or Suspended.")
    reason: str | None = Field(None, description="CamelCase reason of the phase.")
    message: str | None = Field(None, description="Human-readable explanation of the phase.")
    current_iteration: int | None = Field(None, description="Iteration in progress.")
    completed_iterations: int = Field(0, description="Iterations finished.")
    last_checkpoint: Checkpoint | None = Field(None, description="Newest trained checkpoint.")
    iterations: list[IterationStatus] = Field(
        default_factory=list, max_length=MAX_ITERATIONS, description="Per-iteration progress (one entry per iteration)."
    )
    progress: StepProgress | None = Field(None, description="Live progress of the running step (shards, step of total, loss, margin, ETA).")
    conditions: list[Condition] = Field(default_factory=list, description="Complete, Failed, Suspended, Progressing.")
    start_time: str | None = Field(None, description="When the run started.")
    suspended_seconds: int = Field(0, ge=0, description="Seconds the run spent suspended (before the current suspension); activeDeadlineSeconds does not count them.")
    completion_time: str | None = Field(None, description="When the run finished.")
