#!/usr/bin/env bash
# Checks, in a scratch copy of the work tree, that a requirements.lock missing a line fails the
# build with a message naming the problem and `tools/bazel run //:lock`, and that running that
# command restores a working lock. Runs Bazel itself, so .ci/run calls it outside `bazel test`.
set -euo pipefail
workspace="$(cd "$(dirname "$0")/../.." && pwd)"
copy="$(mktemp -d /tmp/broken-lock.XXXXXX)"
cleanup() {
  (cd "$copy" && tools/bazel shutdown >/dev/null 2>&1) || true
  rm -rf "$copy"
}
trap cleanup EXIT

git -C "$workspace" ls-files -z | tar -C "$workspace" --null -T - -cf - | tar -C "$copy" -xf -
cd "$copy"
target=//packages/receipt_label

sed -i '/"platform": "linux_aarch64", "name": "numpy"/d' requirements.lock
if tools/bazel build --nobuild "$target" >build.log 2>&1; then
  echo "FAIL: a lock without numpy's aarch64 wheel still builds" >&2
  exit 1
fi
for expected in "requirements.lock can not be used" "numpy" "Regenerate it with \`tools/bazel run //:lock\`"; do
  if ! grep -qF "$expected" build.log; then
    echo "FAIL: the error does not say: $expected" >&2
    cat build.log >&2
    exit 1
  fi
done
echo "ok: the broken lock fails with: $(grep -F 'has no linux_aarch64 wheel' build.log | head -1 | sed 's/^ *//')"

tools/bazel run //:lock >lock.log 2>&1 || { cat lock.log >&2; exit 1; }
tools/bazel build --nobuild "$target" >rebuild.log 2>&1 || { cat rebuild.log >&2; exit 1; }
echo "ok: tools/bazel run //:lock restored a working lock"
