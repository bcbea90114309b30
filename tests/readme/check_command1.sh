#!/bin/bash
# README command 1, verbatim, in a throw-away fresh clone: the README's setup line is the
# first thing a new user runs, so it is tested as written, not as we think it reads.
#
#   bash tests/readme/check_command1.sh        exit 0 pass, 1 fail, 77 skip
#
# The command is read from README.md (the indented line under "1. Set up"), the clone is
# `git clone` of this checkout's HEAD into a directory whose path has a space in it, and
# the command runs there with bash, as this user. It needs the network (apt mirror, PyPI).
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/../.." || exit 1
REPO=$(pwd)
skip() { echo "SKIP README command 1: $*" >&2; exit 77; }
fail() { echo "FAIL README command 1: $*" >&2; exit 1; }

CMD=$(python3 tests/readme/readme_commands.py 1) || fail "no command 1 in README.md"
command -v git >/dev/null || skip "no git (tests/run.sh installs it)"
git -C "$REPO" rev-parse HEAD >/dev/null 2>&1 || skip "$REPO is not a git checkout"
if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then skip "neither root nor sudo"; fi

TMP=$(mktemp -d "/tmp/agentlatd readme.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
git clone -q "$REPO" "$TMP/fresh clone" || fail "git clone $REPO"
echo "== README command 1 in $TMP/fresh clone (HEAD $(git -C "$REPO" rev-parse --short HEAD)):"
echo "   $CMD"
cd "$TMP/fresh clone" || exit 1
T0=$(date +%s)


OUT=$(env -u VIRTUAL_ENV -u PYTHONPATH bash -c "$CMD" 2>&1)
RC=$?
echo "$OUT" | tail -n 12 | sed 's/^/   | /'
echo "   rc=$RC after $(( $(date +%s) - T0 )) s"
[ $RC -eq 0 ] || fail "exit status $RC"
echo "$OUT" | grep -q "^Changes" || fail "no plan printed (no line starting 'Changes')"
echo "PASS README command 1"
