#!/usr/bin/env bash
# Installs everything dnstrace needs to build and test on a fresh Debian 12
# machine: Debian packages, the pinned Rust toolchains, rust-src, bpf-linker
# built against the eBPF nightly's own libLLVM, and cargo-fuzz.
# Idempotent: each step is skipped when its result is already present.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/toolchains.env
source "$here/scripts/toolchains.env"

log() { printf 'setup: %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root (installs Debian packages)" >&2
    exit 2
  fi
}

install_debian_packages() {
  local missing=()
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  need_root
  # Always refresh the lists: the VM test downloads Debian's newest 6.1
  # kernel package, and a stale list names one the mirror no longer has.
  apt-get update -qq
  if [ ${#missing[@]} -eq 0 ]; then
    log "Debian packages present"
    return
  fi
  log "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_python_packages() {
  local missing=()
  for pkg in "${PYTHON_PACKAGES[@]}"; do
    python3 -m pip show --quiet "${pkg%%==*}" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "Python packages present"
    return
  fi
  log "installing Python packages: ${missing[*]}"
  # Debian's own python3 refuses pip outside a venv; a pyenv one does not
  # know the flag's reason but accepts it.
  python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${missing[@]}"
}

install_toolchains() {
  command -v rustup >/dev/null || { echo "setup: rustup is required" >&2; exit 2; }
  rustup toolchain install "$USERSPACE_TOOLCHAIN" --profile minimal -c rustfmt,clippy >/dev/null
  rustup toolchain install "$EBPF_TOOLCHAIN" --profile minimal -c rust-src >/dev/null
  log "toolchains $USERSPACE_TOOLCHAIN and $EBPF_TOOLCHAIN ready"
}

# bpf-linker links libLLVM dynamically; it must be the same LLVM major as the
# nightly that compiles the eBPF crate, so build it against that nightly's lib.
install_bpf_linker() {
  local sysroot lib major prefix
  sysroot=$(rustc +"$EBPF_TOOLCHAIN" --print sysroot)
  lib=$(cd "$sysroot/lib" && ls libLLVM.so.*-rust-* | head -n1)
  major=$(rustc +"$EBPF_TOOLCHAIN" -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
  prefix="$BPF_LINKER_HOME/llvm-$major"
  if [ -x "$BPF_LINKER_HOME/bin/bpf-linker" ] && "$BPF_LINKER_HOME/bin/bpf-linker" --version >/dev/null 2>&1 \
     && [ -e "$prefix/lib/$lib" ] && [ "$(cat "$BPF_LINKER_HOME/stamp" 2>/dev/null)" = "$BPF_LINKER_VERSION llvm-$major $lib" ]; then
    log "bpf-linker present"
    return
  fi
  log "building bpf-linker $BPF_LINKER_VERSION against $lib (about a minute)"
  mkdir -p "$prefix/lib"
  ln -sf "$sysroot/lib/$lib" "$prefix/lib/$lib"
  ln -sf "$sysroot/lib/$lib" "$prefix/lib/libLLVM.so"
  LLVM_PREFIX="$prefix" cargo +"$USERSPACE_TOOLCHAIN" install --quiet --locked --force \
    --root "$BPF_LINKER_HOME" bpf-linker --version "$BPF_LINKER_VERSION" \
    --no-default-features --features "llvm-$major"
  echo "$BPF_LINKER_VERSION llvm-$major $lib" >"$BPF_LINKER_HOME/stamp"
}

# cargo-fuzz, for `cargo xtask fuzz`; it builds with EBPF_TOOLCHAIN.
install_cargo_fuzz() {
  if [ "$(cargo fuzz --version 2>/dev/null)" = "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    log "cargo-fuzz present"
    return
  fi
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo +"$USERSPACE_TOOLCHAIN" install --quiet --locked --force cargo-fuzz --version "$CARGO_FUZZ_VERSION"
}

install_debian_packages
install_python_packages
install_toolchains
install_bpf_linker
install_cargo_fuzz
log "done; bpf-linker is $BPF_LINKER_HOME/bin/bpf-linker"
