#!/bin/bash
cd /tmp/vmrun
for cfg in pinned free pinned2 free2; do
  case $cfg in pinned*) P=/tmp/pin/pinned;; *) P=/tmp/vmrun/.venv/bin/python;; esac
  echo "$(date +%T) start $cfg" >> /tmp/pin/progress
  .venv/bin/devicebench run --env A=$P --env B=$P --processes 5 --name $cfg --output-dir /tmp/pin -- --device cpu -k "mnist and resident" --scale standard --data synthetic > /tmp/pin/$cfg.log 2>&1
done
echo "$(date +%T) done" >> /tmp/pin/progress
