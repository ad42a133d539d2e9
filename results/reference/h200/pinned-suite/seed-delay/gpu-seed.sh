#!/bin/bash
# H200: is mnist_mlp seed's planted 5% read low because the delay is a GPU sleep kernel? A, slowed (the delay
# as a sleep kernel, as shipped) and host (the same delay, taken on the host: the kernel shrunk to one cycle),
# rounds alternated, 3 triples; GPU clocks sampled every 200 ms.
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=$(command -v python3); R=/tmp/seed; mkdir -p $R/host
printf '#!/bin/bash\nexport DEVICEBENCH_SLOWDOWN_FRACTION=0.05\nexec %s "$@"\n' "$PY" > $R/slowed
cat > $R/host/sitecustomize.py <<'PYEOF'
import torch.cuda
_sleep = torch.cuda._sleep
# keep_busy's clock measurement (5M cycles) runs as shipped; the planted delay's kernel is one cycle, so the
# host waits out the whole delay instead.
torch.cuda._sleep = lambda cycles: _sleep(cycles if cycles == 5_000_000 else 1)
PYEOF
printf '#!/bin/bash\nexport DEVICEBENCH_SLOWDOWN_FRACTION=0.05 PYTHONPATH=%s:$PYTHONPATH\nexec %s "$@"\n' "$R/host" "$PY" > $R/host-delay
chmod +x $R/slowed $R/host-delay
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,utilization.gpu,power.draw --format=csv -lms 200 > $R/clocks.csv 2>&1 &
SMI=$!
CAL=results/reference/h200/pinned-suite/calibration.json
timeout ${SEED_LIMIT:-240} $PY -m devicebench.cli run --env A=$PY --env slowed=$R/slowed --env host=$R/host-delay --processes 3 --budget ${SEED_BUDGET:-3m} \
  --name seed --output-dir $R --calibration $CAL -- --device cuda --scale standard --data synthetic -k "mnist_mlp and seed" > $R/run.log 2>&1
echo "run exit $?" >> $R/run.log
kill $SMI
for s in slowed host; do
  $PY -m devicebench.cli compare $R/seed-A.json $R/seed-$s.json --calibration $CAL > $R/compare-$s.log 2>&1
done
tar czf $OUT/seed.tgz -C /tmp seed
grep -E "^pair|    (A|slowed|host):|exit" $R/run.log; grep -ohE "[0-9.]+x (slower|faster)[^[]*" $R/compare-*.log
