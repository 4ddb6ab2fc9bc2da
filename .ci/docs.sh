#!/usr/bin/env bash
# CI for the documentation site (called by .ci/run): install the docs extra, build the site
# with warnings as errors (broken cross-references, missing pages or included files fail),
# install Debian's chromium if it is missing, and run the browser test on the built site.
# Anything missing fails (RB_DOCS_REQUIRED=1); nothing is skipped.
#
# Environment: the active virtual environment if there is one (run inside .ci/run's venv, the
# package's dependencies are already there and only the docs tools are added), else a fresh venv
# made here from `python`, so the system Python is never modified.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_MKDOCS_2_WARNING=1 PIP_DISABLE_PIP_VERSION_CHECK=1
start=$SECONDS
work="$(mktemp -d "${TMPDIR:-/tmp}/reparam_bridge-docs.XXXXXX")"
trap 'rm -rf "$work"' EXIT

if [ -z "${VIRTUAL_ENV:-}" ]; then
    python -m venv "$work/venv"
    # shellcheck disable=SC1091
    source "$work/venv/bin/activate"
fi
python -m pip install -q -e ".[docs]"

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "docs.sh: chromium is missing; install it with: sudo apt-get install -y chromium" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null  # with its recommended fonts
fi
echo "docs.sh: tools ready after $((SECONDS - start)) s"

python -m mkdocs build --strict --site-dir "$work/site"
echo "docs.sh: site built after $((SECONDS - start)) s"

RB_DOCS_REQUIRED=1 RB_DOCS_SITE="$work/site" RB_DOCS_SCREENSHOTS="${RB_DOCS_SCREENSHOTS:-$work/screenshots}" \
    python -m pytest tests/test_docs_site.py -q -p no:cacheprovider
echo "docs.sh: done in $((SECONDS - start)) s"
