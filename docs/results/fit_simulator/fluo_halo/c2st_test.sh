#!/bin/bash
# issue 12's "C2ST fitted <= base" on dsb2018_fluo for the default fit with the halo
# (fluo_halo/dsb2018_fluo.yaml), the protocol of fluo_dome/c2st_test.sh: 48 simulated 256^2
# images of seed 11, C2ST seeds 2-7 against the 15 test images (preset 0.901, dome fit as
# measured 0.877, floor fit before 0.913); evaluation only
set -e
export OMP_NUM_THREADS=1 CELLSYNTH_THREADS=1
cd /work/main
o=runs/fit-halo
[ -d $o/fitted-sim ] || cellsynth simulate --preset fluo --config docs/results/fit_simulator/fluo_halo/dsb2018_fluo.yaml --n 48 --size 256 --seed 11 --out $o/fitted-sim --quiet
[ -f $o/fitted-test-r6.json ] || cellsynth realism --a $o/fitted-sim --b ../shared/data/dsb2018_fluo/test --seed 2 --repeats 6 --threads 1 --json $o/fitted-test-r6.json > $o/fitted-test-r6.txt 2>&1
echo done > $o/c2st_test.done
