#!/usr/bin/env bash
# Pushes an exported bundle (manifest.json, model.pte, model.ple, tokenizer.json) to the phone, where the demo app reads it.
#
# Usage: android_demo/push_bundle.sh BUNDLE_DIR [NAME]
#   Copies BUNDLE_DIR to /data/local/tmp/gemma_edge/NAME/ (NAME defaults to BUNDLE_DIR's base name).
#   ADB (default: adb on PATH) and ANDROID_SERIAL (which device, when several are attached) are honoured.
set -euo pipefail

readonly DEVICE_ROOT="/data/local/tmp/gemma_edge"
readonly HEADROOM_KIB=$((256 * 1024))   # keep 256 MiB free on the device after the push

die() { printf 'push_bundle.sh: %s\n' "$*" >&2; exit 1; }
human() { awk -v k="$1" 'BEGIN { if (k >= 1048576) printf "%.1f GiB", k / 1048576; else if (k >= 1024) printf "%.1f MiB", k / 1024; else printf "%d KiB", k }'; }   # KiB -> text

[[ $# -ge 1 && $# -le 2 ]] || die "usage: push_bundle.sh BUNDLE_DIR [NAME]"
bundle="${1%/}"
[[ -d "$bundle" ]] || die "$bundle: expected a bundle directory, found no such directory"
name="${2:-$(basename "$bundle")}"
[[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "NAME: expected letters, digits, '.', '_' or '-', found '$name'"
dest="$DEVICE_ROOT/$name"

# --- the bundle: every file the manifest lists must be here, with its size ------------------------
[[ -f "$bundle/manifest.json" ]] || die "$bundle/manifest.json: expected the bundle manifest, found no such file (run gemma-edge export first)"
python_bin="$(command -v python3 || true)"
[[ -n "$python_bin" ]] || die "python3: expected on PATH to read manifest.json, found none"
# Prints "path<TAB>bytes" for each file in manifest.json's "files"; fails on a malformed manifest.
listing="$("$python_bin" - "$bundle/manifest.json" <<'PY'
import json, sys
path = sys.argv[1]
try:
    m = json.load(open(path, encoding="utf-8"))
except (OSError, ValueError) as e:
    sys.exit(f"{path}: expected valid JSON, found {e}")
if m.get("format") != "gemma-edge-bundle":
    sys.exit(f"{path}: format: expected 'gemma-edge-bundle', found {m.get('format')!r}")
files = m.get("files") or {}
for role in ("program", "ple"):
    if role not in files:
        sys.exit(f"{path}: files.{role}: expected an entry, found none")
for role, e in files.items():
    p = e.get("path", "")
    if not p or p.startswith("/") or ".." in p.split("/"):
        sys.exit(f"{path}: files.{role}.path: expected a file name inside the bundle, found {p!r}")
    print(f"{p}\t{int(e['bytes'])}")
PY
)" || die "$bundle/manifest.json: could not read the file list (see above)"

files=("manifest.json")
total_bytes=$(stat -c %s "$bundle/manifest.json")
while IFS=$'\t' read -r rel bytes; do
    [[ -n "$rel" ]] || continue
    f="$bundle/$rel"
    [[ -f "$f" ]] || die "$f: listed in manifest.json, found no such file"
    actual=$(stat -c %s "$f")
    [[ "$actual" == "$bytes" ]] || die "$f: manifest.json says $bytes bytes, found $actual bytes (re-export the bundle)"
    files+=("$rel")
    total_bytes=$((total_bytes + actual))
done <<< "$listing"

# --- the device -----------------------------------------------------------------------------------
adb="${ADB:-adb}"
command -v "$adb" >/dev/null 2>&1 || die "adb: expected on PATH (install Android platform-tools, or set ADB=/path/to/adb), found none"
state="$("$adb" get-state 2>/dev/null || true)"
if [[ "$state" != "device" ]]; then
    attached="$("$adb" devices | tail -n +2 | sed '/^$/d' || true)"
    [[ -n "$attached" ]] || die "no device: connect a phone with USB debugging on (adb devices lists none)"
    die "no usable device (adb get-state: '${state:-none}'); adb devices says:
$attached
(authorize the computer on the phone, or set ANDROID_SERIAL when several are attached)"
fi

# Free space where the bundle goes: df -k's 4th column ("Available", KiB) on the /data/local/tmp line.
df_out="$("$adb" shell df -k /data/local/tmp 2>/dev/null | tr -d '\r')" || die "adb shell df -k /data/local/tmp failed"
avail_kib="$(printf '%s\n' "$df_out" | awk 'NR > 1 && NF >= 4 { v = $4 } END { print v }')"
[[ "$avail_kib" =~ ^[0-9]+$ ]] || die "adb shell df -k /data/local/tmp: expected a free-space figure in KiB, found:
$df_out"
# Files already on the device under this name are replaced, so their space counts as free.
old_kib="$("$adb" shell "du -sk '$dest' 2>/dev/null" | tr -d '\r' | awk '{ print $1 }' || true)"
[[ "$old_kib" =~ ^[0-9]+$ ]] || old_kib=0
need_kib=$(( (total_bytes + 1023) / 1024 + HEADROOM_KIB ))
if (( avail_kib + old_kib < need_kib )); then
    die "not enough space on the device: /data/local/tmp has $(human "$avail_kib") free (+ $(human "$old_kib") of an old copy of $name), the bundle needs $(human $(( (total_bytes + 1023) / 1024 ))) + $(human "$HEADROOM_KIB") headroom"
fi

# --- push -----------------------------------------------------------------------------------------
printf 'pushing %s (%s, %d files) to %s\n' "$bundle" "$(human $(( (total_bytes + 1023) / 1024 )))" "${#files[@]}" "$dest"
"$adb" shell "rm -rf '$dest.partial' && mkdir -p '$dest.partial'" || die "could not create $dest.partial on the device"
for rel in "${files[@]}"; do
    [[ "$rel" == */* ]] && { "$adb" shell "mkdir -p '$dest.partial/$(dirname "$rel")'" || die "mkdir on the device failed"; }
    "$adb" push "$bundle/$rel" "$dest.partial/$rel" || die "adb push $bundle/$rel failed"
done
# Check sizes on the device before the copy replaces the old one.
for rel in "${files[@]}"; do
    want=$(stat -c %s "$bundle/$rel")
    got="$("$adb" shell "stat -c %s '$dest.partial/$rel'" | tr -d '\r' || true)"
    [[ "$got" == "$want" ]] || die "$dest.partial/$rel: expected $want bytes on the device, found '$got'"
done
"$adb" shell "rm -rf '$dest' && mv '$dest.partial' '$dest' && chmod -R a+rX '$DEVICE_ROOT'" \
    || die "could not move $dest.partial to $dest on the device"
printf 'done: the app reads %s (type it in the bundle field, or %s to pick)\n' "$dest" "$DEVICE_ROOT"
