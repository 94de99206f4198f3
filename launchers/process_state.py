"""A process's global state, captured once and put back before each trial, so that a process that
runs trial after trial starts each one as a fresh process would.

What a trial can change and the next one would otherwise inherit: the working directory, the
environment, the umask, sys.argv and sys.path, the standard streams, signal handlers, logging
(handlers, levels, disabled loggers), warning filters, the random generators (Python's, NumPy's,
torch's), torch's global settings (deterministic algorithms, cuDNN and TF32 flags, matmul
precision, thread count, default dtype and device, grad and anomaly mode, print options) and
torch.compile's caches. Modules a trial imported stay imported: that is what makes a warm
process fast. What their import changed in the process (a warning filter, a handler on their own
logger) is recorded while the import runs and played again after each restore, so every later
trial starts with it, as a process that had imported them would. Module-level state of the
trial's own code (a global counter, a cache) is the one thing not reset.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import random
import signal
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

# SIGKILL and SIGSTOP cannot be caught; the rest are every handler a trial may have installed
_SIGNALS = [s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)]


@dataclass
class _LoggerState:
    level: int
    handlers: list
    propagate: bool
    disabled: bool
    filters: list


@dataclass
class ProcessState:
    cwd: str
    environ: dict[str, str]
    umask: int
    argv: list[str]
    path: list[str]
    streams: tuple
    signals: dict[int, Any]
    loggers: dict[str, _LoggerState]
    logging_disable: int
    warning_filters: list
    showwarning: Any
    python_random: Any
    numpy_random: Any
    torch: dict[str, Any] = field(default_factory=dict)
    threads: set = field(default_factory=set)

    @classmethod
    def capture(cls) -> "ProcessState":
        import numpy as np

        # first: importing torch creates and configures its loggers, and putting its settings back
        # imports torch._dynamo (warning filters): both belong to the baseline
        torch_state = _capture_torch()
        _restore_torch(torch_state)
        umask = os.umask(0)
        os.umask(umask)
        state = cls(
            cwd=os.getcwd(),
            environ=dict(os.environ),
            umask=umask,
            argv=list(sys.argv),
            path=list(sys.path),
            streams=(sys.stdin, sys.stdout, sys.stderr, sys.displayhook, sys.excepthook),
            signals={s: signal.getsignal(s) for s in _SIGNALS} if _main_thread() else {},
            loggers=_capture_loggers(),
            logging_disable=logging.root.manager.disable,
            warning_filters=list(warnings.filters),
            showwarning=warnings.showwarning,
            python_random=random.getstate(),
            numpy_random=np.random.get_state(),
            torch=torch_state,
            threads=set(threading.enumerate()),
        )
        # from now on, what an import changes belongs to every later trial's start
        import_effects.install()
        return state

    def restore(self) -> None:
        """Put every captured piece back; close what a trial left open (logging handlers)."""
        import numpy as np

        os.chdir(self.cwd)
        if os.environ != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        os.umask(self.umask)
        sys.argv[:] = self.argv
        sys.path[:] = self.path
        sys.stdin, sys.stdout, sys.stderr, sys.displayhook, sys.excepthook = self.streams
        if _main_thread():
            for signum, handler in self.signals.items():
                if signal.getsignal(signum) is not handler and handler is not None:
                    signal.signal(signum, handler)
        _restore_loggers(self.loggers, keep=import_effects.handlers)
        logging.disable(self.logging_disable)
        warnings.filters[:] = self.warning_filters
        warnings._filters_mutated()
        warnings.showwarning = self.showwarning
        import_effects.replay()
        random.setstate(self.python_random)
        np.random.set_state(self.numpy_random)
        _restore_torch(self.torch)
        # the young generations hold most of a trial's cycles; a full collection costs tens of
        # milliseconds, paid where memory matters most: a GPU trial (see _restore_torch)
        gc.collect(1)

    def stray_threads(self) -> list[threading.Thread]:
        """Threads a trial started and left running: a process with them cannot start afresh."""
        return [t for t in threading.enumerate() if t not in self.threads and t.is_alive()]


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _capture_loggers() -> dict[str, _LoggerState]:
    loggers = {"": logging.root}
    loggers.update({name: logger for name, logger in logging.root.manager.loggerDict.items()
                    if isinstance(logger, logging.Logger)})
    return {name: _LoggerState(logger.level, list(logger.handlers), logger.propagate, logger.disabled,
                               list(logger.filters))
            for name, logger in loggers.items()}


def _restore_loggers(states: dict[str, _LoggerState], keep: set[int]) -> None:
    kept = {id(handler) for state in states.values() for handler in state.handlers} | keep
    loggers = {"": logging.root}
    loggers.update({name: logger for name, logger in logging.root.manager.loggerDict.items()
                    if isinstance(logger, logging.Logger)})
    for name, logger in loggers.items():
        state = states.get(name, _LoggerState(logging.NOTSET, [], True, False, []))
        for handler in list(logger.handlers):
            if handler not in state.handlers:
                logger.removeHandler(handler)
                if id(handler) not in kept:
                    handler.close()
        for handler in state.handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
        logger.setLevel(state.level)
        logger.propagate, logger.disabled, logger.filters = state.propagate, state.disabled, list(state.filters)


class _ImportEffects:
    """Warning filters and logger settings that modules set while being imported, recorded (the
    calls that set them) so that a restore can set them again."""

    def __init__(self):
        self.calls: list[tuple[Callable, tuple, dict]] = []
        self.handlers: set[int] = set()  # handlers added by imports: never closed by a restore
        self.installed = False
        self.filters: list | None = None  # warnings.filters as installed; a catch_warnings block swaps it

    def install(self) -> None:
        if self.installed:
            return
        self.installed = True
        warnings.filterwarnings = self._recorded(warnings.filterwarnings, filters=True)
        warnings.simplefilter = self._recorded(warnings.simplefilter, filters=True)
        for name in ("setLevel", "addHandler", "removeHandler", "addFilter"):
            setattr(logging.Logger, name, self._recorded(getattr(logging.Logger, name), filters=False))
        self.filters = warnings.filters

    def _recorded(self, function: Callable, filters: bool) -> Callable:
        @functools.wraps(function)
        def call(*args, **kwargs):
            result = function(*args, **kwargs)
            # inside `with warnings.catch_warnings()` a filter lasts only until the block ends
            if _importing() and not (filters and warnings.filters is not self.filters):
                self.calls.append((function, args, kwargs))
                if function.__name__ == "addHandler":
                    self.handlers.add(id(args[1]))
            return result

        return call

    def replay(self) -> None:
        for function, args, kwargs in self.calls:
            function(*args, **kwargs)


def _importing() -> bool:
    """Whether a module is being imported somewhere up the stack (its top-level code is running)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename == "<frozen importlib._bootstrap>" and frame.f_code.co_name == "_load_unlocked":
            return True
        frame = frame.f_back
    return False


import_effects = _ImportEffects()


def _capture_torch() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {}
    cuda_matmul = torch.backends.cuda.matmul
    state = {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn": (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                  torch.backends.cudnn.allow_tf32),
        "cuda_matmul": (cuda_matmul.allow_tf32, cuda_matmul.allow_fp16_reduced_precision_reduction,
                        cuda_matmul.allow_bf16_reduced_precision_reduction),
        "mkldnn": torch.backends.mkldnn.enabled,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "num_threads": torch.get_num_threads(),
        "default_dtype": torch.get_default_dtype(),
        # None: no default-device mode (a fresh process); set_default_device("cpu") would add one
        "default_device": _default_device(torch),
        "grad": torch.is_grad_enabled(),
        "anomaly": (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()),
        "printoptions": dict(torch._tensor_str.PRINT_OPTS.__dict__),
        "rng": torch.get_rng_state(),
    }
    return state


def _default_device(torch) -> Any:
    context = getattr(torch._GLOBAL_DEVICE_CONTEXT, "device_context", None)
    return None if context is None else context.device


def _restore_torch(state: dict[str, Any]) -> None:
    if not state:
        return
    import torch

    torch.use_deterministic_algorithms(state["deterministic"], warn_only=state["deterministic_warn_only"])
    cudnn = torch.backends.cudnn
    cudnn.enabled, cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = state["cudnn"]
    cuda_matmul = torch.backends.cuda.matmul
    (cuda_matmul.allow_tf32, cuda_matmul.allow_fp16_reduced_precision_reduction,
     cuda_matmul.allow_bf16_reduced_precision_reduction) = state["cuda_matmul"]
    torch.backends.mkldnn.enabled = state["mkldnn"]
    torch.set_float32_matmul_precision(state["float32_matmul_precision"])
    if torch.get_num_threads() != state["num_threads"]:
        torch.set_num_threads(state["num_threads"])
    torch.set_default_dtype(state["default_dtype"])
    if _default_device(torch) != state["default_device"]:
        torch.set_default_device(state["default_device"])
    torch.set_grad_enabled(state["grad"])
    torch.set_anomaly_enabled(*state["anomaly"])
    torch._tensor_str.PRINT_OPTS.__dict__.update(state["printoptions"])
    torch.set_rng_state(state["rng"])
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None and dynamo.convert_frame.FRAME_COUNTER:  # something was compiled
        dynamo.reset()
    if torch.cuda.is_initialized():
        gc.collect()  # the last trial's tensors held in reference cycles, before the cache is emptied
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
