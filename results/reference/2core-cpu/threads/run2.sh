#!/bin/bash
cd /tmp/vmrun
for cfg in onethread free3 onethread2 free4; do
  case $cfg in onethread*) P=/tmp/pin/one-thread;; *) P=/tmp/vmrun/.venv/bin/python;; esac
  echo "$(date +%T) start $cfg" >> /tmp/pin/progress
  .venv/bin/devicebench run --env A=$P --env B=$P --processes 5 --name $cfg --output-dir /tmp/pin -- --device cpu -k "mnist and resident" --scale standard --data synthetic > /tmp/pin/$cfg.log 2>&1
done
echo "$(date +%T) done2" >> /tmp/pin/progress
