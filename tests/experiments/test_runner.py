"""The runner and command line, on the test-only experiment `toy-linear`:
sharding splits the pieces, reruns skip finished pieces, a crash loses only
the piece in progress."""
import contextlib
import json
import os
import subprocess
import sys

import pytest

from experiments import registry, runner
from experiments.__main__ import main
from tests.experiments import toy_linear

N_TINY = 12  # 4 widths x 3 seeds


@pytest.fixture(autouse=True)
def toy(monkeypatch):
    monkeypatch.setitem(registry.EXPERIMENTS, "toy-linear", "tests.experiments.toy_linear")
    monkeypatch.setattr(toy_linear, "FAIL_ON", None)
    toy_linear.CALLS.clear()
    return toy_linear


def saved(out):
    return sorted(os.listdir(os.path.join(out, "pieces")))


def test_run_writes_results_figure_and_prints_agreement(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["run", "toy-linear", "--size", "tiny", "--out", str(out), "--no-progress"]) == 0
    assert len(toy_linear.CALLS) == N_TINY and len(saved(out)) == N_TINY
    record = json.loads((out / "results.json").read_text())
    assert record["size"] == "tiny" and record["config"]["widths"] == [16, 64, 256, 1024]
    slope = {e["name"]: e for e in record["agreement"]}["slope"]
    assert -0.8 < slope["value"] < -0.2 and slope["theory"] == -0.5 and slope["passed"]
    assert (out / "toy-linear.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "agreement with theory: 2 of 2 entries pass" in printed and "slope" in printed
    # the figure can be redrawn from the JSON alone
    toy_linear.plot(runner.load_results(out)["results"])


def test_default_out_is_runs_name_under_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "toy-linear", "--size", "tiny", "--no-progress"]) == 0
    assert (tmp_path / "runs" / "toy-linear" / "results.json").exists()


def test_shards_split_the_pieces_and_collect_merges_them(tmp_path, capsys):
    out = str(tmp_path / "sharded")
    args = ["run", "toy-linear", "--size", "tiny", "--out", out, "--no-progress", "--shard"]
    assert main(args + ["0/3"]) == 0
    assert toy_linear.CALLS == [p for i, p in enumerate(toy_linear.pieces(toy_linear.Config.tiny()))
                                if i % 3 == 0]
    assert main(args + ["2/3"]) == 0
    assert saved(out) == [f"{i:05d}.npz" for i in range(N_TINY) if i % 3 != 1]
    assert not os.path.exists(os.path.join(out, "results.json"))
    assert "widekit collect toy-linear" in capsys.readouterr().err
    # collecting too early names what is missing
    assert main(["collect", "toy-linear", "--out", out]) == 1
    assert "4 of 12 pieces missing, e.g. indices [1, 4, 7, 10]" in capsys.readouterr().err
    # the last shard to finish writes the results
    assert main(args + ["1/3"]) == 0
    assert len(toy_linear.CALLS) == N_TINY  # every piece ran exactly once
    first = json.loads(open(os.path.join(out, "results.json")).read())
    figures = tmp_path / "figures"
    assert main(["collect", "toy-linear", "--out", out, "--figures", str(figures)]) == 0
    assert len(toy_linear.CALLS) == N_TINY
    assert json.loads((figures / "toy-linear.json").read_text()) == first
    assert (figures / "toy-linear.png").exists()


def test_rerun_skips_finished_pieces(tmp_path):
    out = str(tmp_path / "toy")
    runner.run("toy-linear", toy_linear, "tiny", out, progress=False)
    before = {name: os.path.getmtime(os.path.join(out, "pieces", name)) for name in saved(out)}
    toy_linear.CALLS.clear()
    record = runner.run("toy-linear", toy_linear, "tiny", out, progress=False)
    assert toy_linear.CALLS == [] and record is not None
    assert before == {name: os.path.getmtime(os.path.join(out, "pieces", name)) for name in saved(out)}


def test_crash_midway_loses_only_the_piece_in_progress(tmp_path, monkeypatch):
    out = str(tmp_path / "toy")
    pieces = toy_linear.pieces(toy_linear.Config.tiny())
    monkeypatch.setattr(toy_linear, "FAIL_ON", pieces[5])
    with pytest.raises(RuntimeError, match="simulated crash"):
        runner.run("toy-linear", toy_linear, "tiny", out, progress=False)
    assert saved(out) == [f"{i:05d}.npz" for i in range(5)]
    monkeypatch.setattr(toy_linear, "FAIL_ON", None)
    toy_linear.CALLS.clear()
    record = runner.run("toy-linear", toy_linear, "tiny", out, progress=False)
    assert toy_linear.CALLS == pieces[5:]  # nothing finished is redone
    assert [e["name"] for e in record["agreement"]] == ["slope", "mean_estimate_widest"]


def test_kill_while_saving_leaves_no_half_written_piece(tmp_path, monkeypatch):
    """A kill between writing the temporary file and renaming it: the piece is
    not counted as finished, and no partial file takes its name."""
    out = str(tmp_path / "toy")
    real_replace, renames = os.replace, []

    def replace_then_die(source, target):
        renames.append(target)
        if len(renames) == 3:  # pieces 0, 1; die saving piece 2 (run.json is linked, not renamed)
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(runner.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        runner.run("toy-linear", toy_linear, "tiny", out, progress=False)
    monkeypatch.setattr(runner.os, "replace", real_replace)
    assert saved(out) == ["00000.npz", "00001.npz"]  # and no temporary file left behind
    toy_linear.CALLS.clear()
    runner.run("toy-linear", toy_linear, "tiny", out, progress=False)
    assert toy_linear.CALLS == toy_linear.pieces(toy_linear.Config.tiny())[2:]


def test_folder_of_another_config_is_refused(tmp_path, capsys):
    out = str(tmp_path / "toy")
    assert main(["run", "toy-linear", "--size", "tiny", "--out", out, "--no-progress"]) == 0
    assert main(["run", "toy-linear", "--size", "tiny", "--out", out, "--seed", "7",
                 "--no-progress"]) == 1
    assert "already holds a run of toy-linear [tiny]" in capsys.readouterr().err
    # --seed reaches the config
    other = str(tmp_path / "seeded")
    assert main(["run", "toy-linear", "--size", "tiny", "--out", other, "--seed", "7",
                 "--no-progress"]) == 0
    assert runner.load_results(other)["config"]["seed"] == 7


def test_command_line_errors(tmp_path, capsys):
    assert main(["run", "no-such-thing"]) == 2
    err = capsys.readouterr().err  # the known names: the registered ones, toy-linear among them
    assert "no experiment named 'no-such-thing' (known: " in err and "toy-linear" in err
    with pytest.raises(SystemExit):
        main(["run", "toy-linear", "--shard", "3/3"])
    assert "expected I/N with integers 0 <= I < N" in capsys.readouterr().err
    assert main(["list"]) == 0
    assert "toy-linear" in capsys.readouterr().out


def test_python_dash_m_experiments_runs_main():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-m", "experiments", "list"], capture_output=True,
                          text=True, cwd=repo)
    assert done.returncode == 0, done.stderr


def test_out_or_figures_path_that_cannot_be_used_is_one_line_naming_the_option(tmp_path, capsys):
    """A file as --out is called a file (not "run.json cannot be read; delete it"); an OSError about
    --out or --figures (a file, a path under a file) is one line naming the option, status 2."""
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert main(["collect", "toy-linear", "--out", str(a_file)]) == 1
    err = capsys.readouterr().err
    assert f"{a_file} is a file, not a folder: use another --out" in err and "delete it" not in err
    assert main(["run", "toy-linear", "--size", "tiny", "--out", str(a_file / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"widekit: --out {a_file / 'x'}") and err.count("\n") == 1
    out = str(tmp_path / "toy")
    assert main(["run", "toy-linear", "--size", "tiny", "--out", out, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["collect", "toy-linear", "--out", out, "--figures", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert err == f"widekit: --figures {a_file} is a file, not a folder: give a folder\n"
    assert main(["collect", "toy-linear", "--out", out, "--figures", str(a_file / "zz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"widekit: --figures {a_file / 'zz'}") and err.count("\n") == 1


def test_strict_exits_nonzero_when_a_wrong_theory_fails_its_entry(tmp_path, monkeypatch, capsys):
    args = ["run", "toy-linear", "--size", "tiny", "--no-progress", "--strict"]
    assert main(args + ["--out", str(tmp_path / "true")]) == 0
    monkeypatch.setattr(toy_linear, "NORM2", 1.1)  # the theory's |x|^2 10% off
    assert main(args + ["--out", str(tmp_path / "wrong")]) == 1
    captured = capsys.readouterr()
    assert "FAILED: mean_estimate_widest" in captured.out and "--strict" in captured.err
    # without --strict the run still writes its results and exits 0
    assert main(args[:-1] + ["--out", str(tmp_path / "lenient")]) == 0


def test_set_overrides_typed_fields_records_them_and_collect_rebuilds_them(tmp_path):
    out = tmp_path / "set"
    args = ["run", "toy-linear", "--size", "tiny", "--out", str(out), "--no-progress",
            "--set", "widths=[16, 256]", "--set", "n_seeds=2"]
    assert main(args + ["--shard", "0/2"]) == 0
    claim = json.loads((out / "run.json").read_text())["fingerprint"]
    assert claim["overrides"] == {"widths": [16, 256], "n_seeds": 2}
    assert claim["config"]["widths"] == [16, 256] and claim["config"]["n_seeds"] == 2
    assert main(args + ["--shard", "1/2"]) == 0
    assert len(saved(out)) == 4
    assert main(["collect", "toy-linear", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["widths"] == [16, 256]
    # the same folder without the overrides is another run: refused, naming the difference
    assert main(["run", "toy-linear", "--size", "tiny", "--out", str(out), "--no-progress"]) == 1


@pytest.mark.parametrize("setting, match", [
    ("colour=3", "a field of Config"),
    ("n_seeds=2.5", "an integer"),
    ("n_seeds=true", "an integer"),
    ("widths=64", "a list"),
    ("widths=[64, \"wide\"]", "an integer"),
    ("n_seeds", "KEY=VALUE"),
])
def test_set_refuses_unknown_fields_and_wrong_types_before_writing(tmp_path, capsys, setting, match):
    out = tmp_path / "refused"
    with pytest.raises(SystemExit) if setting == "n_seeds" else contextlib.nullcontext():
        status = main(["run", "toy-linear", "--size", "tiny", "--out", str(out), "--no-progress",
                       "--set", setting])
        assert status == 2
    assert match in capsys.readouterr().err and not out.exists()


def test_collect_figures_writes_readme_from_the_records(tmp_path):
    out, figures = tmp_path / "run", tmp_path / "figures"
    assert main(["run", "toy-linear", "--size", "tiny", "--out", str(out), "--no-progress"]) == 0
    assert main(["collect", "toy-linear", "--out", str(out), "--figures", str(figures)]) == 0
    text = (figures / "README.md").read_text()
    record = json.loads((figures / "toy-linear.json").read_text())
    slope = record["agreement"][0]["value"]
    assert "## toy-linear" in text and f"{slope:.4g}" in text and "2 of 2 entries pass" in text
