#!/bin/bash
# Focused measurement for issue #16 (bench/RESULTS.md section 12): the followed switcher
# (4 pairs aimed at 10,000 switches/s) recorded by BIN for 14 s; over an 8 s window in the
# middle it prints the agent CPU (from /proc/PID/stat) and every BPF program's run count and
# run time (kernel.bpf_stats_enabled). Usage, as root: switcher_bpf_stats.sh BIN LABEL
BIN=$1; LABEL=$2
cd "$(dirname "$0")/../.."
[ -x /tmp/switcher ] || gcc -O2 -pthread -o /tmp/switcher bench/targets/switcher.c
/tmp/switcher pairs 4 10000 60 > /dev/null & T=$!
sleep 1
sysctl -qw kernel.bpf_stats_enabled=1
rm -rf /tmp/exp-out
$BIN record --pid $T --quiet --format json --duration 14s --out /tmp/exp-out > /dev/null 2>&1 & A=$!
sleep 4
bpftool prog show -j > /tmp/a.json; S0=$(awk '{print $14+$15}' /proc/$A/stat); W0=$(grep -h ctxt_switches /proc/$T/task/*/status | awk '{s+=$2} END{print s}'); t0=$(date +%s.%N)
sleep 8
bpftool prog show -j > /tmp/b.json; S1=$(awk '{print $14+$15}' /proc/$A/stat); W1=$(grep -h ctxt_switches /proc/$T/task/*/status | awk '{s+=$2} END{print s}'); t1=$(date +%s.%N)
wait $A; kill $T 2>/dev/null
python3 - "$LABEL" $S0 $S1 $W0 $W1 $t0 $t1 <<'PY'
import json,sys
label,s0,s1,w0,w1,t0,t1=sys.argv[1],*map(float,sys.argv[2:])
a={p['id']:p for p in json.load(open('/tmp/a.json'))}
b={p['id']:p for p in json.load(open('/tmp/b.json'))}
secs=t1-t0; sw=(w1-w0)/secs
tick=100
agent=(s1-s0)/tick/secs*100
print(f"{label}: switches/s {sw:.0f} agent {agent:.2f}% of a core ({agent*10/ (sw/1000):.2f} ms/1000 sw)")
tot=0
for i,p in b.items():
    if i not in a or 'run_cnt' not in p: continue
    dn=p['run_cnt']-a[i].get('run_cnt',0); dt=p['run_time_ns']-a[i].get('run_time_ns',0)
    if dn<=0: continue
    tot+=dt
    print(f"  {p.get('name','?'):20s} runs/s {dn/secs:8.0f}  ns/run {dt/dn:7.0f}  ns/switch {dt/(w1-w0):7.0f}")
print(f"  total eBPF per switch {tot/(w1-w0):.0f} ns")
PY
