"""Test-wide settings.

- pytest-xdist runs one process per core, so each process keeps to one torch thread: two processes × two threads
  on two cores makes tiny ops spin against each other (orders of magnitude slower).
- Without a GPU, probe's Triton kernels run through Triton's interpreter. It is chosen when a kernel is
  decorated, so it is set here, before any test imports a kernel of probe.ops.
- Triton's interpreter re-patches triton.language on every call of a nested @triton.jit helper (a scan of the
  language's members, ~1.5 ms a call: most of a kernel test's time). Inside a running kernel the language is
  already patched, so here a nested call skips that; the kernel's own launch still patches and restores it.
- `poisoned`: the kernel tests' fixture that makes every uninitialised float tensor NaN.
"""
import inspect
import os

import pytest
import torch

torch.set_num_threads(1)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _nested_calls_patch_once():
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    grid, function = getattr(interpreter, "GridExecutor", None), getattr(interpreter, "InterpretedFunction", None)
    if grid is None or function is None or not hasattr(function, "rewrite") or not hasattr(interpreter,
                                                                                           "_patch_lang"):
        return  # another interpreter than the one this was written against: leave it as it is
    patched, launch, call = [], grid.__call__, function.__call__  # the language modules patched in this launch

    def langs(fn):  # which modules _patch_lang patches for fn
        return {id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)}

    def counted_launch(self, *args, **kwargs):
        patched.append(langs(self.fn))
        try:
            return launch(self, *args, **kwargs)
        finally:
            patched.pop()

    def nested_call(self, *args, **kwargs):
        if not patched:
            return call(self, *args, **kwargs)
        mine = langs(self.fn)
        if not mine <= patched[-1]:  # e.g. tl.zeros, whose module sees triton.language.core
            interpreter._patch_lang(self.fn)
            patched[-1] |= mine
        try:
            return self.rewrite()(*args, **kwargs)
        except Exception as e:
            raise interpreter.InterpreterError(repr(e)) from e
    grid.__call__, function.__call__ = counted_launch, nested_call


if os.environ.get("TRITON_INTERPRET") == "1":
    _nested_calls_patch_once()


@pytest.fixture
def poisoned(monkeypatch):
    """Every uninitialised float tensor starts as NaN, so an element a kernel never writes shows up."""
    empty, empty_like, new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty

    def fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t
    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(empty_like(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: fill(new_empty(self, *a, **k)))
