#!/bin/bash
# issue 12's "C2ST fitted <= base" on dsb2018_fluo with the fit as measured (--spread fitted),
# which now draws the dome and the spread of noise and focus between images; the protocol of
# runs/fit-c2st/run_fluo_repeats.sh (48 simulated 256^2 images of seed 11, C2ST seeds 2-7
# against the 15 test images; base 0.901, the fit as measured before 0.906): evaluation only
set -e
export OMP_NUM_THREADS=1 CELLSYNTH_THREADS=1
cd /work/main
o=runs/fit-dome
[ -d $o/fitted-sim ] || cellsynth simulate --preset fluo --config $o/fitted-dsb2018_fluo.yaml --n 48 --size 256 --seed 11 --out $o/fitted-sim --quiet
[ -f $o/fitted-test-r6.json ] || cellsynth realism --a $o/fitted-sim --b ../shared/data/dsb2018_fluo/test --seed 2 --repeats 6 --threads 1 --json $o/fitted-test-r6.json > $o/fitted-test-r6.txt 2>&1
echo done > $o/c2st_test.done
