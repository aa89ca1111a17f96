#!/bin/sh
# Keeps one TinyML runner alive on a Linux target that has no systemd user session.
# Started by the bridge as `setsid sh supervise.sh ...` so it leads its own process group and
# survives the SSH session; the bridge stops it by signalling that group.
#
# usage: supervise.sh RUN_DIR DEPLOY_DIR PYTHON START_ID INPUT_MODE
#   RUN_DIR/supervisor.pid   this script's pid (= process group id)
#   RUN_DIR/runner.pid       the runner's pid
#   RUN_DIR/exit             "START_ID STATUS" once the runner exited and was not restarted
#   RUN_DIR/restarts         "START_ID N": restarts made for this start
#   DEPLOY_DIR/runner.log    protocol lines (stdout), appended
#   DEPLOY_DIR/runner.err    the runner's stderr (interpreter chatter, tracebacks)
# INPUT_MODE "fifo" connects the runner's stdin to RUN_DIR/input (a named pipe, opened
# read-write so it never reaches end-of-file); anything else gives it /dev/null.
#
# A runner that exits within MIN_UPTIME of its first start is not restarted: that is a boot
# crash the bridge must report. Later exits are restarted after a pause while the budget lasts
# (MAX_RESTARTS within RESTART_WINDOW); beyond it the supervisor gives up and records the exit
# status, which the bridge reports as a crashed device. Exit status 0 (stopped by SIGTERM, or
# max_inferences reached) is never restarted. Times in centiseconds (from /proc/uptime).
set -u
RUN_DIR=$1
DEPLOY_DIR=$2
PYTHON=$3
START_ID=$4
INPUT_MODE=$5
MIN_UPTIME_CS=${TINYML_MIN_UPTIME_CS:-1000}
RESTART_PAUSE=${TINYML_RESTART_PAUSE:-2}
MAX_RESTARTS=${TINYML_MAX_RESTARTS:-3}
RESTART_WINDOW_CS=${TINYML_RESTART_WINDOW_CS:-6000}

now_cs() { read -r up _ < /proc/uptime; echo "${up%.*}${up#*.}" | sed 's/^0*//;s/^$/0/'; }

stopping=0
child=
on_term() {
    stopping=1
    if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; fi
}
trap on_term TERM INT HUP

echo $$ > "$RUN_DIR/supervisor.pid.tmp" && mv -f "$RUN_DIR/supervisor.pid.tmp" "$RUN_DIR/supervisor.pid"
rm -f "$RUN_DIR/exit"
echo "$START_ID 0" > "$RUN_DIR/restarts"
restarts=0
recent=""   # start times (cs) of the restarts inside the window
first=1
cd "$DEPLOY_DIR" || { echo "$START_ID 126" > "$RUN_DIR/exit"; exit 126; }

while :; do
    started=$(now_cs)
    if [ "$INPUT_MODE" = "fifo" ]; then
        [ -p "$RUN_DIR/input" ] || mkfifo "$RUN_DIR/input"
        "$PYTHON" -u runner.py "$DEPLOY_DIR" >> runner.log 2>> runner.err 0<> "$RUN_DIR/input" &
    else
        "$PYTHON" -u runner.py "$DEPLOY_DIR" >> runner.log 2>> runner.err < /dev/null &
    fi
    child=$!
    echo "$child" > "$RUN_DIR/runner.pid"
    # `wait` returns early when a trapped signal arrives; loop until the child is gone.
    status=0
    while :; do
        wait "$child"
        status=$?
        kill -0 "$child" 2>/dev/null || break
    done
    child=
    rm -f "$RUN_DIR/runner.pid"
    if [ "$stopping" = 1 ] || [ "$status" = 0 ]; then
        break
    fi
    now=$(now_cs)
    if [ "$first" = 1 ] && [ $((now - started)) -lt "$MIN_UPTIME_CS" ]; then
        break
    fi
    first=0
    kept=""
    for t in $recent; do
        [ $((now - t)) -lt "$RESTART_WINDOW_CS" ] && kept="$kept $t"
    done
    recent=$kept
    set -- $recent
    if [ "$#" -ge "$MAX_RESTARTS" ]; then
        echo "supervise.sh: runner exited with status $status; $# restarts within the window: giving up" >> runner.err
        break
    fi
    recent="$recent $now"
    restarts=$((restarts + 1))
    echo "$START_ID $restarts" > "$RUN_DIR/restarts"
    echo "supervise.sh: runner exited with status $status after $(((now - started) / 100))s; restart $restarts" >> runner.err
    sleep "$RESTART_PAUSE" &
    wait $! 2>/dev/null
    [ "$stopping" = 1 ] && break
done
echo "$START_ID $status" > "$RUN_DIR/exit.tmp" && mv -f "$RUN_DIR/exit.tmp" "$RUN_DIR/exit"
rm -f "$RUN_DIR/supervisor.pid"
exit 0
