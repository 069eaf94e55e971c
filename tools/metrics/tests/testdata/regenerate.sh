#!/bin/sh
# Regenerates the build event fixtures (Bazel 7.7.1 through tools/bazel, disk cache warm).
# Run from the repository root: sh tools/metrics/tests/testdata/regenerate.sh
# It cleans this worktree's output base first (the cold build needs an empty one), edits and
# restores handlers/submit_to_openai/handler.py, and takes several minutes.
set -eu
out="$PWD/tools/metrics/tests/testdata"
export BUILD_METRICS=0  # these commands must not also land in your own history
tools/bazel clean
tools/bazel build //handlers/... --build_event_json_file="$out/cold_build.bep.json"
tools/bazel build //handlers/... --build_event_json_file="$out/noop_build.bep.json"
tools/bazel test //tests/handlers:submit_to_openai_test //tests/handlers:list_pending_batches_test \
    --build_event_json_file="$out/test.bep.json"
echo "# metrics fixture edit" >> handlers/submit_to_openai/handler.py
tools/bazel build //handlers/... --build_event_json_file="$out/incremental_build.bep.json"
git checkout handlers/submit_to_openai/handler.py
tools/bazel build //handlers/does_not_exist:image --build_event_json_file="$out/failed_build.bep.json" || true
tools/bazel build //handlers/submit_to_openai:image --config=amd64 \
    --build_event_json_file="$out/amd64_build.bep.json"
# The events name this machine's paths (home, work tree, output base): fixtures must not.
for file in "$out"/*.bep.json; do
  sed -i "s|$PWD|/home/user/receipt-lambdas|g; s|$HOME|/home/user|g" "$file"
done
