#!/usr/bin/env bash
# Builds the plain-Java core (javac --release 11), regenerates the golden files with Python, and runs the JUnit 4 tests
# (LoopGoldenTest replays the shared loop suite tests/golden/loop.json, which every host runs; AudioPreprocessorGoldenTest
# the audio preprocessing golden tests/golden/audio_preprocess.json).
# Needs: a JDK >= 11, `apt-get install -y junit4` (junit4 + hamcrest jars in /usr/share/java), the project venv.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
build="$here/build"
junit="${JUNIT_JAR:-/usr/share/java/junit4.jar}"
hamcrest="${HAMCREST_JAR:-/usr/share/java/hamcrest-core.jar}"

die() { echo "run_tests.sh: $*" >&2; exit 1; }
command -v javac >/dev/null || die "javac not found: install a JDK >= 11 (apt-get install -y openjdk-17-jdk-headless)"
command -v java >/dev/null || die "java not found: install a JDK >= 11"
[[ -f "$junit" ]] || die "$junit not found: apt-get install -y junit4 (or set JUNIT_JAR)"
[[ -f "$hamcrest" ]] || hamcrest=/usr/share/java/hamcrest.jar
[[ -f "$hamcrest" ]] || die "hamcrest jar not found in /usr/share/java: apt-get install -y junit4 (or set HAMCREST_JAR)"
[[ -x "$python" ]] || die "$python not found: create the venv (or set PYTHON)"

rm -rf "$build/classes" "$build/test-classes"
mkdir -p "$build/classes" "$build/test-classes"

echo "== golden files (Python) -> $build/golden"
(cd "$repo" && "$python" "$here/golden/make_golden.py" "$build/golden")

echo "== javac --release 11 (main)"
find "$here/src/main/java" -name '*.java' -print0 | xargs -0 javac --release 11 -Xlint:all,-serial -Werror -encoding UTF-8 -d "$build/classes"
echo "== javac --release 11 (tests)"
find "$here/src/test/java" -name '*.java' -print0 | xargs -0 javac --release 11 -encoding UTF-8 \
    -cp "$build/classes:$junit:$hamcrest" -d "$build/test-classes"

tests=()
while IFS= read -r f; do
    rel="${f#"$here/src/test/java/"}"
    tests+=("$(echo "${rel%.java}" | tr / .)")
done < <(find "$here/src/test/java" -name '*Test.java' | sort)

echo "== JUnit: ${tests[*]}"
cd "$here"
exec java -Dgolden.dir="$build/golden" -Dloop.golden="$repo/tests/golden/loop.json" -Daudio.golden="$repo/tests/golden/audio_preprocess.json" -Dapp.src="$here/../app/src/main/java" -Dfile.encoding=UTF-8 -cp "$build/classes:$build/test-classes:$junit:$hamcrest" \
    org.junit.runner.JUnitCore "${tests[@]}"
