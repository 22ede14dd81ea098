"""Command line: `widekit` (or `python -m experiments`).

    widekit list
    widekit run NAME [--size tiny|small|paper] [--out DIR] [--shard I/N] [--seed S]
                     [--set KEY=VALUE ...] [--strict]
    widekit collect NAME [--out DIR] [--figures DIR] [--strict]
    widekit kernel --network SPEC.json --data DATA.npz --out DIR [--get nngp,ntk]
                   [--batch-size B] [--x-key KEY] [--x2-key KEY] [--regression nngp|ntk ...]
                   [--distributed [--coordinator HOST:PORT --num-processes N --process-id I]
                    | --process-index I --process-count N]

`run` defaults to `--size small` and `--out runs/NAME` under the working
directory; `--shard I/N` (0 <= I < N) runs every N-th piece starting at I, so
the tasks 0..N-1 of a scheduler's job array split one sweep. Rerunning skips
saved pieces after verifying them: damaged ones are recomputed (and named), a
folder or piece of another run is refused. `--seed S` takes 0 <= S < 2**32;
every argument is checked before the folder is touched. When all pieces are saved, the results JSON and figure PNG are
written to the out folder and the agreement with theory is printed as a
table; with `--strict` the exit status is 1 when any entry failed.
`--set KEY=VALUE` (repeatable) replaces a field of the size's config; VALUE is
read as JSON (`--set 'widths=[64,256]'`, `--set learning_rate=0.5`), or as a
plain string when it is not JSON, and checked against the field's type; the
overrides are recorded in `run.json`, and `collect` rebuilds the config from them.
`collect --figures DIR` also copies them to `DIR/NAME.json` and `DIR/NAME.png`
(e.g. the committed `figures/`, which nothing else writes) and rewrites
`DIR/README.md` from every `DIR/*.json`: captions come from the numbers, so
they cannot go stale.
`kernel` computes a kernel matrix into a resumable tile store, split over the
processes of `jax.distributed` or over a job array's tasks (`experiments.kernel_job`).
"""
import argparse
import json
import os
import shutil
import sys

from experiments import agreement, captions, kernel_job, registry, runner


def _shard(text):
    """`--shard I/N` as `(I, N)`, checked by `runner.check_shard`."""
    try:
        return runner.check_shard("--shard", tuple(int(part) for part in text.split("/")))
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(
            f"expected I/N with integers 0 <= I < N, such as 0/4; received {text!r}") from None


def _seed(text):
    """`--seed S` as an int, checked by `runner.check_seed`."""
    try:
        return runner.check_seed("--seed", int(text))
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(
            f"expected an integer 0 <= S < 2**32; received {text!r}") from None


def _override(text):
    """`--set KEY=VALUE` as `(KEY, value)`: VALUE read as JSON, else kept as a string."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, such as widths=[64,256]; received {text!r}")
    try:
        value = json.loads(value)
    except json.JSONDecodeError:
        pass  # a bare word such as `activation=relu`
    return key.strip(), value


def _folder(text):
    """A folder path given on the command line: not empty (an empty one would silently mean the default)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a folder path; received an empty string")
    return text


def _dash_values_attached(argv):
    """`--shard -1/2` as `--shard=-1/2`, so that argparse hands a value that starts with '-' to its
    check (it would otherwise read it as an option and say only "expected one argument")."""
    argv, joined = list(argv), []
    while argv:
        token = argv.pop(0)
        if token in ("--shard", "--seed", "--set") and argv and argv[0].startswith("-"):
            token = f"{token}={argv.pop(0)}"
        joined.append(token)
    return joined


def _parser():
    parser = argparse.ArgumentParser(
        prog="widekit", description="Wide finite networks held against their infinite-width theory.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the named experiments")
    run = commands.add_parser("run", help="run an experiment (or one shard of it)")
    run.add_argument("name")
    run.add_argument("--size", choices=runner.SIZES, default="small")
    run.add_argument("--out", type=_folder, help="output folder (default: runs/NAME)")
    run.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                     help="run pieces i with i %% N == I (default 0/1: all)")
    run.add_argument("--seed", type=_seed, metavar="S",
                     help="replace the config's base seed (0 <= S < 2**32)")
    run.add_argument("--set", type=_override, action="append", default=[], metavar="KEY=VALUE",
                     dest="overrides", help="replace a config field (VALUE as JSON); repeatable")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument("--strict", action="store_true",
                     help="exit with status 1 when an agreement entry fails")
    collect = commands.add_parser("collect", help="merge shards, write results and figure")
    collect.add_argument("name")
    collect.add_argument("--out", type=_folder, help="output folder (default: runs/NAME)")
    collect.add_argument("--figures", type=_folder,
                         help="also copy NAME.png and NAME.json here and rewrite its README.md")
    collect.add_argument("--strict", action="store_true",
                         help="exit with status 1 when an agreement entry fails")
    kernel_job.add_arguments(commands.add_parser(
        "kernel", help="a network's kernel on an .npz of inputs, tile by tile, by one process or many"))
    return parser


def _path_error(option, path, error):
    """One line on stderr naming `option`, its `path` and what failed there; the exit status 2."""
    where = f" ({error.filename})" if error.filename and os.fspath(error.filename) != os.fspath(path) else ""
    reason = error.strerror or str(error)
    print(f"widekit: {option} {path}: cannot be used{where}: {reason}", file=sys.stderr)
    return 2


def _print_record(record, out, name):
    print(f"{name} [{record['size']}]: results in {os.path.join(out, 'results.json')}, "
          f"figure in {os.path.join(out, name + '.png')}")
    entries = record["agreement"]
    failed = agreement.failures(entries)
    print(f"agreement with theory: {len(entries) - len(failed)} of {len(entries)} entries pass"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    for line in agreement.table(entries):
        print("  " + line)
    return failed


def main(argv=None):
    """Entry point of the `widekit` console script; returns the exit status."""
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window

    args = _parser().parse_args(_dash_values_attached(sys.argv[1:] if argv is None else argv))
    if args.command == "list":
        if not registry.EXPERIMENTS:
            print("no experiments registered")
        for name in sorted(registry.EXPERIMENTS):
            print(f"{name:24s} {registry.describe(name)}")
        return 0
    if args.command == "kernel":
        return kernel_job.main(args)
    try:
        module = registry.load_experiment(args.name)
    except KeyError as error:
        print(f"widekit: {error.args[0]}", file=sys.stderr)
        return 2
    out = runner.default_out(args.name) if args.out is None else args.out
    try:
        if args.command == "run":
            overrides = dict(args.overrides)
            if len(overrides) < len(args.overrides):
                print("widekit: --set names a field twice", file=sys.stderr)
                return 2
            record = runner.run(args.name, module, size=args.size, out=out, shard=args.shard,
                                seed=args.seed, progress=not args.no_progress, overrides=overrides)
        else:
            record = runner.collect(args.name, module, out=out)
    except runner.RunFolderError as error:
        print(f"widekit: {error}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as error:
        if args.command == "run" and args.overrides and "--set" in str(error):
            print(f"widekit: {error}", file=sys.stderr)  # a refused override, before any file
            return 2
        raise
    except OSError as error:
        return _path_error("--out", out, error)
    if args.command == "collect" and args.figures:
        if os.path.exists(args.figures) and not os.path.isdir(args.figures):
            print(f"widekit: --figures {args.figures} is a file, not a folder: give a folder", file=sys.stderr)
            return 2
        try:
            os.makedirs(args.figures, exist_ok=True)
            shutil.copyfile(os.path.join(out, "results.json"),
                            os.path.join(args.figures, f"{args.name}.json"))
            shutil.copyfile(os.path.join(out, f"{args.name}.png"),
                            os.path.join(args.figures, f"{args.name}.png"))
            captions.write_readme(args.figures)
        except OSError as error:
            return _path_error("--figures", args.figures, error)
    if record is not None:
        failed = _print_record(record, out, args.name)
        if args.strict and failed:
            print(f"widekit: --strict: {len(failed)} agreement entries failed", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
