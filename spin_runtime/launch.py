"""Every command line that starts a `spin <step>`: the step itself, or torchrun (through `spin
torchrun`, which relays the workers' exit codes) over N nodes × G processes per node. Pure; the operator's Job builders and the local driver put them into
pods/processes.

The node rank is not part of the command: torchrun reads it from `PET_NODE_RANK` (set per pod,
e.g. from the Indexed Job's completion index), so every pod of a training Job runs the same
argv. DeepSpeed comes from the spec through `spin train` itself (DPOConfig), not the launcher.
"""

from __future__ import annotations

from collections.abc import Sequence

from spin_runtime.api.spec import Training
from spin_runtime.errors import SpecConfigError

#: Environment variable torchrun reads as --node_rank (torchrun maps PET_<OPTION> to options).
NODE_RANK_ENV = "PET_NODE_RANK"
#: Module run by every worker process.
CLI_MODULE = "spin_runtime.cli"
DEFAULT_MASTER_PORT = 29500
#: How every command line here starts torchrun: through `spin torchrun` (exit_relay.py), which
#: exits with a worker's deterministic exit code where torchrun itself would exit 1.
TORCHRUN = ("spin", "torchrun")


class LaunchError(SpecConfigError):
    """A launcher command line cannot be built from the given topology."""


def _check(nnodes: int, nproc_per_node: int, master_addr: str, master_port: int) -> None:
    if nnodes < 1:
        raise LaunchError(f"nnodes must be at least 1 (got {nnodes}); set training.nodes")
    if nproc_per_node < 1:
        raise LaunchError(f"nproc_per_node must be at least 1 (got {nproc_per_node})")
    if not master_addr or any(c.isspace() for c in master_addr):
        raise LaunchError(f"master address {master_addr!r} must be a host name or IP without spaces")
    if not 1 <= master_port <= 65535:
        raise LaunchError(f"master port {master_port} must be within 1..65535")


def module_args(step_argv: Sequence[str]) -> list[str]:
    """`["spin", "train", ...]` → `["-m", "spin_runtime.cli", "train", ...]` (each worker runs
    the CLI module; there is no `spin` script path to hand to a launcher)."""
    if not step_argv or step_argv[0] != "spin":
        raise LaunchError(f"a step command must start with 'spin' (got {list(step_argv)[:2]})")
    return ["-m", CLI_MODULE, *step_argv[1:]]


def procs_per_node(training: Training) -> int:
    """Worker processes per training pod: one per GPU, one on CPU-only pods."""
    return max(1, training.gpus_per_node)


def torchrun_argv(
    nnodes: int,
    nproc_per_node: int,
    master_addr: str,
    master_port: int,
    step_argv: Sequence[str],
) -> list[str]:
    """`spin torchrun --nnodes N --nproc_per_node G --master_addr A --master_port P --max_restarts 0
    -m spin_runtime.cli <step> ...`; the node rank comes from $PET_NODE_RANK. Restarts are
    left to Kubernetes (the Job's backoffLimit), where a rerun resumes from the markers."""
    _check(nnodes, nproc_per_node, master_addr, master_port)
    return [
        *TORCHRUN,
        "--nnodes",
        str(nnodes),
        "--nproc_per_node",
        str(nproc_per_node),
        "--master_addr",
        master_addr,
        "--master_port",
        str(master_port),
        "--max_restarts",
        "0",
        *module_args(step_argv),
    ]


def training_argv(
    training: Training, master_addr: str, step_argv: Sequence[str], master_port: int = DEFAULT_MASTER_PORT
) -> list[str]:
    """The command of every training pod: `spin train` itself for one process in total, else
    torchrun over `training.nodes` × `procs_per_node`."""
    nproc = procs_per_node(training)
    if training.nodes == 1 and nproc == 1:
        return list(step_argv)
    if training.nodes == 1:
        return standalone_argv(nproc, step_argv)
    return torchrun_argv(training.nodes, nproc, master_addr, master_port, step_argv)


def standalone_argv(nproc_per_node: int, step_argv: Sequence[str]) -> list[str]:
    """One node, several processes: `spin torchrun --standalone` (a local rendezvous, no Service)."""
    if nproc_per_node < 1:
        raise LaunchError(f"nproc_per_node must be at least 1 (got {nproc_per_node})")
    return [
        *TORCHRUN, "--standalone", "--nnodes", "1", "--nproc_per_node", str(nproc_per_node),
        "--max_restarts", "0", *module_args(step_argv),
    ]  # fmt: skip


def torchrun_from_env_argv(step_argv: Sequence[str]) -> list[str]:
    """`spin torchrun -m spin_runtime.cli <step> ...` with every rendezvous option left to
    torchrun's `PET_*` environment variables, which Kubeflow's training operator sets on each
    replica (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, MASTER_ADDR, MASTER_PORT)."""
    return [*TORCHRUN, *module_args(step_argv)]


# --------------------------------------------------------------------------- the pod contract
# Facts the operator's pods and the runtime share: the environment variables the operator sets
# (the exit codes a Job must not retry are spin_runtime.errors').

#: The SpinRun's uid, set on every pod of a cluster run (the runtime records it in markers).
RUN_UID_ENV = "SPIN_RUN_UID"
#: torchrun's --rdzv-conf as an environment variable (torchrun reads PET_<OPTION>).
RDZV_CONF_ENV = "PET_RDZV_CONF"
#: Port on which a step pod serves its live progress (`GET PROGRESS_HTTP_PATH`, the step's
#: progress record as JSON); the operator polls it on running pods.
PROGRESS_PORT = 8765
#: The container port's name (for NetworkPolicies and readers of the pod spec).
PROGRESS_PORT_NAME = "progress"
#: Environment variable that tells a step to serve its progress, and on which port.
PROGRESS_PORT_ENV = "SPIN_PROGRESS_PORT"
PROGRESS_HTTP_PATH = "/progress"
#: Set to 1 on every step pod: the step keeps its output in iter-<k>/logs/ on the run volume too
#: (spin_runtime/steps/step_log.py), so the logs outlive the pods.
STEP_LOGS_ENV = "SPIN_STEP_LOGS"


def rendezvous_conf(timeout_seconds: int) -> str:
    """torchrun's rendezvous configuration making the static rendezvous wait `timeout_seconds`
    for every node (torchrun's default is 600 s): its TCPStore client retries the master's
    address, DNS failures included, until then."""
    if timeout_seconds < 1:
        raise LaunchError(f"the rendezvous timeout must be at least 1 second (got {timeout_seconds})")
    return f"timeout={int(timeout_seconds)}"
