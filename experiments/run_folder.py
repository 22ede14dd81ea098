"""A run folder on disk: a claim (`OUT/run.json`) and pieces (`OUT/pieces/NNNNN.npz`) that prove what made them.

The fingerprint of a run is what decides its numbers: the experiment's name, the size and the
full config (every field, the `--seed` override included), as plain JSON; it is compared field
by field, so a refusal says what differs. Its SHA-256 over canonical JSON (sorted keys) is
recorded beside it as a short identity.

* `run.json`: `{"format", "fingerprint", "fingerprint_sha256", "pieces"}`. It is created
  exclusively (written in full to a temporary file, then hard-linked into place, which fails if
  the name exists), so of two runs racing into one folder exactly one claims it and the other
  compares against that claim.
* each piece: the run's arrays plus one entry `__meta__`, a JSON string of the format, the
  fingerprint, the piece itself (e.g. `[width, seed_index]`) and a SHA-256 of the arrays (names,
  dtypes, shapes and bytes). A piece carries its own fingerprint, so it is checked against the
  current config even when `run.json` is gone.

Reading a piece ends in one of three ways: its arrays; `UnusablePiece` (missing, unreadable,
checksum wrong, or holding another piece of the same run: recomputing it is safe, and the caller
says so); or `RunFolderError` (made by another experiment, size or config, or written before
fingerprints were recorded: refused, never overwritten). Every error names the file.
"""
import errno
import hashlib
import json
import os
import tempfile
import zipfile

import numpy as np

from kernels.files import atomic_write

FORMAT = 2  # 1: before fingerprints (run.json without "format", pieces with only "__piece__")
META = "__meta__"
RESERVED = (META, "__piece__")  # "__piece__" marked a piece of format 1
RECOMPUTE = "use another --out, or delete the folder to recompute it"


class RunFolderError(ValueError):
    """The out folder holds another run or an unusable file, or is missing pieces to collect."""


class UnusablePiece(Exception):
    """A piece file that is missing or damaged: recomputing it is safe. The message names the file."""


def run_fingerprint(name, size, config_dict, overrides=None):
    """The JSON-able fingerprint of a run: `{"experiment", "size", "config"}`, plus
    `"overrides"` (the `--set` fields) when there are any."""
    fingerprint = {"experiment": name, "size": size, "config": config_dict}
    if overrides:
        fingerprint["overrides"] = dict(overrides)
    return jsonable(fingerprint)


def fingerprint_sha256(fingerprint):
    """SHA-256 of the fingerprint's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def same_fingerprint(first, second):
    """Whether two fingerprints are equal as canonical JSON (so NaN equals NaN, a tuple its list)."""
    return fingerprint_sha256(first) == fingerprint_sha256(second)


def differences(expected, found):
    """What differs between two fingerprints, as `"seed 0 there, 3 here"` phrases ("there": on disk)."""
    found = found if isinstance(found, dict) else {}
    pairs = [(key, found.get(key), expected.get(key)) for key in ("experiment", "size", "overrides")]
    theirs, ours = found.get("config") or {}, expected.get("config") or {}
    pairs += [(f"config.{key}", theirs.get(key, "(absent)"), ours.get(key, "(absent)"))
              for key in sorted(set(theirs) | set(ours))]
    return ", ".join(f"{key} {there!r} there, {here!r} here"
                     for key, there, here in pairs if there != here) or "nothing"


def piece_path(out, index):
    """`OUT/pieces/NNNNN.npz`."""
    return os.path.join(out, "pieces", f"{index:05d}.npz")


def claim_folder(out, fingerprint, n_pieces):
    """Records in `out/run.json` what the folder holds, atomically; refuses a folder that holds another run.

    Args:
      out: the run folder (created if absent).
      fingerprint: this run's `run_fingerprint`.
      n_pieces: how many pieces the run has.

    Raises:
      RunFolderError: `out` is a file, `run.json` holds another run or an old format or cannot
        be read, or (with no `run.json`) a piece already there was made by another run.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunFolderError(f"{out} is a file, not a folder: use another --out")
    path = os.path.join(out, "run.json")
    claim = {"format": FORMAT, "fingerprint": fingerprint,
             "fingerprint_sha256": fingerprint_sha256(fingerprint), "pieces": n_pieces}
    existing = read_claim(out)
    if existing is None:
        _refuse_foreign_pieces(out, fingerprint)  # run.json deleted: the pieces still say what made them
        os.makedirs(out, exist_ok=True)
        if create_exclusive(path, json.dumps(claim, indent=1).encode()):
            return
        existing = read_claim(out)  # another run claimed the folder first
    found = existing["fingerprint"]
    what = [] if same_fingerprint(found, fingerprint) else [differences(fingerprint, found)]
    if existing["pieces"] != n_pieces:  # same config, but the experiment's code splits it otherwise
        what.append(f"pieces {existing['pieces']} there, {n_pieces} here")
    if what:
        raise RunFolderError(
            f"{path}: {out} already holds a run of {found.get('experiment')} [{found.get('size')}] "
            f"that differs from this one ({'; '.join(what)}). {RECOMPUTE.capitalize()}.")


def read_claim(out):
    """The checked content of `out/run.json`, or None if there is none.

    Raises:
      RunFolderError: naming the file, if it cannot be read or is from before fingerprints.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunFolderError(f"{out} is a file, not a folder: use another --out")
    path = os.path.join(out, "run.json")
    claim = read_json(path)
    if claim is None:
        return None
    if not isinstance(claim, dict) or "format" not in claim:
        raise RunFolderError(f"{path} was written before run folders recorded fingerprints, so "
                             f"its pieces cannot be verified: {RECOMPUTE}")
    if claim["format"] != FORMAT:
        raise RunFolderError(f"{path} has format {claim['format']!r} (this widekit reads {FORMAT}): "
                             f"{RECOMPUTE}")
    if not isinstance(claim.get("fingerprint"), dict) or not isinstance(claim.get("pieces"), int):
        raise RunFolderError(f"{path} is damaged (no fingerprint or piece count); delete it and "
                             "rerun to claim the folder again (the pieces carry their own fingerprints)")
    return claim


def create_exclusive(path, data):
    """Writes `data` to `path` only if nothing is there; returns whether this call created it.

    The content is written to a temporary file first and hard-linked to `path` (`link` fails if
    `path` exists), so no reader ever sees a half-written file. Where the file system has no
    hard links, `O_CREAT | O_EXCL` creates it (exclusive too, but a reader may see it partial).
    """
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path) or ".",
                                         prefix="." + os.path.basename(path), suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        return _create_exclusive_without_link(path, data)
    finally:
        os.remove(temporary)


def _create_exclusive_without_link(path, data):
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(handle, "wb") as f:
        f.write(data)
    return True


def save_piece(out, index, piece, arrays, fingerprint):
    """Writes piece `index` atomically with its fingerprint and the checksum of `arrays` (name -> array)."""
    meta = {"format": FORMAT, "fingerprint": fingerprint, "piece": jsonable(list(piece)),
            "sha256": arrays_sha256(arrays)}
    stored = dict(arrays, **{META: np.asarray(json.dumps(meta))})
    atomic_write(piece_path(out, index), lambda f: _write_npz(f, stored))


def _write_npz(file, arrays):
    """What `np.savez(file, **arrays)` writes, without its keyword arguments swallowing a key such as
    `allow_pickle` or `file`."""
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            with archive.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


def read_piece(out, index, piece, fingerprint):
    """The verified arrays of piece `index` (name -> NumPy array, 0-d for numbers).

    Raises:
      UnusablePiece: the file is missing or damaged, or holds another piece of this run.
      RunFolderError: the file was made by another run, or before fingerprints were recorded.
    """
    path = piece_path(out, index)
    arrays = _load_npz(path)
    meta = _checked_meta(path, arrays, fingerprint)
    if fingerprint_sha256(meta["piece"]) != fingerprint_sha256(jsonable(list(piece))):  # NaN == NaN
        raise UnusablePiece(f"{path} holds piece {meta['piece']}, not piece {index} {list(piece)}")
    if meta["sha256"] != arrays_sha256(arrays):
        raise UnusablePiece(f"{path} is damaged: its arrays do not match the checksum recorded "
                            "when it was written")
    return arrays


def arrays_sha256(arrays):
    """SHA-256 over each array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.asarray(arrays[key])
        digest.update(json.dumps([key, array.dtype.str, list(array.shape)]).encode())
        digest.update(array.tobytes(order="C"))
    return digest.hexdigest()


def _refuse_foreign_pieces(out, fingerprint):
    """Refuses pieces already in `out` that another run (or an old format) made; damaged ones are left for later."""
    folder = os.path.join(out, "pieces")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".npz")) if os.path.isdir(folder) else []
    for name in names:
        path = os.path.join(folder, name)
        try:
            _checked_meta(path, _load_npz(path, only=RESERVED), fingerprint)
        except UnusablePiece:
            pass


def _checked_meta(path, arrays, fingerprint):
    """The piece's parsed `__meta__` (popped from `arrays`), its format and fingerprint checked against `fingerprint`."""
    if META not in arrays:
        if "__piece__" in arrays:
            raise RunFolderError(f"{path} was written before pieces recorded fingerprints, so it "
                                 f"cannot be verified: {RECOMPUTE}")
        raise UnusablePiece(f"{path} is not a piece of a run (no {META} entry)")
    try:
        meta = json.loads(str(arrays.pop(META)))
        fields = (meta["format"], meta["fingerprint"], meta["piece"], meta["sha256"])
    except (ValueError, TypeError, KeyError) as error:
        raise UnusablePiece(f"{path} is damaged: its {META} cannot be read ({error!r})") from None
    if fields[0] != FORMAT:
        raise RunFolderError(f"{path} has format {fields[0]!r} (this widekit reads {FORMAT}): {RECOMPUTE}")
    if not same_fingerprint(fields[1], fingerprint):
        raise RunFolderError(f"{path} was made by another run ({differences(fingerprint, fields[1])}): "
                             f"{RECOMPUTE}")
    return meta


def _load_npz(path, only=None):
    """The arrays of an .npz file (or only its entries named in `only`); UnusablePiece naming the file if unreadable."""
    if not os.path.exists(path):
        raise UnusablePiece(f"{path} is missing")
    if not zipfile.is_zipfile(path):  # truncated, emptied or overwritten: NumPy would say "pickled data"
        raise UnusablePiece(f"{path} is damaged: not a complete .npz (zip) archive")
    try:
        with np.load(path, allow_pickle=False) as saved:
            keys = saved.files if only is None else [k for k in saved.files if k in only]
            return {key: saved[key] for key in keys}
    except Exception as error:  # BadZipFile (a CRC), EOFError, zlib.error, a bad .npy header, ...
        raise UnusablePiece(f"{path} is damaged: cannot be read ({type(error).__name__}: {error})") from None


def read_json(path):
    """The JSON in `path`, or None if there is no such file; RunFolderError naming the file if unreadable.

    NotADirectoryError (a folder above `path` is a file) is raised as is, for the caller to name its path.
    """
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode())
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise  # a folder above `path` is a file: the caller's path is wrong, not the file damaged
    except (ValueError, OSError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RunFolderError(f"{path} cannot be read ({type(error).__name__}: {error}); "
                             "delete it and rerun to write it again") from None


def jsonable(value):
    """Plain JSON types: tuples and arrays become lists, NumPy scalars numbers."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "__array__"):  # NumPy and JAX arrays
        return jsonable(np.asarray(value).tolist())
    raise TypeError(f"cannot write {type(value).__name__} to JSON: {value!r}")
