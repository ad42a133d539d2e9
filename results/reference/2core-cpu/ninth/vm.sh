#!/bin/bash
# 2-core VM: three repetitions of A, B (A/A) and slowed (planted 5%), --until 5% --budget 15m, per workload.
cd "$(dirname "$0")/.."
PY=$PWD/.venv/bin/python
printf '#!/bin/bash\nexport DEVICEBENCH_SLOWDOWN_FRACTION=0.05\nexec %s "$@"\n' "$PY" > scratch/slowed-vm; chmod +x scratch/slowed-vm
R=scratch/vm; mkdir -p $R
CAL=results/reference/2core-cpu/until-zero/calibration.json
for rep in ${REPS:-1 2 3}; do
  for w in mnist resnet; do
    [ $w = mnist ] && K="-k mnist --scale standard" || K="-k resnet --scale quick"
    name=vm-rep$rep-$w
    echo "$(date +%T) start $name" >> $R/progress
    .venv/bin/devicebench run --env A=$PY --env B=$PY --env slowed=$PWD/scratch/slowed-vm --until 5% --budget 15m \
      --name $name --output-dir $R --calibration $CAL -- --device cpu $K --data synthetic --pretrained no > $R/$name.log 2>&1
    for s in B slowed; do
      .venv/bin/devicebench compare $R/$name-A.json $R/$name-$s.json --calibration $CAL --fail-on-regression > $R/$name-$s-compare.log 2>&1
      echo "gate exit $?" >> $R/$name-$s-compare.log
    done
    echo "$(date +%T) end $name" >> $R/progress
  done
done
touch $R/done
