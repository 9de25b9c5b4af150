"""The vocabulary of ``events.jsonl``: every event kind, the fields each carries, the exit codes,
and the folds over events that more than one reader needs.

``events.jsonl`` is how tina's processes talk: the supervisor, the trainer, the evaluation worker,
``tina stop``/``policy``/``watch``/``import`` and the cockpit write it (through ``RunDir.event``,
which takes a ``Kind``), and everything that shows a run reads it. Nobody spells a kind as a string
literal: writers name a ``Kind``, readers ask ``is_kind``, ``of_kind``, ``last_of`` or one of the
groups below. A file may hold kinds this version does not know (an older or newer tina): readers
skip them (``kind_of`` says None).

The ground floor: the standard library only.
"""

from enum import StrEnum
from typing import Any, Iterable, Literal, Mapping, NotRequired, Sequence, TypedDict


class Kind(StrEnum):
    """What an event records (its ``event`` field)."""

    # a run's life (the CLI and the supervisor)
    LAUNCHED = "launched"
    SUPERVISOR_STARTED = "supervisor_started"
    ATTEMPT_STARTED = "attempt_started"
    ATTEMPT_EXITED = "attempt_exited"
    RESTARTED = "restarted"
    STOP_REQUESTED = "stop_requested"
    STOPPED = "stopped"
    FINISHED = "finished"
    FAILED = "failed"
    WRITE_FAILED = "write_failed"
    STALLED = "stalled"
    BUDGET_REACHED = "budget_reached"
    IMPORTED = "imported"
    # what a person changed
    WATCH_CHANGED = "watch_changed"
    POLICY_CHANGED = "policy_changed"
    # the supervisor's live watch
    TRANSITION = "transition"
    CHECKPOINT_REQUESTED = "checkpoint_requested"
    CHECKPOINT_PINNED = "checkpoint_pinned"
    CHECKPOINT_UNPINNED = "checkpoint_unpinned"
    STOP_SCHEDULED = "stop_scheduled"
    # evaluations (the queue, the worker, the job)
    EVAL_QUEUED = "eval_queued"
    EVAL_STARTED = "eval_started"
    EVAL_FINISHED = "eval_finished"
    EVAL_FAILED = "eval_failed"
    EVAL_CANCELLED = "eval_cancelled"
    EVAL_REFUSED = "eval_refused"   # not queued: its projected cost passes what is left of the budget
    # sweeps (tina_core.sweep): a run waiting for its engine, and what the engine did with it
    QUEUED = "queued"
    CANCELLED = "cancelled"
    SLURM_TASK = "slurm_task"
    REQUEUED = "requeued"


# --- groups readers ask about -------------------------------------------------------------------
# The events that end a supervisor's watch: the run's state is then the event's name.
RUN_ENDED = (Kind.FINISHED, Kind.STOPPED, Kind.FAILED, Kind.CANCELLED)
# What starts a supervisor's watch of a run: ``launched`` (created, its supervisor not up yet) and
# ``supervisor_started`` (run and resume).
STARTS = (Kind.LAUNCHED, Kind.SUPERVISOR_STARTED)
EVAL_KINDS = (Kind.EVAL_QUEUED, Kind.EVAL_STARTED, Kind.EVAL_FINISHED, Kind.EVAL_FAILED, Kind.EVAL_CANCELLED)
EVAL_ENDED = (Kind.EVAL_FINISHED, Kind.EVAL_FAILED, Kind.EVAL_CANCELLED)
EVAL_RESULTS = (Kind.EVAL_FINISHED, Kind.EVAL_FAILED)  # an evaluation's outcome, as announced
# A ``transition`` event's status (and the phase object's): a marker in force is tentative or
# confirmed; rejected takes it back.
TENTATIVE, CONFIRMED, REJECTED = "tentative", "confirmed", "rejected"
MARKED = (TENTATIVE, CONFIRMED)

# --- exit codes ---------------------------------------------------------------------------------
# The trainer's (and, for a stop, `tina run`'s: see supervise.supervisor.EXIT_CODES).
EXIT_FINISHED = 0
EXIT_ERROR = 2
EXIT_DISK_FULL = 74  # EX_IOERR: the run directory could not be written; resume once there is room
EXIT_STOPPED = 75    # EX_TEMPFAIL: stopped on request after saving; `tina resume` continues


# --- the records --------------------------------------------------------------------------------
# One TypedDict per kind: the fields its writers put in. NotRequired: written only sometimes (or
# only by newer versions); a reader uses ``.get`` for those. ``gpus`` means two things: a count in
# ``launched`` and ``attempt_started`` (the trainer's GPUs), the list of GPU ids (``[]`` on CPU) in
# the ``eval_*`` events; ``gpu_count`` reads either. Old run directories hold these same names.
Checkpoint = int | Literal["base"] | None  # an evaluation's checkpoint step; "base" (or None): the base model


class Event(TypedDict):
    time: str    # ISO 8601 UTC, to the millisecond
    ts: float    # epoch seconds
    event: str   # a Kind (a file may hold kinds this version does not know)


class Launched(Event):
    recipe: str           # the recipe file launched
    command: list[str]    # the trainer's command line
    gpus: int             # a count: the GPUs the trainer runs on (0 on CPU)
    gpu_hour_usd: float   # the price per GPU-hour (per CPU-hour on CPU)
    device: str           # the GPU's name, or "cpu"
    gpu_ids: NotRequired[list[int]]   # the GPUs a sweep's queue gave it (CUDA_VISIBLE_DEVICES)
    host: NotRequired[str]            # where it started (a sweep's run: the engine's machine)


class SupervisorStarted(Event):
    pid: int
    resume: bool


class AttemptStarted(Event):
    attempt: int
    pid: int                   # the trainer's (its process group)
    gpus: int                  # a count, as in ``launched``
    resume_from: int | None    # the checkpoint step it resumes from


class AttemptExited(Event):
    attempt: int
    code: int | None           # the exit code; None when a dead supervisor's attempt is closed later
    signal: str | None         # SIGKILL... when killed by one
    step: int | None           # its last logged step
    cpu_s: NotRequired[float]  # the trainer's CPU seconds
    orphan: NotRequired[bool]  # closed by a later supervisor (its own had gone)
    end_ts: NotRequired[float]  # when an orphan really ended (durations prefer it over ts)
    lost_log_bytes: NotRequired[int]  # trainer output a full disk kept out of train.log


class Restarted(Event):
    attempt: int    # the attempt about to start
    delay_s: float
    reason: str


class StopRequested(Event):
    by: str                     # "tina stop", "SIGTERM", "Ctrl-C", a policy...
    pid: NotRequired[int]       # the `tina stop` that asked
    attempt: NotRequired[int]   # the attempt running (when the supervisor records it)


class Stopped(Event):
    step: int | None
    by: NotRequired[str]        # after_transition, budget_usd, SIGTERM, Ctrl-C, trainer, tina stop...
    reason: NotRequired[str]    # a policy stop's
    supervisor_cpu_s: NotRequired[float]


class Finished(Event):
    step: int | None
    supervisor_cpu_s: NotRequired[float]


class Failed(Event):
    reason: str
    supervisor_cpu_s: NotRequired[float]


class WriteFailed(Event):
    file: str           # the file's name in the run directory
    error: str
    attempt: int | None


class Stalled(Event):
    attempt: int
    step: int | None
    after_s: float      # how long no metrics line came


class BudgetReached(Event):
    threshold_usd: float
    cost_usd: float
    attempt: int | None
    step: int | None


class Imported(Event):
    source: str
    sources: list[str]
    format: str
    steps: int
    skipped_rows: int
    detail: str


class WatchChanged(Event):
    signals: list[str] | None   # the canonical keys the marker comes from; None: the automatic choice
    by: str                     # cli, cockpit, import


class PolicyChanged(Event):
    by: str
    after_transition: NotRequired[int | None]   # only the keys that changed; None: off
    budget_usd: NotRequired[float | None]


class Transition(Event):
    status: str                 # tentative, confirmed (MARKED) or rejected
    step: int | None            # the marker's
    signal: str | None
    detected_at: int | None     # the run's step at which the live watch reached this verdict
    alarm_at: NotRequired[int | None]
    size: NotRequired[float | None]
    direction: NotRequired[str | None]
    signals: NotRequired[list[str] | None]
    sure: NotRequired[bool]     # confirmed and not of low confidence: a stop policy may act on it
    was: NotRequired[str]       # rejected: what the withdrawn marker was (tentative or confirmed)
    replaces: NotRequired[dict[str, Any]]  # {step, signal} of a marker that still holds but weighs less


class CheckpointRequested(Event):
    step: int | None
    reason: str


class CheckpointPinned(Event):
    step: int
    side: str                   # before or after the marker
    marker: int | None
    status: str | None


class CheckpointUnpinned(Event):
    step: int


class StopScheduled(Event):
    step: int | None            # None: a scheduled stop cancelled
    by: str
    reason: str


class EvalQueued(Event):
    eval_id: str
    checkpoint: Checkpoint
    task: str
    tasks: list[str]
    gpus: list[int]             # GPU ids (not a count); [] on CPU
    gpus_explicit: bool         # chosen by the user, not by the queue
    why: NotRequired[str]       # "transition": queued by the stop policy


class EvalStarted(Event):
    eval_id: str
    checkpoint: Checkpoint
    task: str
    gpus: list[int]             # GPU ids
    pid: int
    device: str                 # gpu or cpu
    log: str


class EvalFinished(Event):
    eval_id: str
    checkpoint: Checkpoint
    task: str
    gpus: list[int]             # GPU ids
    pid: int
    backend: str
    score: float
    metric: str
    metrics: dict[str, Any]
    scores: dict[str, float]    # {task: score}
    results_path: str | None
    details_path: str | None
    model: str
    seconds: float


class EvalFailed(Event):
    eval_id: str
    checkpoint: Checkpoint
    task: str
    gpus: list[int]             # GPU ids
    pid: int | None
    reason: str
    end_ts: NotRequired[float]  # when a dead worker's evaluation really ended


class EvalCancelled(Event):
    eval_id: str
    checkpoint: Checkpoint
    task: str
    gpus: list[int]             # GPU ids ([] when it was still queued)
    was: str                    # queued or running


class EvalRefused(Event):
    """An evaluation the stop policy would have queued, not queued: its projected cost passes what
    is left of the run's ``stop.budget_usd`` (no eval_id: it never existed)."""

    checkpoint: Checkpoint
    task: str
    why: str                    # what asked for it: "transition" (the stop policy)
    projected_usd: float        # what it would cost (analysis.cost.eval_price)
    left_usd: float             # what was left of the budget for it
    budget_usd: float


class Queued(Event):
    """A sweep's run, created and checked, waiting for its engine to start it (then ``launched``)."""

    recipe: str
    command: list[str]
    gpus: int             # a count, as in ``launched``
    gpu_hour_usd: float
    device: str
    sweep: str            # the sweep's name
    engine: str           # local or slurm


class Cancelled(Event):
    """A queued run that will never start: `tina stop`, the cockpit's ``s``, or its Slurm job gone."""

    by: str
    reason: str


class SlurmTask(Event):
    """A Slurm array task took the run (each requeue is a new one)."""

    job: str              # ARRAYJOB_TASK, as squeue names it
    job_id: str           # the task's own job id
    restart: int          # SLURM_RESTART_COUNT: 0, then one more per requeue
    node: str


class Requeued(Event):
    """The task stopped the run before its time limit and asked Slurm to run it again."""

    job: str
    reason: str


RECORD_TYPES: dict[Kind, type[Event]] = {
    Kind.LAUNCHED: Launched, Kind.SUPERVISOR_STARTED: SupervisorStarted, Kind.ATTEMPT_STARTED: AttemptStarted,
    Kind.ATTEMPT_EXITED: AttemptExited, Kind.RESTARTED: Restarted, Kind.STOP_REQUESTED: StopRequested,
    Kind.STOPPED: Stopped, Kind.FINISHED: Finished, Kind.FAILED: Failed, Kind.WRITE_FAILED: WriteFailed,
    Kind.STALLED: Stalled, Kind.BUDGET_REACHED: BudgetReached, Kind.IMPORTED: Imported,
    Kind.WATCH_CHANGED: WatchChanged, Kind.POLICY_CHANGED: PolicyChanged, Kind.TRANSITION: Transition,
    Kind.CHECKPOINT_REQUESTED: CheckpointRequested, Kind.CHECKPOINT_PINNED: CheckpointPinned,
    Kind.CHECKPOINT_UNPINNED: CheckpointUnpinned, Kind.STOP_SCHEDULED: StopScheduled,
    Kind.EVAL_QUEUED: EvalQueued, Kind.EVAL_STARTED: EvalStarted, Kind.EVAL_FINISHED: EvalFinished,
    Kind.EVAL_FAILED: EvalFailed, Kind.EVAL_CANCELLED: EvalCancelled, Kind.EVAL_REFUSED: EvalRefused,
    Kind.QUEUED: Queued, Kind.CANCELLED: Cancelled, Kind.SLURM_TASK: SlurmTask, Kind.REQUEUED: Requeued,
}


def fields(kind: Kind) -> tuple[str, ...]:
    """The fields a kind's writers put in besides ``time``, ``ts`` and ``event``, in order."""
    return tuple(k for k in RECORD_TYPES[kind].__annotations__ if k not in Event.__annotations__)


# --- asking an event what it is -----------------------------------------------------------------
def as_kind(value: Any) -> Kind:
    """``value`` as a Kind; anything else is a ValueError (a typo fails where it is written)."""
    try:
        return Kind(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an event kind (see tina_core.events.Kind)") from None


def kind_of(e: Mapping[str, Any]) -> Kind | None:
    """The event's kind, or None for one this version does not know (or a record without one)."""
    k = e.get("event")
    return Kind._value2member_map_.get(k) if isinstance(k, str) else None  # type: ignore[return-value]


def is_kind(e: Mapping[str, Any], *kinds: Kind) -> bool:
    return e.get("event") in kinds


def of_kind(events: Iterable[Mapping[str, Any]], *kinds: Kind) -> list[Any]:
    """The events of those kinds, in order."""
    return [e for e in events if e.get("event") in kinds]


def last_of(events: Sequence[Mapping[str, Any]], *kinds: Kind) -> Any | None:
    """The last event of those kinds, or None."""
    for e in reversed(events):
        if e.get("event") in kinds:
            return e
    return None


def gpu_count(e: Mapping[str, Any]) -> int:
    """How many GPUs an event's process held: ``gpus`` is a count (``launched``,
    ``attempt_started``) or a list of ids (the ``eval_*`` events)."""
    g = e.get("gpus")
    return len(g) if isinstance(g, list) else int(g or 0)


# --- folds ---------------------------------------------------------------------------------------
def since_start(events: Sequence[Mapping[str, Any]], *, launched: bool = False,
                pid: int | None = None) -> tuple[Any | None, list[Any]]:
    """The last ``supervisor_started`` and the events after it; with ``launched``, a ``launched``
    counts as a start too (a run created whose supervisor is not up yet); with ``pid``, only the
    start of the supervisor of that pid counts. Without a start: ``(None, every event)``."""
    starts = STARTS if launched else (Kind.SUPERVISOR_STARTED,)
    for i in range(len(events) - 1, -1, -1):
        e = events[i]
        if e.get("event") in starts and (pid is None or e.get("pid") == pid):
            return e, list(events[i + 1:])
    return None, list(events)


def open_attempts(events: Iterable[Mapping[str, Any]]) -> list[int]:
    """Trainer attempts started and never recorded as exited."""
    started: list[Any] = []  # attempt numbers as recorded (an int each)
    exited: set[Any] = set()
    for e in events:
        if e.get("event") == Kind.ATTEMPT_STARTED:
            started.append(e.get("attempt"))
        elif e.get("event") == Kind.ATTEMPT_EXITED:
            exited.add(e.get("attempt"))
    return [a for a in started if a not in exited]


def marker(events: Iterable[Mapping[str, Any]]) -> Any | None:
    """The phase marker in force, as the supervisor saw it: the latest ``transition`` event if it is
    tentative or confirmed; None before any, or once the latest says rejected."""
    last = None
    for ev in events:
        if ev.get("event") == Kind.TRANSITION:
            last = ev
    return last if last is not None and last.get("status") in MARKED else None
