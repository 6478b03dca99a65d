"""Sweep definitions: a Python file whose `sweep()` returns a typed `Sweep`; the grid it spans; its checks.

    def sweep() -> Sweep:
        return Sweep(name="zoology_mqar",
                     tasks=[MQAR(seq_len=L, num_kv_pairs=N) for L, N in [(64, 4), (128, 8)]],
                     archs=["attention", "based", "mamba"], d_models=(64, 128),
                     train=TrainConfig(batch_size=256, num_train=100_000, num_test=3_000),
                     epochs=64, search=SearchSpace(lr=(1e-4, 1e-2)), trials_per_cell=4)

A cell is one point of tasks × archs × d_models × seeds; each cell is one Optuna study (named from the sweep and
the cell) whose trials tune the cell's search space. Everything is validated before any training starts: a bad
cell is named with the field that is wrong.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import glob
import hashlib
import math
import os
import runpy
from dataclasses import dataclass, field
from typing import Literal

from tasks import TaskConfig, TaskConfigError

from .config import ModelConfig, TrainConfig
from .errors import ProbeError
from .model import build_model


class _SeqLen:
    """Stands for the task's training length in a sweep's mixer options (e.g. H3's d_state = L in Zoology)."""

    def __repr__(self) -> str:
        return "SEQ_LEN"


SEQ_LEN = _SeqLen()


@dataclass(frozen=True)
class SearchSpace:
    """What Optuna tunes per cell: learning rate (log-uniform), optionally weight decay (log-uniform).

    `lr_grid` replaces tuning by a fixed grid (Zoology's protocol): each cell trains exactly these learning
    rates, one trial each, so the sweep's `trials_per_cell` must equal their number.
    """

    lr: tuple[float, float] = (1e-4, 1e-2)
    weight_decay: tuple[float, float] | None = None
    lr_grid: tuple[float, ...] | None = None

    def check(self, where: str) -> None:
        import typing

        from .flags import describe, matches, short_repr
        hints = typing.get_type_hints(SearchSpace)
        for f in dataclasses.fields(self):  # finite numbers of the right shape first: the ranges compare them
            if not matches(getattr(self, f.name), hints[f.name]):
                raise ProbeError(f"{where}: search.{f.name}={short_repr(getattr(self, f.name))} must be "
                                 f"{describe(hints[f.name])}")
        for name in ("lr", "weight_decay"):
            rng = getattr(self, name)
            if rng is not None and not 0 < rng[0] < rng[1]:
                raise ProbeError(f"{where}: search.{name}={rng!r} must be a (low, high) pair with 0 < low < high")
        if self.lr_grid is not None:
            grid = self.lr_grid
            if not (grid and all(v > 0 for v in grid) and len(set(grid)) == len(grid)):
                raise ProbeError(f"{where}: search.lr_grid={grid!r} must be a tuple of distinct positive rates")
            if self.weight_decay is not None:
                raise ProbeError(f"{where}: search.lr_grid fixes the trials; it cannot be combined with a "
                                 "weight_decay range")

    @property
    def n_params(self) -> int:
        return 1 + (self.weight_decay is not None)


@dataclass(frozen=True)
class Cell:
    sweep: str
    task: TaskConfig
    arch: str  # the registered arch (or pattern) that is built
    label: str  # its name in this sweep's results (the arch itself unless the sweep names a variant)
    mixer_options: dict
    model: ModelConfig
    train: TrainConfig
    search: SearchSpace
    seed: int
    key: str

    @property
    def study_name(self) -> str:
        return f"{self.sweep}:{self.key}"


@dataclass(frozen=True)
class Sweep:
    name: str
    tasks: list[TaskConfig]
    #: arch names (or comma patterns), or a dict label -> mixer options; an "arch" entry in the options names
    #: the registered arch when the label differs (e.g. {"swa64": {"arch": "sliding_window", "window": 64}}),
    #: a "train" entry holds TrainConfig fields for this arch alone (e.g. {"eval_position_schemes": (...)})
    archs: list[str] | dict[str, dict]
    d_models: tuple[int, ...]
    n_layers: int = 2
    channel_mixer: Literal["none", "mlp", "swiglu"] = "none"
    train: TrainConfig = TrainConfig()
    #: budget in epochs over train.num_train (overrides train.max_steps when given)
    epochs: float | None = None
    #: one space for all archs, or a dict arch -> space (archs not named use "default" or SearchSpace())
    search: SearchSpace | dict[str, SearchSpace] = field(default_factory=SearchSpace)
    trials_per_cell: int = 4
    #: trials trained together as one pack (probe.pack); None packs all of a cell's trials. `probe sweep --pack`
    #: overrides it; a pack that does not fit in GPU memory is halved
    pack_size: int | None = None
    seeds: tuple[int, ...] = (0,)
    #: how a cell stops its unpromising trials early (see `pruning`): "median" stops a trial below the median of
    #: the cell's finished trials at the same step; "patient" only once it has also gone `pruner_patience`
    #: evaluations without a new best (MQAR learns in a late jump: a trial on the plateau is not a bad one);
    #: "none" trains every trial to its budget; "auto" picks by the number of trials per cell
    pruner: Literal["auto", "patient", "median", "none"] = "auto"
    #: a cell is solved once one of its trials reaches train.stop_at: the trials training in the same pack stop
    #: at that evaluation (PRUNED, the reason naming the trial that got there). The cell's result cannot change
    #: (every trial stops at stop_at anyway); what is lost is how far the other learning rates would have got
    end_cell_at_target: bool = True
    #: a trial whose accuracy has not risen `plateau_min_delta` above its level for this many epochs (of its cell's
    #: train.num_train) stops, PRUNED with the reason: a model stuck on a plateau far longer than MQAR's late jumps
    #: take. It judges each trial by its own curve alone, so it acts inside a pack. None: trials train to the end
    plateau_epochs: float | None = None
    #: the rise that counts as progress for `plateau_epochs` (token accuracy, absolute)
    plateau_min_delta: float = 0.01
    #: "patient": evaluations without a new best before the median rule may stop a trial. Noise on a plateau
    #: sets a new best now and then, so a trial is at risk only once it has gone this long without one
    pruner_patience: int = 5
    #: a trial that raised is retried; after this many failures the cell is given up (shown as failed)
    max_failures_per_cell: int = 3
    #: training settings that depend on the task's training length, e.g. Zoology's batch sizes
    #: {64: {"batch_size": 512}, 512: {"batch_size": 128}}; applied before `epochs` turns into steps
    train_per_seq_len: dict[int, dict] = field(default_factory=dict)
    #: training settings of one task, by its name, applied after train_per_seq_len, e.g. MAD's memorization
    #: {"memorization": {"num_train": 256}} (it shares its length with compression, which trains on 12,800)
    train_per_task: dict[str, dict] = field(default_factory=dict)
    #: shell-style patterns over cell keys (e.g. "mqar-L64-*"): only the cells matching one of them are run and
    #: shown; empty: every cell. `probe sweep/worker/status --cells` sets it, so that a sweep can run a row at a
    #: time on one journal (a cell's key and its study do not depend on which cells are selected)
    only: tuple[str, ...] = ()

    #: "auto" prunes nothing below this many trials per cell
    AUTO_PRUNE_MIN_TRIALS = 6

    @property
    def pruning(self) -> Literal["patient", "median", "none"]:
        """The pruner the sweep's cells use, "auto" resolved: "none" below AUTO_PRUNE_MIN_TRIALS trials per cell,
        else "patient".

        Why: the median rule judges a trial against the cell's finished trials (two at least). In a cell of a
        few trials it can act only on the last ones, against a median of two or three curves, and not at all
        while the cell's trials train as one pack (the default: none has finished when the others are judged),
        so it saves little; yet a trial it stops on MQAR's plateau may be the one that would have jumped, and the
        cell loses its best learning rate. With more trials, in packs smaller than the cell, stopping the clearly
        bad ones pays, and patience keeps a trial through a plateau that faster rates have already left."""
        if self.pruner != "auto":
            return self.pruner
        return "none" if self.trials_per_cell < self.AUTO_PRUNE_MIN_TRIALS else "patient"

    def pruning_text(self) -> str:
        """The pruner in words, as the report names it: "patient median (5 evaluations)", "none (auto: 2 trials
        per cell)", and whether a solved cell stops its other trials (`end_cell_at_target`)."""
        text = {"patient": f"patient median ({self.pruner_patience} evaluations)", "median": "median",
                "none": "none"}[self.pruning]
        text = f"{text} (auto: {self.trials_per_cell} trials per cell)" if self.pruner == "auto" else text
        if self.plateau_epochs is not None:
            text += f"; a plateau of {self.plateau_epochs:g} epochs without +{self.plateau_min_delta:g} stops a trial"
        return text + ("; the first trial to reach stop_at ends its pack" if self.end_cell_at_target else "")

    # -- the grid ---------------------------------------------------------------------------------------
    def arch_options(self) -> dict[str, dict]:
        return dict(self.archs) if isinstance(self.archs, dict) else {a: {} for a in self.archs}

    def search_for(self, arch: str) -> SearchSpace:
        if isinstance(self.search, SearchSpace):
            return self.search
        return self.search.get(arch, self.search.get("default", SearchSpace()))

    def train_config(self, seq_len: int | None = None, task: str | None = None) -> TrainConfig:
        """The training config of a cell whose task (by name) trains at seq_len (None: the sweep's own)."""
        train = self.train
        for where, table, key in (("train_per_seq_len", self.train_per_seq_len, seq_len),
                                  ("train_per_task", self.train_per_task, task)):
            if key is not None and key in table:
                try:
                    train = dataclasses.replace(train, **table[key])
                except TypeError as e:
                    raise ProbeError(f"{where}[{key!r}]: {e}") from None
        if self.epochs is None:
            return train
        train.check()  # sizes are known good before they divide
        steps = max(1, math.ceil(self.epochs * train.num_train / train.batch_size))
        return dataclasses.replace(train, max_steps=steps)

    def cells(self) -> list[Cell]:
        tkeys = task_keys(self.tasks)
        out = []
        for task, tkey in zip(self.tasks, tkeys):
            train = self.train_config(task.seq_len, task.name)
            for label, options in self.arch_options().items():
                options = {k: task.seq_len if v is SEQ_LEN else v for k, v in options.items()}
                arch = options.pop("arch", label)
                own_train = options.pop("train", None)  # training settings of this arch alone
                try:
                    cell_train = dataclasses.replace(train, **own_train) if own_train else train
                except TypeError as e:
                    raise ProbeError(f"arch {label}: train: {e}") from None
                for d_model in self.d_models:
                    for seed in self.seeds:
                        out.append(Cell(
                            sweep=self.name, task=task, arch=arch, label=label, mixer_options=options,
                            model=ModelConfig(d_model=d_model, n_layers=self.n_layers,
                                              channel_mixer=self.channel_mixer),
                            train=dataclasses.replace(cell_train, seed=seed), search=self.search_for(label),
                            seed=seed,
                            key=f"{tkey}/{label}/d{d_model}/seed{seed}"))
        if self.only:
            out = [c for c in out if any(fnmatch.fnmatchcase(c.key, p) for p in self.only)]
        return out

    def select(self, patterns: list[str] | tuple[str, ...], flag: str = "--cells") -> "Sweep":
        """This sweep with only those of its cells whose key matches one of `patterns` (shell-style,
        case-sensitive); ProbeError naming `flag` if a pattern matches none of them. No patterns: the sweep."""
        if not patterns:
            return self
        keys = [c.key for c in self.cells()]
        for p in patterns:
            if not any(fnmatch.fnmatchcase(k, p) for k in keys):
                example = dataclasses.replace(self, only=()).cells()[0].key
                raise ProbeError(f"{flag} {p!r} matches no cell of sweep {self.name!r} (keys look like {example!r})")
        # the kept keys themselves, escaped: a sweep already narrowed stays within its own selection
        return dataclasses.replace(self, only=tuple(glob.escape(k) for k in keys
                                                    if any(fnmatch.fnmatchcase(k, p) for p in patterns)))

    # -- validation ---------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise ProbeError naming the sweep, the cell and the field of the first problem found."""
        import re
        import typing

        from .cli import check_fits
        from .flags import describe, matches, short_repr
        from .model import mixer_options, parse_pattern
        where = f"sweep {short_repr(self.name)}"
        hints = typing.get_type_hints(Sweep)
        for f in dataclasses.fields(self):  # a sweep file is Python: every other check assumes the types
            if not matches(getattr(self, f.name), hints[f.name]):
                raise ProbeError(f"{where}: {f.name}={short_repr(getattr(self, f.name))} must be "
                                 f"{describe(hints[f.name])}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):  # it names the folder runs/<name>/
            raise ProbeError(f"{where}: name must be letters, digits, '_', '-' and '.', and start with a letter "
                             "or digit")
        for fname in ("tasks", "archs", "d_models", "seeds"):
            if not getattr(self, fname):
                raise ProbeError(f"{where}: field {fname!r} is empty")
        for label, options in self.arch_options().items():
            if not label or any(c in label for c in "/:"):
                raise ProbeError(f"{where}: arch label {label!r} must be non-empty without '/' or ':'")
            if not isinstance(options, dict) or not isinstance(options.get("arch", label), str):
                raise ProbeError(f"{where}: archs[{label!r}] must be a dict of mixer options (an 'arch' entry "
                                 "names the registered arch)")
        for fname in ("trials_per_cell", "max_failures_per_cell", "n_layers", "pruner_patience"):
            if getattr(self, fname) < 1:
                raise ProbeError(f"{where}: {fname}={getattr(self, fname)} must be >= 1")
        if self.pack_size is not None and self.pack_size < 1:
            raise ProbeError(f"{where}: pack_size={self.pack_size} must be >= 1 (or None: a cell's trials at once)")
        if self.epochs is not None and not self.epochs > 0:
            raise ProbeError(f"{where}: epochs={self.epochs} must be > 0")
        if self.plateau_epochs is not None and not self.plateau_epochs > 0:
            raise ProbeError(f"{where}: plateau_epochs={self.plateau_epochs} must be > 0 (or None)")
        if not 0 < self.plateau_min_delta < 1:
            raise ProbeError(f"{where}: plateau_min_delta={self.plateau_min_delta} must be in (0, 1)")
        bad_seeds = [s for s in self.seeds if not 0 <= s < 2**32]
        if bad_seeds:
            raise ProbeError(f"{where}: seeds: {bad_seeds[0]} must be in [0, 2**32)")
        for seq_len, task in [(None, None), *dict.fromkeys((t.seq_len, t.name) for t in self.tasks)]:
            try:
                self.train_config(seq_len, task).check()
            except ProbeError as e:
                at = "" if seq_len is None else f" at L={seq_len}"
                at += f" for {task}" if task in self.train_per_task else ""
                raise ProbeError(f"{where}: train{at}: {e}") from None
        for arch in self.arch_options():
            space = self.search_for(arch)
            space.check(f"{where}: arch {arch}")
            if space.lr_grid is not None and len(space.lr_grid) != self.trials_per_cell:
                raise ProbeError(f"{where}: arch {arch}: search.lr_grid has {len(space.lr_grid)} rates but "
                                 f"trials_per_cell={self.trials_per_cell} (one trial per grid point)")
        self.select(self.only, flag=f"{where}: only")  # every pattern names a cell
        keys = [c.key for c in self.cells()]
        if len(set(keys)) != len(keys):
            raise ProbeError(f"{where}: two cells share the key {next(k for k in keys if keys.count(k) > 1)!r} "
                             "(a task, arch, d_model or seed is listed twice)")
        checked = set()
        for cell in self.cells():
            same = repr((cell.arch, cell.model, sorted(cell.mixer_options.items()), cell.task,
                         dataclasses.replace(cell.train, seed=0)))
            if same in checked:
                continue
            checked.add(same)
            try:
                for name in dict.fromkeys(parse_pattern(cell.arch)):
                    for option, value in cell.mixer_options.items():
                        tp = mixer_options(name).get(option, (typing.Any,))[0]
                        if not matches(value, tp):
                            raise ProbeError(f"{option}={short_repr(value)} must be {describe(tp)}")
                check_fits(cell.task, cell.arch, cell.model, cell.train, cell.mixer_options)  # one member
            except (ProbeError, TaskConfigError) as e:
                raise ProbeError(f"{where}: cell {cell.key}: {e}") from None


def task_keys(tasks: list[TaskConfig]) -> list[str]:
    """Readable keys: task name, training length, and every field that differs among this sweep's tasks."""
    varying = set()
    for a in tasks:
        for b in tasks:
            if a.name == b.name:
                varying |= {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}
    varying -= {"seq_len", "eval_seq_lens", "eval_num_kv_pairs"}  # evaluation settings do not make a new cell
    keys = []
    for t in tasks:
        parts = [t.name, f"L{t.seq_len}"]
        for f in sorted(varying):
            if hasattr(t, f):
                value = getattr(t, f)
                parts.append(f"{f}{','.join(map(str, value)) if isinstance(value, tuple) else value}")
        keys.append("-".join(parts))
    return keys


def load_sweep(path: str) -> Sweep:
    """Run a sweep file and return its validated Sweep; any problem is one ProbeError line naming the file."""
    import inspect
    if os.path.isdir(path):
        raise ProbeError(f"sweep file {path} is a directory")
    if not os.path.isfile(path):
        raise ProbeError(f"sweep file {path} does not exist")
    try:
        namespace = runpy.run_path(path, run_name="probe_sweep")
    except SyntaxError as e:
        raise ProbeError(f"{path}:{e.lineno}: {e.msg}") from None
    except OSError as e:
        raise ProbeError(f"sweep file {path}: cannot be read: {e.strerror}") from None
    except (TaskConfigError, ProbeError) as e:
        raise ProbeError(f"{path}: {e}") from None
    except SystemExit as e:  # not an exit of probe: the file is only being read
        raise ProbeError(f"{path}: calls sys.exit({e.code!r}) when it is run") from None
    except Exception as e:  # a sweep file is user code: any error in it is reported, not raised
        raise ProbeError(f"{path}: {type(e).__name__}: {e}") from None
    make = namespace.get("sweep")
    if not callable(make):
        raise ProbeError(f"{path}: defines no function sweep() returning a probe.sweep.Sweep")
    try:
        inspect.signature(make).bind()
    except TypeError:
        raise ProbeError(f"{path}: sweep() must take no arguments (it is sweep{inspect.signature(make)})") from None
    except ValueError:  # a callable without a signature: calling it tells
        pass
    try:
        result = make()
    except TypeError as e:
        text = str(e)
        if text.startswith("Sweep.__init__()") and "missing" in text:
            missing = text.split("argument:")[-1].strip() if "argument:" in text else text.split("arguments:")[-1]
            raise ProbeError(f"{path}: Sweep is missing field {missing.strip()}") from None
        raise ProbeError(f"{path}: TypeError: {e}") from None
    except (TaskConfigError, ProbeError) as e:
        raise ProbeError(f"{path}: {e}") from None
    except SystemExit as e:
        raise ProbeError(f"{path}: sweep() calls sys.exit({e.code!r})") from None
    except Exception as e:
        raise ProbeError(f"{path}: {type(e).__name__}: {e}") from None
    if not isinstance(result, Sweep):
        raise ProbeError(f"{path}: sweep() returned {type(result).__name__}, not a probe.sweep.Sweep")
    try:
        result.check()
    except (ProbeError, TaskConfigError) as e:
        raise ProbeError(f"{path}: {e}") from None
    return result


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
