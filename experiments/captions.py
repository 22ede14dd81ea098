"""`figures/README.md`, written from the figures' JSON records, so no caption can go stale.

`widekit collect NAME --figures DIR` copies `NAME.json` and `NAME.png` into DIR
and then calls `write_readme(DIR)`, which rebuilds DIR/README.md from every
record there: per experiment, the figure, the command that regenerates it, the
caption its module's `caption(record)` writes from the numbers in the record,
and the agreement table.
"""
import json
import os

from experiments import agreement, registry
from kernels.files import atomic_write

HEADER = """# Figures

Each figure is drawn by a named experiment (`widekit list`); its JSON holds the
numbers drawn and the agreement with theory. This file is written by
`widekit collect NAME --figures figures` from those JSON files: do not edit it
by hand. The command under each figure regenerates it; every agreement entry
states its criterion (see `experiments/agreement.py`).
"""


def section(name, record):
    """The Markdown section of one experiment's figure, from its record."""
    size = record.get("size", "small")
    lines = [f"## {name}", "", f"![{name}]({name}.png)", "",
             f"`widekit run {name} --size {size} && widekit collect {name} --figures figures`", ""]
    try:
        module = registry.load_experiment(name)
    except (KeyError, ImportError):
        module = None
    caption = getattr(module, "caption", None)
    if caption is not None and isinstance(record.get("agreement"), list):
        lines += [caption(record).strip(), ""]
    elif module is not None and module.__doc__:
        lines += [module.__doc__.strip().split("\n")[0], ""]
    entries = record.get("agreement")
    if isinstance(entries, list) and entries:
        failed = agreement.failures(entries)
        lines += [f"Agreement at `--size {size}`, seed {record.get('config', {}).get('seed')}: "
                  f"{len(entries) - len(failed)} of {len(entries)} entries pass.", ""]
        lines += agreement.markdown(entries) + [""]
    return "\n".join(lines)


def write_readme(folder):
    """Rewrite `folder/README.md` from the records `folder/NAME.json` of registered experiments."""
    sections = []
    for name in registry.EXPERIMENTS:
        path = os.path.join(folder, f"{name}.json")
        if os.path.exists(path):
            with open(path) as file:
                sections.append(section(name, json.load(file)))
    text = HEADER + "\n" + "\n".join(sections)
    atomic_write(os.path.join(folder, "README.md"), lambda f: f.write(text.encode()))
    return text
