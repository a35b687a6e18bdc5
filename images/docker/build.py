"""Build the demo container image `tierscale/demo:latest` offline (`make docker-image`).

    .venv/bin/python images/docker/build.py [--force] [--tag tierscale/demo:latest]

Builds the static workload (images/workload/build.sh), assembles a minimal root filesystem in memory
and imports it into the engine (DOCKER_HOST or the default socket) through the Docker SDK, the way
`docker import` does. Skips the import when the image with the same content is already there.
"""

from __future__ import annotations

import argparse
import sys

import docker
import docker.errors

from tierscale.providers.docker_image import DEMO_IMAGE, ImageBuildError, build_demo_image


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", default=DEMO_IMAGE)
    ap.add_argument("--force", action="store_true", help="import again even if the content is unchanged")
    args = ap.parse_args()
    try:
        client = docker.from_env()
    except docker.errors.DockerException as exc:
        print(f"docker-image: cannot reach the Docker engine: {exc}", file=sys.stderr)
        return 1
    try:
        image_id, built = build_demo_image(client, tag=args.tag, force=args.force)
    except (ImageBuildError, docker.errors.DockerException) as exc:
        print(f"docker-image: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"docker-image: {args.tag} {'built' if built else 'up to date'} ({image_id[7:19]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
