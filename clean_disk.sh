#!/usr/bin/env bash
# Reset the stack: remove this compose project's containers, networks, volumes (runs, models, Airflow history)
# and images. Nothing of other projects is touched: no host-wide `docker system prune`.
#
# Usage: ./clean_disk.sh [--yes] [-h]
#   --yes   do not ask for confirmation
#   COMPOSE_PROJECT_NAME selects another project of this compose file (as for docker compose itself).
set -euo pipefail

usage() { sed -n '5,7s/^# \{0,1\}//p' "$0"; }
assume_yes=0
while [ "$#" -gt 0 ]; do
  case "$1" in
    -y | --yes) assume_yes=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "clean_disk: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")"
command -v docker >/dev/null || { echo "clean_disk: docker is not installed" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "clean_disk: no Docker engine answers (docker info failed)" >&2; exit 1; }

# Secrets are irrelevant to removing things, but the compose file refuses to load without them (e.g. when
# .env is already gone): give every key `make env` generates a placeholder, for this process only.
for key in $(python3 scripts/make_env.py --list-keys); do
  export "$key=${!key:-unused}"
done

project=$(docker compose config --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["name"])') ||
  project=""
[ -n "$project" ] || { echo "clean_disk: could not determine the compose project name" >&2; exit 1; }
label="com.docker.compose.project=$project"

containers=$(docker ps -a --filter "label=$label" --format '{{.Names}}')
volumes=$(docker volume ls -q --filter "label=$label")
networks=$(docker network ls -q --filter "label=$label" --format '{{.Name}}')
images=$(docker compose config --images | sort -u | while read -r image; do
  docker image inspect "$image" >/dev/null 2>&1 && echo "$image"; done || true)
# The scale variant (docker-compose.scale.yml) runs as this same project but builds its own image tags: those
# (the images of its services with a build section; never the postgres, redis or seaweedfs images it pulls).
scale_images=""
if [ -f docker-compose.scale.yml ]; then
  scale_images=$(docker compose -f docker-compose.yml -f docker-compose.scale.yml config --format json | python3 -c '
import json, sys
services = json.load(sys.stdin)["services"].values()
print("\n".join(sorted({s["image"] for s in services if "build" in s and "image" in s})))' |
    while read -r image; do docker image inspect "$image" >/dev/null 2>&1 && echo "$image"; done || true)
  images=$(printf '%s\n%s\n' "$images" "$scale_images" | sed '/^$/d' | sort -u)
fi

list() { [ -n "$2" ] || return 0; printf '  %s:\n' "$1"; printf '%s\n' "$2" | sed 's/^/    /'; }
if [ -z "$containers$volumes$networks$images" ]; then
  echo "clean_disk: nothing to remove for project '$project'."
  exit 0
fi
echo "clean_disk: project '$project' has:"
list containers "$containers"
list volumes "$volumes"
list networks "$networks"
list images "$images"
echo "  Volumes hold every MLflow run and model and the Airflow history: removing them is a full reset."

if [ "$assume_yes" -ne 1 ]; then
  if [ ! -t 0 ]; then
    echo "clean_disk: not a terminal; re-run with --yes to confirm" >&2
    exit 1
  fi
  read -r -p "Remove all of the above? [y/N] " answer
  case "$answer" in
    y | Y | yes | YES) ;;
    *) echo "clean_disk: nothing removed."; exit 0 ;;
  esac
fi

docker compose down --volumes --rmi all --remove-orphans --timeout 20
if [ -n "$scale_images" ]; then
  printf '%s\n' "$scale_images" | while read -r image; do docker image rm "$image" >/dev/null 2>&1 || true; done
fi
# What compose does not know but the project's label marks (a container without a service label, a volume or
# network an older compose file declared): removed by that label, the way it was listed above.
docker ps -aq --filter "label=$label" | xargs -r docker rm -f >/dev/null
docker volume ls -q --filter "label=$label" | xargs -r docker volume rm >/dev/null
docker network ls -q --filter "label=$label" | xargs -r docker network rm >/dev/null
# Leftover build stages of this project's Dockerfiles (dangling, labelled by them), not anyone else's images.
docker image prune --force --filter "label=org.mlops-pipeline.stage=builder" >/dev/null
echo "clean_disk: removed project '$project' (containers, networks, volumes, images)."
