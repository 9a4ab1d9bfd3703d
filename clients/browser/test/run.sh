#!/usr/bin/env bash
# Runs the browser pages' tests: the protocol module against the shared
# format vectors (Node's Web Crypto), then the client page and the
# operators' console end to end in headless Chromium (Debian's package,
# driven by playwright-core from npm) against the real local server.
# (pigeonhole.js as a Node package against the server: `npm test` in
# clients/browser, which needs no dependency.)
#
# Installs what is missing first: chromium through apt-get (as root), the
# npm dependencies from package-lock.json (playwright-core, and TypeScript,
# which first checks the JSDoc types of pigeonhole.js), the local server
# through cargo (unless PIGEONHOLE_LOCAL_BIN points at a built one). Extra
# arguments go to `node --test`. Screenshots land in target/browser-artifacts/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)

chromium=${CHROMIUM_PATH:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium not found at $chromium: install it (apt-get install chromium) or set CHROMIUM_PATH" >&2
    exit 1
  fi
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "node (>= 20.19) and npm are needed" >&2
  exit 1
fi
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' || {
  echo "node $(node --version) is too old: the tests need >= 20.19" >&2
  exit 1
}

cd "$here"
# playwright-core never downloads a browser; the variable only makes sure.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund --prefer-offline --loglevel=error >/dev/null
else
  npm install --no-audit --no-fund --loglevel=error >/dev/null
fi

# The JSDoc types of pigeonhole.js, as a TypeScript user of the package sees them.
node_modules/.bin/tsc -p ../jsconfig.json

if [ -z "${PIGEONHOLE_LOCAL_BIN:-}" ]; then
  (cd "$root" && cargo build --quiet --locked -p pigeonhole-local)
  export PIGEONHOLE_LOCAL_BIN="$root/target/debug/pigeonhole-local"
fi
export CHROMIUM_PATH="$chromium"

exec node --test "$@" format.test.js browser.test.js console.test.js
