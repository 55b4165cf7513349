#!/usr/bin/env bash
# make conformance: SQLite's own TCL regression suite (the veryquick set of
# Debian's sqlite3 source package) run twice on one testfixture binary,
# first with the plain unix VFS as the default VFS, then with boule as the
# default VFS, replicating to a dir store, with the boule_validate build
# tag checking after every transaction that the staged snapshot is the
# database byte for byte. It fails if boule fails a test that unix passes.
#
# Runs as root on a fresh Debian bookworm machine: it installs what it
# needs with apt-get, and runs the suite as an unprivileged user, because
# the suite refuses to run as root. Everything it builds goes under
# build/conformance; running it again reuses what is there.
#
# Environment:
#   CONFORMANCE_SUITE  the permutation to run (default veryquick)
#   CONFORMANCE_USER   the user that runs the suite (default boule-ct)
#   CONFORMANCE_RUNDIR where the suite runs; it must be reachable by that
#                      user (default build/conformance/run, or a directory
#                      under /tmp when build/ is not reachable)
#   CONFORMANCE_ONLY   "boule" or "unix" to run only that side, "build" to
#                      stop after building testfixture
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SQLITE_VERSION=3.40.1
SUITE=${CONFORMANCE_SUITE:-veryquick}
TUSER=${CONFORMANCE_USER:-boule-ct}
ONLY=${CONFORMANCE_ONLY:-}
OUT=$ROOT/build/conformance
SRC=$OUT/src/sqlite3-$SQLITE_VERSION
BLD=$OUT/bld
TIMEOUT=${CONFORMANCE_TIMEOUT:-50m}
export DEBIAN_FRONTEND=noninteractive

log() { printf 'conformance: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it installs packages and runs the suite as $TUSER"

# --- 1. Packages and the deb-src entry. ---------------------------------

# debian_mirror prints the URI of the Debian archive that apt already uses
# for bookworm, from deb822 .sources files or one-line .list files.
debian_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk '
      /^[[:space:]]*$/ { if (deb && suite && uri != "") { print uri; exit } deb = suite = 0; uri = ""; next }
      /^Types:/   { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      /^URIs:/    { uri = $2 }
      /^Suites:/  { for (i = 2; i <= NF; i++) if ($i == "bookworm") suite = 1 }
      END { if (deb && suite && uri != "") print uri }' "$f" | head -n1)
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(awk '$1 == "deb" { u = ($2 ~ /^\[/) ? $3 : $2; s = ($2 ~ /^\[/) ? $4 : $3; if (s == "bookworm") { print u; exit } }' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  echo http://deb.debian.org/debian
}

have_deb_src() {
  grep -Eqs '^[[:space:]]*(Types:.*deb-src|deb-src[[:space:]])' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources
}

need=()
for p in tcl-dev build-essential dpkg-dev zlib1g-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
updated=0
if ! have_deb_src; then
  mirror=$(debian_mirror)
  log "adding deb-src for $mirror bookworm"
  cat >/etc/apt/sources.list.d/boule-conformance-src.sources <<EOF
# Added by boule's scripts/conformance.sh: the source of the sqlite3 package,
# whose test/ folder is SQLite's TCL regression suite.
Types: deb-src
URIs: $mirror
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apt-get update -qq
  updated=1
fi
if [ ${#need[@]} -gt 0 ]; then
  [ $updated = 1 ] || apt-get update -qq
  log "installing ${need[*]}"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- 2. SQLite's source, and testfixture with boule linked in. ----------

if [ ! -f "$SRC/test/$SUITE.test" ] && [ ! -f "$SRC/test/permutations.test" ]; then
  rm -rf "$OUT/src"
  mkdir -p "$OUT/src"
  log "apt-get source sqlite3"
  # As root, apt-get source unpacks as root; _apt cannot write here, which
  # only costs a warning.
  (cd "$OUT/src" && apt-get source -qq sqlite3 >/dev/null 2>&1) ||
    (cd "$OUT/src" && apt-get source sqlite3)
  [ -f "$SRC/test/permutations.test" ] ||
    die "apt-get source sqlite3 did not give $SRC (want version $SQLITE_VERSION; got: $(ls "$OUT/src"))"
fi

mkdir -p "$OUT"
log "building libboule.a with the boule_validate tag"
go build -buildmode=c-archive -tags boule_lib,boule_validate -o "$OUT/libboule.a" ./cmd/libboule
cc -O2 -Wall -Werror -Ivfs -c scripts/conformance_init.c -o "$OUT/conformance_init.o"

if [ ! -f "$BLD/Makefile" ]; then
  rm -rf "$BLD"
  mkdir -p "$BLD"
  log "configuring SQLite $SQLITE_VERSION"
  (cd "$BLD" && "$SRC/configure" --with-tcl=/usr/lib/tcl8.6 --disable-shared >/dev/null)
fi
# testfixture is relinked every time: libboule.a or the init may have changed.
rm -f "$BLD/testfixture"
log "building testfixture"
# SQLITE_EXTRA_INIT runs at the end of every sqlite3_initialize().
# SQLITE_MAX_DEFAULT_PAGE_SIZE undoes Debian's patch that raises it to 32768,
# which test io-5.5 (written for upstream's 8192) fails on with any VFS.
nice make -C "$BLD" -j"$(nproc)" testfixture \
  OPTS="-DSQLITE_EXTRA_INIT=boule_conformance_init -DSQLITE_MAX_DEFAULT_PAGE_SIZE=8192" \
  TLIBS="-lm -lz $OUT/conformance_init.o $OUT/libboule.a -lpthread -ldl" >"$OUT/build.log" 2>&1 ||
  { tail -n 40 "$OUT/build.log"; die "testfixture build failed (full log: $OUT/build.log)"; }

[ "$ONLY" != build ] || exit 0

# --- 3. Run the suite, as an unprivileged user. -------------------------

id -u "$TUSER" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$TUSER"

RUN=${CONFORMANCE_RUNDIR:-$OUT/run}
mkdir -p "$RUN"
if ! runuser -u "$TUSER" -- test -x "$RUN"; then
  RUN=/tmp/boule-conformance
  log "build/ is not reachable by $TUSER; running in $RUN"
fi
# The suite and its binary are copied where the user can read them: the
# clone may live under a directory only root can enter.
rm -rf "$RUN"
mkdir -p "$RUN"
cp -a "$SRC" "$RUN/sqlite"
cp "$BLD/testfixture" "$RUN/testfixture"
chown -R "$TUSER" "$RUN"

# run_suite NAME [BOULE_CONFIG]: runs the suite in $RUN/NAME; leaves the
# output in $OUT/NAME.log and the failed test names in $OUT/NAME.failed.
run_suite() {
  local name=$1 cfg=${2:-} dir=$RUN/$1 start rc=0
  runuser -u "$TUSER" -- mkdir -p "$dir"
  log "running $SUITE with the $name VFS (output: $OUT/$name.log)"
  start=$(date +%s)
  # Boule's log goes to a file: the crash tests compare what a child
  # process printed on stderr with the message of a plain exit, and a
  # routine line (a snapshot rebuilt after the suite restored a database
  # behind SQLite's back) printed by the child before it died fails them
  # by timing alone. A failed validation still aborts on stderr.
  (cd "$dir" && timeout "$TIMEOUT" runuser -u "$TUSER" -- env BOULE_CONFIG="$cfg" BOULE_LOG_FILE="$RUN/$name-vfs.log" \
    nice "$RUN/testfixture" "$RUN/sqlite/test/$SUITE.test") >"$OUT/$name.log" 2>&1 || rc=$?
  echo $(($(date +%s) - start)) >"$OUT/$name.seconds"
  echo "$rc" >"$OUT/$name.rc"
  # tester.tcl ends with "N errors out of M tests ..." and, when N > 0,
  # "Failures on these tests: a b c".
  sed -n 's/^!\{0,1\}Failures on these tests: //p' "$OUT/$name.log" | tr ' ' '\n' | sed '/^$/d' | sort -u >"$OUT/$name.failed"
  local summary
  summary=$(grep -E '^[0-9]+ errors out of [0-9]+ tests' "$OUT/$name.log" | tail -n1 || true)
  log "$name: ${summary:-no summary line: the run crashed or timed out (exit $rc)} in $(cat "$OUT/$name.seconds") s"
  if [ -s "$RUN/$name-vfs.log" ]; then
    cp "$RUN/$name-vfs.log" "$OUT/$name-vfs.log"
    log "$name: $(wc -l <"$OUT/$name-vfs.log") lines of boule log ($OUT/$name-vfs.log), by message:"
    sed -n 's/.* level=\([A-Z]*\) msg="\([^"]*\)".*/\1 \2/p' "$OUT/$name-vfs.log" | cut -c1-120 | sort | uniq -c | sort -rn | head -n 12 >&2
  fi
}

if [ "$ONLY" != boule ]; then
  run_suite unix
fi
if [ "$ONLY" != unix ]; then
  cat >"$OUT/boule.json" <<EOF
{
  "make_default": true,
  "replication_spooling_dir": "$RUN/boule-spool",
  "replication_targets": [{"dir": {"path": "$RUN/boule-store"}}]
}
EOF
  chmod 644 "$OUT/boule.json"
  # A dir store never creates its own root.
  runuser -u "$TUSER" -- mkdir -p "$RUN/boule-store"
  run_suite boule "$(cat "$OUT/boule.json")"
fi

# --- 4. Compare. --------------------------------------------------------

# Tests that boule fails by design, not by a bug; doc/CONFORMANCE.md gives
# the reason for each. Exact names, so that any other failure counts.
excluded=(
  # Expect the page cache's memory use for the unix VFS's szOsFile.
  dbstatus-4.0.1 dbstatus-4.1.1 dbstatus-4.2.1 dbstatus-4.2.2 dbstatus-4.2.3 dbstatus-4.2.4
  # The injected malloc failure hits boule's dirty-chunk bitmap, which boule
  # survives by rebuilding the snapshot instead of failing the write.
  triggerA-3.transient.68
)

status=0
for name in unix boule; do
  [ -f "$OUT/$name.rc" ] || continue
  if ! grep -Eq '^[0-9]+ errors out of [0-9]+ tests' "$OUT/$name.log"; then
    log "$name: the suite did not finish; last lines:"
    tail -n 20 "$OUT/$name.log" >&2
    status=1
  fi
done
if [ "$ONLY" = "" ]; then
  # Proof that boule really replicated: the store holds manifests.
  manifests=$(find "$RUN/boule-store" -type f 2>/dev/null | wc -l)
  log "boule: $manifests files in the dir store"
  [ "$manifests" -gt 0 ] || { log "boule: nothing reached the dir store"; status=1; }
  new=$(comm -13 "$OUT/unix.failed" "$OUT/boule.failed" | grep -vxF -f <(printf '%s\n' "${excluded[@]}") || true)
  if [ -n "$new" ]; then
    log "boule fails tests that unix passes:"
    printf '  %s\n' $new >&2
    status=1
  fi
fi
[ $status = 0 ] && [ "$ONLY" = "" ] && log "no regressions"
exit $status
