"""Decisions that every process of a multi-process evaluation must share, and failures they all see.

Under `accelerate launch`, a rank that raises while the others wait at a collective (a barrier, a
gather) leaves them waiting forever, and two ranks that read a folder being written at different
moments decide differently. Two helpers close both holes:

- `on_main(state, fn)`: the main process runs `fn` and every process gets its result (the main process
  decides, e.g., which predictions are left to generate);
- `on_every_rank(state, fn)`: every process runs `fn` (a check), and if any one fails, all fail.

Either way a failure ends every process with the same exception type and message. The copies raised
on the other processes carry `quiet = True`, so the CLI prints the error once (on the main process).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from mixtune import errors

T = TypeVar("T")


class ProcessFailure(errors.MixtuneError):
    """Another process of the evaluation failed with an error that is not one of mixtune's."""


def _payload(error: BaseException | None, rank: int) -> tuple | None:
    if error is None:
        return None
    if isinstance(error, errors.MixtuneError):
        return (rank, type(error).__name__, error.message, error.path, error.field, error.hint)
    return (rank, "ProcessFailure", f"process {rank} failed: {type(error).__name__}: {error}", None, None, None)


def _rebuild(payload: tuple) -> errors.MixtuneError:
    _, name, message, path, field, hint = payload
    cls = ProcessFailure if name == "ProcessFailure" else getattr(errors, name, errors.MixtuneError)
    return cls(message, path=path, field=field, hint=hint)


def _raise(state: Any, error: BaseException | None, first: tuple) -> None:
    """Raise the first failure on this process: the original where it happened, a copy elsewhere."""
    own = error if error is not None and first[0] == state.process_index else None
    raised = own or _rebuild(first)
    if not state.is_main_process:
        raised.quiet = True  # type: ignore[attr-defined]
    if own is not None:
        raise own
    raise raised from None


def _run(fn: Callable[[], T]) -> tuple[T | None, BaseException | None]:
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - every failure must reach the other processes
        return None, e


def on_every_rank(state: Any, fn: Callable[[], T]) -> T:
    """Run the check `fn` on every process; if it fails on any, raise that (first) failure on all."""
    result, error = _run(fn)
    if state.num_processes == 1:
        if error is not None:
            raise error
        return result  # type: ignore[return-value]
    from accelerate.utils import gather_object

    failures = [p for p in gather_object([_payload(error, state.process_index)]) if p is not None]
    if failures:
        _raise(state, error, min(failures, key=lambda p: p[0]))
    return result  # type: ignore[return-value]


def on_main(state: Any, fn: Callable[[], T]) -> T:
    """Run `fn` on the main process only; every process returns its result or raises its failure."""
    if state.num_processes == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    result, error = _run(fn) if state.is_main_process else (None, None)
    box = [(result, _payload(error, state.process_index))]
    broadcast_object_list(box, from_process=0)
    result, failure = box[0]
    if failure is not None:
        _raise(state, error, failure)
    return result  # type: ignore[return-value]
