#!/usr/bin/env bash
# The Raspberry Pi check: the board SDK runs real bundles on an emulated arm64 Debian.
#
#   tools/board_check_arm64.sh [--cache DIR] [--bundles DIR] [--out DIR]
#
# Run from the repository root on an x86-64 Linux machine with apt-get and dpkg-deb (any
# user: nothing is installed into the system, so root is not needed). Steps:
#   1. an arm64 Python 3.11 root, the userland of Raspberry Pi OS Bookworm (64-bit): the arm64
#      packages of Debian 12 (python3.11-minimal, libpython3.11-stdlib, libc6 and the libraries
#      they need) fetched with `apt-get download` through a private apt configuration (its own
#      sources list, state and cache under --cache, architectures arm64 + amd64: the host's
#      dpkg and sources stay as they are) and unpacked with `dpkg-deb -x`; qemu-aarch64-static
#      unpacked the same way from Debian's qemu-user-static. No image, chroot or binfmt.
#   2. the aarch64 wheels of the board install: edgekit's wheel built from this checkout, and
#      `edgekit[tflite,onnxruntime]` resolved by the host pip for manylinux aarch64 / CPython 3.11
#      (`--only-binary=:all: --platform ... --target`, pinned by constraints.txt). The step fails
#      when the resolution pulls torch or any other host-side toolchain: that is what
#      `pip install "edgekit[tflite]"` does on a Pi.
#   3. the bundles: --bundles, or exported now into OUT/bundles by tools/make_board_bundles.py
#      (needs torch: run it with the project's venv).
#   4. tools/board_predict.py under `qemu-aarch64-static -cpu cortex-a72 -L ROOT` (a Pi 4's CPU)
#      -> OUT/arm64.json; the same script on the host -> OUT/x86.json; then
#      `board_predict.py compare` -> OUT/agreement.json. Exit status: compare's (0 agree,
#      1 disagree); 2 usage; 3 this machine cannot run the check (not x86-64 Linux, no apt-get
#      or dpkg-deb); 4 a step failed (the end of its log is printed).
# Steps 1-2 are cached in --cache (default build/board-arm64) and redone when their inputs
# change; OUT/timings.json says how long each step took and whether it was cached.
#
# Environment: PYTHON (host Python with pip and, for step 3, torch; default .venv/bin/python,
# else python3), QEMU_CPU (cortex-a72, the default: Pi 4; cortex-a76: Pi 5), BOARD_RUNS (timed predictions per image, default 1),
# BOARD_THREADS (engine threads, default 1), DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR (default
# deb.debian.org), PIP_* as usual.
set -euo pipefail
trap 'echo "board check: failed at line $LINENO: $BASH_COMMAND" >&2; exit 4' ERR

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

CACHE=build/board-arm64
BUNDLES=
OUT=
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cache) CACHE=$2; shift 2 ;;
        --bundles) BUNDLES=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "unknown argument '$1'" >&2; usage ;;
    esac
done

if [[ "$(uname -s)" != Linux || "$(uname -m)" != x86_64 ]]; then
    echo "board check: needs x86-64 Linux (it unpacks Debian's amd64 qemu-user-static); this is $(uname -sm)" >&2
    exit 3
fi
for tool in apt-get dpkg-deb; do
    if ! command -v "$tool" >/dev/null; then
        echo "board check: needs $tool (Debian or Ubuntu) to fetch the arm64 packages; it is not installed" >&2
        exit 3
    fi
done

REPO=$(pwd)
if [[ ! -f "$REPO/tools/board_predict.py" ]]; then
    echo "board check: run it from the repository root (tools/board_predict.py not found)" >&2
    exit 2
fi
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
[[ "$PYTHON" == */* ]] && PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
OUT=${OUT:-$CACHE/run}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec 9>"$CACHE/.lock"
flock 9  # one run per cache at a time

# The board: Raspberry Pi OS Bookworm is Debian 12 (glibc 2.36, Python 3.11), whatever the host runs.
SUITE=bookworm
PY_VERSION=3.11
GLIBC_MINOR=36
QEMU_CPU=${QEMU_CPU:-cortex-a72}
# The emulated CPU as /proc/cpuinfo describes it on the board: variant, part, revision (MIDR) and features.
case "$QEMU_CPU" in
    cortex-a72) MIDR=(0x0 0xd08 3); FEATURES="fp asimd evtstrm crc32 cpuid" ;;  # Raspberry Pi 4 (BCM2711)
    cortex-a76) MIDR=(0x4 0xd0b 1)  # Raspberry Pi 5 (BCM2712)
        FEATURES="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
    *) echo "board check: QEMU_CPU is cortex-a72 (Raspberry Pi 4) or cortex-a76 (Raspberry Pi 5), not '$QEMU_CPU'" >&2
       exit 2 ;;
esac
ROOT_PACKAGES=(
    # the interpreter and its standard library
    python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
    # C and C++ runtimes: the interpreter and the wheels' native code (numpy, LiteRT, onnxruntime)
    libc6 libgcc-s1 libstdc++6
    # what the standard library's extension modules link (zlib, pyexpat, hashlib, ctypes, bz2, lzma, uuid, crypt)
    zlib1g libexpat1 libssl3 libffi8 libbz2-1.0 liblzma5 libuuid1 libcrypt1
)
# Forbidden on the board: the host-side toolchain (DESIGN.md: `edgekit[tflite]` on a Pi pulls no torch).
FORBIDDEN='^(torch|torchvision|onnx|onnxscript|onnxslim|onnxsim|litert_torch|ai_edge_quantizer|jax|jaxlib|tensorflow|nvidia_.*)$'

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
run_logged() {  # run_logged LOG CMD...: keep the output, show its tail when the command fails
    local log=$1; shift
    if ! "$@" >"$log" 2>&1; then
        echo "board check: '$*' failed; last lines of $log:" >&2
        tail -n 25 "$log" >&2
        exit 4
    fi
}
key_of() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }

# ------------------------------------------------------------------ 1. arm64 root + qemu
start=$(now)
ROOT=$CACHE/root
APT=$CACHE/apt
ROOT_KEY=$(key_of "$SUITE" "${ROOT_PACKAGES[@]}" "${DEBIAN_MIRROR:-}")
root_cached=true
if [[ "$(cat "$ROOT/.key" 2>/dev/null)" != "$ROOT_KEY" || ! -x "$CACHE/qemu-aarch64-static" ]]; then
    root_cached=false
    KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
    if [[ ! -f $KEYRING ]]; then
        echo "board check: $KEYRING is missing (apt-get install debian-archive-keyring)" >&2
        exit 4
    fi
    rm -rf "$APT" "$ROOT" "$ROOT.tmp"
    mkdir -p "$APT"/{lists/partial,cache/archives/partial,etc,debs} "$ROOT.tmp"
    : >"$APT/status"
    mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
    cat >"$APT/etc/sources.list" <<EOF
deb [arch=arm64,amd64 signed-by=$KEYRING] $mirror $SUITE main
deb [arch=arm64,amd64 signed-by=$KEYRING] $mirror $SUITE-updates main
deb [arch=arm64,amd64 signed-by=$KEYRING] $security $SUITE-security main
EOF
    APT_OPTS=(-o "Dir::State::Lists=$APT/lists" -o "Dir::State::status=$APT/status" -o "Dir::Cache=$APT/cache"
              -o "Dir::Etc::SourceList=$APT/etc/sources.list" -o "Dir::Etc::SourceParts=$APT/etc"
              -o "Dir::Etc::Preferences=$APT/etc/none" -o "Dir::Etc::PreferencesParts=$APT/etc"
              -o "APT::Architecture=arm64" -o "APT::Architectures::=arm64" -o "APT::Architectures::=amd64"
              -o "Debug::NoLocking=1")
    # As root apt drops to the _apt user to download, who cannot write into a user's folder.
    [[ $(id -u) -eq 0 ]] && APT_OPTS+=(-o "APT::Sandbox::User=root")
    run_logged "$APT/update.log" apt-get "${APT_OPTS[@]}" update
    (cd "$APT/debs" && run_logged "$APT/download.log" apt-get "${APT_OPTS[@]}" download \
        "${ROOT_PACKAGES[@]}" qemu-user-static:amd64)
    for deb in "$APT"/debs/*_arm64.deb; do
        dpkg-deb -x "$deb" "$ROOT.tmp"
    done
    dpkg-deb --fsys-tarfile "$APT"/debs/qemu-user-static_*_amd64.deb \
        | tar -xO ./usr/bin/qemu-aarch64-static >"$CACHE/qemu-aarch64-static"
    chmod +x "$CACHE/qemu-aarch64-static"
    rm -rf "$APT/debs" "$APT/cache" "$APT/lists"  # the unpacked root is the cache (.debs and lists: 110 MB)
    echo "$ROOT_KEY" >"$ROOT.tmp/.key"
    mv "$ROOT.tmp" "$ROOT"
fi
QEMU=("$CACHE/qemu-aarch64-static" -cpu "$QEMU_CPU" -L "$ROOT")

# Under qemu-user /proc/cpuinfo is the x86 host's. onnxruntime's CPU detection (pytorch/cpuinfo)
# reads the ARM MIDR fields from it and crashes (SIGSEGV at import) when they are missing; qemu's
# -L prefix serves ROOT/proc/cpuinfo instead, written here for the emulated CPU (one entry per
# possible CPU of the host, as /sys reports them). Its Model line says it is an emulation.
ncpu=$(tr ',-' '\n\n' </sys/devices/system/cpu/possible | sort -n | tail -n 1)
mkdir -p "$ROOT/proc"
for ((i = 0; i <= ncpu; i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' "$i" "$FEATURES"
    printf 'CPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' "${MIDR[@]}"
done >"$ROOT/proc/cpuinfo"
printf 'Model\t\t: QEMU user-mode emulation of a %s (edgekit board check)\n' "$QEMU_CPU" >>"$ROOT/proc/cpuinfo"

arm_python() {  # the arm64 interpreter, seeing only the wheels of step 2
    env -u PYTHONHOME -u PYTHONSTARTUP -u VIRTUAL_ENV PYTHONNOUSERSITE=1 PYTHONPATH="$CACHE/edgekit:$CACHE/site" \
        "${QEMU[@]}" "$ROOT/usr/bin/python$PY_VERSION" "$@"
}
machine=$(arm_python -c 'import platform; print(platform.machine())' 2>&1) || true
if [[ "$machine" != aarch64 ]]; then
    echo "board check: the arm64 Python in $ROOT does not run under qemu: $machine" >&2
    exit 4
fi
root_s=$(since "$start")
echo "arm64 root: $ROOT (python$PY_VERSION, $QEMU_CPU; ${root_s} s, cached: $root_cached)"

# ------------------------------------------------------------------ 2. aarch64 wheels
start=$(now)
PLATFORMS=()
for ((m = GLIBC_MINOR; m >= 17; m--)); do PLATFORMS+=(--platform "manylinux_2_${m}_aarch64"); done
PLATFORMS+=(--platform manylinux2014_aarch64)
PIP_TARGET_OPTS=(--only-binary=:all: "${PLATFORMS[@]}" --python-version "$PY_VERSION" --implementation cp)

# edgekit's wheel, built from a copy of the sources (a concurrent in-tree build shares ./build).
rm -rf "$CACHE/src" "$CACHE/dist" "$CACHE/edgekit"
mkdir -p "$CACHE/src"
cp -r pyproject.toml README.md edgekit exporters runtimes calib "$CACHE/src/"
find "$CACHE/src" -name __pycache__ -prune -exec rm -rf {} +
# The project's venv has setuptools (dev extra): build with it, offline. Elsewhere, or where its
# setuptools is too old for pyproject.toml, pip fetches one into an isolated build environment.
if ! "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$CACHE/dist" "$CACHE/src" \
        >"$CACHE/wheel.log" 2>&1; then
    run_logged "$CACHE/wheel.log" "$PYTHON" -m pip wheel --quiet --no-deps -w "$CACHE/dist" "$CACHE/src"
fi
rm -rf "$CACHE/src"
WHEEL=$(ls "$CACHE"/dist/edgekit-*.whl)
requires=$("$PYTHON" - "$WHEEL" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    print("\n".join(l for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist")))
EOF
)
SITE_KEY=$(key_of "${PIP_TARGET_OPTS[@]}" "$requires" "$(cat constraints.txt)")
site_cached=true
if [[ "$(cat "$CACHE/site/.key" 2>/dev/null)" != "$SITE_KEY" ]]; then
    site_cached=false
    rm -rf "$CACHE/site" "$CACHE/site.tmp"
    # The board install, resolved as pip resolves it on a Pi: every dependency for aarch64.
    run_logged "$CACHE/pip-board.log" "$PYTHON" -m pip install --quiet "${PIP_TARGET_OPTS[@]}" -c constraints.txt \
        --target "$CACHE/site.tmp" "$WHEEL[tflite,onnxruntime]"
    (cd "$CACHE/site.tmp" && ls -d *.dist-info | sed 's/-[^-]*\.dist-info$//' | tr 'A-Z-' 'a-z_' | sort) \
        >"$CACHE/site.tmp/resolved.txt"
    if grep -E "$FORBIDDEN" "$CACHE/site.tmp/resolved.txt" >&2; then
        echo "board check: edgekit[tflite,onnxruntime] for aarch64 pulls the packages above; the board install must not" >&2
        exit 4
    fi
    rm -rf "$CACHE"/site.tmp/edgekit "$CACHE"/site.tmp/edgekit-*.dist-info  # installed fresh below
    echo "$SITE_KEY" >"$CACHE/site.tmp/.key"
    mv "$CACHE/site.tmp" "$CACHE/site"
fi
run_logged "$CACHE/pip-edgekit.log" "$PYTHON" -m pip install --quiet --no-deps "${PIP_TARGET_OPTS[@]}" \
    --target "$CACHE/edgekit" "$WHEEL"
wheels_s=$(since "$start")
echo "aarch64 wheels: $(tr '\n' ' ' <"$CACHE/site/resolved.txt")(${wheels_s} s, cached: $site_cached)"

# ------------------------------------------------------------------ 3. bundles
start=$(now)
if [[ -z "$BUNDLES" ]]; then
    BUNDLES=$OUT/bundles
    run_logged "$OUT/bundles.log" "$PYTHON" tools/make_board_bundles.py "$BUNDLES"
fi
BUNDLES=$(cd "$BUNDLES" && pwd)
bundles_s=$(since "$start")
echo "bundles: $BUNDLES (${bundles_s} s)"

# ------------------------------------------------------------------ 4. predict on arm64 and x86, compare
RUNS=${BOARD_RUNS:-1}
THREADS=${BOARD_THREADS:-1}
start=$(now)
run_logged "$OUT/arm64.log" arm_python tools/board_predict.py predict "$BUNDLES" --out "$OUT/arm64.json" \
    --runs "$RUNS" --threads "$THREADS"
arm64_s=$(since "$start")
grep -v '^INFO: ' "$OUT/arm64.log" || true
start=$(now)
run_logged "$OUT/x86.log" "$PYTHON" tools/board_predict.py predict "$BUNDLES" --out "$OUT/x86.json" \
    --runs "$RUNS" --threads "$THREADS"
x86_s=$(since "$start")
grep -v '^INFO: ' "$OUT/x86.log" || true

cat >"$OUT/timings.json" <<EOF
{"root_s": $root_s, "root_cached": $root_cached, "wheels_s": $wheels_s, "site_cached": $site_cached,
 "bundles_s": $bundles_s, "arm64_predict_s": $arm64_s, "x86_predict_s": $x86_s, "qemu_cpu": "$QEMU_CPU",
 "cache": "$CACHE", "resolved": "$CACHE/site/resolved.txt"}
EOF
status=0
"$PYTHON" tools/board_predict.py compare "$OUT/x86.json" "$OUT/arm64.json" --out "$OUT/agreement.json" || status=$?
echo "results: $OUT (arm64.json, x86.json, agreement.json, timings.json)"
exit $status
