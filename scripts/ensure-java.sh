#!/usr/bin/env bash
# Make sure Java 17 or newer is available for the Spark engine (features/spark_engine.py).
# Java >= 17 found (as Spark finds it: $JAVA_HOME/bin/java, else `java` on PATH): nothing to do.
# Otherwise, as root (or with passwordless sudo) where apt-get exists: install
# openjdk-17-jre-headless. Otherwise: say how to install it, and exit 2.
set -euo pipefail

java_major() {
    # `java -version` prints e.g. openjdk version "17.0.15" (Java 8: "1.8.0_392") on stderr
    "${JAVA_HOME:+$JAVA_HOME/bin/}java" -version 2>&1 |
        awk -F '"' '/version/ { split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit }'
}

has_java_17() {
    local major
    major="$(java_major 2>/dev/null || true)"
    [[ "$major" =~ ^[0-9]+$ ]] && ((major >= 17))
}

has_java_17 && exit 0

if [[ -n "${JAVA_HOME:-}" ]]; then  # installing cannot fix a JAVA_HOME that points elsewhere
    echo "error: JAVA_HOME=$JAVA_HOME does not hold Java 17 or newer (bin/java); point it at a" \
        "Java 17+ installation, or unset it to use \`java\` on PATH" >&2
    exit 2
fi

as_root=()
can_install=false
if command -v apt-get >/dev/null 2>&1; then
    if [[ "$(id -u)" -eq 0 ]]; then
        can_install=true
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        can_install=true
        as_root=(sudo -n)
    fi
fi

if $can_install; then
    echo "ensure-java: Java 17 not found; installing openjdk-17-jre-headless with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    ${as_root[@]+"${as_root[@]}"} apt-get update -qq
    # --no-upgrade: never touch a Java package that is already installed
    ${as_root[@]+"${as_root[@]}"} apt-get install -y -qq --no-install-recommends --no-upgrade \
        openjdk-17-jre-headless >/dev/null
    has_java_17 && exit 0
fi

cat >&2 <<'MESSAGE'
error: the Spark engine needs Java 17 or newer, and `java` is missing or older. Installing it
automatically needs apt-get and root (or passwordless sudo); install it yourself, then run make
again:
  Debian/Ubuntu:  sudo apt-get install -y --no-install-recommends openjdk-17-jre-headless
  Fedora/RHEL:    sudo dnf install -y java-17-openjdk-headless
  macOS:          brew install openjdk@17
or install any Java 17+ and put `java` on PATH (or set JAVA_HOME).
MESSAGE
exit 2
