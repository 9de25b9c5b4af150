"""Alerts: each notable event of a run reaches the user's webhook and command as JSON, off the path of
training, without a credential; a real tiny run tells its budget, its stall and its end to a real
HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import http.server
import json
import re
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tina_core.alerts import Alerts, AlertConfig, StallWatch, load_config
from tina_core.events import Kind
from tina_core.rundir import RunDir, TinaError, read_json, write_json_atomic
from tina_core.supervise.supervisor import Supervisor

ROOT = Path(__file__).resolve().parent.parent
SECRET = "wandb_alertKEY0123456789"


class Hook:
    """A real webhook: an HTTP server on 127.0.0.1 in a thread that keeps every JSON body it is
    POSTed; ``hold`` makes it wait before answering (a slow or dead endpoint)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization header) of each POST
        self.status = 200
        self.hold = threading.Event()
        self.hold.set()
        self.arrived = threading.Event()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                data = self.rfile.read(int(self.headers["Content-Length"]))
                hook.bodies.append(json.loads(data))
                hook.requests.append((self.path, self.headers.get("Authorization")))
                hook.arrived.set()
                hook.hold.wait(30)
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T0KENPATH"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [b["event"] for b in self.bodies]

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def _run(home: Path, run_id: str = "r1", name: str = "rs2-lr") -> RunDir:
    rd = RunDir(home / "runs" / run_id)
    rd.path.mkdir(parents=True)
    write_json_atomic(rd.run_json, {"run_id": run_id, "name": name})
    return rd


def test_each_event_goes_to_the_webhook_and_the_command_as_json_without_waiting(home, hook, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    rd = _run(home)
    out = tmp_path / "alerts.jsonl"
    alerts = Alerts(home, AlertConfig(webhook=hook.url, command=f"cat >> {out}", timeout_s=20))
    hook.hold.clear()  # the endpoint takes its time
    finished = rd.event("finished", step=180)
    alerts.send(rd, finished)
    assert hook.arrived.wait(20)
    # send() came back while the endpoint had not answered yet: the caller never waits on it
    assert not hook.hold.is_set()
    alerts.send(rd, rd.event("eval_failed", eval_id="e1", checkpoint=None, task="aime24",
                             reason=f"lighteval exited with code 1 (key {SECRET})\nTraceback..."))
    alerts.send(rd, rd.event("attempt_started", attempt=1, pid=1, gpus=0))  # not an alert
    hook.hold.set()
    assert alerts.close(30) and alerts.failed == 0
    assert hook.events() == ["finished", "eval_failed"]
    first = hook.bodies[0]
    assert first["run_id"] == "r1" and first["run_name"] == "rs2-lr"
    assert first["text"] == "rs2-lr: finished at step 180"      # what Slack shows
    assert first["record"] == finished                          # the event as in events.jsonl
    assert hook.bodies[1]["text"] == "rs2-lr: aime24 of the base model failed: lighteval exited with code 1 (key ***)"
    # the command got the same JSON on its stdin, one line per event
    lines = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert lines == hook.bodies
    assert SECRET not in out.read_text() and SECRET not in json.dumps(hook.bodies)


def test_a_dead_webhook_costs_its_timeout_and_names_only_its_host(home, tmp_path):
    rd = _run(home)
    # a listening socket that never answers: the connection is taken, the request never is
    import socket

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead.listen(8)
    warned: list[str] = []
    out = tmp_path / "alerts.jsonl"
    url = f"http://127.0.0.1:{dead.getsockname()[1]}/services/T0KEN/SECRETPATH"
    alerts = Alerts(home, AlertConfig(webhook=url, command=f"cat >> {out}", timeout_s=0.5), warn=warned.append)
    try:
        for step in (1, 2):
            alerts.send(rd, rd.event("stalled", attempt=1, step=step, after_s=900.0))
        assert alerts.close(30)
    finally:
        dead.close()
    assert alerts.failed == 2 and alerts.sent == 2                 # the command still got both
    assert [json.loads(ln)["record"]["step"] for ln in out.read_text().splitlines()] == [1, 2]
    assert len(warned) == 2 and all("127.0.0.1" in w and "timed out" in w for w in warned)
    assert not any("SECRETPATH" in w or "T0KEN" in w for w in warned)


def test_closing_with_a_hanging_webhook_waits_a_bounded_moment_and_says_what_it_dropped(home, hook):
    """Attack 4: a process about to exit waited 2 x timeout_s per target for a webhook that never
    answers, and dropped the alerts queued behind it without a word."""
    rd = _run(home)
    warned: list[str] = []
    alerts = Alerts(home, AlertConfig(webhook=hook.url, timeout_s=600), warn=warned.append)
    hook.hold.clear()  # the endpoint takes the request and never answers (until the test ends)
    for step in (1, 2, 3):
        alerts.send(rd, rd.event("stalled", attempt=1, step=step, after_s=900.0))
    assert hook.arrived.wait(20)
    assert not alerts.close()
    assert not hook.hold.is_set()  # close() came back while the webhook still held the request
    assert (alerts.sent, alerts.dropped) == (0, 3)
    assert warned == ["alerts: 3 not delivered within 2 s of this process's end (127.0.0.1 did not answer in "
                      "time): dropped"]


def test_a_failing_command_is_reported_and_killed_on_timeout(home):
    rd = _run(home)
    warned: list[str] = []
    slow = Alerts(home, AlertConfig(command="sleep 30", timeout_s=0.5), warn=warned.append)
    slow.send(rd, rd.event("finished", step=3))
    assert slow.close(30) and slow.failed == 1 and "no answer within 0.5 s" in warned[0]
    bad = Alerts(home, AlertConfig(command="exit 3"), warn=warned.append)
    bad.send(rd, rd.event("finished", step=3))
    assert bad.close(30) and "exit code 3" in warned[-1]


def test_alert_settings_are_checked(home):
    assert load_config(home) == AlertConfig()        # no config.yaml: defaults, nothing delivered
    cfg = home / "config.yaml"
    cfg.write_text("prices: {cpu: 0.1}\nalerts:\n  webhook: https://ntfy.sh/t\n  events: [finished, stalled]\n"
                   "  stall_after_s: 60\n  budget_usd: [10, 5]\n")
    got = load_config(home)
    assert (got.webhook, got.events, got.stall_after_s, got.budget_usd) == (
        "https://ntfy.sh/t", ("finished", "stalled"), 60.0, (5.0, 10.0))
    for bad, key in [("alerts: {webhok: x}", "alerts.webhok: unknown key"),
                     ("alerts: {webhook: ftp://x}", "alerts.webhook: expected an http(s) URL"),
                     ("alerts: {events: [finish]}", "alerts.events"),
                     ("alerts: {stall_after_s: -1}", "alerts.stall_after_s"),
                     ("alerts: {budget_usd: .inf}", "alerts.budget_usd"),
                     ("alerts: [1]", "alerts: expected a mapping")]:
        cfg.write_text(bad + "\n")
        with pytest.raises(TinaError, match=re.escape(key)):
            load_config(home)
    # a bad setting never stops a run: the supervisor warns and goes on without alerts
    warned: list[str] = []
    assert not Alerts(home, warn=warned.append).config.delivers and "alerts off" in warned[0]


def test_stall_watch_restarts_with_every_new_line(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    watch = StallWatch(metrics, after_s=10)
    watch.restart()
    t = time.time()
    assert watch.check(t + 5) is None
    assert watch.check(t + 11) == pytest.approx(11, abs=1)      # told once...
    assert watch.check(t + 20) is None                          # ...not again
    metrics.write_text('{"step": 1}\n')
    assert watch.check(t + 21) is None                          # a new line: the clock restarts
    assert watch.check(t + 30) is None and watch.check(t + 31.5) == pytest.approx(10.5)
    assert StallWatch(metrics, after_s=0).check(t + 10 ** 6) is None  # 0: never


def _closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (connection refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _supervised_event(home: Path, rd: RunDir, webhook: str, status: int = 200) -> Supervisor:
    """A real supervisor of ``rd`` (no trainer) with ``webhook`` in config.yaml, after it records
    the run's end and lets its alerts go out."""
    (home / "config.yaml").write_text("alerts:\n  webhook: " + json.dumps(webhook) + "\n  timeout_s: 5\n")
    sup = Supervisor(rd)
    sup.event(Kind.FINISHED, step=3)
    assert sup.alerts.close(30)
    return sup


def test_a_webhook_secret_never_reaches_train_log_or_any_output(home, hook, capfd):
    """Attack 3: a Slack-style URL with a space had urllib quote its path, token and all, into the
    error that train.log, `tina logs` and the cockpit showed. A space is now sent as %20; a URL
    that fails is named by its host and the failure's own words; one with a line break is refused
    without being quoted back."""
    secret = "/services/T0SECRET/B0SECRET/xYz0SECRET"
    rd = _run(home)
    sup = _supervised_event(home, rd, f"{hook.url.rsplit('/hooks', 1)[0]}{secret}?title=tina alerts")
    assert hook.requests == [(f"{secret}?title=tina%20alerts", None)] and sup.alerts.failed == 0
    hook.status = 500  # the endpoint refuses: its status, not its URL
    _supervised_event(home, rd, f"{hook.url.rsplit('/hooks', 1)[0]}{secret}?title=tina alerts")
    _supervised_event(home, rd, f"http://127.0.0.1:{_closed_port()}{secret}?title=tina alerts")
    _supervised_event(home, rd, f"http://no-such-host.invalid{secret}")
    _supervised_event(home, rd, f"http://127.0.0.1:{_closed_port()}{secret}\n?title=tina alerts")
    log = rd.train_log.read_text()
    assert "to 127.0.0.1 failed: HTTP 500" in log and "to 127.0.0.1 failed: Connection refused" in log
    assert "to no-such-host.invalid failed: cannot resolve the host" in log
    assert "alerts off" in log and "alerts.webhook: the URL holds a control character" in log
    out, err = capfd.readouterr()
    for text in (log, out, err):
        assert "SECRET" not in text and "title=" not in text, text


def test_user_and_password_in_a_webhook_go_as_basic_auth(home, hook):
    """Attack 9: a webhook with `user:password@` never delivered, and the error blamed name
    resolution (urllib took them for part of the host)."""
    rd = _run(home)
    host = hook.url.split("//", 1)[1].split("/", 1)[0]
    _supervised_event(home, rd, f"http://tina-bot:pa%24%24w0rd-SECRET@{host}/hooks/alerts")
    [(path, auth)] = hook.requests
    assert path == "/hooks/alerts" and hook.events() == ["finished"]
    assert auth == "Basic " + base64.b64encode(b"tina-bot:pa$$w0rd-SECRET").decode()
    _supervised_event(home, rd, f"http://tina-bot:pa%24%24w0rd-SECRET@127.0.0.1:{_closed_port()}/hooks/alerts")
    log = rd.train_log.read_text()
    assert "to 127.0.0.1 failed: Connection refused" in log and "SECRET" not in log and "w0rd" not in log


@pytest.mark.slow
@pytest.mark.extended
def test_a_real_run_tells_its_budget_its_stall_and_its_end(home, tiny_model, hook, tmp_path):
    out = tmp_path / "alerts.jsonl"
    (home / "config.yaml").write_text(
        f"alerts:\n  webhook: {hook.url}\n  command: cat >> {out}\n  stall_after_s: 3\n  budget_usd: [2]\n")
    env = {**os.environ, "TINA_HOME": str(home), "WANDB_API_KEY": SECRET}
    # $3600 per CPU-hour: a dollar a second, so the $2 alert comes within the run
    proc = subprocess.Popen([sys.executable, "-m", "tina_core.cli", "run", str(ROOT / "recipes" / "tiny.yaml"),
                             "--name", "alerting", "--set", "grpo.max_steps=40", "--set", "stop_at_step=40",
                             "--set", "grpo.save_steps=20", "--set", "price.cpu_hour_usd=3600"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list(home.glob("runs/*/metrics.jsonl")):
            time.sleep(0.05)
        (rd,) = [RunDir(p.parent) for p in home.glob("runs/*/metrics.jsonl")]
        trainer = read_json(rd.supervisor)["trainer_pid"]
        os.kill(trainer, signal.SIGSTOP)  # the trainer hangs (alive, no step)
        try:
            while time.monotonic() < deadline and not any(
                    e["event"] == "stalled" and e.get("step") is not None for e in rd.read_events()):
                time.sleep(0.2)
        finally:
            os.kill(trainer, signal.SIGCONT)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    kinds = hook.events()
    assert "budget_reached" in kinds and "stalled" in kinds and kinds[-1] == "finished", kinds
    stalled = next(b for b in hook.bodies if b["event"] == "stalled" and b["record"]["step"] is not None)
    assert stalled["record"]["after_s"] >= 3 and "no new step" in stalled["text"]
    budget = next(b for b in hook.bodies if b["event"] == "budget_reached")
    assert budget["record"]["threshold_usd"] == 2 and budget["record"]["cost_usd"] >= 2
    end = hook.bodies[-1]
    assert end["run_id"] == rd.run_id and end["record"]["step"] == 40 and end["text"] == "alerting: finished at step 40"
    # the command got the same events; the events are in the run's own record too
    assert [json.loads(ln)["event"] for ln in out.read_text().splitlines()] == kinds
    recorded = [e["event"] for e in rd.read_events() if e["event"] in set(kinds)]
    assert recorded == kinds
    assert SECRET not in json.dumps(hook.bodies) and SECRET not in out.read_text()
