#!/bin/sh
# SageMaker starts images as `docker run IMAGE train` or `docker run IMAGE serve`; Processing jobs give their
# own entry point (`wsi-lab tile ...`), which replaces this script.
set -e
case "$1" in
  train) shift; exec train "$@" ;;                              # sagemaker-training: runs sagemaker_program
  serve) shift; exec python -m wsi_lab.cloud.entry serve "$@" ;;
  *) exec "$@" ;;
esac
