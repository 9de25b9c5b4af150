"""The trainer process: ``python -m tina_core.train RUN_DIR`` (or under ``accelerate launch``).

Reads ``RUN_DIR/recipe.yaml`` and trains a LoRA adapter with TRL's own ``GRPOTrainer``. The
``TinaCallback`` is the run directory's writer: one ``metrics.jsonl`` line per log call (rank 0),
a ``tina-complete.json`` marker in each fully saved checkpoint, the ring of adapter snapshots
(``tina_core.train.snapshots``), the stop at ``stop_at_step``, and a graceful stop on SIGTERM (save
at the end of the current step, exit 75). The supervisor's requests come as events in
``events.jsonl`` (``checkpoint_requested``: save at the end of this step; ``stop_scheduled``: save
and stop at that step), read by rank 0 and agreed by every rank with the stop flag. Resumes from the
latest complete checkpoint; a half-written one is moved aside.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

from tina_core.events import EXIT_DISK_FULL, EXIT_ERROR, EXIT_FINISHED, EXIT_STOPPED, Kind, kind_of
from tina_core.recipe.configs import build_grpo_config, build_lora_config
from tina_core.recipe.loader import Recipe, load_recipe, resolve_base_model
from tina_core.rundir import (CHECKPOINT_COMPLETE, CHECKPOINT_RE, DISK_FULL_ERRNOS, JsonlTail, RunDir, RunInfo,
                              TinaError, tina_home, write_error_text)
from tina_core.train import snapshots
from tina_core.train.pace import Pace

PROBE_BYTES = 64 * 1024

# Keys worth a glance in the one-line-per-step stdout summary.
_SUMMARY_KEYS = (("reward", "reward"), ("kl", "kl"), ("completions/mean_length", "len"), ("loss", "loss"),
                 ("learning_rate", "lr"), ("step_time", "s/step"))


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _home_for(run_dir: RunDir) -> Path:
    """The workspace of a run: $TINA_HOME, else the folder holding runs/<id>/."""
    if os.environ.get("TINA_HOME"):
        return tina_home()
    return run_dir.path.parent.parent


class StopRequest:
    """The SIGTERM handler: it only raises a flag, so the step in flight finishes; the callback then
    saves and stops at the end of it."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum=None, frame=None) -> None:
        self.requested = True

    def install(self) -> "StopRequest":
        signal.signal(signal.SIGTERM, self)
        return self


class Requests:
    """What the supervisor asked of this attempt, from ``events.jsonl``: the events after this
    attempt's own ``attempt_started`` (earlier ones were for attempts gone). ``poll`` reads what is
    new (a stat when nothing is)."""

    def __init__(self, run_dir: RunDir, attempt: int) -> None:
        self.attempt = attempt
        self._tail = JsonlTail(run_dir.events)
        self._ours = False
        self.save_reason: str | None = None   # a checkpoint asked for, not yet saved
        self.stop_step: int | None = None     # save and stop at the end of this step
        self.stop_reason: str | None = None

    def poll(self) -> None:
        records, _ = self._tail.read()
        for ev in records:
            kind = kind_of(ev)
            if kind is Kind.ATTEMPT_STARTED:
                self._ours = ev.get("attempt") == self.attempt
            elif not self._ours:
                continue
            elif kind is Kind.CHECKPOINT_REQUESTED:
                self.save_reason = str(ev.get("reason") or "asked")
            elif kind is Kind.STOP_SCHEDULED:
                step = ev.get("step")
                self.stop_step = step if isinstance(step, int) and not isinstance(step, bool) else None
                self.stop_reason = ev.get("reason")


def make_callback(run_dir: RunDir, recipe: Recipe, attempt: int, stop: StopRequest | None = None):
    """The ``TrainerCallback`` that writes the run directory (built lazily: transformers is heavy)."""
    from transformers import TrainerCallback

    class TinaCallback(TrainerCallback):
        def __init__(self) -> None:
            self.stop_at = recipe.stop_at_step
            self.stop = stop or StopRequest()
            self.stopped_by_signal = False
            self.stopped_on_schedule: str | None = None
            self.requests = Requests(run_dir, attempt)
            self.pace = Pace(run_dir, attempt)
            self.keep = int(recipe.grpo.get("save_total_limit") or 0)  # 0: keep every checkpoint
            self.ring = snapshots.ring_size(recipe)
            self._ring_failed = False
            self._adapter_size = 0

        def _agreed(self, args, scheduled: bool) -> tuple[bool, bool, bool]:
            """(stop now, save now, stop on schedule now): every rank must save and stop at the
            same step or the collectives hang. SIGTERM reaches every rank; the supervisor's
            requests only rank 0, which reads them."""
            save = self.requests.save_reason is not None
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
                return self.stop.requested, save, scheduled
            import torch

            flags = torch.tensor([float(self.stop.requested), float(save), float(scheduled)], device=args.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            asked, save, scheduled = flags.tolist()
            return asked > 0, save > 0, scheduled > 0

        def _scheduled_stop(self, step: int) -> bool:
            """Rank 0: whether the supervisor's scheduled stop falls at this step, once its watch
            has judged what this attempt logged (tina_core.train.pace): never ahead of it by more
            than the policy's lead, and a stop cancelled or moved meanwhile never stops it."""
            self.requests.poll()
            lead = self.pace.lead()
            if lead is not None:
                self.pace.wait_until_judged(self.pace.logged_by(step - lead), lambda: self.stop.requested)
                self.requests.poll()
            planned = self.requests.stop_step
            while planned is not None and planned <= step:
                self.pace.wait_until_judged(self.pace.logged_by(step), lambda: self.stop.requested)
                self.requests.poll()
                if self.requests.stop_step == planned:
                    return True
                planned = self.requests.stop_step
            return False

        def on_step_end(self, args, state, control, model=None, **kwargs):
            at_stop = state.global_step >= self.stop_at
            scheduled = state.is_world_process_zero and not at_stop and self._scheduled_stop(state.global_step)
            asked, save, on_schedule = self._agreed(args, scheduled)  # a collective: every rank, every step
            self.stopped_by_signal = asked and not at_stop  # a stop asked at the last step is a finish
            if on_schedule:
                self.stopped_on_schedule = self.requests.stop_reason or f"scheduled at step {state.global_step}"
            if asked or at_stop or on_schedule:
                # Save here even when the step is not a multiple of save_steps.
                control.should_save = True
                control.should_training_stop = True
            if save:
                control.should_save = True
                if state.is_world_process_zero:
                    print(f"checkpoint asked for at step {state.global_step}: {self.requests.save_reason}", flush=True)
                self.requests.save_reason = None
            if not control.should_save and state.is_world_process_zero and model is not None:
                self._snapshot(model, state.global_step)
            return control

        def _snapshot(self, model, step: int) -> None:
            """The adapter of this step into the ring (a saved checkpoint holds it anyway). A
            snapshot that fails (a full disk) is skipped, said once: the metrics line and the
            next checkpoint then meet the same disk and say so."""
            if self.ring <= 0:
                return
            if not self._adapter_size:
                self._adapter_size = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
            try:
                snapshots.write_snapshot(run_dir, step, lambda d: save_adapter(model, d), self.ring,
                                         attempt=attempt, size=self._adapter_size)
            except Exception as e:
                if not self._ring_failed:
                    self._ring_failed = True
                    print(f"tina: adapter snapshot of step {step} skipped: {type(e).__name__}: {e}", flush=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            run_dir.log_metrics(state.global_step, attempt, logs)
            if "train_runtime" not in logs:
                self.pace.note_logged(state.global_step)
                parts = [f"{short} {logs[k]:.4g}" for k, short in _SUMMARY_KEYS if isinstance(logs.get(k), (int, float))]
                fmt = [f"{k.split('/')[1]} {v:.3f}" for k, v in logs.items()
                       if k.startswith("rewards/") and k.endswith("/mean") and isinstance(v, (int, float))]
                print(f"step {state.global_step}/{self.stop_at} " + " ".join(fmt + parts), flush=True)

        def on_save(self, args, state, control, **kwargs):
            import torch.distributed as dist

            # Every rank has written its part of the checkpoint (optimizer shards under ZeRO) once
            # all reach here; only then is it marked complete.
            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            if state.is_world_process_zero:
                if run_dir.checkpoint_path(state.global_step).is_dir():
                    run_dir.mark_complete(state.global_step, attempt)
                    print(f"saved checkpoint-{state.global_step}", flush=True)
                    if self.keep:
                        gone = snapshots.rotate(run_dir, self.keep)
                        if gone:
                            print(f"save_total_limit {self.keep}: removed checkpoint(s) {gone}", flush=True)
            return control

    return TinaCallback()


def save_adapter(model, folder: Path) -> None:
    """The LoRA adapter's files as PEFT's ``save_pretrained`` writes them (weights, then the config
    as for inference), without the model card it renders each time: a third of the cost, which
    counts when the ring takes one every step of the tiny recipe."""
    import dataclasses

    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    name = model.active_adapter if isinstance(model.active_adapter, str) else "default"
    state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}
    save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = model.peft_config[name]
    base = config.base_model_name_or_path or getattr(model.get_base_model(), "name_or_path", None)
    dataclasses.replace(config, inference_mode=True, base_model_name_or_path=base).save_pretrained(str(folder))


def set_aside_partial_checkpoints(run_dir: RunDir) -> list[Path]:
    """Move checkpoints without the completion marker out of Trainer's sight (its resume and
    rotation glob ``checkpoint-*``): they were cut off mid-save. Kept under ``.partial/``."""
    moved: list[Path] = []
    if not run_dir.checkpoints.is_dir():
        return moved
    complete = set(run_dir.checkpoint_steps(evaluable=True))  # pinned snapshots are whole too
    for p in sorted(run_dir.checkpoints.iterdir()):
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and int(m.group(1)) not in complete:
            dest = run_dir.checkpoints / ".partial" / p.name
            dest.parent.mkdir(exist_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(p, dest)
            moved.append(dest)
    return moved


QWEN_PAD_TOKEN = "<|fim_pad|>"


def load_tokenizer(recipe: Recipe, model_path: str):
    """The model's tokenizer, with Tina's choices for a Qwen2-architecture base (as the distilled
    model is): a pad token distinct from EOS, and the open-r1 template without a "<think>" prefill
    (the format reward must see the tag). Decided by the model's config, not its name: a local
    copy or a fine-tune has any name. The tiny model is a Qwen2 too, but keeps its own template,
    which its warm start was trained on."""
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    if not recipe.is_tiny and AutoConfig.from_pretrained(model_path).model_type == "qwen2":
        from tina_core.recipe.prompts import REASON_CHAT_TEMPLATE

        if QWEN_PAD_TOKEN in tok.get_vocab():  # every Qwen2 vocabulary has it; a pruned one keeps its pad
            tok.pad_token = QWEN_PAD_TOKEN
        tok.chat_template = REASON_CHAT_TEMPLATE
    return tok


def report_to_trackers(run_dir: RunDir, config) -> None:
    """``grpo.report_to``'s trackers log beside tina's metrics.jsonl (transformers' own callbacks),
    named as the tina run is, their files where their users look: TensorBoard's events in
    ``RUN_DIR/tensorboard`` (``tensorboard --logdir $TINA_HOME/runs`` shows every run) unless
    ``TENSORBOARD_LOGGING_DIR`` says otherwise; W&B's in its own ``./wandb`` (or ``WANDB_DIR``), one
    W&B run across tina's restarts and resumes (``WANDB_RUN_ID``, ``WANDB_RESUME``, unless set);
    trackio's in its own database. Their keys come from the environment, which tina never writes."""
    if not config.report_to:
        return
    config.run_name = config.run_name or RunInfo.read(run_dir).name or run_dir.run_id
    if "tensorboard" in config.report_to:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir.path / "tensorboard"))
    if "wandb" in config.report_to:  # W&B ids: letters, digits, - and _
        os.environ.setdefault("WANDB_RUN_ID", re.sub(r"[^A-Za-z0-9_-]", "-", run_dir.run_id)[-64:])
        os.environ.setdefault("WANDB_RESUME", "allow")


def build_trainer(run_dir: RunDir, recipe: Recipe, callbacks: Sequence[Any] = ()):
    """TRL's GRPOTrainer for a recipe, saving into ``run_dir/checkpoints`` (heavy imports here)."""
    import torch

    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)  # denormals in softmax gradients slow CPU steps by ~40x
    from transformers import AutoModelForCausalLM, set_seed
    from trl import GRPOTrainer

    from tina_core.recipe.datasets import prepare_dataset
    from tina_core.recipe.rewards import build_reward_funcs

    config = build_grpo_config(recipe, run_dir.checkpoints)
    # tina rotates the save grid itself (snapshots.rotate): HF Trainer's rotation deletes the oldest
    # checkpoint-* folders, the pins around the marker and the alarm's checkpoint among them
    config.save_total_limit = None
    report_to_trackers(run_dir, config)
    set_seed(config.seed)
    model_path = resolve_base_model(recipe, _home_for(run_dir))
    tokenizer = load_tokenizer(recipe, model_path)
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=recipe.get("model.dtype", "auto"),
        attn_implementation=recipe.get("model.attn_implementation"),
        use_cache=not config.gradient_checkpointing)
    funcs, weights = build_reward_funcs(recipe.rewards, dict(recipe.data.get("reward_options") or {}),
                                        num_generations=config.num_generations)
    config.reward_weights = weights
    dataset = prepare_dataset(recipe.data["dataset"], tokenizer)
    if len(dataset) < recipe.prompts_per_step:  # what the prompt-length filter left
        raise TinaError(f"dataset {recipe.get('dataset.name')}: {len(dataset)} usable prompt(s) after "
                        f"dataset.max_prompt_tokens, fewer than the {recipe.prompts_per_step:g} one optimizer step takes")
    return GRPOTrainer(model=model, reward_funcs=funcs, args=config, train_dataset=dataset,
                       processing_class=tokenizer, peft_config=build_lora_config(recipe), callbacks=list(callbacks))


def _load_indexed_cpu_storages() -> None:
    """CPU ranks resume: accelerate 1.15 gives each CPU rank the device ``cpu:0``, transformers loads
    the optimizer's state with ``map_location=args.device`` once there are several ranks, and torch
    2.13's loader knows only ``cpu``, so the resume would die in ``torch.load``. A CPU location with
    an index is the CPU (there is one): a deserializer that says so, through torch's own registry."""
    import torch.serialization

    def indexed_cpu(storage, location: str):
        return storage if location.startswith("cpu:") else None

    torch.serialization.register_package(9, lambda storage: None, indexed_cpu)


def train(run_dir: RunDir) -> int:
    if not run_dir.recipe.is_file():
        raise TinaError(f"{run_dir.recipe}: no recipe snapshot in the run directory")
    stop = StopRequest().install()  # from the start: a stop during set-up is not a crash
    recipe = load_recipe(run_dir.recipe)
    attempt = int(os.environ.get("TINA_ATTEMPT", "1"))
    rank0 = _is_rank0()
    run_dir.checkpoints.mkdir(exist_ok=True)

    if rank0:
        for p in set_aside_partial_checkpoints(run_dir):
            print(f"set aside half-written {p.name} (no {CHECKPOINT_COMPLETE}) -> {p}", flush=True)
    done = run_dir.checkpoint_steps()
    resume = run_dir.checkpoint_path(done[-1]) if done else None
    if rank0:
        snapshots.drop_after(run_dir, done[-1] if done else 0)
    if done and done[-1] >= recipe.stop_at_step:
        print(f"already at step {done[-1]} >= stop_at_step {recipe.stop_at_step}: nothing to do", flush=True)
        return EXIT_FINISHED

    callback = make_callback(run_dir, recipe, attempt, stop)
    trainer = build_trainer(run_dir, recipe, callbacks=[callback])
    if stop.requested:
        print("stopped on request before the first step", flush=True)
        return EXIT_STOPPED
    print(f"training {recipe.name}: attempt {attempt}, "
          f"{'resuming from ' + resume.name if resume else 'from scratch'}, stop at step {recipe.stop_at_step} "
          f"of {recipe.max_steps}", flush=True)
    if resume is not None and trainer.args.device.type == "cpu":
        _load_indexed_cpu_storages()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if callback.stopped_by_signal:
        print(f"stopped on request at step {trainer.state.global_step}", flush=True)
        return EXIT_STOPPED
    if callback.stopped_on_schedule:
        print(f"stopped as scheduled at step {trainer.state.global_step}: {callback.stopped_on_schedule}", flush=True)
        return EXIT_STOPPED
    if trainer.state.global_step < recipe.stop_at_step:  # the data gave out: not a finish
        raise TinaError(f"training ended at step {trainer.state.global_step}, before stop_at_step "
                        f"{recipe.stop_at_step}: the data gave no (more) batches")
    return EXIT_FINISHED


_OS_ERROR_RE = re.compile(r"\(os error (\d+)\)")


def disk_full(run_dir: RunDir, exc: BaseException) -> str | None:
    """The reason to give when ``exc`` ended training because the disk is full, else None.

    An OSError in the exception's chain says so with its errno, safetensors in its message only
    ("I/O error: No space left on device (os error 28)"); torch.save does not at all ("unexpected
    pos 576 vs 534"), so then a small probe write into the run directory asks the disk itself."""
    cause: OSError | None = None
    seen: BaseException | None = exc
    for _ in range(16):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            cause = seen
            break
        if (m := _OS_ERROR_RE.search(str(seen))) and int(m.group(1)) in DISK_FULL_ERRNOS:
            cause = OSError(int(m.group(1)), os.strerror(int(m.group(1))))
            break
        seen = seen.__cause__ or seen.__context__
    if cause is None:
        probe = run_dir.path / f".tina-probe-{os.getpid()}"
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * PROBE_BYTES)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if e.errno in DISK_FULL_ERRNOS:
                e.filename = None  # the probe is no file of the run's
                cause = e
        finally:
            probe.unlink(missing_ok=True)
    if cause is None:
        return None
    # A checkpoint without its marker is this attempt's (earlier ones were set aside at start).
    partial = sorted(set(run_dir.checkpoint_steps(complete_only=False)) - set(run_dir.checkpoint_steps(evaluable=True)))
    if partial and (not cause.filename or run_dir.checkpoint_path(partial[-1]) in Path(cause.filename).parents):
        what = write_error_text(cause, f"checkpoint-{partial[-1]}", doing="saving")
    elif cause.filename:
        what = write_error_text(cause)
    else:
        what = write_error_text(cause, run_dir.path, doing="writing into")
    return (f"{what}: make room on the disk of {run_dir.path}, then `tina resume {run_dir.run_id}` "
            "continues from the latest complete checkpoint")


class _OutputThatMayVanish:
    """The trainer's stdout/stderr is a pipe to its supervisor (which masks credentials into
    train.log). If the supervisor is killed, the next write would raise BrokenPipeError and end
    training mid-step; instead the output is dropped and training goes on, so the next `tina
    resume` can stop this orphan at a checkpoint of its current step. Metrics still reach
    metrics.jsonl."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._lost = False

    def write(self, text: str) -> int:
        if not self._lost:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._lost = True
        return len(text)

    def flush(self) -> None:
        if not self._lost:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._lost = True

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    from tina_core.train.launcher import die_with_parent

    die_with_parent()  # a rank under the launcher goes when it goes
    # Before transformers and tqdm are imported: they keep a reference to the streams they find.
    sys.stdout, sys.stderr = _OutputThatMayVanish(sys.stdout), _OutputThatMayVanish(sys.stderr)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tina_core.train RUN_DIR", file=sys.stderr)
        return EXIT_ERROR
    run_dir = RunDir(Path(argv[0]).resolve())
    try:
        code = train(run_dir)
        # Done (finished or stopped). Under the launcher, the elastic agent ends the other ranks with
        # SIGTERM as soon as one exits, and Python's exit restores the default action (death) for a
        # handled signal: ignored from here, a late SIGTERM cannot turn this exit code into a kill.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return code
    except TinaError as e:
        print(f"tina train: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:
        why = disk_full(run_dir, e)
        if why is None:
            raise
        traceback.print_exc()
        # last, so the supervisor takes it as the reason (it reads our output even when train.log is full)
        print(f"tina train: error: {why}", file=sys.stderr, flush=True)
        return EXIT_DISK_FULL


if __name__ == "__main__":
    sys.exit(main())
