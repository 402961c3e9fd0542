#!/usr/bin/env bash
# Contracts (issue 16): the example fleet exports its catalog files and AsyncAPI documents;
# `tchu lint` passes on them; the committed copies in tests/contracts/fleet/ are current (the
# seeded-mistake tests and the diff suite run on them); the official AsyncAPI parser accepts
# every document with no error and no warning; `tchu map` renders in headless Chromium with
# every node laid out. Installs what it needs (npm packages, Debian's chromium).
#   bash .ci/contracts.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="$root/target/contracts"
rm -rf "$out" && mkdir -p "$out/fleet" "$out/asyncapi"
fleet=(users notifications analytics rpc)

echo "--- build the fleet and the tchu command"
cargo build -q -p tchu-cli -p tchu --example users --example notifications --example analytics --example rpc
tchu="$root/target/debug/tchu"

echo "--- export catalogs and AsyncAPI documents (the services' --catalog / --asyncapi)"
for s in "${fleet[@]}"; do
  env -u TCHU_SERVICE -u TCHU_EXCHANGE "target/debug/examples/$s" --catalog="$out/fleet/$s.json"
  env -u TCHU_SERVICE -u TCHU_EXCHANGE "target/debug/examples/$s" --asyncapi="$out/asyncapi/$s.json"
  echo "$s: $(wc -c <"$out/fleet/$s.json") bytes of catalog"
done

echo "--- the committed fleet catalogs (tests/contracts/fleet) are the exported ones"
if ! diff -ru tests/contracts/fleet "$out/fleet"; then
  echo "tests/contracts/fleet is stale: copy $out/fleet/*.json there" >&2
  exit 1
fi

echo "--- tchu lint on the fleet"
"$tchu" lint --deny-warnings "$out"/fleet/*.json

echo "--- seeded mistakes, the diff suite, the map page (cargo test -p tchu-cli --test contracts)"
TCHU_FLEET_CATALOGS="$out/fleet" cargo test -q -p tchu-cli --test contracts

echo "--- the AsyncAPI documents through @asyncapi/parser (Node $(node --version))"
TCHU_ASYNCAPI_OUT="$out/asyncapi/catalog-test.json" cargo test -q -p tchu --test catalog asyncapi_document
(cd tests/asyncapi && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
node tests/asyncapi/check.mjs "$out"/asyncapi/*.json

echo "--- tchu map in headless Chromium"
if ! command -v chromium >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
"$tchu" map "$out"/fleet/*.json -o "$out/fleet.html"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
chrome=(chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run
  --disable-background-networking --disable-component-update --disable-sync
  --user-data-dir="$profile")
timeout 60 "${chrome[@]}" --dump-dom "file://$out/fleet.html" >"$out/fleet.dom.html" 2>"$out/chromium.log"
check="$(grep -o 'data-check="[^"]*"' "$out/fleet.dom.html" || true)"
echo "chromium: $check"
[[ "$check" == 'data-check="ok 12 nodes 12 edges 0 red 0 amber"' ]] || { echo "map check failed" >&2; exit 1; }
for label in users notifications analytics rpc user.created user.deleted rpc.users.validate '>#<'; do
  grep -q -- "$label" "$out/fleet.dom.html" || { echo "map does not show $label" >&2; exit 1; }
done
# A seeded mistake shows (analytics and its `#` left out): notifications' pattern typo is a red
# box, and user.created, which nobody receives then, an amber one.
sed 's/"pattern": "user.created"/"pattern": "user.craeted"/' "$out/fleet/notifications.json" >"$out/typo.json"
"$tchu" map "$out/fleet/users.json" "$out/typo.json" "$out/fleet/rpc.json" -o "$out/typo.html"
timeout 60 "${chrome[@]}" --dump-dom "file://$out/typo.html" >"$out/typo.dom.html" 2>>"$out/chromium.log"
check="$(grep -o 'data-check="[^"]*"' "$out/typo.dom.html" || true)"
echo "chromium, pattern typo without analytics: $check"
[[ "$check" == 'data-check="ok 10 nodes 7 edges 1 red 1 amber"' ]] || { echo "seeded map check failed" >&2; exit 1; }
timeout 60 "${chrome[@]}" --hide-scrollbars --window-size=1000,420 \
  --screenshot="$out/fleet.png" "file://$out/fleet.html" 2>>"$out/chromium.log"
[[ -s "$out/fleet.png" ]] || { echo "no screenshot" >&2; exit 1; }
echo "screenshot: $out/fleet.png ($(wc -c <"$out/fleet.png") bytes; docs/fleet-map.png is a copy)"
echo "contracts: ok"
