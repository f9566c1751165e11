# The WarpDrive control plane: `warpdrive-ctl serve` (API and dashboard). Build from the repository
# root (the tag: the Helm chart's appVersion, the warpdrive version):
#   docker build -f deploy/docker/control-plane.Dockerfile -t warpdrive/control-plane:0.1.0 .
FROM python:3.11-slim-bookworm

WORKDIR /src
COPY pyproject.toml README.md ./
COPY warpdrive ./warpdrive
COPY warpdrive_torch ./warpdrive_torch
COPY forge ./forge
# This repository itself; its dependencies are bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[azure,s3,gcs,control]" \
 && useradd --system --uid 10001 --home-dir /var/lib/warpdrive --create-home warpdrive

USER 10001
WORKDIR /var/lib/warpdrive
EXPOSE 8080
ENTRYPOINT ["warpdrive-ctl"]
CMD ["serve", "--addr", ":8080"]
