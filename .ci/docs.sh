#!/usr/bin/env bash
# CI for the documentation site (called by .ci/run): install the docs extra into the current
# environment, build the site with warnings as errors (broken cross-references, missing pages
# or included files fail), install Debian's chromium if it is missing, and run the browser test
# on the built site. Anything missing fails (RB_DOCS_REQUIRED=1); nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_MKDOCS_2_WARNING=1 PIP_DISABLE_PIP_VERSION_CHECK=1
start=$SECONDS

python -m pip install -q -e ".[docs]"

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "docs.sh: chromium is missing; install it with: sudo apt-get install -y chromium" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
echo "docs.sh: tools ready after $((SECONDS - start)) s"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m mkdocs build --strict --site-dir "$work/site"
echo "docs.sh: site built after $((SECONDS - start)) s"

RB_DOCS_REQUIRED=1 RB_DOCS_SITE="$work/site" RB_DOCS_SCREENSHOTS="${RB_DOCS_SCREENSHOTS:-$work/screenshots}" \
    python -m pytest tests/test_docs_site.py -q -p no:cacheprovider
echo "docs.sh: done in $((SECONDS - start)) s"
