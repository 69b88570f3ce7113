#!/usr/bin/env bash
# `make docker-test`: build the CPU image (Dockerfile, target cpu) and run the parity suite in it.
#
# Engine: docker when a Docker daemon answers, else podman (installed with apt-get if missing,
# run as `podman --runtime runc` with raised nofile/nproc ulimits, as this sandbox needs).
# Base image: debian:bookworm-slim is pulled; where no registry is reachable it is built locally
# by scripts/local-base-image.sh (debootstrap + podman import).
# torch: the image pins torch==2.13.0+cpu from PyTorch's CPU index; where that index is not
# reachable, a local torch-2.13.0+cpu wheel (from $PIP_FIND_LINKS or /opt/wheels) is mounted
# into the build at /wheels (podman only).
# TLS: the host's CA bundle is passed as build secret "ca", so pip also works behind a
# TLS-intercepting proxy. The suite itself runs with --network none: it must not need the net.
#
# Usage: scripts/docker-test.sh [COMMAND...]   run COMMAND in the image instead of its default
# Env:   IMAGE (default convdeploy:cpu), ENGINE (docker|podman), SKIP_BUILD=1 (reuse the image)
# Writes the log and a one-screen summary to out/docker-test.{log,txt}.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-convdeploy:cpu}
BASE=docker.io/library/debian:bookworm-slim
TORCH_WHEEL_GLOB='torch-2.13.0+cpu-cp311-cp311-*.whl'
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
mkdir -p out
LOG=out/docker-test.log
SUMMARY=out/docker-test.txt
: >"$LOG"

say() { echo "docker-test: $*" | tee -a "$LOG" >&2; }
die() { say "ERROR: $*"; exit 1; }

apt_install() {
    [[ $(id -u) -eq 0 ]] || die "need $* but not root; install them: sudo apt-get install $*"
    say "installing $* with apt-get"
    apt-get update -q >>"$LOG" 2>&1 && apt-get install -y -q "$@" >>"$LOG" 2>&1 \
        || die "apt-get install $* failed (see $LOG)"
}

# ---- engine
if [[ -z ${ENGINE:-} ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker; else ENGINE=podman; fi
fi
ENG=("$ENGINE")
LIMITS=()
if [[ $ENGINE == podman ]]; then
    missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    [[ ${#missing[@]} -eq 0 ]] || apt_install "${missing[@]}"
    ENG=(podman --runtime runc)
    LIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=4096:4096)
fi
say "engine: ${ENG[*]}"

# ---- base image
if [[ $ENGINE == podman ]] && ! podman image exists "$BASE"; then
    if ! "${ENG[@]}" pull "$BASE" >>"$LOG" 2>&1; then
        say "cannot pull $BASE (no registry reachable): building it with debootstrap"
        bash scripts/local-base-image.sh >>"$LOG" 2>&1 || die "local base image failed (see $LOG)"
    fi
fi

# ---- build
BUILD_ARGS=(--target cpu -t "$IMAGE")
for ca in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
    if [[ -n $ca && -s $ca ]]; then BUILD_ARGS+=(--secret "id=ca,src=$ca"); break; fi
done
if ! curl -fsS -m 15 -o /dev/null "$TORCH_INDEX_URL/torch/" 2>>"$LOG"; then
    wheel_dir=""
    for d in ${PIP_FIND_LINKS:-} /opt/wheels; do
        d=${d#file://}
        if compgen -G "$d/$TORCH_WHEEL_GLOB" >/dev/null; then wheel_dir=$d; break; fi
    done
    [[ -n $wheel_dir ]] || die "$TORCH_INDEX_URL is unreachable and no local $TORCH_WHEEL_GLOB found"
    [[ $ENGINE == podman ]] || die "$TORCH_INDEX_URL is unreachable; the local-wheel mount needs podman (ENGINE=podman)"
    say "torch index unreachable: using the local wheel in $wheel_dir"
    BUILD_ARGS+=(-v "$wheel_dir:/wheels:ro" --build-arg TORCH_INDEX_URL=)
else
    BUILD_ARGS+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
fi

build_s=skipped
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    say "building $IMAGE (log: $LOG)"
    t0=$(date +%s)
    "${ENG[@]}" build "${LIMITS[@]}" "${BUILD_ARGS[@]}" . >>"$LOG" 2>&1 \
        || { tail -30 "$LOG" >&2; die "image build failed (full log: $LOG)"; }
    build_s=$(( $(date +%s) - t0 ))
    say "built in ${build_s}s"
fi
size_b=$("${ENG[@]}" image inspect --format '{{.Size}}' "$IMAGE")
size_mb=$(( size_b / 1000000 ))
say "image size: ${size_mb} MB"

# ---- run (default command = the parity suite)
say "running ${*:-the default command (parity suite)} in $IMAGE with --network none"
t0=$(date +%s)
set +e
"${ENG[@]}" run --rm --network none "${LIMITS[@]}" "$IMAGE" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
set -e
run_s=$(( $(date +%s) - t0 ))

{
    echo "engine:      ${ENG[*]}"
    echo "image:       $IMAGE ($size_mb MB)"
    echo "build time:  ${build_s}s"
    echo "run time:    ${run_s}s"
    echo "command:     ${*:-default (CMD)}"
    echo "exit status: $rc"
    echo "test summary: $(grep -E '^(=+ )?[0-9]+ (passed|failed|error)' "$LOG" | tail -1 || true)"
} | tee "$SUMMARY"
exit "$rc"
