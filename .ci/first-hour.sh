#!/usr/bin/env bash
# The first-hour checks (issue 13): the docs build without warnings, the three library crates
# package (the first crates.io release is one command away), and the Python interop tests,
# which `cargo test --workspace` lists as ignored (they need the venv that `ensure_python` made).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "+ RUSTDOCFLAGS='-D warnings' cargo doc --no-deps -p tchu -p tchu-runtime -p tchu-macros"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p tchu -p tchu-runtime -p tchu-macros
echo "+ cargo package -p tchu-macros -p tchu-runtime -p tchu --allow-dirty"
cargo package -p tchu-macros -p tchu-runtime -p tchu --allow-dirty
echo "+ cargo test -p tchu --test interop -- --include-ignored"
cargo test -p tchu --test interop -- --include-ignored
