#!/usr/bin/env bash
# Type-check edgekit's TensorRT builder against NVIDIA's Python API, without TensorRT.
#
#   tools/tensorrt_stubs.sh WORKDIR [FILE ...]     (default FILE: edgekit/engine.py)
#
# TensorRT cannot be installed on a machine without an NVIDIA GPU, but its API is published
# as type stubs (the `tensorrt-stubs` package on PyPI, generated from the pybind11 module).
# This script, run from the repository root:
#   1. downloads tensorrt-stubs (no dependencies) into WORKDIR/dl and unpacks it into
#      WORKDIR/stubs; nothing is installed into the project's environment;
#   2. applies the three mechanical fixes the generated .pyi files need before mypy can
#      read them (they are pybind11 signatures, not always valid Python):
#        - parameters named `in` (a keyword) are renamed `in_`;
#        - `add_scale_nd(..., power: Weights = None, channel_axis: int)` puts a parameter
#          without a default after defaults: `channel_axis` gets `= ...`;
#        - `import tensorrt_libs` (the wheel's shared-library package, no stubs) is removed;
#   3. installs mypy into WORKDIR/site when the Python running this has none;
#   4. runs mypy --strict on FILE(s) with the stubs on its path and `ignore_errors` for the
#      stub modules themselves. Exit status: mypy's (0 clean, 1 type errors); 3 when the
#      stubs or mypy could not be downloaded (the message says why).
#
# Environment: PYTHON (default: .venv/bin/python, else python3), TENSORRT_STUBS_VERSION,
# MYPY_VERSION (the versions the patches were written against).
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 WORKDIR [FILE ...]" >&2
    exit 2
fi
WORK=$(mkdir -p "$1" && cd "$1" && pwd)
shift
FILES=("$@")
[[ ${#FILES[@]} -eq 0 ]] && FILES=(edgekit/engine.py)
REPO=$(pwd)
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
STUBS_VERSION=${TENSORRT_STUBS_VERSION:-10.13.0.35.1}
MYPY_VERSION=${MYPY_VERSION:-2.4.1}

if [[ ! -f "$WORK/stubs/.patched" ]]; then
    rm -rf "$WORK/dl" "$WORK/stubs"
    if ! "$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check \
            "tensorrt-stubs==$STUBS_VERSION" -d "$WORK/dl" >"$WORK/pip.log" 2>&1; then
        echo "could not download tensorrt-stubs==$STUBS_VERSION:" >&2
        tail -n 5 "$WORK/pip.log" >&2
        exit 3
    fi
    "$PYTHON" -m zipfile -e "$WORK"/dl/tensorrt_stubs-*.whl "$WORK/stubs"
    "$PYTHON" - "$WORK/stubs" <<'EOF'
import re
import sys
from pathlib import Path

root = Path(sys.argv[1])
keyword_param = re.compile(r"(?<=[(,] )in(?=: )|(?<=\()in(?=: )")
changed = {"in": 0, "add_scale_nd": 0, "tensorrt_libs": 0}
for path in root.rglob("*.pyi"):
    lines = []
    for line in path.read_text().splitlines(keepends=True):
        if line.lstrip().startswith("def "):
            line, n = keyword_param.subn("in_", line)
            changed["in"] += n
            if "def add_scale_nd(" in line and "channel_axis: int)" in line:
                line = line.replace("channel_axis: int)", "channel_axis: int = ...)")
                changed["add_scale_nd"] += 1
        if line.strip() == "import tensorrt_libs as tensorrt_libs":
            changed["tensorrt_libs"] += 1
            continue
        lines.append(line)
    path.write_text("".join(lines))
missing = [k for k, n in changed.items() if n == 0]
if missing:  # the stubs changed: the patches no longer match what they were written for
    sys.exit(f"patches did not apply: {', '.join(missing)} ({changed})")
print(f"patched tensorrt-stubs: {changed}")
EOF
    touch "$WORK/stubs/.patched"
fi

if "$PYTHON" -c "import mypy" 2>/dev/null; then
    MYPY=("$PYTHON" -m mypy)
else
    if [[ ! -d "$WORK/site/mypy" ]]; then
        if ! "$PYTHON" -m pip install --quiet --disable-pip-version-check --target "$WORK/site" \
                "mypy==$MYPY_VERSION" >"$WORK/pip-mypy.log" 2>&1; then
            echo "could not install mypy==$MYPY_VERSION into $WORK/site:" >&2
            tail -n 5 "$WORK/pip-mypy.log" >&2
            exit 3
        fi
    fi
    MYPY=(env "PYTHONPATH=$WORK/site" "$PYTHON" -m mypy)
fi

cat >"$WORK/mypy.ini" <<EOF
[mypy]
python_version = 3.11
mypy_path = $WORK/stubs:$REPO
strict = True
warn_unused_ignores = True
follow_imports = silent
cache_dir = $WORK/mypy_cache

[mypy-tensorrt.*,tensorrt_bindings.*]
ignore_errors = True

# edgekit.calib/exporters/runtimes live in calib/, exporters/, runtimes/ (setuptools package-dir),
# which mypy cannot map; what is checked here is the TensorRT calls.
[mypy-edgekit.calib.*,edgekit.exporters.*,edgekit.runtimes.*]
ignore_missing_imports = True
EOF

exec "${MYPY[@]}" --config-file "$WORK/mypy.ini" --python-executable "$PYTHON" "${FILES[@]}"
