"""A sweep's trials as tidy pandas tables: what `probe results` exports and `probe report` draws.

    res = load_results(["sweeps/quick.py"], storage=None)
    res.trials   # one row per trial: config, tuned params, final metrics, sizes, speed, provenance
    res.tidy     # one row per (trial, evaluation length, slice, slice value); slice "all" is the whole test set
    res.curves   # one row per (trial, step, evaluation length): learning curves
    res.provenance
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
from dataclasses import dataclass

import optuna
import pandas as pd

from .storage import default_url
from .sweep import Sweep, file_sha256, load_sweep
from .tuning import cell_status, cell_studies

NAN = math.nan


@dataclass
class Results:
    trials: pd.DataFrame
    tidy: pd.DataFrame
    curves: pd.DataFrame
    provenance: dict


def _task_columns(task_config: dict) -> dict:
    return {k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in task_config.items()
            if k != "seq_len"}


def _trial_rows(sweep: Sweep, cell, study_name: str, t: optuna.trial.FrozenTrial):
    rec = t.user_attrs.get("record")
    base = {"sweep": sweep.name, "cell": cell.key, "study": study_name, "trial": t.number, "state": t.state.name,
            "reason": t.user_attrs.get("reason", ""), "task": cell.task.name, "arch": cell.label,
            "arch_built": cell.arch, "seq_len": cell.task.seq_len, "d_model": cell.model.d_model, "n_layers": cell.model.n_layers,
            "seed": cell.seed, "lr": t.params.get("lr", NAN), "weight_decay": t.params.get("weight_decay", NAN),
            "lr_low": cell.search.lr[0], "lr_high": cell.search.lr[1]}
    trial = {**base, "accuracy": NAN, "best_accuracy": NAN, "per_example_accuracy": NAN, "exact_match": NAN,
             "state_size": NAN, "params": NAN, "train_tokens_per_s": NAN, "wall_time_s": NAN, "steps": NAN,
             "device": "", "git": "", "versions": "",
             **_task_columns(dataclasses.asdict(cell.task))}
    tidy, curves = [], []
    if rec is not None:
        trial.update({k: rec[k] for k in ("accuracy", "best_accuracy", "per_example_accuracy", "exact_match",
                                          "state_size", "params", "train_tokens_per_s", "wall_time_s", "steps",
                                          "device")})
        trial["git"] = rec["versions"].get("git", "")
        trial["versions"] = json.dumps(rec["versions"], sort_keys=True)
        short = {k: base[k] for k in ("sweep", "cell", "trial", "state", "task", "arch", "seq_len", "d_model",
                                      "seed", "lr")}
        sizes = {int(k): v for k, v in rec["state_size_by_length"].items()}  # JSON made the keys strings
        for length, m in rec["by_length"].items():
            length = int(length)
            common = {**short, "eval_seq_len": length, "state_size": sizes[length], "params": rec["params"]}
            tidy.append({**common, "slice": "all", "slice_value": -1, "accuracy": m["accuracy"],
                         "per_example_accuracy": m["per_example_accuracy"], "exact_match": m["exact_match"],
                         "examples": rec["train_config"]["num_test"]})
            for name, values in m["slices"].items():
                for value, s in values.items():
                    tidy.append({**common, "slice": name, "slice_value": int(value), "accuracy": s["accuracy"],
                                 "per_example_accuracy": s["per_example_accuracy"], "exact_match": NAN,
                                 "examples": s["examples"]})
        for h in rec["history"]:
            for length, acc in h["by_length"].items():
                curves.append({"sweep": sweep.name, "cell": cell.key, "trial": t.number, "arch": cell.label,
                               "d_model": cell.model.d_model, "seq_len": cell.task.seq_len, "step": h["step"],
                               "eval_seq_len": int(length), "accuracy": acc})
    return trial, tidy, curves


TIDY_COLUMNS = ["sweep", "cell", "trial", "state", "task", "arch", "seq_len", "eval_seq_len", "d_model", "seed",
                "lr", "slice", "slice_value", "accuracy", "per_example_accuracy", "exact_match", "examples",
                "state_size", "params"]
CURVE_COLUMNS = ["sweep", "cell", "trial", "arch", "d_model", "seq_len", "step", "eval_seq_len", "accuracy"]


def collect(sweeps: list[tuple[Sweep, str]], storage_url: str | None) -> Results:
    """sweeps: (Sweep, file path) pairs. storage_url None: each sweep's default journal."""
    trials, tidy, curves, cells_info, devices, versions = [], [], [], {}, set(), {}
    storages = []
    for sweep, path in sweeps:
        url = storage_url or default_url(sweep.name)
        storages.append(url)
        for cell, study in cell_studies(sweep, url):
            if study is not None:
                for t in study.get_trials(deepcopy=False):
                    if t.user_attrs.get("surplus"):
                        continue
                    row, tid, cur = _trial_rows(sweep, cell, cell.study_name, t)
                    trials.append(row)
                    tidy += tid
                    curves += cur
                    if row["device"]:
                        devices.add(row["device"])
                    if row["versions"]:
                        versions = json.loads(row["versions"])
            n_done = sum(r["cell"] == cell.key and r["sweep"] == sweep.name and r["state"] in ("COMPLETE", "PRUNED")
                         for r in trials)
            cells_info[cell.key] = {"sweep": sweep.name, "arch": cell.label, "status": cell_status(study, sweep),
                                    "trials": n_done, "expected_trials": sweep.trials_per_cell}
    trials_df = pd.DataFrame(trials)
    provenance = {
        "sweeps": [{"name": s.name, "file": p, "sha256": file_sha256(p)} for s, p in sweeps],
        "storage": ", ".join(dict.fromkeys(storages)),
        "git": versions.get("git", ""), "versions": versions, "devices": sorted(devices),
        "wall_time_s": float(trials_df["wall_time_s"].fillna(0).sum()) if len(trials_df) else 0.0,
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cells": cells_info,
    }
    return Results(trials_df, pd.DataFrame(tidy, columns=TIDY_COLUMNS), pd.DataFrame(curves, columns=CURVE_COLUMNS),
                   provenance)


def load_results(sweep_files: list[str], storage: str | None = None) -> Results:
    return collect([(load_sweep(p), p) for p in sweep_files], storage)


def best_per_cell(trials: pd.DataFrame) -> pd.DataFrame:
    """The best COMPLETE trial of each cell (highest accuracy, then lowest trial number): one row per cell."""
    done = trials[trials["state"] == "COMPLETE"].sort_values(["cell", "accuracy", "trial"],
                                                             ascending=[True, False, True])
    return done.groupby(["sweep", "cell"], as_index=False).head(1).reset_index(drop=True)
