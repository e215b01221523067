#!/usr/bin/env bash
# Sourced by the device scripts: `part NAME LIMIT_S COMMAND...` runs one measurement under a hard
# limit with its log in $JOB/NAME.log and, where the device tool's $OUT is set, packs $JOB into
# $OUT/job.tgz after every part, so a call that is cut short keeps what finished.
JOB=${JOB:-/tmp/job}
RES=$JOB/results
mkdir -p "$RES"
part() {
  local name=$1 limit=$2
  shift 2
  echo "== $(date +%T) $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$JOB/$name.log" 2>&1
  echo "== $(date +%T) $name exit $?"
  if [ -n "${OUT:-}" ]; then
    (cd "$(dirname "$JOB")" && tar czf "$OUT/job.tgz" --exclude='*.pt' --exclude='*.safetensors' \
      "$(basename "$JOB")")
  fi
}
