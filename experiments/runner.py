"""Run a named experiment piece by piece: sharded, resumable, crash-safe.

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
    agreement(results)         -> flat dict: name -> number or string, the
                               theory-vs-experiment figures printed at the end.

`plot` and `agreement` receive the summary as JSON returns it (arrays turned
into nested lists), so `plot(load_results(out)["results"])` redraws a figure
from `results.json` alone.

`run` does the pieces `i` with `i % n == shard` (`--shard shard/n`, 0-based,
so a job array of n tasks covers every piece), skipping pieces already saved.
Each finished piece is written at once, atomically (a temporary file in the
same folder, then `os.replace`), to `OUT/pieces/NNNNN.npz`, so a run killed at
any moment loses at most the piece in progress and a rerun redoes only that.
`OUT/run.json` records the experiment, size and config; a folder holding
another config is refused rather than mixed. When every piece is saved (by
this shard or by others), `finish` writes `OUT/results.json` (config, results
and agreement) and the figure `OUT/NAME.png`; `collect` does the same for a
folder filled by several shards.
"""
import dataclasses
import json
import os
import sys

import numpy as np
from tqdm import tqdm

from kernels.files import atomic_write

SIZES = ("tiny", "small", "paper")
RESERVED = "__piece__"


class RunFolderError(ValueError):
    """The out folder holds another run, or is missing pieces to collect."""


def make_config(module, size, seed=None):
    """The experiment's config for `size`, with `seed` replaced when given."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    config = getattr(module.Config, size)()
    if seed is not None:
        if "seed" not in {f.name for f in dataclasses.fields(config)}:
            raise ValueError(f"{module.__name__}.Config has no field 'seed' for --seed")
        config = dataclasses.replace(config, seed=seed)
    return config


def default_out(name):
    """`runs/NAME` under the current working directory."""
    return os.path.join(os.getcwd(), "runs", name)


def run(name, module, size="small", out=None, shard=(0, 1), seed=None, progress=True):
    """Run this shard's unfinished pieces; finish the experiment if all are saved.

    Args:
      name: the experiment's registered name (names the figure file).
      module: the experiment module (see the module docstring).
      size: "tiny", "small" or "paper".
      out: output folder; default `runs/NAME` under the working directory.
      shard: `(index, count)`; this call runs pieces `i` with `i % count == index`.
      seed: replaces `config.seed` when given.
      progress: show a tqdm bar over this shard's pieces.

    Returns:
      The record written to `results.json` if every piece is now saved, else None.
    """
    out = out or default_out(name)
    index, count = shard
    if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}")
    config = make_config(module, size, seed)
    pieces = [tuple(p) for p in module.pieces(config)]
    _claim_folder(out, name, size, config, len(pieces))
    mine = [(i, p) for i, p in enumerate(pieces) if i % count == index]
    todo = [(i, p) for i, p in mine if not os.path.exists(piece_path(out, i))]
    with tqdm(total=len(mine), initial=len(mine) - len(todo), unit="piece",
              desc=f"{name} [{size}] shard {index}/{count}", disable=not progress) as bar:
        for i, piece in todo:
            try:
                result = module.run_piece(config, piece)
            except BaseException:
                print(f"{name}: piece {i} {piece} failed; finished pieces are saved in {out}, "
                      "rerun the same command to resume", file=sys.stderr)
                raise
            _save_piece(out, i, piece, result)
            bar.update(1)
    missing = missing_pieces(out, len(pieces))
    if missing:
        print(f"{name}: {len(pieces) - len(missing)} of {len(pieces)} pieces saved in {out}; "
              f"after the other shards run `widekit collect {name} --out {out}`", file=sys.stderr)
        return None
    return finish(name, module, out, config, size, pieces)


def collect(name, module, out=None):
    """Merge the pieces that shards saved in `out` and finish the experiment.

    The size and seed are read from `out/run.json`. Raises `RunFolderError`
    naming the missing pieces (and the shards that owe them) if any are absent.
    """
    out = out or default_out(name)
    claim = _read_json(os.path.join(out, "run.json"))
    if claim is None:
        raise RunFolderError(f"{out} holds no run of {name} (no run.json)")
    config = make_config(module, claim["size"], claim["config"].get("seed"))
    if _jsonable(dataclasses.asdict(config)) != claim["config"]:
        raise RunFolderError(f"{out}/run.json has a config that {name}'s Config.{claim['size']}() "
                         "no longer produces; rerun the experiment into a new folder")
    pieces = [tuple(p) for p in module.pieces(config)]
    missing = missing_pieces(out, len(pieces))
    if missing:
        raise RunFolderError(
            f"{out}: {len(missing)} of {len(pieces)} pieces missing, e.g. indices {missing[:10]}; "
            f"with --shard I/N, piece i belongs to shard i % N")
    return finish(name, module, out, config, claim["size"], pieces)


def finish(name, module, out, config, size, pieces):
    """Summarize the saved pieces, write results.json and NAME.png, return the record."""
    # plot and agreement see the results as JSON gives them back (lists, not
    # arrays), so a figure can be redrawn from results.json alone.
    results = _jsonable(module.summarize(
        config, [load_piece(out, i, p) for i, p in enumerate(pieces)]))
    record = _jsonable({"experiment": name, "size": size, "config": dataclasses.asdict(config),
                        "results": results, "agreement": module.agreement(results)})
    atomic_write(os.path.join(out, "results.json"),
                  lambda f: f.write(json.dumps(record, indent=1).encode()))
    save_figure(module.plot(results), os.path.join(out, f"{name}.png"))
    return record


def load_results(out):
    """The record that `finish` wrote to `out/results.json`; `["results"]` feeds `plot`."""
    record = _read_json(os.path.join(out, "results.json"))
    if record is None:
        raise RunFolderError(f"{out} holds no results.json yet")
    return record


def save_figure(figure, path):
    """Write `figure` as PNG atomically, then release it."""
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=150, bbox_inches="tight"))
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:  # figures made with pyplot stay registered until closed
        pyplot.close(figure)


def piece_path(out, index):
    return os.path.join(out, "pieces", f"{index:05d}.npz")


def missing_pieces(out, count):
    return [i for i in range(count) if not os.path.exists(piece_path(out, i))]


def load_piece(out, index, piece):
    """The saved result of piece `index` as a dict of NumPy arrays (0-d for numbers)."""
    path = piece_path(out, index)
    with np.load(path, allow_pickle=False) as saved:
        arrays = {key: saved[key] for key in saved.files}
    stored = tuple(json.loads(str(arrays.pop(RESERVED))))
    if stored != tuple(_jsonable(list(piece))):
        raise RunFolderError(f"{path} holds piece {stored}, expected {piece}: a stale folder?")
    return arrays


def _save_piece(out, index, piece, result):
    if not isinstance(result, dict):
        raise TypeError(f"run_piece must return a dict, got {type(result).__name__} for {piece}")
    arrays = {}
    for key, value in result.items():
        if not isinstance(key, str) or key == RESERVED:
            raise ValueError(f"run_piece returned the key {key!r} for {piece}: keys are "
                             f"strings other than {RESERVED!r}")
        arrays[key] = np.asarray(value)
        if arrays[key].dtype == object:
            raise TypeError(f"run_piece returned {key!r} for {piece}, which is not numeric "
                            "or a plain string; return arrays or numbers")
    arrays[RESERVED] = np.asarray(json.dumps(_jsonable(list(piece))))
    atomic_write(piece_path(out, index), lambda f: np.savez(f, **arrays))


def _claim_folder(out, name, size, config, n_pieces):
    """Record what `out` holds; refuse a folder that holds another config."""
    claim = _jsonable({"experiment": name, "size": size,
                       "config": dataclasses.asdict(config), "pieces": n_pieces})
    path = os.path.join(out, "run.json")
    existing = _read_json(path)
    if existing is not None and existing != claim:
        raise RunFolderError(
            f"{out} already holds a run of {existing['experiment']} [{existing['size']}] with "
            f"config {existing['config']}; this run is {name} [{size}] with {claim['config']}. "
            "Use another --out or remove the folder.")
    if existing is None:
        atomic_write(path, lambda f: f.write(json.dumps(claim, indent=1).encode()))


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _jsonable(value):
    """Plain JSON types: tuples and arrays become lists, NumPy scalars numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "__array__"):  # NumPy and JAX arrays
        return _jsonable(np.asarray(value).tolist())
    raise TypeError(f"cannot write {type(value).__name__} to JSON: {value!r}")
