"""A folder of kernel tiles that proves what it holds: `kernels.batch`'s ``path=``.

Layout of ``path/``:

* ``batch.json`` (the *manifest*): what made the store. The network's fingerprint
  (`kernels.fingerprint`: its layers, parameters and the code and closure values of every
  function inside it, or a string the caller gave as ``fingerprint=``) with its name and
  the Python version (bytecode, hence a computed fingerprint, depends on it); the inputs'
  shapes, dtypes and SHA-256; ``get``; the tile size; every output array's shape and dtype.
  Created once, atomically (a hard link of a complete temporary file: of two processes
  starting together, one creates it and the other compares against it).
* ``<name>.npy`` per requested array (``nngp.npy``, ...), created full size; tiles are
  written into it with ``os.pwrite`` (disjoint bytes per tile, so several processes can
  share one file).
* ``progress.<p>.jsonl`` per process ``p``: one line per finished tile, appended after the
  tile's bytes were ``fsync``-ed, holding a CRC-32 of every region the tile wrote (its block,
  its mirror image below the diagonal, its rows of ``cov1``/``cov2``) and the SHA-256 of
  ``batch.json``, which binds the record to this store: records copied from another store
  (with its array files) are ignored with a warning and their tiles recomputed. A line cut
  short by a kill is ignored (the tile is recomputed).

Opening a store (`TileStore`) checks, in this order, and never trusts what it cannot check:

1. a folder holding tiles or progress records but no manifest, or a manifest of the format
   before fingerprints, is refused: nothing says what made those tiles;
2. a manifest that differs from this run (network, inputs, ``get``, tile size, ...) is
   refused with a ``ValueError`` naming the file and each difference;
3. an array file that is missing, truncated, too long or whose header was overwritten is
   repaired to its full size and header, with a warning naming the file;
4. every tile this process would skip is verified against its recorded checksums; those that
   do not match (bytes changed, or lost with their file) are recomputed, with a warning
   naming the file and the tiles.

Verification reads every finished tile once per run: a store of ``G`` GB costs ``G`` GB of
reading at each resume.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import json
import os
import sys
import tempfile
import warnings
import zlib
from typing import Callable, NamedTuple

import numpy as np

from kernels.tiling import TilePlan

__all__ = ["TileStore", "TileStoreWarning", "Region", "tile_regions", "FORMAT", "ROWS", "COLS", "PAIRS"]

FORMAT = 2  # 1: before fingerprints and checksums (refused)
ROWS, COLS, PAIRS = "rows", "cols", "pairs"
MANIFEST = "batch.json"


class TileStoreWarning(UserWarning):
    """A store was damaged and is being repaired: the message names the file and the tiles."""


class Region(NamedTuple):
    """Part of one output array that one tile fills.

    ``rows``/``cols`` arrays (``cov1``, ``cov2``) use ``r0, rn`` only; ``mirrored``: the
    mirror image of the tile's block, below the diagonal.
    """

    name: str
    r0: int
    rn: int
    c0: int
    cn: int
    mirrored: bool


@dataclasses.dataclass(frozen=True)
class Output:
    """One requested array: ``kind`` (`PAIRS`, `ROWS` or `COLS`), whole ``shape``, ``dtype``, and
    ``full``: whether its trailing axes are position pairs (`kernels.tiling.mirror_axes`)."""

    kind: str
    shape: tuple
    dtype: np.dtype
    full: bool = False


def tile_regions(plan: TilePlan, outputs: dict, i: int, j: int) -> list:
    """The regions tile ``(i, j)`` fills, in one fixed order (that of the recorded checksums)."""
    r0, rn, c0, cn = plan.extent(i, j)
    regions = []
    for name, out in outputs.items():
        if out.kind == PAIRS:
            regions.append(Region(name, r0, rn, c0, cn, False))
            if plan.symmetric and i != j:
                regions.append(Region(name, c0, cn, r0, rn, True))
        elif out.kind == ROWS and (j == i if plan.symmetric else j == 0):
            regions.append(Region(name, r0, rn, 0, 0, False))
        elif out.kind == COLS and (j == i if plan.symmetric else i == 0):
            regions.append(Region(name, c0, cn, 0, 0, False))
    return regions


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def _npy_header(shape: tuple, dtype: np.dtype) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue()


def _create_once(target: str, write: Callable[[str], None]) -> bool:
    """Creates ``target`` unless it exists, atomically and without clobbering a concurrent creator.

    Writes a temporary file and hard-links it to ``target`` (``os.link`` fails if ``target``
    exists). Returns whether this call created it.
    """
    if os.path.exists(target):
        return False
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".tmp-" + os.path.basename(target))
    os.close(fd)
    try:
        write(tmp)
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: a rename, racy only between simultaneous creators
            if os.path.exists(target):
                return False
            os.replace(tmp, target)
            return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _how_to_recompute(path: str) -> str:
    return f"to recompute, delete {path!r} or pass another path"


def _describe_tiles(tiles) -> str:
    tiles = sorted(tiles)
    shown = ", ".join(f"({i}, {j})" for i, j in tiles[:10])
    return shown + (f" and {len(tiles) - 10} more" if len(tiles) > 10 else "")


class TileStore:
    """Finished tiles into ``path/<name>.npy``, verified on reuse (module docstring).

    Args:
      path: the folder.
      plan: the tile plan (grid, extents, symmetry).
      outputs: name -> `Output`, in the order regions are checksummed.
      manifest: what made this run (JSON-able dict; ``format`` is added).
      process_index: this process; it appends to ``progress.<process_index>.jsonl``.
      share: the tiles this process is responsible for (``(T, 2)``); only they are verified.
    """

    def __init__(self, path: str, plan: TilePlan, outputs: dict, manifest: dict, process_index: int,
                 share: np.ndarray):
        self.path, self.plan, self.outputs = path, plan, outputs
        os.makedirs(path, exist_ok=True)
        self._claim(dict(manifest, format=FORMAT))
        with open(os.path.join(path, MANIFEST), "rb") as f:  # what every progress record is bound to
            self.manifest_sha256 = hashlib.sha256(f.read()).hexdigest()
        self.files = {name: self._open_array(name, out) for name, out in outputs.items()}
        self.records = self._read_progress()
        self.done = self._verify(share)
        self.log_file = os.path.join(path, f"progress.{process_index}.jsonl")
        self.log = open(self.log_file, "ab")
        if self.log.tell() and not self._ends_with_newline(self.log_file):
            self._append(b"\n")  # after a line cut short by a kill
        self.pending = []

    # --------------------------------------------------------------------- opening

    def _claim(self, manifest: dict):
        manifest_file = os.path.join(self.path, MANIFEST)
        if not os.path.exists(manifest_file):
            leftovers = sorted(f for f in os.listdir(self.path)
                               if f.startswith("progress.") or f in {f"{n}.npy" for n in ("nngp", "ntk", "cov1", "cov2")})
            if leftovers:
                raise ValueError(f"batch: {self.path!r} holds {', '.join(leftovers)} but no {MANIFEST}, so nothing "
                                 f"says which network and inputs made them; {_how_to_recompute(self.path)}")
        text = json.dumps(manifest, indent=1, sort_keys=True)

        def write_manifest(tmp):
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())

        if _create_once(manifest_file, write_manifest):
            return
        try:
            with open(manifest_file) as f:
                stored = json.load(f)
        except (OSError, ValueError) as error:
            raise ValueError(f"batch: cannot read {manifest_file!r} ({error}); {_how_to_recompute(self.path)}") from None
        if not isinstance(stored, dict) or stored.get("format") != FORMAT:
            version = stored.get("format") if isinstance(stored, dict) else None
            raise ValueError(f"batch: {manifest_file!r} is of store format {version!r}, written before tile stores "
                             f"recorded fingerprints and checksums (this version writes format {FORMAT}), so its "
                             f"tiles cannot be verified; {_how_to_recompute(self.path)}")
        differ = sorted(k for k in set(stored) | set(manifest)
                        if stored.get(k) != manifest.get(k) and k not in ("python", "network_name"))
        if differ:
            details = []
            for k in differ:
                line = f"{k}: stored {stored.get(k)!r}, now {manifest.get(k)!r}"
                if k == "network_sha256":
                    line += (f" (network stored {stored.get('network_name')!r}, now {manifest.get('network_name')!r}; "
                             f"Python stored {stored.get('python')}, now {manifest.get('python')})")
                details.append(line)
            raise ValueError(f"batch: {manifest_file!r} records a run with different arguments ({'; '.join(details)}); "
                             f"{_how_to_recompute(self.path)}")

    def _open_array(self, name: str, out: Output):
        """The file descriptor and data offset of ``path/<name>.npy``, repaired to its full size and header."""
        target = os.path.join(self.path, f"{name}.npy")
        header = _npy_header(out.shape, out.dtype)
        size = len(header) + int(np.prod(out.shape, dtype=np.int64)) * out.dtype.itemsize

        def write_npy(tmp):
            with open(tmp, "wb") as f:
                f.write(header)
                f.truncate(size)  # sparse where the file system allows

        if _create_once(target, write_npy) and self._anything_recorded():
            warnings.warn(f"batch: {target!r} was missing while progress records remain; recreated it, and the "
                          "tiles recorded in it will be recomputed", TileStoreWarning, stacklevel=4)
        fd = os.open(target, os.O_RDWR)
        stored = os.pread(fd, len(header), 0)
        if stored != header:
            os.pwrite(fd, header, 0)
            warnings.warn(f"batch: the header of {target!r} was damaged (expected a {out.dtype} array of shape "
                          f"{out.shape}); rewrote it, and its tiles will be verified", TileStoreWarning, stacklevel=4)
        actual = os.fstat(fd).st_size
        if actual != size:
            os.ftruncate(fd, size)
            warnings.warn(f"batch: {target!r} had {actual} bytes, expected {size} "
                          f"({'truncated' if actual < size else 'extra bytes at the end'}); restored its size, "
                          "and its tiles will be verified", TileStoreWarning, stacklevel=4)
        return fd, len(header)

    def _anything_recorded(self) -> bool:
        return any(os.path.getsize(f) for f in glob.glob(os.path.join(self.path, "progress.*.jsonl")))

    def _read_progress(self) -> dict:
        """tile -> list of recorded checksum lists, from every process's progress file."""
        old = sorted(glob.glob(os.path.join(self.path, "progress.*.npy")))
        if old:
            raise ValueError(f"batch: {old[0]!r} is a progress file of the store format before checksums, so the "
                             f"tiles it records cannot be verified; {_how_to_recompute(self.path)}")
        records = {}
        for log in sorted(glob.glob(os.path.join(self.path, "progress.*.jsonl"))):
            foreign = 0
            try:
                with open(log, "rb") as f:
                    lines = f.read().split(b"\n")
            except OSError as error:
                raise ValueError(f"batch: cannot read {log!r} ({error}); {_how_to_recompute(self.path)}") from None
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    tile = (int(record["tile"][0]), int(record["tile"][1]))
                    crcs = [int(c) for c in record["crc"]]
                    if not (0 <= tile[0] < self.plan.rows and 0 <= tile[1] < self.plan.cols):
                        raise ValueError(f"tile {tile} outside the {self.plan.grid} grid")
                except (ValueError, KeyError, TypeError, IndexError) as error:
                    warnings.warn(f"batch: ignored line {number} of {log!r}, which is not a complete progress record "
                                  f"({error}; an interrupted write?); a tile recorded only there is recomputed",
                                  TileStoreWarning, stacklevel=4)
                    continue
                if record.get("manifest") != self.manifest_sha256:
                    foreign += 1
                    continue
                records.setdefault(tile, []).append(crcs)
            if foreign:
                warnings.warn(f"batch: ignored {foreign} progress records of {log!r} that were not written for this "
                              f"store's {MANIFEST} (copied from another store?); their tiles are recomputed",
                              TileStoreWarning, stacklevel=4)
        return records

    def _verify(self, share: np.ndarray) -> set:
        """The tiles of ``share`` recorded as done whose bytes match their checksums; warns about the others."""
        arrays = {name: np.memmap(os.path.join(self.path, f"{name}.npy"), dtype=out.dtype, mode="r",
                                  offset=self.files[name][1], shape=out.shape)
                  for name, out in self.outputs.items()}
        good, damaged = set(), {}
        for i, j in share:
            tile = (int(i), int(j))
            if tile not in self.records:
                continue
            regions = tile_regions(self.plan, self.outputs, *tile)
            crcs = [_crc(self._region(arrays[r.name], r)) for r in regions]
            if crcs in self.records[tile]:
                good.add(tile)
                continue
            bad = {r.name for k, (r, c) in enumerate(zip(regions, crcs))
                   if not any(len(rec) == len(crcs) and rec[k] == c for rec in self.records[tile])}
            for name in bad or {r.name for r in regions}:
                damaged.setdefault(name, []).append(tile)
        del arrays
        for name, tiles in damaged.items():
            warnings.warn(f"batch: {os.path.join(self.path, name + '.npy')!r}: tiles {_describe_tiles(tiles)} do "
                          "not match their recorded checksums (changed, overwritten or lost); recomputing them",
                          TileStoreWarning, stacklevel=4)
        return good

    def _region(self, array, r: Region):
        out = self.outputs[r.name]
        if out.kind == PAIRS:
            return array[r.r0:r.r0 + r.rn, r.c0:r.c0 + r.cn]
        return array[r.r0:r.r0 + r.rn]

    @staticmethod
    def _ends_with_newline(file: str) -> bool:
        with open(file, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    # --------------------------------------------------------------------- writing

    def is_done(self, tile) -> bool:
        return tile in self.done

    def put(self, region: Region, block: np.ndarray):
        """Writes ``block`` (contiguous, the region's shape) into its array file."""
        fd, offset = self.files[region.name]
        out = self.outputs[region.name]
        if out.kind == PAIRS:
            row = int(np.prod(out.shape[2:], dtype=np.int64)) * out.dtype.itemsize
            flat = block.reshape(block.shape[0], -1)
            for r in range(block.shape[0]):
                self._pwrite(fd, memoryview(flat[r]).cast("B"), offset + ((region.r0 + r) * out.shape[1] + region.c0) * row)
        else:
            row = int(np.prod(out.shape[1:], dtype=np.int64)) * out.dtype.itemsize
            self._pwrite(fd, memoryview(block.reshape(-1)).cast("B"), offset + region.r0 * row)
        self.pending.append((region.name, _crc(block)))

    @staticmethod
    def _pwrite(fd, data: memoryview, offset: int):
        while len(data):
            written = os.pwrite(fd, data, offset)
            data, offset = data[written:], offset + written

    def mark_done(self, tile):
        """Records ``tile`` as finished: its bytes reach the disk before the record that says so."""
        for name in {n for n, _ in self.pending}:
            os.fsync(self.files[name][0])
        record = {"tile": [int(tile[0]), int(tile[1])], "crc": [c for _, c in self.pending],
                  "manifest": self.manifest_sha256}
        self._append(json.dumps(record).encode() + b"\n")
        self.pending = []
        self.done.add(tuple(tile))

    def _append(self, data: bytes):
        self.log.write(data)
        self.log.flush()
        os.fsync(self.log.fileno())

    def close(self):
        for fd, _ in self.files.values():
            os.close(fd)
        self.files = {}
        self.log.close()

    def results(self) -> dict:
        """name -> read-only memmap of the whole array."""
        out = {}
        for name in self.outputs:
            file = os.path.join(self.path, f"{name}.npy")
            try:
                out[name] = np.load(file, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise ValueError(f"batch: cannot read {file!r} ({error}); {_how_to_recompute(self.path)}") from None
        return out


def python_version() -> str:
    """The interpreter version a computed fingerprint depends on (bytecode changes between versions)."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"
