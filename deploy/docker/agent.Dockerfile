# The WarpDrive agent: warpdrive-mount (FUSE) and warpdrive-ctl. Build from the repository root
# (the tag: the Helm chart's appVersion, the warpdrive version):
#   docker build -f deploy/docker/agent.Dockerfile -t warpdrive/agent:0.1.0 .
# It runs privileged with /dev/fuse (see the Helm chart's DaemonSet).
FROM python:3.11-slim-bookworm

# fuse3 for fusermount3 (the mount speaks /dev/fuse itself: no libfuse); util-linux for
# mountpoint; gcc for any dependency without a wheel.
# Not pinned: bookworm's stable packages, whose exact versions change with every point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends fuse3 gcc libc6-dev util-linux \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY warpdrive ./warpdrive
COPY warpdrive_torch ./warpdrive_torch
COPY forge ./forge
# This repository itself; its dependencies are bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[azure,s3,gcs,fuse]" \
 && apt-get purge -y --auto-remove gcc

ENV WARPDRIVE_CONFIG=/etc/warpdrive/config.yaml
EXPOSE 9090
ENTRYPOINT ["warpdrive-mount", "--foreground"]
CMD ["--config", "/etc/warpdrive/config.yaml"]
