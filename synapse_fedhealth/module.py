"""The Synapse module facade (see `synapse_fedhealth.FedHealthModule`)."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, cast

from synapse.logging import context as synapse_logcontext
from synapse.logging.context import (
    SENTINEL_CONTEXT,
    PreserveLoggingContext,
    current_context,
    make_deferred_yieldable,
    set_current_context,
)
from synapse.module_api.errors import ConfigError
from twisted.internet import defer, task
from twisted.python.failure import Failure

from synapse_fedhealth import homeserver
from synapse_fedhealth.checks.forwarded import ECHO_PATH
from synapse_fedhealth.config import (
    FedHealthConfig,
    FedHealthConfigError,
    parse_fedhealth_config,
)
from synapse_fedhealth.deployment import (
    MAIN_INSTANCE,
    REFRESH_POLL_MS,
    DeploymentStore,
    SharedReports,
)
from synapse_fedhealth.echo import EchoResource, NonceBook, secret_from_signing_key
from synapse_fedhealth.engine.outbound import OutboundEnvironment, probe_servers_for
from synapse_fedhealth.engine.spawn import use_stepper
from synapse_fedhealth.families import DefaultFamilies, FamilyFactory
from synapse_fedhealth.monitor import log_config_problems
from synapse_fedhealth.report import Report
from synapse_fedhealth.resource import FedHealthResource
from synapse_fedhealth.service import FedHealthService
from synapse_fedhealth.synapse_versions import version_warning
from synapse_fedhealth.third_party import ThirdPartyAnswers
from synapse_fedhealth.wiring import ProcessIO, import_run_modules

if TYPE_CHECKING:
    from typing import LiteralString

    from synapse.module_api import ModuleApi

logger = logging.getLogger("synapse_fedhealth")

ENDPOINT_PATH = "/_synapse/fedhealth"
# The background process every run is (its log lines say `fedhealth_run-N`).
RUN_PROCESS_NAME = "fedhealth_run"
# The logcontext of the module's start-up on a Synapse that gives it none.
STARTUP_CONTEXT_NAME = "fedhealth_start"
# When the run's modules are imported without a start-up run.
PRELOAD_DELAY_MS = 1000


class FedHealthModule:
    """Checks federation health from inside Synapse.

    Configure it under `modules:` in homeserver.yaml (see docs/configuration.md).
    """

    def __init__(self, config: FedHealthConfig, api: ModuleApi) -> None:
        # Synapse before 1.139 loads modules in the sentinel logcontext; the
        # start-up's log lines (config problems) get a context of their own.
        with _startup_logcontext(api.server_name):
            self._start(config, api)

    def _start(self, config: FedHealthConfig, api: ModuleApi) -> None:
        self._api = api
        # Once per process, before anything that an untested Synapse may break.
        untested = version_warning(homeserver.synapse_version())
        if untested is not None:
            logger.warning("%s", untested)
        reactor = homeserver.reactor_of(api)
        runs_network = api.should_run_background_tasks()
        snapshot, snapshot_error = _snapshot_or_error(api)
        # The echo resource answers our own proxy.forwarded_headers probe when
        # it arrives through the public path. Every process mounts it; the
        # nonce secret comes from the signing key, which all processes share.
        self._nonces = NonceBook(secret=_nonce_secret(snapshot))
        self._io = ProcessIO(reactor)
        # Notaries (and other servers) are asked at most once a minute for
        # the life of the process, however often runs come (SPEC 2.2).
        self._third_parties = ThirdPartyAnswers(reactor)
        self._outbound = (
            _outbound_environment(api, config, snapshot, self._third_parties)
            if snapshot is not None and runs_network
            else None
        )
        self.service = FedHealthService(
            config=config,
            server_name=api.server_name,
            snapshot=snapshot,
            snapshot_error=snapshot_error,
            clock=reactor,
            run_io=self._io.for_run,
            families=self.families_for(snapshot),
            runs_network=runs_network,
            user_agent=homeserver.user_agent_of(api),
            start_run=lambda run: _start_named_run(api, run),
        )
        # Every process serves the deployment's report: the checking
        # process's latest run plus each process's config results, shared
        # through Synapse's own database (docs/workers.md).
        shared = homeserver.may_have_workers(api)
        self.shared = SharedReports(
            self.service,
            DeploymentStore(api.run_db_interaction) if shared else None,
            instance=api.worker_name or MAIN_INSTANCE,
            clock=reactor,
            wait=make_deferred_yieldable,
            sleep=lambda s: make_deferred_yieldable(
                task.deferLater(reactor, s, lambda: None)
            ),
            spawn=_background(api, "fedhealth_share"),
            local_report=self.get_report,
        )
        api.register_web_resource(
            ENDPOINT_PATH, FedHealthResource(api, self.shared.report)
        )
        api.register_web_resource(ECHO_PATH, EchoResource(self._nonces))

        # Config problems are known now: log them before any network traffic.
        try:
            log_config_problems(list(self.service.config_checks()))
        except Exception as e:  # never let a check stop the homeserver
            logger.warning("synapse_fedhealth: the config checks failed: %s", e)

        if shared:
            reactor.callWhenRunning(
                _background(api, "fedhealth_share"), self.shared.publish_config
            )
        if runs_network:
            reactor.addSystemEventTrigger("during", "shutdown", self._io.stop)
            self._schedule_runs(config, shared=shared)

    def _schedule_runs(self, config: FedHealthConfig, *, shared: bool) -> None:
        """On the process that runs background tasks: the start-up run, the
        periodic run, and the refreshes other processes ask for."""
        api = self._api
        if shared:
            # A refresh asked on another process arrives through the shared
            # table: one small read per second.
            api.looping_background_call(
                self.shared.poll_refresh_requests,
                REFRESH_POLL_MS,
                desc="fedhealth_refresh_requests",
            )
        # Halfway to the start-up run (or a second in, before the first
        # periodic one): the run's imports in a thread, once Synapse answers
        # requests.
        if config.startup_check or config.interval_ms:
            api.delayed_background_call(
                config.startup_delay_ms // 2
                if config.startup_check
                else min(PRELOAD_DELAY_MS, config.interval_ms // 2),
                self._import_run_modules,
                desc="fedhealth_preload",
            )
        if config.startup_check:
            api.delayed_background_call(
                config.startup_delay_ms,
                self._background_run,
                desc="fedhealth_startup",
            )
        if config.interval_ms:
            api.looping_background_call(
                self._background_run, config.interval_ms, desc="fedhealth_periodic"
            )

    @staticmethod
    def parse_config(config: dict[str, Any]) -> FedHealthConfig:
        try:
            return parse_fedhealth_config(config)
        except FedHealthConfigError as e:
            raise ConfigError(e.message, path=(e.key,)) from None

    def families_for(
        self, snapshot: homeserver.HomeserverSnapshot | None
    ) -> FamilyFactory:
        """The check families of each run. A subclass may add its own."""
        if snapshot is None:
            return _NoFamilies()
        return DefaultFamilies(
            snapshot,
            echo=self._nonces,
            third_parties=self._third_parties,
            outbound=self._outbound,
        )

    def get_report(self, refresh: bool = False) -> defer.Deferred[Report]:
        """The (cached) report, as a Deferred that follows the logcontext rules
        for `make_deferred_yieldable`: it fires in the sentinel context.

        A run's own Deferred fires inside the run's logcontext, so that what
        the report cache does with a new report (metrics, transition log
        lines) is accounted to the run; each waiter is then woken from the
        sentinel context, as Synapse's rules want."""
        shared = self.service.get_report(refresh)
        if shared.called:
            return shared
        mine: defer.Deferred[Report] = defer.Deferred(lambda _: shared.cancel())

        def _wake(result: Report | Failure) -> None:
            with PreserveLoggingContext():
                if isinstance(result, Failure):
                    mine.errback(result)
                else:
                    mine.callback(result)

        shared.addBoth(_wake)
        return mine

    async def _import_run_modules(self) -> None:
        try:
            await self._api.defer_to_thread(import_run_modules)
        except Exception as e:
            # The first run imports them itself, and says what is wrong then.
            logger.warning(
                "synapse_fedhealth: could not import the run's modules: %s", e
            )

    async def _background_run(self) -> None:
        try:
            await self.shared.report(refresh=True)
        except Exception as e:
            # The runner contains check errors; this is a last line of defence
            # so a background run never puts a traceback in Synapse's log.
            logger.warning("synapse_fedhealth: the background run failed: %s", e)


RunCoroutine = Coroutine[Any, Any, Report]

# The logcontext of the run whose code is executing. Twisted runs every step
# of every coroutine in a copy of the contextvars of the step that created
# it, so this follows the run into the coroutines it spawns (families,
# probes), which the reactor resumes in the sentinel logcontext.
_RUN_LOGCONTEXT: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "fedhealth_run_logcontext", default=None
)


class _RunLogLabel(logging.Filter):
    """Puts a module log line logged while the sentinel context is current (a
    spawned coroutine resumed by the reactor) in its run's logcontext.

    While the run goes on, the line is handled again inside the run's
    context: Synapse's LoggingContextFilter names the context current when it
    runs, and before Synapse 1.142 it overwrites any `request` already on the
    record. Once the run has finished (a probe that outlived it), switching
    back into its context would be an error, so the line is only labelled:
    newer Synapses keep that label."""

    def filter(self, record: logging.LogRecord) -> bool:
        run_context = _RUN_LOGCONTEXT.get()
        if run_context is None or current_context() is not SENTINEL_CONTEXT:
            return True
        if (
            getattr(run_context, "finished", True) is False
            and threading.current_thread() is threading.main_thread()
        ):
            with PreserveLoggingContext(run_context):
                # Back through this filter, now outside the sentinel context.
                logging.getLogger(record.name).handle(record)
            return False
        record.request = str(run_context)
        record.server_name = getattr(run_context, "server_name", "")
        return True


_RUN_LOG_LABEL = _RunLogLabel()


def _label_module_log_lines() -> None:
    for name in ("synapse_fedhealth", "synapse_fedhealth.checks.config_lint"):
        target = logging.getLogger(name)
        if _RUN_LOG_LABEL not in target.filters:
            target.addFilter(_RUN_LOG_LABEL)


def _start_named_run(
    api: ModuleApi, run: Callable[[], RunCoroutine]
) -> defer.Deferred[Report]:
    """Starts a run as a Synapse background process of its own.

    The run is shared by every waiter, so it must not carry any one
    request's logcontext; as a named background process its log lines say
    which run they belong to, and Synapse accounts its CPU in its
    background-process metrics. The Deferred returned fires inside that
    process's context (see `FedHealthModule.get_report`)."""
    done: defer.Deferred[Report] = defer.Deferred()
    _label_module_log_lines()

    async def body() -> None:
        context = current_context()
        _RUN_LOGCONTEXT.set(context)
        use_stepper(lambda child: _ChildInLogContext(child, context))
        try:
            report = await _InLogContext(run(), context)
        except BaseException:
            done.errback(Failure())
        else:
            done.callback(report)

    homeserver.run_as_background_process(api, RUN_PROCESS_NAME, body)
    return done


class _InLogContext:
    """Awaits `coroutine` with `context` current during each of its steps,
    and the sentinel context while it waits.

    The engine awaits plain Twisted Deferreds, which resume it from the
    reactor in the sentinel context; stepping it this way (what
    `make_deferred_yieldable` does for one Deferred) keeps every one of its
    log lines, and its CPU time, in the run's context."""

    def __init__(self, coroutine: RunCoroutine, context: Any) -> None:
        self._coroutine = coroutine
        self._context = context

    def __await__(self) -> Generator[Any, Any, Report]:
        coroutine = self._coroutine
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            set_current_context(self._context)
            try:
                if thrown is not None:
                    waiting_on = coroutine.throw(thrown)
                else:
                    waiting_on = coroutine.send(sent)
            except StopIteration as finished:
                return cast(Report, finished.value)
            set_current_context(SENTINEL_CONTEXT)
            try:
                sent, thrown = (yield waiting_on), None
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as e:
                sent, thrown = None, e


class _ChildInLogContext:
    """Awaits a coroutine the run spawned (`engine.spawn`) with the run's
    `context` current during each of its steps, and whatever was current
    before around them: the sentinel when the reactor resumes it, the run's
    context when its parent starts it or a sibling's end wakes it.

    A child still stepping after the run's context finished (an answer
    shared with a later run, `third_party`) is stepped as it is: Synapse
    refuses to restart a finished context."""

    def __init__(self, coroutine: Coroutine[Any, Any, Any], context: Any) -> None:
        self._coroutine = coroutine
        self._context = context

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine = self._coroutine
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            live = not getattr(self._context, "finished", False)
            previous = set_current_context(self._context) if live else None
            try:
                if thrown is not None:
                    waiting_on = coroutine.throw(thrown)
                else:
                    waiting_on = coroutine.send(sent)
            except StopIteration as finished:
                return finished.value
            finally:
                if previous is not None:
                    set_current_context(previous)
            try:
                sent, thrown = (yield waiting_on), None
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as e:
                sent, thrown = None, e


def _startup_logcontext(server_name: str) -> AbstractContextManager[Any]:
    """A named logcontext for the module's start-up where Synapse starts it
    in the sentinel context; where Synapse gave it one, that one."""
    if current_context() is not SENTINEL_CONTEXT:
        return nullcontext()
    # What LoggingContext takes has changed between releases.
    make: Any = getattr(synapse_logcontext, "LoggingContext")  # noqa: B009
    try:
        return cast(
            AbstractContextManager[Any],
            make(name=STARTUP_CONTEXT_NAME, server_name=server_name),
        )
    except TypeError:  # before 1.136: logcontexts name no server
        return cast(AbstractContextManager[Any], make(name=STARTUP_CONTEXT_NAME))


def _background(
    api: ModuleApi, desc: LiteralString
) -> Callable[[Callable[[], Awaitable[None]]], None]:
    """Runs a function as a named Synapse background process (its own
    logcontext and resource metrics), fire and forget."""

    def spawn(func: Callable[[], Awaitable[None]]) -> None:
        homeserver.run_as_background_process(api, desc, func)

    return spawn


def _outbound_environment(
    api: ModuleApi,
    config: FedHealthConfig,
    snapshot: homeserver.HomeserverSnapshot,
    answers: ThirdPartyAnswers,
) -> OutboundEnvironment | None:
    """Synapse's own federation agent, database and traffic evidence for the
    outbound families; None (the checks then skip) if this Synapse can't
    give them."""
    servers, source = probe_servers_for(
        config.outbound_probe_servers,
        [k.server_name for k in snapshot.trusted_key_servers],
        snapshot.server_name,
    )
    client: homeserver.SynapseOutbound | None = None
    try:
        client = homeserver.SynapseOutbound(api)
    except Exception as e:
        # The report says so (outbound.reach skip); no start-up warning for it.
        logger.info(
            "synapse_fedhealth: Synapse's federation agent is not available "
            "(%s: %s); outbound.reach is skipped",
            type(e).__name__,
            e,
        )
    traffic = homeserver.FederationTrafficRecorder(api, snapshot.server_name)
    return OutboundEnvironment(
        client=client,
        destinations=homeserver.SynapseDestinations(api),
        traffic=traffic,
        probe_servers=servers,
        source=source,
        answers=answers,
    )


def _snapshot_or_error(
    api: ModuleApi,
) -> tuple[homeserver.HomeserverSnapshot | None, str]:
    try:
        return homeserver.snapshot_of(api), ""
    except Exception as e:
        # A Synapse release that moved its config objects must not stop the
        # homeserver: report the problem instead of checks.
        error = f"{type(e).__name__}: {e}"
        logger.warning(
            "synapse_fedhealth could not read Synapse's configuration (%s); "
            "the report will say so",
            error,
        )
        return None, error


def _nonce_secret(snapshot: homeserver.HomeserverSnapshot | None) -> bytes | None:
    if snapshot is None or not snapshot.signing_keys:
        return None
    key = snapshot.signing_keys[0].signing_key
    try:
        return secret_from_signing_key(bytes(key.encode()))
    except Exception:
        return None


class _NoFamilies:
    """Without a snapshot nothing is probed: the report says why."""

    def first(self, io: Any, settings: Any) -> list[Any]:
        return []

    def follow_ups(self, io: Any, settings: Any, network: Any) -> list[Any]:
        return []
