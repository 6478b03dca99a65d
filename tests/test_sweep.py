"""Sweeps as a user runs them: `probe sweep/worker/status/results` in subprocesses over a real journal file or a
real PostgreSQL server. Reliability: a SIGKILLed worker's trial is redone, two workers never train the same
trial, a bad sweep file fails before any training, a diverging trial is pruned with its reason."""
import csv
import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from probe.storage import open_storage
from probe.sweep import load_sweep

TINY = """
from probe.sweep import SearchSpace, Sweep
from probe.config import TrainConfig
from tasks.mqar import MQAR


def sweep():
    return Sweep(
        name={name!r},
        tasks=[MQAR(seq_len=8, vocab_size=16, num_kv_pairs=2, eval_seq_lens=(16,)),
               MQAR(seq_len=16, vocab_size=16, num_kv_pairs=2)],
        archs={archs!r},
        d_models=(16,),
        train=TrainConfig(batch_size=16, max_steps={steps}, warmup_steps=0, num_train=64, num_test=32, val_every=10,
                          stop_at=None),
        search=SearchSpace(lr={lr!r}),
        trials_per_cell={trials},
        pruner="none",
    )
"""


def write_sweep(tmp_path, name="tiny", archs=("attention", "baseconv_short"), steps=20, lr=(1e-3, 1e-2),
                trials=2, body=None):
    path = tmp_path / f"{name}.py"
    path.write_text(body if body is not None else TINY.format(name=name, archs=list(archs), steps=steps, lr=lr,
                                                             trials=trials))
    return str(path)


def probe(*args, cwd, timeout=600):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "probe", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def studies(storage_url, sweep_file):
    sweep = load_sweep(sweep_file)
    storage = open_storage(storage_url, create=False)
    return {c.key: optuna.load_study(study_name=c.study_name, storage=storage) for c in sweep.cells()}


def live(study):
    return [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


# -- bad sweep files ------------------------------------------------------------------------------------------
BAD = {
    "unknown_arch": (dict(archs=("attention", "transformerxl")), "cell mqar-L8/transformerxl/d16/seed0: unknown arch"),
    "pairs_do_not_fit": (dict(body=TINY.format(name="x", archs=["attention"], steps=5, lr=(1e-3, 1e-2), trials=1)
                              .replace("num_kv_pairs=2)]", "num_kv_pairs=5)]")), "num_kv_pairs=5 does not fit in seq_len=16"),
    "missing_field": (dict(body=TINY.format(name="x", archs=["attention"], steps=5, lr=(1e-3, 1e-2), trials=1)
                           .replace("d_models=(16,),", "")), "missing field 'd_models'"),
    "bad_search": (dict(lr=(1e-2, 1e-3)), "search.lr"),
    "no_sweep_function": (dict(body="x = 1\n"), "defines no function sweep()"),
    "syntax_error": (dict(body="def sweep(:\n"), "tiny.py:1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweep_file_fails_before_training_with_one_line(case, tmp_path):
    kwargs, expected = BAD[case]
    path = write_sweep(tmp_path, **kwargs)
    out = probe("sweep", path, "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probe: error:"), out.stderr
    assert expected in lines[0]
    assert not (tmp_path / "runs").exists(), "a bad sweep left a storage behind"


# -- a whole sweep, two workers --------------------------------------------------------------------------------
# Each `probe worker` waits in sweep() until both have started, so that one worker cannot finish the whole tiny
# sweep while the other is still importing torch (as happened on a loaded 2-core CI machine).
BARRIER = """
import os, sys, time


def _wait_for_both_workers():
    if sys.argv[1:2] != ["worker"]:
        return
    open(f"started-{os.getpid()}", "w").close()
    deadline = time.time() + 300
    while len([f for f in os.listdir(".") if f.startswith("started-")]) < 2 and time.time() < deadline:
        time.sleep(0.05)


_wait_for_both_workers()
"""


def test_sweep_completes_every_cell_and_two_workers_never_share_a_trial(tmp_path):
    body = TINY.format(name="tiny", archs=["attention", "baseconv_short"], steps=20, lr=(1e-3, 1e-2), trials=2)
    path = write_sweep(tmp_path, body=body + BARRIER)
    out = probe("sweep", path, "--device", "cpu", "--workers", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 cells complete" in out.stdout
    journal = str(tmp_path / "runs" / "tiny" / "journal.log")
    cells = studies(journal, path)
    assert all(len(live(s)) == 2 for s in cells.values()), {k: len(live(s)) for k, s in cells.items()}
    # every trial was trained by exactly one worker: the workers' logs name each (cell, trial) once
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "tiny" / "logs").glob("worker*.log"))
    trained = re.findall(r"\] (\S+) trial (\d+): (COMPLETE|PRUNED)", logs)
    assert len(trained) == len(set(trained)) == 8
    pids = {s.study_name: {t.user_attrs["worker"]["pid"] for t in live(s)} for s in cells.values()}
    assert len(set().union(*pids.values())) == 2, "both workers should have trained"
    # status and results see the same sweep
    status = probe("status", path, cwd=tmp_path)
    assert status.returncode == 0 and "4 complete" in status.stdout
    table = probe("results", path, "--format", "csv", cwd=tmp_path)
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert {r["cell"] for r in rows} == set(cells)
    whole = [r for r in rows if r["slice"] == "all"]
    assert {(r["cell"], r["eval_seq_len"]) for r in whole} >= {("mqar-L8/attention/d16/seed0", "16")}
    out = probe("results", path, "--format", "parquet", "-o", "r.parquet", "--table", "trials", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    import pandas as pd
    trials = pd.read_parquet(tmp_path / "r.parquet")
    assert len(trials) == 8 and trials["lr"].between(1e-3, 1e-2).all() and trials["state_size"].gt(0).all()
    for column in ("device", "git", "versions", "params", "train_tokens_per_s", "wall_time_s", "seed"):
        assert column in trials.columns


def test_a_sweep_runs_one_row_with_cells_and_the_rest_later_on_the_same_journal(tmp_path):
    path = write_sweep(tmp_path, steps=5, trials=1)
    row = "mqar-L8/*"
    out = probe("sweep", path, "--device", "cpu", "--cells", row, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 cells × 1 trials" in out.stdout and "2 cells complete" in out.stdout
    journal = str(tmp_path / "runs" / "tiny" / "journal.log")
    names = {s.study_name for s in open_storage(journal, create=False).get_all_studies()}
    assert names == {"tiny:mqar-L8/attention/d16/seed0", "tiny:mqar-L8/baseconv_short/d16/seed0"}
    status = probe("status", path, "--cells", "mqar-L16/*", "--cells", "*/attention/*", cwd=tmp_path)
    assert status.returncode == 0 and "3 cells: 1 complete, 2 pending" in status.stdout, status.stdout
    out = probe("sweep", path, "--device", "cpu", cwd=tmp_path)  # the rest: the row's cells are not trained again
    assert out.returncode == 0 and "4 cells complete" in out.stdout, out.stdout + out.stderr
    cells = studies(journal, path)
    assert all(len(s.get_trials()) == 1 for s in cells.values()), {k: len(s.get_trials()) for k, s in cells.items()}


@pytest.mark.parametrize("flag", ["sweep", "worker", "status"])
def test_cells_matching_nothing_fail_with_one_line_before_any_work(tmp_path, flag):
    path = write_sweep(tmp_path)
    out = probe(flag, path, "--cells", "mqar-L8/attention/*", "--cells", "L8*", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "--cells 'L8*' matches no cell of sweep 'tiny'" in out.stderr
    assert not (tmp_path / "runs").exists(), "nothing may be written before the sweep is known good"


# -- several sweeps as one suite --------------------------------------------------------------------------------
def test_a_suite_of_two_sweeps_on_one_journal_ends_each_selected_cell_with_its_budget(tmp_path):
    one = write_sweep(tmp_path, name="one", archs=("attention",), steps=5, trials=2)
    two = write_sweep(tmp_path, name="two", archs=("baseconv_short",), steps=5, trials=2)
    journal = str(tmp_path / "all.journal")
    out = probe("sweep", one, two, "--device", "cpu", "--workers", "2", "--storage", journal, "--cells", "mqar-L8/*",
                cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sweep one: 1 cells × 2 trials" in out.stdout and "sweep two: 1 cells × 2 trials" in out.stdout
    assert "2 cells complete" in out.stdout, out.stdout
    names = {s.study_name for s in open_storage(journal, create=False).get_all_studies()}
    assert names == {"one:mqar-L8/attention/d16/seed0", "two:mqar-L8/baseconv_short/d16/seed0"}
    for path in (one, two):
        study, = [optuna.load_study(study_name=c.study_name, storage=open_storage(journal, create=False))
                  for c in load_sweep(path).cells() if c.key.startswith("mqar-L8/")]
        assert sum(t.state == TrialState.COMPLETE for t in study.get_trials()) == 2
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "suite" / "logs").iterdir())
    finished = re.findall(r"sweep (\w+) needs no more work", logs)
    assert sorted(finished) == ["one", "one", "two", "two"], logs  # every worker went through both sweeps
    status = probe("status", two, "--storage", journal, cwd=tmp_path)
    assert status.returncode == 0 and "2 cells: 1 complete, 1 pending" in status.stdout, status.stdout


@pytest.mark.parametrize("case", ["same_name", "cells_match_nothing"])
def test_a_bad_suite_fails_with_one_line_before_any_work(tmp_path, case):
    one = write_sweep(tmp_path, name="one", archs=("attention",), trials=1)
    if case == "same_name":
        (tmp_path / "again.py").write_text((tmp_path / "one.py").read_text())
        args, expected = (one, str(tmp_path / "again.py")), "both define sweep 'one': a suite needs distinct names"
    else:
        two = write_sweep(tmp_path, name="two", archs=("baseconv_short",), trials=1)
        args, expected = (one, two, "--cells", "mqar-L8/*", "--cells", "L99*"), \
            "--cells 'L99*' matches no cell of sweeps one, two"
    out = probe("sweep", *args, "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and expected in out.stderr, out.stderr
    assert not (tmp_path / "runs").exists(), "nothing may be written before the suite is known good"


@pytest.mark.parametrize("visible, per_gpu, expected", [
    ("0,1,2,3,4,5,6,7", 1, ["0", "1", "2", "3", "4", "5", "6", "7"]),
    ("2,5", 2, ["2", "2", "5", "5"]),
    (" 3 ", 1, ["3"]),
])
def test_workers_are_pinned_one_visible_gpu_each_with_a_triton_cache_of_their_own(tmp_path, monkeypatch, visible,
                                                                                   per_gpu, expected):
    from probe.launch import _slots, _worker_env
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.chdir(tmp_path)
    slots = _slots("cuda", per_gpu, 1)
    assert slots == expected
    envs = [_worker_env("suite", slot, gpu, len(slots)) for slot, gpu in enumerate(slots)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == expected
    assert len({e["TRITON_CACHE_DIR"] for e in envs}) == len(slots)
    assert all(e["TRITON_CACHE_DIR"].startswith(str(tmp_path / "runs" / "suite" / "triton")) for e in envs)
    cpu = [_worker_env("tiny", slot, None, 2) for slot in range(2)]
    assert all("CUDA_VISIBLE_DEVICES" not in e or e["CUDA_VISIBLE_DEVICES"] == visible for e in cpu)
    assert all(int(e["OMP_NUM_THREADS"]) == max(1, (os.cpu_count() or 1) // 2) for e in cpu)


def wait_for_running(journal: str, count: int, timeout: float = 120) -> set[tuple[str, int]]:
    """(study, trial number) of the running trials with a learning rate, once there are `count` (or the time is
    up)."""
    deadline = time.time() + timeout
    running = set()
    while len(running) < count and time.time() < deadline:
        time.sleep(0.3)
        if "://" not in journal and not os.path.exists(journal):
            continue
        storage = open_storage(journal, create=False)
        running = {(summary.study_name, t.number) for summary in storage.get_all_studies()
                   for t in storage.get_all_trials(summary._study_id, deepcopy=False, states=(TrialState.RUNNING,))
                   if "lr" in t.params}
    return running


def test_a_worker_sigkilled_mid_pack_has_every_trial_of_its_pack_retried_and_no_cell_over_budget(tmp_path):
    path = write_sweep(tmp_path, name="killme", steps=400)
    journal = str(tmp_path / "runs" / "killme" / "journal.log")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen([sys.executable, "-m", "probe", "worker", path, "--device", "cpu"], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victims = wait_for_running(journal, 2)  # the cell's two trials, asked as one pack
    assert len(victims) == 2, f"the worker never started a pack of two: {victims}"
    worker.send_signal(signal.SIGKILL)
    worker.wait()

    out = probe("sweep", path, "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 cells complete" in out.stdout
    cells = studies(journal, path)
    assert all(len(live(s)) == 2 for s in cells.values()), "every cell ends with exactly its budget"
    by_name = {s.study_name: s for s in cells.values()}
    for study_name, number in victims:
        killed = next(t for t in by_name[study_name].get_trials() if t.number == number)
        assert killed.state == TrialState.FAIL and "died" in killed.user_attrs["reason"]
        assert killed.user_attrs["lost"], "a lost trial is not a failure of its cell"
    from probe.results import best_per_cell, load_results
    res = load_results([path], journal)
    best = best_per_cell(res.trials)
    assert sorted(best["cell"]) == sorted(cells), "every cell exactly once"


def _overlap(a, b) -> bool:
    return a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete


def test_a_worker_training_two_packs_at_once_completes_every_cell_with_its_budget(tmp_path):
    path = write_sweep(tmp_path, name="together", steps=40)
    out = probe("worker", path, "--device", "cpu", "--concurrent", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    cells = studies(str(tmp_path / "runs" / "together" / "journal.log"), path)
    assert all(len(live(s)) == 2 and len(s.get_trials()) == 2 for s in cells.values()), \
        {k: [t.state.name for t in s.get_trials()] for k, s in cells.items()}
    trials = [(key, t) for key, s in cells.items() for t in s.get_trials()]
    assert any(_overlap(a, b) for ka, a in trials for kb, b in trials if ka != kb), \
        "no two cells' packs trained at the same time"
    for _, t in trials:  # each pack trained alone in its own thread: its members' records say pack of 2
        assert t.user_attrs["record"]["pack_size"] == 2 and t.user_attrs["record"]["steps"] == 40


def test_an_interrupted_worker_with_two_packs_in_flight_saves_both_and_a_rerun_completes(tmp_path):
    path = write_sweep(tmp_path, name="stopme", steps=100_000)
    journal = str(tmp_path / "runs" / "stopme" / "journal.log")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen([sys.executable, "-m", "probe", "worker", path, "--device", "cpu", "--concurrent", "2"],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victims = wait_for_running(journal, 4)  # two cells' packs of two, in flight together
    try:
        assert len(victims) == 4, f"the worker never had two packs in flight: {victims}"
        time.sleep(1)  # into training
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=120)
    finally:
        worker.kill()
    assert worker.returncode == 143, err.decode()[-2000:]
    assert err.decode().strip().splitlines()[-1].startswith("probe: interrupted"), err.decode()[-2000:]
    storage = open_storage(journal, create=False)
    states = {(summary.study_name, t.number): t for summary in storage.get_all_studies()
              for t in storage.get_all_trials(summary._study_id)}
    assert not [k for k, t in states.items() if t.state == TrialState.RUNNING], "a trial was left running"
    saved = {os.path.join(tmp_path, states[key].user_attrs.get("paused")) for key in victims}
    for key in victims:  # each pack trained to its next evaluation and was saved there
        assert states[key].state == TrialState.FAIL and states[key].user_attrs["lost"], key
        assert re.fullmatch(r"paused at step [1-9]\d*0", states[key].user_attrs["reason"]), key
    assert len(saved) == 2 and all(os.path.isfile(p) for p in saved), saved
    status = probe("status", path, cwd=tmp_path)
    assert "2 paused pack(s) in runs/stopme/journal.log.packs" in status.stdout, status.stdout + status.stderr

    path = write_sweep(tmp_path, name="stopme", steps=20)  # the same cells, now short: the saved packs, trained
    out = probe("worker", path, "--device", "cpu", "--concurrent", "2", cwd=tmp_path)  # otherwise, start anew
    assert out.returncode == 0, out.stdout + out.stderr
    assert all(len(live(s)) == 2 for s in studies(journal, path).values()), "every cell ends with its budget"
    assert not any(os.path.exists(p) for p in saved) and out.stdout.count("trained with other settings") == 2


class _PauseAtLook(threading.Event):
    """Set from its n-th look on: a worker's pause arriving at a known evaluation of its pack."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.looks = n, 0

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks >= self.n or super().is_set()


def test_a_paused_worker_saves_its_pack_and_the_next_run_ends_the_cell_as_if_never_paused(tmp_path, monkeypatch):
    from probe.train import PackModule
    from probe.tuning import run_worker
    sweep = load_sweep(write_sweep(tmp_path, name="pauseme", archs=("attention",), steps=60))
    whole = str(tmp_path / "whole.log")
    run_worker(sweep, open_storage(whole), device="cpu", log=lambda m: None)
    journal = str(tmp_path / "paused.log")
    packs = journal + ".packs"
    # looks: the worker's before its first pack, then the pack's at steps 10 and 20: it pauses at step 20
    with pytest.raises(KeyboardInterrupt, match="paused"):
        run_worker(sweep, open_storage(journal), device="cpu", log=lambda m: None, pause=_PauseAtLook(3),
                   checkpoints=packs)
    files = [os.path.join(d, f) for d, _, fs in os.walk(packs) for f in fs]
    assert len(files) == 1 and files[0].endswith("trial0-trial1.pt"), files
    storage = open_storage(journal, create=False)
    (first,) = storage.get_all_studies()  # the worker stopped in its first cell
    lost = storage.get_all_trials(first._study_id)
    assert [(t.state, t.user_attrs["reason"], t.user_attrs["paused"]) for t in lost] == \
        [(TrialState.FAIL, "paused at step 20", files[0])] * 2

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    os.rename(files[0], f"{files[0]}.claimed-{int(gone.stdout)}")  # claimed by a worker that died: taken over
    logs, steps, step = [], [], PackModule.training_step
    monkeypatch.setattr(PackModule, "training_step", lambda self, *a: steps.append(1) or step(self, *a))
    run_worker(sweep, open_storage(journal), device="cpu", log=logs.append, checkpoints=packs)
    assert any("go on from step 20 of a paused pack" in m for m in logs), logs
    assert len(steps) == 40 + 60, "the paused pack trains its last 40 steps, the other cell's pack all 60"
    assert not [f for _, _, fs in os.walk(packs) for f in fs], "the claimed pack is removed once trained"
    path = write_sweep(tmp_path, name="pauseme", archs=("attention",), steps=60)
    for key, study in studies(journal, path).items():
        done = sorted(live(study), key=lambda t: t.params["lr"])
        alone = sorted(live(studies(whole, path)[key]), key=lambda t: t.params["lr"])
        assert len(done) == len(alone) == 2
        assert len(study.get_trials()) == (4 if study.study_name == first.study_name else 2)
        for a, b in zip(done, alone):
            ra, rb = a.user_attrs["record"], b.user_attrs["record"]
            assert a.params == b.params and ra["steps"] == rb["steps"] == 60
            assert [h["step"] for h in ra["history"]] == [h["step"] for h in rb["history"]]
            for ha, hb in zip(ra["history"], rb["history"]):
                assert ha["loss"] == pytest.approx(hb["loss"], rel=1e-5) and ha["accuracy"] == hb["accuracy"]


def test_trials_lost_to_dead_workers_never_make_a_cell_failed(tmp_path):
    from probe.tuning import cell_status, failures
    sweep = load_sweep(write_sweep(tmp_path))
    study = optuna.create_study(study_name="s", storage=open_storage(str(tmp_path / "journal.log")))
    for _ in range(sweep.max_failures_per_cell + 1):
        trial = study.ask()
        trial.set_user_attr("lost", True)  # what reaping a dead worker's trial (or an interrupt) leaves
        study.tell(trial, state=TrialState.FAIL)
    assert failures(study) == 0 and cell_status(study, sweep) == "pending"
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)  # a real training failure counts
    assert failures(study) == 1


def test_a_trial_no_worker_ever_claimed_is_failed_not_waited_for(tmp_path):
    from probe.storage import reap_dead_workers
    storage = open_storage(str(tmp_path / "journal.log"))
    study = optuna.create_study(study_name="s", storage=storage)
    orphan = study.ask()  # RUNNING, untagged: its worker died before tagging it
    mine = study.ask()
    mine.set_user_attr("worker", {"host": __import__("socket").gethostname(), "pid": os.getpid(), "gpu": ""})
    assert reap_dead_workers(study, untagged_after_s=60) == 0, "a fresh untagged trial may still be claimed"
    assert reap_dead_workers(study, untagged_after_s=0) == 1
    states = {t.number: t for t in study.get_trials()}
    assert states[orphan.number].state == TrialState.FAIL and "never claimed" in states[orphan.number].user_attrs["reason"]
    assert states[mine.number].state == TrialState.RUNNING, "a live worker's trial was failed"


def test_diverging_trials_are_pruned_with_their_reason_and_the_sweep_goes_on(tmp_path):
    path = write_sweep(tmp_path, name="nan", archs=("attention",), lr=(1e29, 1e30), trials=1, steps=30)
    out = probe("sweep", path, "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    for study in studies(str(tmp_path / "runs" / "nan" / "journal.log"), path).values():
        (t,) = live(study)
        assert t.state == TrialState.PRUNED and "non-finite" in t.user_attrs["reason"]


@pytest.mark.parametrize("end", [True, False], ids=["ends_at_target", "trains_every_trial"])
def test_a_cell_solved_by_one_trial_stops_the_rest_of_its_pack(tmp_path, end):
    from probe.sweep import SearchSpace
    from probe.config import TrainConfig
    from probe.tuning import cell_status, cell_studies, run_worker
    # lr 1e-9 cannot learn in 40 steps; lr 3e-2 passes 0.3 at once
    sweep = grid_sweep(archs=["attention"], search=SearchSpace(lr_grid=(1e-9, 3e-2)), trials_per_cell=2, epochs=4,
                       train=TrainConfig(batch_size=16, warmup_steps=0, num_train=256, num_test=64, val_every=10,
                                         stop_at=0.3, device="cpu"), end_cell_at_target=end)
    journal = str(tmp_path / "journal.log")
    run_worker(sweep, open_storage(journal), device="cpu", log=lambda m: None)
    for cell, study in cell_studies(sweep, journal):
        by_lr = {t.params["lr"]: t for t in study.get_trials()}
        solver, slow = by_lr[3e-2], by_lr[1e-9]
        assert solver.state == TrialState.COMPLETE and solver.user_attrs["record"]["stopped_at_target"]
        if end:
            assert slow.state == TrialState.PRUNED, cell.key
            assert slow.user_attrs["reason"] == (f"stopped at step {solver.user_attrs['record']['steps']}: "
                                                 f"trial{solver.number} reached the target accuracy 0.3 first")
            assert slow.user_attrs["record"]["steps"] == solver.user_attrs["record"]["steps"]
        else:
            assert slow.state == TrialState.COMPLETE, cell.key
            assert slow.user_attrs["record"]["steps"] == cell.train.max_steps > solver.user_attrs["record"]["steps"]
        assert cell_status(study, sweep) == "complete"


# -- PostgreSQL: one sweep across machines --------------------------------------------------------------------
POSTGRES = os.environ.get("PROBE_TEST_POSTGRES")
needs_postgres = pytest.mark.skipif(not POSTGRES,
                                    reason="PROBE_TEST_POSTGRES is not set (.ci/run starts a server and sets it)")


@pytest.fixture
def empty_postgres():
    """A URL whose tables live in a new, empty schema: every test meets the database as a first sweep does."""
    import uuid

    import sqlalchemy
    schema = f"probe_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(POSTGRES)
    with engine.begin() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in POSTGRES else "?"
    yield f"{POSTGRES}{sep}options=-csearch_path%3D{schema}"
    with engine.begin() as c:
        c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    engine.dispose()


@needs_postgres
def test_workers_starting_together_on_an_empty_database_all_open_it(tmp_path, empty_postgres):
    # each process creates Optuna's tables and version row at the same moment, as workers started by one
    # script on several machines do: a barrier after the imports, however slow they are here
    script = tmp_path / "open.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        from probe.storage import open_storage
        url, ready, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        open(os.path.join(ready, str(os.getpid())), "w").close()
        while len(os.listdir(ready)) < n:
            time.sleep(0.002)
        open_storage(url)
        print("opened")
    """))
    ready = tmp_path / "ready"
    ready.mkdir()
    procs = [subprocess.Popen([sys.executable, str(script), empty_postgres, str(ready), "6"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(6)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 and "opened" in log for p, log in zip(procs, logs)), logs


@needs_postgres
def test_a_worker_sigkilled_mid_pack_on_postgres_has_its_trials_go_stale_and_retried(tmp_path, empty_postgres):
    # ask-and-tell trials beat only if probe beats for them (Optuna beats inside study.optimize alone): without
    # that, the dead worker's trials would stay RUNNING and the next worker would wait for them forever
    name = f"pgkill{os.getpid()}"
    path = write_sweep(tmp_path, name=name, steps=100_000)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen([sys.executable, "-m", "probe", "worker", path, "--storage", empty_postgres,
                               "--device", "cpu", "--heartbeat", "1"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        victims = wait_for_running(empty_postgres, 2)
        assert len(victims) == 2, f"the worker never started a pack of two: {victims}"
        time.sleep(2)  # a few heartbeats
    finally:
        worker.kill()
        worker.wait()
    path = write_sweep(tmp_path, name=name, steps=20)  # the same cells, now short
    out = probe("worker", path, "--storage", empty_postgres, "--device", "cpu", "--heartbeat", "1", cwd=tmp_path,
                timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    from probe.tuning import failures
    cells = studies(empty_postgres, path)
    assert all(len(live(s)) == 2 for s in cells.values()), "every cell ends with exactly its budget"
    by_name = {s.study_name: s for s in cells.values()}
    for study_name, number in victims:
        trials = by_name[study_name].get_trials()
        killed = next(t for t in trials if t.number == number)
        assert killed.state == TrialState.FAIL and "died" not in killed.user_attrs.get("reason", ""), \
            "failed by its stale heartbeat, which works across machines, not by its pid"
        retry = [t for t in trials if t.system_attrs.get("failed_trial") == number]
        assert len(retry) == 1 and retry[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert retry[0].params == killed.params, "a retry trains the learning rate the dead worker had"
        assert failures(by_name[study_name]) == 0, "a trial lost to a dead worker is not a failure of its cell"


@needs_postgres
def test_postgres_storage_runs_a_sweep_from_two_workers(tmp_path, empty_postgres):
    POSTGRES = empty_postgres
    name = f"pg{os.getpid()}"
    path = write_sweep(tmp_path, name=name)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    # two `probe worker` processes, as two machines would run them, on one database
    workers = [subprocess.Popen([sys.executable, "-m", "probe", "worker", path, "--storage", POSTGRES, "--device",
                                 "cpu", "--worker-id", str(i)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), logs
    cells = studies(POSTGRES, path)
    assert all(len(live(s)) == 2 for s in cells.values())
    trained = re.findall(r"\] (\S+) trial (\d+): (COMPLETE|PRUNED)", "".join(logs))
    assert len(trained) == len(set(trained)) == 8
    status = probe("status", path, "--storage", POSTGRES, cwd=tmp_path)
    assert "4 complete" in status.stdout


def test_sqlite_is_refused_for_concurrent_writers(tmp_path):
    path = write_sweep(tmp_path)
    out = probe("sweep", path, "--storage", "sqlite:///x.db", cwd=tmp_path)
    assert out.returncode == 2 and "SQLite" in out.stderr


# -- protocols: a fixed learning-rate grid, settings per training length ---------------------------------------
def grid_sweep(**overrides):
    from probe.sweep import SEQ_LEN, SearchSpace, Sweep
    from probe.config import TrainConfig
    from tasks.mqar import MQAR
    fields = dict(name="grid", tasks=[MQAR(seq_len=8, vocab_size=16, num_kv_pairs=2),
                                      MQAR(seq_len=16, vocab_size=16, num_kv_pairs=2)],
                  archs={"h3": {"d_state": SEQ_LEN}}, d_models=(16,),
                  train=TrainConfig(batch_size=16, warmup_steps=0, num_train=64, num_test=32, val_every=4,
                                    stop_at=None, device="cpu"),
                  epochs=1, train_per_seq_len={16: {"batch_size": 8}},
                  search=SearchSpace(lr_grid=(1e-3, 3e-3, 1e-2)), trials_per_cell=3, pruner="none")
    return Sweep(**{**fields, **overrides})


def test_a_fixed_grid_trains_each_learning_rate_once_per_cell_as_one_pack(tmp_path):
    from probe.tuning import run_worker
    sweep = grid_sweep()
    sweep.check()
    storage = open_storage(str(tmp_path / "journal.log"))
    did = run_worker(sweep, storage, device="cpu", log=lambda m: None)
    assert did["trials"] == 6 and did["failed"] == 0
    for cell in sweep.cells():
        study = optuna.load_study(study_name=cell.study_name, storage=storage)
        trials = live(study)
        assert sorted(t.params["lr"] for t in trials) == [1e-3, 3e-3, 1e-2]
        assert {t.user_attrs["record"]["pack_size"] for t in trials} == {3}, "the grid trained as one pack"


def test_settings_per_training_length_and_seq_len_options_reach_each_cell():
    cells = {c.task.seq_len: c for c in grid_sweep().cells()}
    assert cells[8].train.batch_size == 16 and cells[8].train.max_steps == 4  # one epoch of 64 examples
    assert cells[16].train.batch_size == 8 and cells[16].train.max_steps == 8
    assert cells[8].mixer_options == {"d_state": 8} and cells[16].mixer_options == {"d_state": 16}


def test_settings_per_task_reach_only_that_tasks_cells():
    # MAD's memorization trains on 256 examples, its compression on 12,800, both at 32 tokens
    import runpy
    from pathlib import Path
    mad = runpy.run_path(str(Path(__file__).resolve().parents[1] / "sweeps" / "mad.py"))["sweep"]()
    num_train = {(c.task.name, c.task.seq_len, c.train.num_train) for c in mad.cells() if c.task.seq_len == 32}
    assert {(t, n) for t, _, n in num_train} == {("memorization", 256), ("compression", 12_800)}
    steps = {c.task.name: c.train.max_steps for c in mad.cells() if c.task.seq_len == 32}
    assert steps == {"memorization": 200 * 256 // 128, "compression": 200 * 12_800 // 128}  # 200 epochs of each


@pytest.mark.parametrize("overrides, message", [
    (dict(trials_per_cell=2), "lr_grid has 3 rates but trials_per_cell=2"),
    (dict(search=__import__("probe.sweep", fromlist=["SearchSpace"]).SearchSpace(lr_grid=(1e-3, -1.0))),
     "lr_grid"),
    (dict(train_per_seq_len={16: {"batch_sizes": 8}}), "train_per_seq_len\\[16\\]"),
    (dict(train_per_seq_len={16: {"batch_size": 0}}), "at L=16: batch_size=0"),
    (dict(train_per_task={"mqar": {"num_trains": 8}}), "train_per_task\\['mqar'\\]"),
    (dict(train_per_task={"mqar": {"num_train": 0}}), "at L=8 for mqar: num_train=0"),
    (dict(pack_size=0), "pack_size=0"),
])
def test_bad_protocol_settings_are_refused_naming_the_field(overrides, message):
    from probe.errors import ProbeError
    with pytest.raises(ProbeError, match=message):
        grid_sweep(**overrides).check()


def test_every_study_describes_its_cell_and_names_its_objective(tmp_path):
    from probe.tuning import open_study
    sweep = grid_sweep()
    storage = open_storage(str(tmp_path / "journal.log"))
    for cell in sweep.cells():
        open_study(cell, sweep, storage, 0)
    for summary in storage.get_all_studies():
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        attrs = study.user_attrs
        assert study.metric_names == ["accuracy"]
        assert attrs["sweep"] == "grid" and attrs["arch"] == "h3" and attrs["d_model"] == 16
        assert attrs["task_config"]["seq_len"] == attrs["mixer_options"]["d_state"]
        assert summary.study_name == f"grid:{attrs['cell']}"


def test_the_extrapolation_protocols_run_side_by_side_at_a_tiny_size(tmp_path):
    # trained with the scheme (attention_pi) and trained with RoPE, evaluated under each scheme (attention)
    from probe.sweep import SearchSpace, Sweep
    from probe.config import TrainConfig
    from probe.tuning import run_worker
    from tasks.passkey import Passkey
    schemes = ("rope", "pi", "ntk", "ntk_dynamic", "rerope", "leaky_rerope")
    sweep = Sweep(name="extrap", tasks=[Passkey(seq_len=16, vocab_size=32, num_digits=2, eval_seq_lens=(32,))],
                  archs={"attention": {"train": {"eval_position_schemes": schemes}},
                         "attention_pi": {"train_len": 16}},
                  d_models=(16,), train=TrainConfig(batch_size=8, max_steps=6, warmup_steps=0, num_train=32,
                                                    num_test=16, val_every=3, stop_at=None, device="cpu"),
                  search=SearchSpace(lr=(1e-3, 1e-2)), trials_per_cell=1, pruner="none")
    sweep.check()
    storage = open_storage(str(tmp_path / "journal.log"))
    run_worker(sweep, storage, device="cpu", log=lambda m: None)
    records = {c.label: live(optuna.load_study(study_name=c.study_name, storage=storage))[0].user_attrs["record"]
               for c in sweep.cells()}
    assert set(records["attention"]["by_scheme"]) == set(schemes)
    assert records["attention_pi"]["by_scheme"] == {}


def test_the_zoology_figure2_replica_validates_and_each_of_its_archs_trains_a_cell_on_the_cpu():
    # the shipped file, its own settings per cell (Zoology's batch sizes, d_state = L, dropout, the fixed grid),
    # trained briefly: every mixer option it names is taken and every cell's arch trains
    import dataclasses

    from probe.train import fit, RunSpec
    sweep = load_sweep(os.path.join(os.path.dirname(__file__), "..", "sweeps", "zoology_figure2.py"))
    cells = sweep.cells()
    assert len(cells) == 4 * 7 * 4 and sweep.trials_per_cell == len(sweep.search.lr_grid) == 4
    assert {c.task.seq_len: c.train.batch_size for c in cells} == {64: 512, 128: 512, 256: 256, 512: 128}
    for cell in [c for c in cells if c.task.seq_len == 64 and c.model.d_model == 64]:
        tiny = dataclasses.replace(cell.train, batch_size=8, max_steps=2, num_train=16, num_test=8, val_every=2,
                                   device="cpu")
        task = dataclasses.replace(cell.task, vocab_size=64)
        specs = [RunSpec(task, cell.arch, cell.model, dataclasses.replace(tiny, lr=lr), cell.mixer_options)
                 for lr in sweep.search.lr_grid]
        records = fit(specs)
        assert [r.steps for r in records] == [2] * 4, cell.key


# -- pruning: MQAR learns in a late jump -------------------------------------------------------------------------
def pruned_at(sweep, curve: list[float], finished: float = 0.9) -> int | None:
    """The step at which the sweep's pruner stops a trial whose evaluations read `curve`, in a cell whose two
    finished trials held `finished` at every evaluation; None if it never does."""
    from probe.tuning import make_pruner, pruning_judge
    study = optuna.create_study(direction="maximize", pruner=make_pruner(sweep))
    steps = [(i + 1) * sweep.train.val_every for i in range(len(curve))]
    for _ in range(2):
        done = study.ask()
        for step in steps:
            done.report(finished, step)
        study.tell(done, finished)
    judge = pruning_judge(study.ask(), "test")
    return next((step for step, accuracy in zip(steps, curve) if judge(step, accuracy)), None)


PLATEAU_THEN_JUMP = [0.30, 0.29, 0.30, 0.31, 0.30, 0.32, 0.99]  # still creeping up when it jumps
STUCK = [0.35, 0.30, 0.30, 0.29, 0.30, 0.30, 0.30]  # its best evaluation was its first


def test_the_median_rule_stops_a_trial_on_the_plateau_before_its_jump():
    sweep = grid_sweep(pruner="median")
    assert pruned_at(sweep, PLATEAU_THEN_JUMP) == 2 * sweep.train.val_every


def test_the_patient_rule_keeps_a_trial_through_the_plateau_and_stops_one_that_is_stuck():
    sweep = grid_sweep(pruner="patient", pruner_patience=3)
    assert pruned_at(sweep, PLATEAU_THEN_JUMP) is None
    # no new best in its last 3 + 1 evaluations, and below the median: stopped at the fifth
    assert pruned_at(sweep, STUCK) == 5 * sweep.train.val_every
    assert pruned_at(grid_sweep(pruner="patient", pruner_patience=5), STUCK) == 7 * sweep.train.val_every


def test_auto_pruning_trains_every_trial_of_a_small_cell_and_is_patient_in_a_larger_one():
    from probe.sweep import SearchSpace
    small = grid_sweep(pruner="auto", search=SearchSpace(), trials_per_cell=2)
    assert small.pruning == "none" and pruned_at(small, STUCK) is None
    assert small.pruning_text() == "none (auto: 2 trials per cell); the first trial to reach stop_at ends its pack"
    large = grid_sweep(pruner="auto", search=SearchSpace(), trials_per_cell=6)
    assert large.pruning == "patient" and pruned_at(large, STUCK) is not None
    assert large.pruning_text().startswith(f"patient median ({large.pruner_patience} evaluations) (auto: 6 trials per "
                                           "cell);")
    assert grid_sweep(pruner="median", end_cell_at_target=False).pruning_text() == "median"


def test_the_plateau_rule_stops_a_flat_curve_and_keeps_a_rising_or_jumping_one():
    from probe.tuning import plateau_judge

    def stopped_at(curve, patience=30, delta=0.01):
        judge = plateau_judge(patience, delta)
        return next((10 * (i + 1) for i, a in enumerate(curve) if judge(10 * (i + 1), a)), None)
    flat = [0.10, 0.105, 0.102, 0.108, 0.104, 0.103, 0.107]  # never 0.01 above 0.10
    assert stopped_at(flat) == 40  # its level was set at step 10: 30 steps later
    assert stopped_at([0.10, 0.111, 0.122, 0.133, 0.144, 0.155, 0.166]) is None  # creeping up 0.011 a step
    assert stopped_at([0.10, 0.10, 0.10, 0.99, 0.99, 0.99, 0.99, 0.99]) == 70  # the jump reset it (at 40)
    assert stopped_at(flat, patience=1000) is None


def test_a_sweep_with_a_plateau_rule_prunes_a_trial_that_cannot_learn_with_the_reason(tmp_path):
    from probe.sweep import SearchSpace
    from probe.config import TrainConfig
    from probe.tuning import cell_studies, run_worker
    sweep = grid_sweep(archs=["attention"], search=SearchSpace(lr_grid=(1e-9, 3e-2)), trials_per_cell=2, epochs=4,
                       train=TrainConfig(batch_size=16, warmup_steps=0, num_train=256, num_test=64, val_every=10,
                                         stop_at=None, device="cpu"), plateau_epochs=1.5)
    assert "a plateau of 1.5 epochs without +0.01 stops a trial" in sweep.pruning_text()
    journal = str(tmp_path / "journal.log")
    run_worker(sweep, open_storage(journal), device="cpu", log=lambda m: None)
    for cell, study in cell_studies(sweep, journal):
        stuck = next(t for t in study.get_trials() if t.params["lr"] == 1e-9)
        patience = round(1.5 * 256 / cell.train.batch_size)
        assert stuck.state == TrialState.PRUNED and stuck.user_attrs["reason"].startswith("plateau: "), cell.key
        # its level was set at the first evaluation; stopped at the first evaluation `patience` steps later
        assert stuck.user_attrs["record"]["steps"] == 10 + -(-patience // 10) * 10 < cell.train.max_steps


@pytest.mark.parametrize("overrides, message", [
    (dict(plateau_epochs=0), "plateau_epochs=0 must be > 0 (or None)"),
    (dict(plateau_min_delta=1.5), "plateau_min_delta=1.5 must be in (0, 1)"),
    (dict(pruner="hyperband"), "pruner='hyperband' must be one of 'auto', 'patient', 'median', 'none'"),
    (dict(pruner_patience=0), "pruner_patience=0 must be >= 1"),
    (dict(pruner_patience=2.5), "pruner_patience=2.5 must be int"),
])
def test_bad_pruner_settings_are_refused_naming_the_field(overrides, message):
    from probe.errors import ProbeError
    with pytest.raises(ProbeError, match=re.escape(message)):
        grid_sweep(**overrides).check()


# -- what a sweep records about itself, and its live curves -----------------------------------------------------
@pytest.fixture(scope="module")
def logged_sweep(tmp_path_factory):
    """A tiny sweep (stop_at 0.95, pruner auto) run in-process by one worker with --logger csv: its file, its
    journal and its curves folder."""
    from probe.tuning import Curves, run_worker
    where = tmp_path_factory.mktemp("logged")
    body = TINY.format(name="logged", archs=["attention"], steps=10, lr=(1e-3, 1e-2), trials=2)
    path = write_sweep(where, body=body.replace("stop_at=None", "stop_at=0.95").replace('"none"', '"auto"'))
    journal, curves = str(where / "journal.log"), str(where / "curves")
    run_worker(load_sweep(path), open_storage(journal), device="cpu", log=lambda m: None,
               curves=Curves("csv", curves))
    return path, journal, curves


def test_provenance_names_each_sweeps_stop_at_and_pruner_with_or_without_the_file(logged_sweep):
    from probe.results import load_results
    path, journal, _ = logged_sweep
    for files in ([path], []):  # from the sweep file, and from the storage alone
        (said,) = load_results(files, journal).provenance["sweeps"]
        assert said["name"] == "logged" and said["stop_at"] == 0.95, files
        assert said["pruner"].startswith("none (auto: 2 trials per cell)"), files


def test_a_logger_writes_each_packs_curves_one_per_trial_under_its_cell(logged_sweep):
    import pandas as pd
    path, journal, curves = logged_sweep
    for key, study in studies(journal, path).items():
        names = [f"trial{t.number}" for t in live(study)]
        metrics = pd.read_csv(os.path.join(curves, *key.split("/"), "-".join(names), "metrics.csv"))
        for name in names:
            assert metrics[f"{name}/loss"].notna().any() and metrics[f"{name}/accuracy"].notna().any(), key
