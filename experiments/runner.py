"""Run a named experiment piece by piece: sharded, resumable, crash-safe, verified.

An experiment is a plain module that defines

    Config                     a frozen dataclass with classmethods `tiny()`,
                               `small()` and `paper()` and an int field `seed`
                               (what `--seed` replaces);
    pieces(config)             -> list of independent work pieces, each a tuple
                               of numbers/strings (e.g. (width, seed_index));
    run_piece(config, piece)   -> flat dict: name -> number or numeric array;
    summarize(config, results) -> dict of numbers, strings, lists and arrays,
                               from all pieces' results (dicts of NumPy
                               arrays, 0-d for numbers) in piece order;
    plot(results)              -> matplotlib Figure (best built as
                               `matplotlib.figure.Figure()`: no global state);
    agreement(results)         -> list of agreement entries (`experiments.agreement`:
                               name, value, theory, uncertainty, interval,
                               criterion, passed), printed at the end;
    caption(record)            -> optional: the Markdown caption of the figure
                               in `figures/README.md`, written from the record
                               (`results.json`) alone, so it cannot go stale.

`plot` and `agreement` receive the summary as JSON returns it (arrays turned
into nested lists), so `plot(load_results(out)["results"])` redraws a figure
from `results.json` alone.

`run` does the pieces `i` with `i % n == shard` (`--shard shard/n`, 0-based,
so a job array of n tasks covers every piece). Each finished piece is written
at once, atomically, to `OUT/pieces/NNNNN.npz`, so a run killed at any moment
loses at most the piece in progress and a rerun redoes only that. What is on
disk proves what made it (`experiments.run_folder`): `OUT/run.json`, created
exclusively, and every piece record the run's fingerprint (experiment, size,
full config with the seed, and the `--set` overrides), and every piece a checksum of its arrays. A rerun
verifies each saved piece before reusing it: a missing or damaged one is
recomputed (and the run says so, naming the file); a folder or piece made by
another run, or before fingerprints were recorded, is refused naming the file
and what differs. When every piece is saved (by this shard or by others),
`OUT/results.json` (config, results and agreement) and the figure
`OUT/NAME.png` are written; `collect` does the same for a folder filled by
several shards, verifying every piece too.
"""
import dataclasses
import json
import os
import sys

import numpy as np
from tqdm import tqdm

from experiments import agreement as agreement_entries
from experiments import run_folder
from experiments.run_folder import RunFolderError, UnusablePiece
from kernels.checks import argument_error
from kernels.files import atomic_write

SIZES = ("tiny", "small", "paper")
HOOKS = ("Config", "pieces", "run_piece", "summarize", "plot", "agreement")
SEED_LIMIT = 2 ** 32  # seeds feed NumPy and jax.random.PRNGKey, which take unsigned 32-bit seeds


def make_config(module, size, seed=None, overrides=None):
    """The experiment's config for `size`, with `seed` and any `overrides` replaced.

    Args:
      module: the experiment module.
      size: "tiny", "small" or "paper".
      seed: None, or an int 0 <= seed < 2**32 that replaces `config.seed`.
      overrides: None, or a dict field name -> value (as JSON gives it: lists for tuples)
        replacing config fields (`--set`); each is checked against the field's type.

    Returns:
      The frozen config dataclass.
    """
    check_module("make_config", module)
    check_size("make_config", size)
    seed = check_seed("make_config", seed)
    config = getattr(module.Config, size)()
    if seed is not None:
        if "seed" not in {f.name for f in dataclasses.fields(config)}:
            raise ValueError(f"{module.__name__}.Config has no field 'seed' for --seed")
        config = dataclasses.replace(config, seed=seed)
    if overrides:
        checked = check_overrides("make_config", config, overrides)
        try:
            config = dataclasses.replace(config, **checked)
        except (ValueError, TypeError) as error:
            raise ValueError(f"make_config: --set {', '.join(f'{k}={v!r}' for k, v in checked.items())}"
                             f" gives no valid {type(config).__name__}: {error}") from None
    return config


def check_overrides(where, config, overrides):
    """`overrides` as field -> value of the field's type; refuses unknown fields and wrong types.

    A field's type is that of its current value: a tuple takes a list (of the same element
    type as its current elements), a float takes an int, an int refuses a float or a bool.
    """
    if not isinstance(overrides, dict):
        raise argument_error(where, "overrides", "a dict field -> value", overrides, TypeError)
    fields = {f.name: f for f in dataclasses.fields(config)}
    checked = {}
    for key, value in overrides.items():
        if key not in fields:
            raise argument_error(where, f"--set {key}", f"a field of {type(config).__name__} "
                                 f"({', '.join(fields)})", key)
        current = getattr(config, key)
        declared = fields[key].type  # `float = 1` declares a float that holds an int
        if declared in (float, "float") and isinstance(current, int) and not isinstance(current, bool):
            current = float(current)
        checked[key] = _as_type_of(f"--set {key}", current, value)
    return checked


def _as_type_of(where, current, value):
    """`value` converted to the type of `current`, or a TypeError naming `where`."""
    def refuse(expected):
        return argument_error(where, "value", expected, value, TypeError)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise refuse("true or false")
        return value
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise refuse("an integer")
        return value
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise refuse("a number")
        return float(value)
    if isinstance(current, str):
        if not isinstance(value, str):
            raise refuse("a string")
        return value
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)):
            raise refuse("a list, such as [64, 256]")
        if current:
            return tuple(_as_type_of(f"{where}[{i}]", current[0], v) for i, v in enumerate(value))
        return tuple(value)
    if current is None:
        return value
    raise refuse(f"a {type(current).__name__}")


def default_out(name):
    """`runs/NAME` under the current working directory."""
    check_name("default_out", name)
    return os.path.join(os.getcwd(), "runs", name)


def run(name, module, size="small", out=None, shard=(0, 1), seed=None, progress=True,
        overrides=None):
    """Run this shard's unfinished pieces; finish the experiment if all are saved.

    Every argument is checked before anything is written.

    Args:
      name: the experiment's registered name (names the figure file).
      module: the experiment module (see the module docstring).
      size: "tiny", "small" or "paper".
      out: output folder; default `runs/NAME` under the working directory.
      shard: `(index, count)` of ints; this call runs pieces `i` with `i % count == index`.
      seed: None, or an int 0 <= seed < 2**32 that replaces `config.seed`.
      progress: bool, show a tqdm bar over this shard's pieces.
      overrides: None, or a dict of config fields to replace (`--set`; see `make_config`),
        recorded in `run.json`.

    Returns:
      The record written to `results.json` if every piece is now saved, else None.
    """
    out = _check_common("run", name, module, out)
    index, count = check_shard("run", shard)
    if not isinstance(progress, bool):
        raise argument_error("run", "progress", "True or False", progress, TypeError)
    config = make_config(module, size, seed, overrides)
    pieces = _pieces(module, config)
    fingerprint = run_folder.run_fingerprint(name, size, dataclasses.asdict(config), overrides)
    run_folder.claim_folder(out, fingerprint, len(pieces))
    mine = [(i, p) for i, p in enumerate(pieces) if i % count == index]
    todo = _pieces_to_run(name, out, fingerprint, mine)
    with tqdm(total=len(mine), initial=len(mine) - len(todo), unit="piece",
              desc=f"{name} [{size}] shard {index}/{count}", disable=not progress) as bar:
        for i, piece in todo:
            _run_piece(name, module, config, out, fingerprint, i, piece)
            bar.update(1)
    results, missing, damaged = _read_pieces(out, fingerprint, pieces)
    if missing or damaged:
        print(f"{name}: {len(results)} of {len(pieces)} pieces saved in {out}"
              f"{_damaged_note(damaged)}; after the other shards run "
              f"`widekit collect {name} --out {out}`", file=sys.stderr)
        return None
    return _finish(name, module, out, config, size, results)


def collect(name, module, out=None):
    """Verify and merge the pieces that shards saved in `out`, and finish the experiment.

    Args:
      name: the experiment's registered name; must be the one `out/run.json` records.
      module: the experiment module.
      out: the run folder; default `runs/NAME` under the working directory.

    Returns:
      The record written to `results.json`.

    Raises:
      RunFolderError: `out` holds no run, a run of another experiment or config, or pieces
        missing, damaged or made by another run (naming them and the shards that owe them).
    """
    out = _check_common("collect", name, module, out)
    config, size, overrides = _claimed_config(name, module, out)
    fingerprint = run_folder.run_fingerprint(name, size, dataclasses.asdict(config), overrides)
    pieces = _pieces(module, config)
    run_folder.claim_folder(out, fingerprint, len(pieces))  # a no-op that compares with run.json
    results, missing, damaged = _read_pieces(out, fingerprint, pieces)
    if missing or damaged:
        shown = f"{len(missing)} of {len(pieces)} pieces missing, e.g. indices {missing[:10]}"
        raise RunFolderError(f"{out}: {shown if missing else 'no piece missing'}"
                             f"{_damaged_note(damaged)}; with --shard I/N, piece i belongs to "
                             "shard i % N, and rerunning it recomputes what is missing or damaged")
    return _finish(name, module, out, config, size, results)


def load_results(out):
    """The record written to `out/results.json`; `["results"]` feeds `plot`."""
    out = _check_out("load_results", out)
    path = os.path.join(out, "results.json")
    record = run_folder.read_json(path)
    if record is None:
        raise RunFolderError(f"{out} holds no results.json yet")
    if not isinstance(record, dict) or "results" not in record:
        raise RunFolderError(f"{path} holds no record of results; rerun `widekit collect` to rewrite it")
    return record


def check_seed(where, seed):
    """`seed` as an int: None, or an integer 0 <= seed < 2**32 (bool refused); else an error naming it."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise argument_error(where, "seed", "None or an int 0 <= seed < 2**32", seed, TypeError)
    if not 0 <= seed < SEED_LIMIT:
        raise argument_error(where, "seed", "an int 0 <= seed < 2**32", seed)
    return int(seed)


def check_shard(where, shard):
    """`shard` as `(index, count)`: two ints with 0 <= index < count; else an error naming it."""
    expected = "(index, count), two ints with 0 <= index < count"
    if not (isinstance(shard, (tuple, list)) and len(shard) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shard)):
        raise argument_error(where, "shard", expected, shard, TypeError)
    if not 0 <= shard[0] < shard[1]:
        raise argument_error(where, "shard", expected, shard)
    return int(shard[0]), int(shard[1])


def check_size(where, size):
    """Refuses a `size` other than "tiny", "small" or "paper", naming it."""
    if not (isinstance(size, str) and size in SIZES):
        raise argument_error(where, "size", f"one of {SIZES}", size)


def check_name(where, name):
    """Refuses an experiment `name` that is not a non-empty string usable as a file name."""
    if not (isinstance(name, str) and name and os.sep not in name and name not in (".", "..")):
        raise argument_error(where, "name", "an experiment's name (a non-empty string, no '/')",
                             name, TypeError if not isinstance(name, str) else ValueError)


def check_module(where, module):
    """Refuses a `module` that lacks any of the experiment hooks, naming those missing."""
    missing = [hook for hook in HOOKS if not hasattr(module, hook)]
    if missing:
        raise argument_error(where, "module", f"an experiment module defining {', '.join(HOOKS)}",
                             f"{getattr(module, '__name__', module)!r}, which lacks {', '.join(missing)}",
                             TypeError)


def _check_common(where, name, module, out):
    """Checks `name` and `module`; returns `out`, or `runs/NAME` when it is None."""
    check_name(where, name)
    check_module(where, module)
    return default_out(name) if out is None else _check_out(where, out)


def _check_out(where, out):
    """`out` as a string path: a non-empty str or os.PathLike."""
    if not isinstance(out, (str, os.PathLike)) or not os.fspath(out):
        raise argument_error(where, "out", "a folder path (a non-empty str or os.PathLike)", out,
                             TypeError if not isinstance(out, (str, os.PathLike)) else ValueError)
    return os.fspath(out)


def _claimed_config(name, module, out):
    """The config, size and overrides `out/run.json` records, rebuilt from `module`; refuses another
    experiment's folder."""
    claim = run_folder.read_claim(out)
    path = os.path.join(out, "run.json")
    if claim is None:
        raise RunFolderError(f"{out} holds no run of {name} (no run.json)")
    found = claim["fingerprint"]
    if found.get("experiment") != name:
        raise RunFolderError(
            f"{path} holds a run of {found.get('experiment')!r}, not of {name!r}: collect it as "
            f"`widekit collect {found.get('experiment')} --out {out}`, or give {name}'s own folder")
    overrides = found.get("overrides") or None
    try:
        config = make_config(module, found.get("size"), (found.get("config") or {}).get("seed"),
                             overrides)
    except (ValueError, TypeError) as error:
        raise RunFolderError(f"{path} records a size, seed or override {name} cannot rebuild: "
                             f"{error}") from None
    return config, found["size"], overrides


def _pieces(module, config):
    """The experiment's pieces as tuples, each checked to be a sequence of numbers and strings."""
    pieces = module.pieces(config)
    if not isinstance(pieces, (list, tuple)):
        raise TypeError(f"{module.__name__}.pieces must return a list of pieces; got "
                        f"{type(pieces).__name__}")
    for piece in pieces:
        if not (isinstance(piece, (tuple, list)) and all(
                isinstance(v, (int, float, str, np.integer, np.floating)) for v in piece)):
            raise TypeError(f"{module.__name__}.pieces returned the piece {piece!r}: each piece "
                            "must be a tuple of numbers and strings")
    return [tuple(p) for p in pieces]


def _pieces_to_run(name, out, fingerprint, mine):
    """The (index, piece) pairs of `mine` with no usable saved file; says which files are recomputed."""
    todo = []
    for i, piece in mine:
        try:
            run_folder.read_piece(out, i, piece, fingerprint)
        except UnusablePiece as error:
            if os.path.exists(run_folder.piece_path(out, i)):
                print(f"{name}: recomputing piece {i} {list(piece)}: {error}", file=sys.stderr)
            todo.append((i, piece))
    return todo


def _run_piece(name, module, config, out, fingerprint, index, piece):
    """Runs one piece and saves its checked result with the run's fingerprint."""
    try:
        result = module.run_piece(config, piece)
    except BaseException:
        print(f"{name}: piece {index} {piece} failed; finished pieces are saved in {out}, "
              "rerun the same command to resume", file=sys.stderr)
        raise
    run_folder.save_piece(out, index, piece, _piece_arrays(module, piece, result), fingerprint)


def _piece_arrays(module, piece, result):
    """`run_piece`'s result as name -> NumPy array; refuses keys and values that are not, naming them."""
    where = f"{module.__name__}.run_piece{piece}"
    if not isinstance(result, dict):
        raise TypeError(f"{where} must return a dict, got {type(result).__name__}")
    arrays = {}
    for key, value in result.items():
        if not isinstance(key, str) or key in run_folder.RESERVED:
            raise ValueError(f"{where} returned the key {key!r}: keys are strings other than "
                             f"{run_folder.RESERVED}")
        try:
            arrays[key] = np.asarray(value)
        except (ValueError, TypeError) as error:  # ragged lists and the like
            raise TypeError(f"{where} returned {key!r}, which is not an array ({error})") from None
        if arrays[key].dtype.kind not in "biufcSU":  # object, void (bfloat16), datetime: an
            # .npz would store them as pickles or raw bytes that do not load back as they were
            raise TypeError(f"{where} returned {key!r} of type {type(value).__name__} (dtype "
                            f"{arrays[key].dtype}), which is not numeric or a plain string; return "
                            "arrays of bool, int, float or complex, or numbers")
    return arrays


def _read_pieces(out, fingerprint, pieces):
    """The verified arrays of the saved pieces, the indices missing, and the damaged files (index -> reason)."""
    results, missing, damaged = [], [], {}
    for i, piece in enumerate(pieces):
        if not os.path.exists(run_folder.piece_path(out, i)):
            missing.append(i)
            continue
        try:
            results.append(run_folder.read_piece(out, i, piece, fingerprint))
        except UnusablePiece as error:
            damaged[i] = str(error)
    return results, missing, damaged


def _damaged_note(damaged):
    if not damaged:
        return ""
    shown = "; ".join(list(damaged.values())[:5])
    return f"; {len(damaged)} damaged, to be recomputed by their shard (e.g. {shown})"


def _finish(name, module, out, config, size, results):
    """Summarize the pieces' results, write results.json and NAME.png, return the record."""
    # plot and agreement see the results as JSON gives them back (lists, not
    # arrays), so a figure can be redrawn from results.json alone.
    summary = run_folder.jsonable(module.summarize(config, results))
    entries = agreement_entries.check(run_folder.jsonable(module.agreement(summary)),
                                      f"{module.__name__}.agreement")
    record = run_folder.jsonable({"experiment": name, "size": size, "config": dataclasses.asdict(config),
                                  "results": summary, "agreement": entries})
    atomic_write(os.path.join(out, "results.json"),
                 lambda f: f.write(json.dumps(record, indent=1).encode()))
    _save_figure(module.plot(summary), os.path.join(out, f"{name}.png"))
    return record


def _save_figure(figure, path):
    """Write `figure` as PNG atomically, then release it."""
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=150, bbox_inches="tight"))
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:  # figures made with pyplot stay registered until closed
        pyplot.close(figure)
