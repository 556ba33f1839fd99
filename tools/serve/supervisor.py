"""Self-healing serving: keep every Python model of a tritonserver alive.

What Triton 2.51 does on its own (python_backend and core r24.10, checked on this server):

- A model instance's Python code runs in a stub process (:mod:`tddfa_tools.serve.stubs`). When it
  dies (a crash, the OOM killer, ``kill -9``, a poison request that kills it inside the stub
  before our code runs), the backend never restarts it (the restart is a TODO in
  ``TRITONBACKEND_ModelInstanceExecute``): every later request fails with
  ``Stub process '<instance>' is not healthy.`` while the model and ``/v2/health/ready``
  still report READY.
- With ``--model-control-mode=explicit`` a ``load`` of a model whose files did not change
  is a no-op (``ModelRepositoryManager``: "the (re-)load is not necessary because there is
  no change"), so a dead stub is restarted by ``unload`` + ``load``.
- Unloading a composing model makes its ensembles unavailable, and with
  ``--strict-readiness`` the server not ready; loading it again brings the ensembles back
  by themselves (dependency graph): reloading the composing model alone is enough.

So the :class:`Supervisor` watches, from a thread, every ``poll_interval``:

1. the server process: when it exits unexpectedly, its leftovers are cleaned (stubs,
   ``/dev/shm`` regions) and it is restarted on the same ports (a crash loop gives up);
2. the stub processes: a model missing one of its instances' stubs is reloaded (stubs of
   that model still running, e.g. hung, are killed first, so the unload does not wait on
   them), readiness being false from the unload until the load completes;
3. the server log: ``Stub process '<instance>' is not healthy`` reloads that model;
4. a canary (its own thread, every ``canary_interval``): one small frame through the
   ensemble; a failure naming an instance reloads its model, two timeouts in a row reload
   every Python model (a hung step holds the ensemble without any process dying).

Every event is logged and counted (:mod:`tddfa_tools.serve.supervisor_metrics`, ``/metrics`` of
the supervisor's endpoint).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import re
import threading
import time

import numpy as np
from tritonclient.utils import InferenceServerException

from tddfa.contract import IMAGE_INPUT, OUTPUT_NAMES, STATELESS_ENSEMBLE
from tddfa_tools.serve.embedded import TritonServerError
from tddfa_tools.serve.model_control import ModelControl, ModelControlError
from tddfa_tools.serve.server import TritonServer
from tddfa_tools.serve.stubs import Stub, find_stubs, kill_stubs
from tddfa_tools.serve.supervisor_metrics import MetricsServer, SupervisorMetrics

LOG = logging.getLogger(__name__)

UNHEALTHY = re.compile(r"Stub process '(?P<instance>[^']+)' is not healthy")
UNHEALTHY_UNNAMED = re.compile(r"Stub process is not healthy|Failed to obtain the health mutex")
CANARY_SIDE = 64  # pixels: a black frame, no face, every step runs


@dataclasses.dataclass(frozen=True)
class SupervisorSettings:
    poll_interval: float = 0.5  # seconds between stub checks
    canary_interval: float = 30.0  # seconds between canary frames; 0 turns the canary off
    canary_timeout: float = 60.0  # a canary slower than this counts as a hang
    canary_model: str = STATELESS_ENSEMBLE
    reload_timeout: float = 120.0  # seconds an unload or a load may take
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 0  # the /metrics + /health endpoint; 0 picks one, None: none
    max_server_restarts: int = 5  # within restart_window seconds, then give up
    restart_window: float = 600.0


class Supervisor:
    """Watch ``server`` (started) and heal it; :meth:`start` / :meth:`stop` from one thread.

    ``failed`` holds a message once the supervisor gave up (the server crashed more than
    ``max_server_restarts`` times within ``restart_window``): the caller should exit.
    """

    def __init__(
        self, server: TritonServer, settings: SupervisorSettings = SupervisorSettings()
    ) -> None:
        self.server = server
        self.settings = settings
        self.metrics = SupervisorMetrics()
        self.control = ModelControl(server, settings.reload_timeout)
        self.failed: str | None = None
        self._stop = threading.Event()
        self._busy = threading.Event()  # healing or restarting: the canary waits
        self._events: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self._expected: dict[str, set[str]] = {}  # model -> instance names with a stub
        self._instances: dict[str, str] = {}  # instance name -> model
        self._ready_models: set[str] = set()
        self._python_models: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._retry_delay: dict[str, float] = {}
        self._crashes: collections.deque[float] = collections.deque()
        self._canary_request: tuple[dict, bytes] | None = None
        self._canary_timeouts = 0
        self._threads: list[threading.Thread] = []
        self._endpoint: MetricsServer | None = None
        server.add_log_listener(self._on_log_line)

    # -- lifetime -------------------------------------------------------------------------
    @property
    def metrics_url(self) -> str | None:
        return self._endpoint.url if self._endpoint else None

    def start(self) -> Supervisor:
        if self.settings.metrics_port is not None:
            self._endpoint = MetricsServer(
                self.metrics, self.settings.metrics_host, self.settings.metrics_port
            )
        self._baseline()
        self._threads = [threading.Thread(target=self._watch, name="supervisor", daemon=True)]
        if self.settings.canary_interval > 0 and self._canary_request is not None:
            self._threads.append(
                threading.Thread(target=self._canary_loop, name="supervisor-canary", daemon=True)
            )
        for thread in self._threads:
            thread.start()
        LOG.info(
            "supervising %d Python model(s) (%s)%s",
            len(self._expected),
            ", ".join(sorted(self._expected)),
            f"; metrics and health at {self.metrics_url}" if self.metrics_url else "",
        )
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.settings.canary_timeout + 5)
        self._threads = []
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- state ----------------------------------------------------------------------------
    def _baseline(self) -> None:
        """Learn what a healthy server looks like: the ready models, the stub of every
        instance of every Python model, the canary request. A Python model that Triton
        reports READY without any live stub died before we looked: it is reloaded."""
        self._ready_models = {m for m, s in self.control.index().items() if s == "READY"}
        self._python_models = {
            m for m in self._ready_models if self.control.config(m).get("backend") == "python"
        }
        self._expected.clear()
        for stub in find_stubs(self.server.shm_prefix):
            self._remember(stub)
        self.metrics.set_server_up(True)
        self.metrics.set_healthy(self._ready_models, True)
        self._canary_request = self._make_canary(self.settings.canary_model)
        for model in sorted(self._python_models - set(self._expected)):
            self.heal(model, "stub_exited", "no live stub process at start")

    def _remember(self, stub: Stub) -> None:
        self._expected.setdefault(stub.model, set()).add(stub.instance)
        self._instances[stub.instance] = stub.model

    def model_of(self, instance: str) -> str | None:
        """The model of a stub instance name (``<model>_<group>_<index>``)."""
        if instance in self._instances:
            return self._instances[instance]
        base = re.sub(r"(_\d+)+$", "", instance)
        return base if base in self._expected else None

    # -- the watch loop -------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.wait(self.settings.poll_interval):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watch must survive any single failure
                LOG.exception("supervisor check failed; continuing")

    def check(self) -> list[str]:
        """One round: server alive, stubs present, events handled. Returns the models
        reloaded (tests call it directly)."""
        if not self.server.is_alive():
            if not self._stop.is_set():
                self._restart_server()
            return []
        healed: list[str] = []
        alive: dict[str, set[str]] = collections.defaultdict(set)
        for stub in find_stubs(self.server.shm_prefix):
            alive[stub.model].add(stub.instance)
        for model, instances in sorted(self._expected.items()):
            missing = sorted(instances - alive.get(model, set()))
            if missing and self.heal(model, "stub_exited", f"stub of {', '.join(missing)} exited"):
                healed.append(model)
        while True:
            try:
                cause, instance = self._events.get_nowait()
            except queue.Empty:
                break
            healed += self._handle_event(cause, instance)
        return healed

    def _handle_event(self, cause: str, instance: str | None) -> list[str]:
        if cause == "canary_timeout":
            models = sorted(self._expected)
            LOG.error("the canary hung twice: reloading every Python model (%s)", models)
            return [m for m in models if self.heal(m, cause, "canary timed out")]
        model = self.model_of(instance) if instance else None
        if model is None:
            LOG.warning("unhealthy stub reported (%s) for an unknown instance %r", cause, instance)
            return []
        return [model] if self.heal(model, cause, f"stub {instance} is not healthy") else []

    def _on_log_line(self, line: str) -> None:
        """Server log listener (log thread): queue stub health failures."""
        match = UNHEALTHY.search(line)
        if match:
            self._events.put(("stub_unhealthy", match["instance"]))
        elif UNHEALTHY_UNNAMED.search(line):
            LOG.warning("tritonserver reports an unhealthy stub: %s", line.strip())

    # -- healing --------------------------------------------------------------------------
    def heal(self, model: str, cause: str, detail: str) -> bool:
        """Reload ``model`` (kill its remaining stubs, unload, load, reload dependents).
        Returns True when it serves again; a failure is retried later with backoff."""
        now = time.monotonic()
        if now < self._retry_at.get(model, 0.0):
            return False
        LOG.error("model %s is broken (%s): reloading it", model, detail)
        self.metrics.failure(model, cause)
        start = time.monotonic()
        self._busy.set()
        try:
            kill_stubs(self.server.shm_prefix, model)  # a hung one would block the unload
            self.control.unload(model)  # readiness is false from here
            # load at once: Triton queues it behind the unload, so the model goes UNLOADING ->
            # LOADING -> READY and is never merely UNAVAILABLE, which --strict-readiness
            # would not count (the server would read ready for a moment)
            self.control.load(model)
            instances = self._wait_loaded(model)
            self._reload_dependents()
            self._expected[model] = instances
            self._instances.update(dict.fromkeys(instances, model))
        except (ModelControlError, TimeoutError, ValueError) as exc:
            delay = min(self._retry_delay.get(model, 0.5) * 2, 30.0)
            self._retry_delay[model] = delay
            self._retry_at[model] = time.monotonic() + delay
            LOG.error("reloading %s failed (%s); next attempt in %.0f s", model, exc, delay)
            return False
        finally:
            self._busy.clear()
        self._retry_delay.pop(model, None)
        self._retry_at.pop(model, None)
        self.metrics.reloaded(model)
        LOG.warning(
            "model %s reloaded in %.1f s (reload %d)",
            model,
            time.monotonic() - start,
            self.metrics.reloads[model],
        )
        return True

    def _wait_loaded(self, model: str) -> set[str]:
        """Wait until ``model`` is READY with a live stub for every instance it had; load it
        again if it went UNAVAILABLE (a load that raced the unload is a no-op: the model
        was still READY and unchanged). Returns the live instance names."""
        deadline = time.monotonic() + self.settings.reload_timeout
        expected = self._expected.get(model, set())
        while True:
            state = self.control.index().get(model, "")
            instances = {s.instance for s in find_stubs(self.server.shm_prefix) if s.model == model}
            if state == "READY" and instances and expected <= instances:
                return instances
            if state in ("UNAVAILABLE", ""):
                LOG.info("%s is unavailable after its reload: loading it again", model)
                self.control.load(model)
                continue
            if time.monotonic() > deadline:
                raise ModelControlError(
                    f"{model} is {state or 'gone'} with stubs {sorted(instances)} after "
                    f"{self.settings.reload_timeout:.0f} s"
                )
            time.sleep(0.05)

    def _reload_dependents(self) -> None:
        """Load every model that was ready at start and is not now (the ensembles normally
        come back by themselves; this covers the case where they do not)."""
        states = self.control.index()
        for name in sorted(self._ready_models):
            if states.get(name) in ("UNAVAILABLE", "", None):
                LOG.info("loading %s again (it depends on a reloaded model)", name)
                self.control.load(name)

    # -- server restarts ------------------------------------------------------------------
    def _restart_server(self) -> None:
        code = self.server.returncode()
        self.metrics.set_server_up(False)
        self.metrics.set_healthy(self._ready_models, False)
        LOG.error(
            "tritonserver exited unexpectedly (status %s); last log lines:\n%s",
            code,
            self.server.log_tail()[-3000:],
        )
        self.server.stop()  # cleans its stubs and /dev/shm regions
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > self.settings.restart_window:
            self._crashes.popleft()
        if len(self._crashes) > self.settings.max_server_restarts:
            self.failed = (
                f"tritonserver crashed {len(self._crashes)} times within "
                f"{self.settings.restart_window:.0f} s; giving up (last status {code})"
            )
            LOG.error("%s", self.failed)
            self._stop.set()
            return
        delay = min(2.0 ** (len(self._crashes) - 1), 30.0)
        if self._stop.wait(delay):
            return
        self._busy.set()
        try:
            self.server.start(cancel=self._stop)
            self.metrics.server_restarted()
            self._baseline()
            LOG.warning("tritonserver restarted (restart %d)", self.metrics.server_restarts)
        except TritonServerError as exc:
            LOG.error("restarting tritonserver failed: %s", str(exc).splitlines()[0])
        finally:
            self._busy.clear()

    # -- canary ---------------------------------------------------------------------------
    def _make_canary(self, model: str) -> tuple[dict[str, np.ndarray], list[str]] | None:
        """The canary request for ``model``: a black frame asking for every output it has."""
        metadata = self.control.metadata(model)
        if metadata is None:
            LOG.info("no %s model served: the canary is off", model)
            return None
        inputs = {i["name"]: i for i in metadata.get("inputs", [])}
        if IMAGE_INPUT not in inputs:
            return None
        rank = len(inputs[IMAGE_INPUT].get("shape", []))
        shape = [1, CANARY_SIDE, CANARY_SIDE, 3] if rank == 4 else [CANARY_SIDE, CANARY_SIDE, 3]
        served = [o["name"] for o in metadata.get("outputs", [])]
        outputs = [name for name in OUTPUT_NAMES if name in served] or served
        return {IMAGE_INPUT: np.zeros(shape, np.uint8)}, outputs

    def canary(self) -> float | None:
        """Send one canary frame; returns its latency, or None when it failed (and queues
        what it found)."""
        if self._canary_request is None:
            return None
        inputs, outputs = self._canary_request
        start = time.monotonic()
        try:
            self.control.infer(
                self.settings.canary_model, inputs, outputs, self.settings.canary_timeout
            )
        except TimeoutError:
            self.metrics.canary(None)
            return self._canary_timed_out()
        except OSError as exc:
            self.metrics.canary(None)
            LOG.warning("canary failed: %s", exc)
            return None
        except InferenceServerException as exc:
            self.metrics.canary(None)
            error = exc.message() or str(exc)
            LOG.warning("canary refused: %s", error)
            match = UNHEALTHY.search(error)
            if match:
                self._events.put(("canary_failed", match["instance"]))
            return None
        self._canary_timeouts = 0
        seconds = time.monotonic() - start
        self.metrics.canary(seconds)
        return seconds

    def _canary_timed_out(self) -> None:
        """Count a hung canary; the second in a row queues a reload of every model."""
        self._canary_timeouts += 1
        LOG.warning(
            "canary got no answer within %.0f s (%d in a row)",
            self.settings.canary_timeout,
            self._canary_timeouts,
        )
        if self._canary_timeouts >= 2:
            self._canary_timeouts = 0
            self._events.put(("canary_timeout", None))

    def _canary_loop(self) -> None:
        while not self._stop.wait(self.settings.canary_interval):
            if self._busy.is_set() or not self.server.is_alive():
                continue
            try:
                self.canary()
            except Exception:  # noqa: BLE001 - the canary must never stop
                LOG.exception("canary crashed; continuing")
