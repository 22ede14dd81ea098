"""A tiny run made once through the command line, whose saved pieces tests re-summarize under a deliberately wrong theory (no re-simulation)."""
import json

from experiments import run_folder
from experiments.__main__ import main


def run_and_read(name, module, out, size="tiny"):
    """Run experiment `name` at `size` into `out`; its record, config and verified saved pieces."""
    assert main(["run", name, "--size", size, "--out", str(out), "--no-progress"]) == 0
    record = json.loads((out / "results.json").read_text())
    fingerprint = run_folder.read_claim(str(out))["fingerprint"]
    config = getattr(module.Config, size)()
    pieces = [run_folder.read_piece(str(out), i, piece, fingerprint)
              for i, piece in enumerate(module.pieces(config))]
    return {"out": out, "record": record, "config": config, "pieces": pieces}


def resummarized(module, run):
    """The agreement entries recomputed from the run's saved pieces (the theory as now patched),
    the summary passed through JSON as `agreement` receives it in a run."""
    summary = json.loads(json.dumps(run_folder.jsonable(module.summarize(run["config"], run["pieces"]))))
    return module.agreement(summary)
