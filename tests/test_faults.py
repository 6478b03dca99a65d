"""Faults a sweep must survive with nothing lost, each on a real journal file and the real `probe` command: a
journal cut off mid-line, an undecodable line inside one, a storage that cannot be reached, two launchers on one
journal, SIGTERM and Ctrl-C."""
import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

SWEEP = """
from probe.sweep import SearchSpace, Sweep
from probe.config import TrainConfig
from tasks.mqar import MQAR


def sweep():
    return Sweep(name={name!r}, tasks=[MQAR(seq_len=8, vocab_size=16, num_kv_pairs=2)],
                 archs={archs!r}, d_models=(8,),
                 train=TrainConfig(batch_size=8, max_steps={steps}, warmup_steps=0, num_train=16, num_test=8,
                                   val_every={val_every}, stop_at=None),
                 search=SearchSpace(lr=(1e-3, 1e-2)), trials_per_cell={trials}, pruner="none")
"""


def write_sweep(tmp_path, name="faulty", archs=("attention",), steps=4, trials=1, val_every=2):
    path = tmp_path / f"{name}.py"
    path.write_text(SWEEP.format(name=name, archs=list(archs), steps=steps, trials=trials, val_every=val_every))
    return str(path)


ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def probe(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "probe", *args], capture_output=True, text=True, cwd=cwd, env=ENV,
                          timeout=timeout)


def _as_from_a_terminal():
    # a test run started in the background (`make test &`) ignores SIGINT, and so would every child: probe keeps
    # an ignored signal ignored, as `nohup` wants; these processes stand for ones started at a terminal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "probe", *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=_as_from_a_terminal)


def journal_lines(path) -> list[bytes]:
    with open(path, "rb") as f:
        return f.read().splitlines(keepends=True)


def every_line_decodes(path) -> bool:
    lines = journal_lines(path)
    return bool(lines) and all(line.endswith(b"\n") for line in lines) and all(json.loads(l) for l in lines)


def cut_last_line(path) -> bytes:
    """What a kill mid-write leaves: the last entry's first half, no newline. Returns the bytes that remain of it."""
    lines = journal_lines(path)
    tail = lines[-1][:len(lines[-1]) // 2]
    with open(path, "wb") as f:
        f.write(b"".join(lines[:-1]) + tail)
    return tail


JOURNAL = os.path.join("runs", "faulty", "journal.log")  # as the commands name it, from the sweep's folder


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.strip().splitlines() if line.startswith("probe: error:")]


# -- a journal cut off mid-line ---------------------------------------------------------------------------------
def test_a_journal_cut_off_mid_line_is_set_aside_never_fused(tmp_path):
    path = write_sweep(tmp_path)
    assert probe("sweep", path, "--device", "cpu", cwd=tmp_path).returncode == 0
    journal = tmp_path / "runs" / "faulty" / "journal.log"
    tail = cut_last_line(journal)

    again = probe("sweep", path, "--device", "cpu", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    warnings = [line for line in again.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and JOURNAL in warnings[0], again.stderr
    assert every_line_decodes(journal), "the cut-off line was fused with the next entry"
    (aside,) = journal.parent.glob("journal.log.partial-*")
    assert aside.read_bytes() == tail, "the cut-off bytes were not kept"
    status = probe("status", path, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "1 complete" in status.stdout


# -- an undecodable line inside a journal -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A finished two-cell sweep and its journal (copied by each test before it breaks it)."""
    where = tmp_path_factory.mktemp("finished")
    path = write_sweep(where, archs=("attention", "baseconv_short"))
    out = probe("sweep", path, "--device", "cpu", cwd=where)
    assert out.returncode == 0, out.stdout + out.stderr
    return where, path


def copy_of(finished_sweep, tmp_path):
    where, path = finished_sweep
    sweep_file = tmp_path / os.path.basename(path)
    sweep_file.write_text(open(path).read())
    journal = tmp_path / "runs" / "faulty" / "journal.log"
    journal.parent.mkdir(parents=True)
    journal.write_bytes((where / "runs" / "faulty" / "journal.log").read_bytes())
    return str(sweep_file), journal


def test_an_undecodable_line_is_named_and_what_is_readable_is_still_read(finished_sweep, tmp_path):
    path, journal = copy_of(finished_sweep, tmp_path)
    lines = journal_lines(journal)
    bad = len(lines) // 2  # 0-based; the message counts from 1
    lines[bad] = b'{"op_code": 5, "worker_id": \xff garbage\n'
    journal.write_bytes(b"".join(lines))
    where = f"{JOURNAL}:{bad + 1}"

    status = probe("status", path, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "Traceback" not in status.stderr and where in status.stderr
    assert len(status.stderr.strip().splitlines()) == 1
    results = probe("results", path, "--table", "trials", cwd=tmp_path)
    assert results.returncode == 0 and where in results.stderr, results.stderr
    report = probe("report", path, "-o", "r.html", cwd=tmp_path)
    assert report.returncode == 0 and where in report.stderr, report.stderr

    before = journal.read_bytes()
    sweep = probe("sweep", path, "--device", "cpu", cwd=tmp_path)
    assert sweep.returncode == 2
    assert sweep.stderr.strip().splitlines() == error_lines(sweep.stderr) and where in sweep.stderr, sweep.stderr
    assert journal.read_bytes() == before, "a journal with a bad line was written to"


def test_a_line_an_older_probe_fused_is_read_entry_by_entry(finished_sweep, tmp_path):
    """The damage a cut-off line did before it was set aside: the next entry appended onto it."""
    path, journal = copy_of(finished_sweep, tmp_path)
    lines = journal_lines(journal)
    fused = len(lines) - 3
    lines[fused - 1] = lines[fused - 1][:len(lines[fused - 1]) // 2]  # no newline: the next line joins it
    journal.write_bytes(b"".join(lines))
    out = probe("results", path, "--table", "trials", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"{JOURNAL}:{fused}" in out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) >= 2 and {r["state"] for r in rows} >= {"COMPLETE"}


# -- an unusable storage ------------------------------------------------------------------------------------------
UNREACHABLE = "postgresql://probe:probe@127.0.0.1:1/x"


def test_an_unreachable_storage_is_an_error_and_never_overwrites_an_export(finished_sweep, tmp_path):
    path, _ = copy_of(finished_sweep, tmp_path)
    good = probe("results", path, "-o", "good.csv", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    export = (tmp_path / "good.csv").read_text()
    for command in (["status", path], ["results", path, "-o", "good.csv"], ["report", path, "-o", "r.html"],
                    ["status", path, "--storage", str(tmp_path)]):
        storage = [] if "--storage" in command else ["--storage", UNREACHABLE]
        out = probe(*command, *storage, cwd=tmp_path)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert out.stderr.strip().splitlines() == error_lines(out.stderr) and len(error_lines(out.stderr)) == 1
    assert (tmp_path / "good.csv").read_text() == export
    assert not (tmp_path / "r.html").exists()


def test_a_report_of_a_storage_alone_reads_the_storage(finished_sweep, tmp_path):
    _, journal = copy_of(finished_sweep, tmp_path)
    out = probe("report", "--storage", str(journal), "-o", "r.html", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    html = (tmp_path / "r.html").read_text()
    assert "mqar-L8/baseconv_short/d8/seed0" in html and "faulty" in html


# -- two launchers on one journal ---------------------------------------------------------------------------------
def test_two_launchers_on_one_journal_give_their_workers_distinct_ids(tmp_path):
    path = write_sweep(tmp_path, archs=("attention", "baseconv_short"), steps=40, val_every=20)
    first, second = (start("sweep", path, "--device", "cpu", cwd=tmp_path) for _ in range(2))
    for proc in (first, second):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    logs = sorted((tmp_path / "runs" / "faulty" / "logs").glob("*.log"))
    assert len(logs) == 2, f"two launchers' workers shared a log: {logs}"
    ids = set()
    for log in logs:
        text = log.read_text()
        ids |= {line.split("]")[0] for line in text.splitlines() if line.startswith("[worker ")}
    assert len(ids) == 2, ids


# -- signals ------------------------------------------------------------------------------------------------------
def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has stopped training
    except FileNotFoundError:
        return False


def running_worker_pid(journal, timeout=120) -> int:
    from optuna.trial import TrialState

    from probe.storage import open_storage
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.5)
        if not os.path.exists(journal):
            continue
        storage = open_storage(str(journal), create=False)
        for summary in storage.get_all_studies():
            for t in storage.get_all_trials(summary._study_id, states=(TrialState.RUNNING,)):
                if "worker" in t.user_attrs and "lr" in t.params:
                    return t.user_attrs["worker"]["pid"]
    raise AssertionError("no worker started training")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_a_sweep_stops_its_workers_too(tmp_path, sig, code):
    path = write_sweep(tmp_path, steps=1_000_000, val_every=50)  # the workers pause at their next evaluation
    launcher = start("sweep", path, "--device", "cpu", cwd=tmp_path)
    worker = None
    try:
        worker = running_worker_pid(tmp_path / "runs" / "faulty" / "journal.log")
        launcher.send_signal(sig)
        _, err = launcher.communicate(timeout=120)
        deadline = time.time() + 60
        while alive(worker) and time.time() < deadline:
            time.sleep(0.2)
        assert not alive(worker), "the sweep's worker trains on unsupervised"
        assert launcher.returncode == code
        assert err.decode().strip().splitlines()[-1].startswith("probe: interrupted")
    finally:
        launcher.kill()
        if worker is not None and alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_ctrl_c_on_train_is_one_line_and_exit_130_like_a_sweep(tmp_path):
    proc = start("train", "--task", "mqar", "--arch", "attention", "--seq-len", "8", "--vocab-size", "16",
                 "--num-kv-pairs", "2", "--d-model", "8", "--max-steps", "1000000", "--num-train", "16",
                 "--num-test", "8", "--device", "cpu", "--json", "r.json", cwd=tmp_path)
    out, err = bytearray(), bytearray()

    def read(stream, into):  # a full pipe would stall the process: the progress bar writes fast
        while chunk := os.read(stream.fileno(), 1 << 16):
            into.extend(chunk)
    readers = [threading.Thread(target=read, args=pair, daemon=True) for pair in ((proc.stdout, out),
                                                                                    (proc.stderr, err))]
    for reader in readers:
        reader.start()
    deadline = time.time() + 120
    while b"Epoch" not in out and time.time() < deadline:  # the progress bar: training has started
        time.sleep(0.2)
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    for reader in readers:
        reader.join(timeout=10)
    assert proc.returncode == 130
    assert err.decode().strip().splitlines() == ["probe: interrupted"], err.decode()[-2000:]
    assert not (tmp_path / "r.json").exists()
