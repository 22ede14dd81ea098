#!/usr/bin/env bash
# Create (idempotently) the reference environment: neural-tangents 0.6.5 on
# jax 0.4.30 (CPU), the last combination on which neural-tangents runs.  It is
# kept in its own virtual environment because neural-tangents does not import
# on current JAX; never install it into the main environment.
#
# Usage:  bash experiments/benchmarks/reference_env.sh [VENV_DIR]
#         (VENV_DIR defaults to .venv-nt/ in the repository root;
#          PYTHON=python3.11 picks the interpreter, 3.9-3.12 work)
#
# Why each pin:
#   jax[cpu]==0.4.30, neural-tangents==0.6.5   the reference pair.
#   scipy<1.14        jax 0.4.30 imports scipy names that 1.14 removed.
#   numpy<2           tensorflow 2.17 (below) is built against numpy 1.x.
#   tensorflow-cpu    `import neural_tangents` imports its `experimental`
#     <2.18, tf2jax   package, which imports tensorflow, tf2jax and
#                     jax.experimental.jax2tf at import time.  The CPU wheel is
#                     a third of the size of `tensorflow`; 2.17 is the last
#                     release whose ml_dtypes (<0.5) and numpy (<2) pins agree
#                     with jax 0.4.30.
#   --no-deps         neural-tangents and tf2jax declare `tensorflow` (the GPU
#                     wheel) as a requirement; tensorflow-cpu provides the same
#                     module, so they are installed without their declared
#                     requirements (which are all installed explicitly here).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${1:-$repo_root/.venv-nt}"
python="${PYTHON:-python3}"

check_imports() {
  "$venv/bin/python" - <<'EOF'
import jax, neural_tangents, scipy, numpy
assert jax.__version__ == "0.4.30", jax.__version__
assert neural_tangents.__version__ == "0.6.5", neural_tangents.__version__
print(f"reference env OK: jax {jax.__version__}, neural-tangents "
      f"{neural_tangents.__version__}, numpy {numpy.__version__}, "
      f"scipy {scipy.__version__}")
EOF
}

if [[ -x "$venv/bin/python" ]] && check_imports 2>/dev/null; then
  echo "reference env already present at $venv"
else
  if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet \
    "jax[cpu]==0.4.30" "jaxlib==0.4.30" "scipy<1.14" "numpy<2" \
    "frozendict>=2.3.8" "tensorflow-cpu>=2.15,<2.18" \
    "absl-py" "dm-tree>=0.1.5"
  "$venv/bin/python" -m pip install --quiet --no-deps \
    "neural-tangents==0.6.5" "tf2jax==0.3.6"
  check_imports
fi

# neural-tangents' example programs (experiments/benchmarks/nt_examples/run.py reads them from
# its source distribution; they are not part of this repository).
if [[ ! -d "$venv/src/neural-tangents-0.6.5/examples" ]]; then
  mkdir -p "$venv/src"
  "$venv/bin/python" -m pip download --quiet --no-deps --no-binary :all: \
    "neural-tangents==0.6.5" -d "$venv/src"
  tar -xzf "$venv/src/neural-tangents-0.6.5.tar.gz" -C "$venv/src"
fi

cat <<EOF

Use it with its own python (it does not need activating):
  $venv/bin/python experiments/benchmarks/generate_reference.py
or activate it in a shell:
  source $venv/bin/activate
Keep JAX on CPU and quiet TensorFlow's start-up logs with
  JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=3
EOF
