"""Alerts: a run's notable events told to the user wherever they are, as JSON.

The events themselves are in the run's ``events.jsonl`` (the cockpit announces them and rings the
bell from there). This module sends each one on, as the process that records it records it (the
supervisor for a run's lifecycle, its stalls and its budget; the evaluation worker for results), to
what ``$TINA_HOME/config.yaml`` names::

    alerts:
      webhook: https://ntfy.sh/my-topic   # POSTed the event as JSON ("text" is what Slack shows)
      command: notify-send tina "$(jq -r .text)"   # run by sh, the event as JSON on its stdin
      events: [transition, failed, finished]       # default: ALERT_EVENTS
      stall_after_s: 900    # a live trainer with no new metrics line this long: `stalled` (0: never)
      budget_usd: [5, 10]   # `budget_reached` as a run's total cost passes each
      timeout_s: 10         # per delivery

Delivery never holds up the process that asks for it: one background thread per process takes
the events off a bounded queue, and a dead webhook costs that thread its timeout, nothing else (a
full queue drops the newest and says so). A credential never travels: the payload is masked like
everything tina writes (``rundir.redact``). A webhook URL often holds a token (Slack's path, a
``?key=`` query, ``user:password@``): a failure is told by the target's host and words that
cannot quote the URL, and the URL's secret parts are masked in whatever the process writes
(``credentials.remember_secrets``). ``user:password@`` is sent as HTTP basic auth; a space in the
URL is sent as ``%20``. Light: standard library and yaml only.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tina_core.credentials import redact, redact_text, remember_secrets
from tina_core.events import Kind, kind_of
from tina_core.rundir import RunDir, RunInfo, TinaError, workspace_config

# Events worth telling someone who is not watching (every kind here has a text below).
ALERT_EVENTS = (Kind.TRANSITION, Kind.STALLED, Kind.BUDGET_REACHED, Kind.RESTARTED, Kind.FAILED, Kind.FINISHED,
                Kind.STOPPED, Kind.EVAL_FINISHED, Kind.EVAL_FAILED)
DEFAULT_STALL_AFTER_S = 900.0  # Tina's steps take about a minute; LEET calls a run dead after ten
DEFAULT_TIMEOUT_S = 10.0
QUEUE_MAX = 256
# A process about to exit gives its queued alerts this long in all, whatever the targets and the
# events left (a dead webhook would otherwise hold it for timeout_s per event and target): the end
# of a run is never held up by them. What is not out by then is dropped, counted and said.
CLOSE_WAIT_S = 2.0


def _score(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "-"


def _first_line(v: Any) -> str:
    return str(v).splitlines()[0] if v else ""


def _transition(run: str, e: dict[str, Any]) -> str:
    if e.get("status") == "rejected":
        return f"{run}: the tentative phase transition at step {e.get('step')} did not hold"
    return f"{run}: phase transition {e.get('status')} at step {e.get('step')} ({e.get('signal')})"


def _minutes(seconds: Any) -> str:
    s = float(seconds or 0)
    return f"{s / 60:.0f} min" if s >= 120 else f"{s:.0f} s"


# kind -> (severity, text): the one wording of every announced event (the cockpit's notices too).
EVENT_TEXT: dict[Kind, tuple[str, Callable[[str, dict[str, Any]], str]]] = {
    Kind.TRANSITION: ("warning", _transition),
    Kind.STALLED: ("error", lambda run, e: f"{run}: no new step for {_minutes(e.get('after_s'))} (last step "
                                           f"{e.get('step') if e.get('step') is not None else 'none yet'}); "
                                           "the trainer is still alive"),
    Kind.BUDGET_REACHED: ("warning", lambda run, e: f"{run}: ${e.get('cost_usd', 0):.2f} spent, past the "
                                                    f"${e.get('threshold_usd', 0):g} alert"),
    Kind.RESTARTED: ("warning", lambda run, e: f"{run}: crashed, restarting (attempt {e.get('attempt', '?')})"),
    Kind.FAILED: ("error", lambda run, e: f"{run}: failed: {_first_line(e.get('reason'))}"),
    Kind.FINISHED: ("information", lambda run, e: f"{run}: finished"
                                                  + (f" at step {e['step']}" if e.get("step") is not None else "")),
    Kind.STOPPED: ("information", lambda run, e: f"{run}: stopped"
                                                 + (f" at step {e['step']}" if e.get("step") is not None else "")
                                                 + (f" ({e['reason']})" if e.get("reason") else "")),
    Kind.EVAL_FINISHED: ("information", lambda run, e: f"{run}: {e.get('task', 'evaluation')} of "
                                                       f"{_checkpoint(e)} = {_score(e.get('score'))}"),
    Kind.EVAL_FAILED: ("error", lambda run, e: f"{run}: {e.get('task', 'evaluation')} of {_checkpoint(e)} failed: "
                                               f"{_first_line(e.get('reason'))}"),
    Kind.EVAL_REFUSED: ("warning", lambda run, e: f"{run}: {e.get('task', 'evaluation')} of {_checkpoint(e)} not "
                                                   f"queued: its projected ${e.get('projected_usd') or 0:.4g} passes the "
                                                   f"${e.get('left_usd') or 0:.4g} left of its ${e.get('budget_usd') or 0:g} "
                                                   "budget"),
    Kind.WRITE_FAILED: ("error", lambda run, e: f"{run}: cannot write {e.get('file')}: {e.get('error')} "
                                                 "(is the disk full?)"),
}


def _checkpoint(e: dict[str, Any]) -> str:
    ck = e.get("checkpoint")
    return "the base model" if ck in (None, "base") else f"checkpoint {ck}"


def event_text(run_name: str, record: dict[str, Any]) -> tuple[str, str] | None:
    """(severity, one line) for an event worth announcing, else None."""
    kind = kind_of(record)
    spec = EVENT_TEXT.get(kind) if kind is not None else None
    return (spec[0], spec[1](run_name, record)) if spec else None


@dataclass(frozen=True)
class AlertConfig:
    webhook: str | None = None
    command: str | None = None
    events: tuple[Kind, ...] = ALERT_EVENTS
    stall_after_s: float = DEFAULT_STALL_AFTER_S
    budget_usd: tuple[float, ...] = ()
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def delivers(self) -> bool:
        return bool(self.webhook or self.command)


def _number(where: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (
            float("inf"), float("-inf")) or value < 0 or (positive and value == 0):
        raise TinaError(f"{where}: expected a {'positive' if positive else 'non-negative'} number, got {value!r}")
    return float(value)


def load_config(home: Path) -> AlertConfig:
    """``alerts:`` of the workspace's config.yaml (defaults when absent); a clear error naming the
    key when it is malformed."""
    path = home / "config.yaml"
    section = workspace_config(home).get("alerts")
    if section is None:
        return AlertConfig()
    where = f"{path}: alerts"
    if not isinstance(section, dict):
        raise TinaError(f"{where}: expected a mapping (webhook, command, events, stall_after_s, budget_usd, timeout_s)")
    known = ("webhook", "command", "events", "stall_after_s", "budget_usd", "timeout_s")
    for key in section:
        if key not in known:
            raise TinaError(f"{where}.{key}: unknown key (known: {', '.join(known)})")
    webhook = section.get("webhook")
    if webhook is not None and (not isinstance(webhook, str)
                                or urllib.parse.urlsplit(webhook.strip()).scheme not in ("http", "https")):
        raise TinaError(f"{where}.webhook: expected an http(s) URL")
    if webhook is not None:  # never quoted back: it often holds a token
        webhook = webhook.strip()
        if any(ord(c) < 0x20 or ord(c) == 0x7f for c in webhook):
            raise TinaError(f"{where}.webhook: the URL holds a control character (a line break?); write it on "
                            "one line")
        if not urllib.parse.urlsplit(webhook).hostname:
            raise TinaError(f"{where}.webhook: the URL names no host")
    command = section.get("command")
    if command is not None and not isinstance(command, str):
        raise TinaError(f"{where}.command: expected a shell command (a string)")
    events = section.get("events", list(ALERT_EVENTS))
    if isinstance(events, str):
        events = [events]
    if not isinstance(events, list) or any(e not in EVENT_TEXT for e in events):
        raise TinaError(f"{where}.events: expected a list of {', '.join(EVENT_TEXT)}")
    budget = section.get("budget_usd", [])
    budget = budget if isinstance(budget, list) else [budget]
    return AlertConfig(
        webhook=webhook, command=command, events=tuple(Kind(e) for e in events),
        stall_after_s=_number(f"{where}.stall_after_s", section.get("stall_after_s", DEFAULT_STALL_AFTER_S)),
        budget_usd=tuple(sorted(_number(f"{where}.budget_usd", b, positive=True) for b in budget)),
        timeout_s=_number(f"{where}.timeout_s", section.get("timeout_s", DEFAULT_TIMEOUT_S), positive=True))


def config_or_default(home: Path, warn: Callable[[str], object] | None = None) -> AlertConfig:
    """The alert settings, or the defaults (nothing delivered) when config.yaml is malformed: a bad
    setting must never stop a run; it is said through ``warn``."""
    try:
        return load_config(home)
    except TinaError as e:
        (warn or (lambda m: print(m, file=sys.stderr, flush=True)))(f"alerts off: {e}")
        return AlertConfig()


def payload(run_dir: RunDir, record: dict[str, Any]) -> dict[str, Any]:
    """What a target receives: the event, which run, one line of text, and the event record as
    written to events.jsonl; credentials masked."""
    name = RunInfo.read(run_dir).name or run_dir.run_id
    said = event_text(name, record)
    return redact({"event": record.get("event"), "run_id": run_dir.run_id, "run_name": name,
                   "text": said[1] if said else f"{name}: {record.get('event')}",
                   "time": record.get("time"), "ts": record.get("ts"), "run_dir": str(run_dir.path),
                   "record": record})


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or "the webhook"


@dataclass(frozen=True)
class Webhook:
    """Where a webhook POST goes and with what headers: ``user:password@`` in the URL becomes HTTP
    basic auth (urllib would read it as part of the host name), a space or another character a
    URL cannot hold is percent-encoded (Slack's ``?title=tina alerts``)."""

    url: str
    headers: dict[str, str]
    secrets: tuple[str, ...]  # the parts of the URL to mask wherever this process writes

    @classmethod
    def of(cls, url: str) -> "Webhook":
        parts = urllib.parse.urlsplit(url)
        headers = {"Content-Type": "application/json", "User-Agent": "tina"}
        userinfo, at, hostport = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        if at:
            token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
            headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        sendable = urllib.parse.quote(urllib.parse.urlunsplit(parts._replace(netloc=hostport)),
                                      safe=":/?#[]@!$&'()*+,;=%~")
        tail = url.split(parts.netloc, 1)[-1]  # path, query and fragment as written
        secrets = {url, sendable, tail, sendable.split(hostport, 1)[-1], parts.query, userinfo,
                   urllib.parse.unquote(userinfo), password, urllib.parse.unquote(password)}
        return cls(sendable, headers, tuple(s for s in secrets if s))


class Alerts:
    """Sends events to the configured targets off the caller's thread (see the module's doc)."""

    def __init__(self, home: Path, config: AlertConfig | None = None,
                 warn: Callable[[str], object] | None = None) -> None:
        self.config = config or config_or_default(home, warn)
        self.webhook = Webhook.of(self.config.webhook) if self.config.webhook else None
        if self.webhook is not None:
            remember_secrets(self.webhook.secrets)  # masked in train.log and anything else we write
        self._warn = warn or (lambda m: print(redact_text(m), file=sys.stderr, flush=True))
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE_MAX)
        self._thread: threading.Thread | None = None
        self._in_flight = False  # a delivery under way (the thread is inside a target's call)
        self.sent = 0
        self.failed = 0
        self.dropped = 0  # queued and never tried: a full queue's newest, or what close() left behind

    def wants(self, kind: str | None) -> bool:
        return self.config.delivers and kind in self.config.events

    def send(self, run_dir: RunDir, record: dict[str, Any]) -> None:
        """Queue ``record`` (an event as written) for every target; returns at once."""
        if not self.wants(record.get("event")):
            return
        try:
            body = payload(run_dir, record)
        except Exception as e:  # an unreadable run.json must not cost the caller anything
            self._warn(f"alert for {record.get('event')} not sent: {e}")
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._deliver_all, name="tina-alerts", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                self._warn(f"alerts: more than {QUEUE_MAX} waiting; dropping new ones")

    def close(self, wait_s: float = CLOSE_WAIT_S) -> bool:
        """Give what is queued ``wait_s`` in all to go out (a process about to exit: call it once
        the process's own work is recorded and its locks let go), then drop the rest, counted and
        said through ``warn``. True when everything went out."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + wait_s
        try:
            self._queue.put(None, timeout=wait_s)
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            self._thread = None
            return True
        left = sum(1 for body in list(self._queue.queue) if body is not None) + self._in_flight
        self.dropped += left
        where = " and ".join([*([_host(self.config.webhook)] if self.config.webhook else []),
                              *(["the alert command"] if self.config.command else [])])
        self._warn(f"alerts: {left} not delivered within {wait_s:g} s of this process's end ({where} did not "
                   "answer in time): dropped")
        return False

    def _deliver_all(self) -> None:
        while (body := self._queue.get()) is not None:
            data = (json.dumps(body, default=str, allow_nan=False) + "\n").encode()
            self._in_flight = True
            for target, deliver in (("webhook", self._post), ("command", self._run)):
                if getattr(self.config, target):
                    try:
                        deliver(data, body)
                        self.sent += 1
                    except Exception as e:  # whatever it is, the next event still goes out
                        self.failed += 1
                        said = f"{_host(self.config.webhook or '')} failed: {_reason(e)}" if target == "webhook" else \
                            f"the alert command failed: {type(e).__name__}: {e}"
                        self._warn(f"alert {body['event']} of {body['run_id']} to {said}")
            self._in_flight = False

    def _post(self, data: bytes, body: dict[str, Any]) -> None:
        assert self.webhook is not None  # delivered only to a configured webhook
        req = urllib.request.Request(self.webhook.url, data=data, method="POST", headers=self.webhook.headers)
        with urllib.request.urlopen(req, timeout=self.config.timeout_s) as resp:
            resp.read(1024)

    def _run(self, data: bytes, body: dict[str, Any]) -> None:
        from tina_core.runstate import kill_group

        env = {**os.environ, "TINA_EVENT": str(body["event"]), "TINA_RUN_ID": body["run_id"]}
        assert self.config.command is not None  # run only when configured
        proc = subprocess.Popen(self.config.command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            proc.communicate(data, timeout=self.config.timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)  # the shell and whatever it started
            proc.wait()
            raise TimeoutError(f"no answer within {self.config.timeout_s:g} s") from None
        if proc.returncode:
            raise RuntimeError(f"exit code {proc.returncode}")


def _reason(e: Exception) -> str:
    """Why a webhook POST failed, in words that cannot quote its URL (urllib's own messages do:
    ``InvalidURL`` repeats the path): an HTTP status, a network error's description, or the kind
    of error."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code}"
    cause = e.reason if isinstance(e, urllib.error.URLError) and isinstance(e.reason, BaseException) else e
    if isinstance(cause, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(cause, socket.gaierror):
        return f"cannot resolve the host ({cause.strerror})"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return f"{type(cause).__name__} (the URL is refused as it is written)" if isinstance(cause, ValueError) else \
        type(cause).__name__


# --- what the supervisor watches --------------------------------------------------------------------
class StallWatch:
    """``stalled`` once a live trainer has written no new metrics line for ``after_s``: the clock
    restarts at each new line and at each attempt (a trainer stuck in set-up is stalled too)."""

    def __init__(self, metrics: Path, after_s: float) -> None:
        self.metrics, self.after_s = metrics, after_s
        self._size = -1
        self._since = time.time()
        self._told = False

    def restart(self) -> None:
        self._size, self._since, self._told = self._file_size(), time.time(), False

    def _file_size(self) -> int:
        try:
            return os.stat(self.metrics).st_size
        except FileNotFoundError:
            return 0

    def check(self, now: float | None = None) -> float | None:
        """Seconds since the last new line the first time that passes ``after_s``, else None."""
        if self.after_s <= 0:
            return None
        now = time.time() if now is None else now
        size = self._file_size()
        if size != self._size:
            self._size, self._since, self._told = size, now, False
            return None
        if not self._told and now - self._since >= self.after_s:
            self._told = True
            return now - self._since
        return None


def budgets_passed(thresholds: tuple[float, ...], spent: float, told: set[float]) -> list[float]:
    """The thresholds ``spent`` has passed that were not told yet (``told``: from earlier
    ``budget_reached`` events, so a resumed run does not say them again)."""
    return [t for t in thresholds if spent >= t and t not in told]
