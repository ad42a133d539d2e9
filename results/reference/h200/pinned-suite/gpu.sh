#!/bin/bash
# H200, in the background: whole suite A/A, then A against a planted 5%, each exactly the issue's command
# As run on 2026-12-03 (ninth session): the A/A part as written; the script was then stopped and its planted part
# started by hand with the same command and --budget 10m, so that both fitted in the session's device time.
# (--until 5% --until seed=10% --budget 10m), judged with the pinned H200 calibration
# (results/reference/h200/pinned/calibration.json). Writes to /tmp/gpu only, and packs /tmp/gpu-aa.tgz and
# /tmp/gpu-planted.tgz when each part ends, so that the call that waits only has to copy one file to $OUT.
cd "$(dirname "$0")/.."
pip install --no-deps --target /tmp/site .whl/ranger21-0.1.0-py3-none-any.whl -q > /dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
PY=$(command -v python3)
R=/tmp/gpu; mkdir -p $R
printf '#!/bin/bash\nexport DEVICEBENCH_SLOWDOWN_FRACTION=0.05\nexec %s "$@"\n' "$PY" > $R/slowed; chmod +x $R/slowed
CAL=$R/calibration.json; cp results/reference/h200/pinned/calibration.json $CAL
DB="$PY -m devicebench.cli"
ARGS="-- --device cuda --scale standard --data synthetic --pretrained no"
{ nvidia-smi --query-gpu=name,driver_version --format=csv; $PY -c 'import torch,timm;print(torch.__version__,timm.__version__)'; nproc; } > $R/machine.txt 2>&1
$DB run --env A=$PY --env B=$PY --until 5% --until seed=10% --budget 10m --name h200-aa --output-dir $R --calibration $CAL $ARGS > $R/aa.log 2>&1
$DB compare $R/h200-aa-A.json $R/h200-aa-B.json --calibration $CAL --fail-on-regression > $R/aa-compare.log 2>&1; echo "gate exit $?" >> $R/aa-compare.log
tar czf /tmp/gpu-aa.tgz -C /tmp gpu; touch /tmp/aa-done
$DB run --env A=$PY --env slowed=$R/slowed --until 5% --until seed=10% --budget ${PLANTED_BUDGET:-10m} --name h200-planted --output-dir $R --calibration $CAL $ARGS > $R/planted.log 2>&1
$DB compare $R/h200-planted-A.json $R/h200-planted-slowed.json --calibration $CAL --fail-on-regression > $R/planted-compare.log 2>&1; echo "gate exit $?" >> $R/planted-compare.log
tar czf /tmp/gpu-planted.tgz -C /tmp gpu; touch /tmp/planted-done
