"""Run folders prove what they hold (issue 10, item 3): every piece and run.json carry the run's
fingerprint, damaged pieces are recomputed and named, pieces and folders of another run or of
the old format are refused naming the file, the claim of a folder is exclusive, and collect
verifies too. On the test-only experiment `toy-linear`."""
import json
import os
import shutil
import threading

import numpy as np
import pytest

from experiments import registry, run_folder, runner
from experiments.__main__ import main
from tests.experiments import toy_linear

PIECES = toy_linear.pieces(toy_linear.Config.tiny())  # 12: 4 widths x 3 seeds


@pytest.fixture(autouse=True)
def toy(monkeypatch):
    monkeypatch.setitem(registry.EXPERIMENTS, "toy-linear", "tests.experiments.toy_linear")
    monkeypatch.setitem(registry.EXPERIMENTS, "toy-other", "tests.experiments.toy_linear")
    monkeypatch.setattr(toy_linear, "FAIL_ON", None)
    # drawing the PNG takes ~0.4 s a run on a shared 2-core machine; test_runner checks figures
    monkeypatch.setattr(runner, "_save_figure", lambda figure, path: None)
    toy_linear.CALLS.clear()
    return toy_linear


def run_cli(out, *extra, name="toy-linear"):
    return main(["run", name, "--size", "tiny", "--no-progress", "--out", str(out), *extra])


def finished(out, *extra):
    """A complete run in `out`; returns its results.json text, with CALLS cleared."""
    assert run_cli(out, *extra) == 0
    toy_linear.CALLS.clear()
    return (out / "results.json").read_text()


def piece(out, index):
    return out / "pieces" / f"{index:05d}.npz"


def entries(path):
    with np.load(path) as saved:
        return {key: saved[key] for key in saved.files}


# --- damage that recomputing repairs: each is named and redone, bit-identically -----------------

def truncate(out):
    data = piece(out, 4).read_bytes()
    piece(out, 4).write_bytes(data[: len(data) // 2])


def empty(out):
    piece(out, 4).write_bytes(b"")


def garbage(out):
    size = piece(out, 4).stat().st_size
    piece(out, 4).write_bytes(np.random.default_rng(0).bytes(size))


def copy_of_another_piece(out):
    shutil.copyfile(piece(out, 5), piece(out, 4))


def flipped_byte(out):
    data = bytearray(piece(out, 4).read_bytes())
    position = data.find(entries(piece(out, 4))["estimate"].tobytes())
    assert position > 0
    data[position] ^= 1
    piece(out, 4).write_bytes(bytes(data))


def rewritten_values(out):
    """A valid archive whose numbers changed but whose other entries were kept: only a
    checksum of the arrays tells."""
    saved = entries(piece(out, 4))
    saved["estimate"] = saved["estimate"] * 2
    np.savez(piece(out, 4), **saved)


def foreign_archive(out):
    np.savez(piece(out, 4), x=np.arange(3))


@pytest.mark.parametrize("damage", [truncate, empty, garbage, copy_of_another_piece, flipped_byte,
                                    rewritten_values, foreign_archive])
def test_damaged_piece_is_recomputed_and_named(tmp_path, capsys, damage):
    out = tmp_path / "toy"
    first = finished(out)
    damage(out)
    capsys.readouterr()
    assert run_cli(out) == 0
    assert toy_linear.CALLS == [PIECES[4]]  # only the damaged piece is redone
    err = capsys.readouterr().err
    assert "recomputing piece 4" in err and str(piece(out, 4)) in err
    assert (out / "results.json").read_text() == first  # bit-identical to the undamaged run


def test_collect_verifies_pieces_and_names_the_damaged_one(tmp_path, capsys):
    out = tmp_path / "toy"
    first = finished(out)
    truncate(out)
    assert main(["collect", "toy-linear", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{piece(out, 4)} is damaged: not a complete .npz (zip) archive" in err
    assert run_cli(out) == 0 and toy_linear.CALLS == [PIECES[4]]
    assert main(["collect", "toy-linear", "--out", str(out)]) == 0
    assert (out / "results.json").read_text() == first


def test_shard_names_a_damaged_piece_of_another_shard_and_its_shard_repairs_it(tmp_path, capsys):
    out = tmp_path / "toy"
    assert run_cli(out, "--shard", "0/2") == 0
    first = finished(out, "--shard", "1/2")
    data = piece(out, 1).read_bytes()
    piece(out, 1).write_bytes(data[:100])
    capsys.readouterr()
    assert run_cli(out, "--shard", "0/2") == 0  # its own pieces are fine: nothing to redo
    assert toy_linear.CALLS == []
    err = capsys.readouterr().err
    assert "11 of 12 pieces saved" in err and str(piece(out, 1)) in err
    assert run_cli(out, "--shard", "1/2") == 0 and toy_linear.CALLS == [PIECES[1]]
    assert (out / "results.json").read_text() == first


# --- files of another run, or of the old format: refused, naming the file ------------------------

def test_deleted_run_json_does_not_relabel_pieces_of_another_seed(tmp_path, capsys):
    out = tmp_path / "toy"
    finished(out)  # seed 0
    os.remove(out / "run.json")
    os.remove(out / "results.json")
    capsys.readouterr()
    assert run_cli(out, "--seed", "3") == 1
    err = capsys.readouterr().err
    assert str(piece(out, 0)) in err and "config.seed 0 there, 3 here" in err
    assert not (out / "results.json").exists() and not (out / "run.json").exists()
    assert toy_linear.CALLS == []


def test_piece_of_another_config_is_refused_not_overwritten(tmp_path, capsys):
    mine, other = tmp_path / "seed0", tmp_path / "seed3"
    finished(mine)
    finished(other, "--seed", "3")
    shutil.copyfile(piece(other, 4), piece(mine, 4))
    capsys.readouterr()
    assert run_cli(mine) == 1
    err = capsys.readouterr().err
    assert str(piece(mine, 4)) in err and "config.seed 3 there, 0 here" in err
    assert piece(mine, 4).read_bytes() == piece(other, 4).read_bytes()  # left for the user
    assert main(["collect", "toy-linear", "--out", str(mine)]) == 1
    assert str(piece(mine, 4)) in capsys.readouterr().err


def test_folder_of_another_experiment_is_refused(tmp_path, capsys):
    out = tmp_path / "toy"
    finished(out)
    assert run_cli(out, name="toy-other") == 1
    err = capsys.readouterr().err
    assert "experiment 'toy-linear' there, 'toy-other' here" in err and "run.json" in err


def test_collect_with_another_experiments_name_is_refused_naming_both(tmp_path, capsys):
    out = tmp_path / "toy"
    finished(out)
    assert main(["collect", "toy-other", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "holds a run of 'toy-linear', not of 'toy-other'" in err and str(out / "run.json") in err
    assert json.loads((out / "results.json").read_text())["experiment"] == "toy-linear"


def old_format_folder(out):
    """A folder as the runner wrote it before fingerprints: run.json without "format", pieces
    with only their own "__piece__" entry."""
    config = {"widths": [16, 64, 256, 1024], "n_seeds": 3, "dim": 5, "seed": 0}
    os.makedirs(out / "pieces")
    (out / "run.json").write_text(json.dumps(
        {"experiment": "toy-linear", "size": "tiny", "config": config, "pieces": 12}))
    for i, p in enumerate(PIECES):
        result = toy_linear.run_piece(toy_linear.Config.tiny(), p)
        np.savez(piece(out, i), __piece__=np.asarray(json.dumps(list(p))), **result)
    toy_linear.CALLS.clear()


def test_old_format_folder_is_refused_saying_how_to_recompute(tmp_path, capsys):
    out = tmp_path / "old"
    old_format_folder(out)
    assert run_cli(out) == 1
    err = capsys.readouterr().err
    assert str(out / "run.json") in err and "before run folders recorded fingerprints" in err
    assert "another --out" in err and "delete the folder" in err
    assert main(["collect", "toy-linear", "--out", str(out)]) == 1
    assert "before run folders recorded fingerprints" in capsys.readouterr().err
    # without its run.json, the old pieces are refused in turn
    os.remove(out / "run.json")
    assert run_cli(out) == 1
    err = capsys.readouterr().err
    assert str(piece(out, 0)) in err and "before pieces recorded fingerprints" in err
    assert toy_linear.CALLS == [] and not (out / "results.json").exists()


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[1, 2]", b'{"format": 2}'])
def test_unreadable_run_json_is_named(tmp_path, capsys, content):
    out = tmp_path / "toy"
    finished(out)
    (out / "run.json").write_bytes(content)
    assert run_cli(out) == 1
    assert str(out / "run.json") in capsys.readouterr().err
    assert main(["collect", "toy-linear", "--out", str(out)]) == 1
    assert str(out / "run.json") in capsys.readouterr().err


def test_unreadable_results_json_is_named(tmp_path):
    out = tmp_path / "toy"
    finished(out)
    (out / "results.json").write_text("{\"results\": [1,")
    with pytest.raises(runner.RunFolderError, match="results.json cannot be read"):
        runner.load_results(out)


def test_files_record_the_fingerprint_of_the_full_config(tmp_path):
    out = tmp_path / "toy"
    finished(out, "--seed", "3")
    claim = json.loads((out / "run.json").read_text())
    expected = {"experiment": "toy-linear", "size": "tiny",
                "config": {"widths": [16, 64, 256, 1024], "n_seeds": 3, "dim": 5, "seed": 3}}
    assert claim["fingerprint"] == expected and claim["pieces"] == 12
    assert claim["fingerprint_sha256"] == run_folder.fingerprint_sha256(expected)
    meta = json.loads(str(entries(piece(out, 7))[run_folder.META]))
    assert meta["fingerprint"] == expected and meta["piece"] == list(PIECES[7])


# --- the claim of a folder is exclusive -----------------------------------------------------------

def test_exclusive_create_refuses_the_second_writer(tmp_path):
    path = str(tmp_path / "run.json")
    assert run_folder.create_exclusive(path, b"first")
    assert not run_folder.create_exclusive(path, b"second")
    assert open(path, "rb").read() == b"first" and os.listdir(tmp_path) == ["run.json"]


def test_two_runs_racing_for_a_folder_one_is_refused(tmp_path, monkeypatch):
    """Both runs look at the folder, both find it unclaimed, then both claim it: exactly one
    claim stands and the other run is refused (a check-then-write claim lets both through)."""
    out = str(tmp_path / "race")
    barrier, real_read = threading.Barrier(2), run_folder.read_claim

    def read_then_wait(folder):
        claim = real_read(folder)
        if claim is None:
            barrier.wait(timeout=10)  # both have seen an unclaimed folder
        return claim

    monkeypatch.setattr(run_folder, "read_claim", read_then_wait)
    outcomes = {}

    def claim(seed):
        config = {"widths": [16], "n_seeds": 1, "dim": 5, "seed": seed}
        try:
            run_folder.claim_folder(out, run_folder.run_fingerprint("toy-linear", "tiny", config), 1)
            outcomes[seed] = "claimed"
        except runner.RunFolderError as error:
            outcomes[seed] = str(error)

    threads = [threading.Thread(target=claim, args=(seed,)) for seed in (0, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes.values()).count("claimed") == 1
    winner = next(seed for seed, outcome in outcomes.items() if outcome == "claimed")
    loser = 3 - winner
    assert f"config.seed {winner} there, {loser} here" in outcomes[loser]
    assert json.load(open(os.path.join(out, "run.json")))["fingerprint"]["config"]["seed"] == winner


# --- arguments: checked before anything is written ------------------------------------------------

@pytest.mark.parametrize("shard", ["-1/2", "1/0", "a/b", "2/2", "1/2/3", "0.5/2", "", "-0/-1"])
def test_nonsense_shard_is_a_clear_command_line_error(tmp_path, capsys, shard):
    out = tmp_path / "toy"
    with pytest.raises(SystemExit) as stop:
        run_cli(out, "--shard", shard)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "argument --shard: expected I/N with integers 0 <= I < N" in err and repr(shard) in err
    assert not out.exists()


@pytest.mark.parametrize("seed", ["-5", "4294967296", "1.5", "x"])
def test_bad_seed_is_refused_before_the_folder_is_touched(tmp_path, capsys, seed):
    out = tmp_path / "toy"
    with pytest.raises(SystemExit):
        run_cli(out, "--seed", seed)
    err = capsys.readouterr().err
    assert "argument --seed: expected an integer 0 <= S < 2**32" in err and repr(seed) in err
    assert not out.exists()


def test_empty_out_is_refused_not_taken_for_the_default(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in (["run", "toy-linear", "--out", ""], ["collect", "toy-linear", "--out", ""],
                    ["collect", "toy-linear", "--figures", ""]):
        with pytest.raises(SystemExit):
            main(command)
        assert "expected a folder path; received an empty string" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def call(function, **changes):
    """`function` with the toy's valid arguments, some replaced."""
    arguments = {"name": "toy-linear", "module": toy_linear, "out": "toy"}
    if function is runner.run:
        arguments.update(size="tiny", progress=False)
    arguments.update(changes)
    return lambda: function(**arguments)


@pytest.mark.parametrize("bad, kind, argument", [
    (call(runner.run, size=3), ValueError, "size"),
    (call(runner.run, size="Tiny"), ValueError, "size"),
    (call(runner.run, shard=(0.0, 1)), TypeError, "shard"),
    (call(runner.run, shard=(True, 2)), TypeError, "shard"),
    (call(runner.run, shard=(0, 1, 2)), TypeError, "shard"),
    (call(runner.run, shard="0/2"), TypeError, "shard"),
    (call(runner.run, shard=(-1, 2)), ValueError, "shard"),
    (call(runner.run, seed=-5), ValueError, "seed"),
    (call(runner.run, seed=2 ** 32), ValueError, "seed"),
    (call(runner.run, seed=True), TypeError, "seed"),
    (call(runner.run, seed="3"), TypeError, "seed"),
    (call(runner.run, seed=1.0), TypeError, "seed"),
    (call(runner.run, progress="no"), TypeError, "progress"),
    (call(runner.run, out=""), ValueError, "out"),
    (call(runner.run, out=5), TypeError, "out"),
    (call(runner.run, name=""), ValueError, "name"),
    (call(runner.run, name="a/b"), ValueError, "name"),
    (call(runner.run, name=None), TypeError, "name"),
    (call(runner.run, module=np), TypeError, "module"),
    (call(runner.collect, out=""), ValueError, "out"),
    (call(runner.collect, name=7), TypeError, "name"),
    (call(runner.collect, module=object()), TypeError, "module"),
    (lambda: runner.make_config(toy_linear, "huge"), ValueError, "size"),
    (lambda: runner.make_config(toy_linear, "tiny", seed=-1), ValueError, "seed"),
    (lambda: runner.default_out(None), TypeError, "name"),
    (lambda: runner.load_results(""), ValueError, "out"),
    (lambda: registry.load_experiment(["toy-linear"]), TypeError, "name"),
])
def test_public_functions_refuse_bad_arguments_before_writing(tmp_path, monkeypatch, bad, kind,
                                                              argument):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(kind, match=f"argument `{argument}` must be"):
        bad()
    assert os.listdir(tmp_path) == []  # neither `toy` nor the default runs/ was created


@pytest.mark.parametrize("value", [[[1.0, 2.0], [3.0]], None, {"a": 1}, object(),
                                   np.zeros(2, dtype="V2"), np.datetime64("2024-01-01")])
def test_run_piece_value_that_is_not_an_array_is_refused_naming_the_key(tmp_path, monkeypatch,
                                                                        value):
    monkeypatch.setattr(toy_linear, "run_piece", lambda config, p: {"width": p[0], "bad": value})
    with pytest.raises(TypeError, match="returned 'bad'"):
        runner.run("toy-linear", toy_linear, "tiny", str(tmp_path / "toy"), progress=False)
    assert not (tmp_path / "toy" / "pieces").exists()


def test_result_keys_named_like_savez_arguments_are_kept(tmp_path, monkeypatch):
    real = toy_linear.run_piece
    monkeypatch.setattr(toy_linear, "run_piece",
                        lambda config, p: dict(real(config, p), allow_pickle=1.5, file=2.5))
    runner.run("toy-linear", toy_linear, "tiny", str(tmp_path / "toy"), progress=False)
    saved = entries(piece(tmp_path / "toy", 0))
    assert saved["allow_pickle"] == 1.5 and saved["file"] == 2.5


def test_piece_holding_nan_is_reused_not_recomputed_forever(tmp_path, monkeypatch):
    real = toy_linear.run_piece
    monkeypatch.setattr(toy_linear, "pieces", lambda config: [(w, s, float("nan")) for w, s in PIECES])
    monkeypatch.setattr(toy_linear, "run_piece", lambda config, p: real(config, p[:2]))
    out = tmp_path / "toy"
    runner.run("toy-linear", toy_linear, "tiny", str(out), progress=False)
    toy_linear.CALLS.clear()
    runner.run("toy-linear", toy_linear, "tiny", str(out), progress=False)
    assert toy_linear.CALLS == []


def test_pieces_that_are_not_tuples_are_refused_naming_the_hook(tmp_path, monkeypatch):
    monkeypatch.setattr(toy_linear, "pieces", lambda config: [16, 64])
    with pytest.raises(TypeError, match="toy_linear.pieces returned the piece 16"):
        runner.run("toy-linear", toy_linear, "tiny", str(tmp_path / "toy"), progress=False)
    assert not (tmp_path / "toy").exists()
