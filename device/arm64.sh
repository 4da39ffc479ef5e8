#!/usr/bin/env bash
# An emulated arm64 "device": a Debian bookworm arm64 root file system run under qemu-user
# (binfmt_misc), reachable over SSH on 127.0.0.1. See device/README.md.
#
#   device/arm64.sh build    build the root (once; again only when this script changes)
#   device/arm64.sh start    mount, start sshd, wait until it answers, print how to reach it
#   device/arm64.sh stop     stop what start started, unmount what start mounted (safe twice)
#   device/arm64.sh status   built? running? (exit 0 only when running)
#   device/arm64.sh env      shell exports for tests: eval "$(device/arm64.sh env)"
#   device/arm64.sh ssh ...  run a command on the device
#
# Exit codes: 0 ok, 1 failure, 2 usage, 3 the emulator cannot run here (not root, no binfmt_misc,
# qemu missing): tests that need the device skip with that reason.
set -eEuo pipefail
trap 'echo "[arm64] error: line $LINENO: $BASH_COMMAND failed" >&2' ERR

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(dirname "$(dirname "$SCRIPT")")
CACHE=${EDGE_ELECTRA_DEVICE_CACHE:-/var/cache/edge-electra/arm64}
PORT=${EDGE_ELECTRA_DEVICE_PORT:-2222}
SUITE=bookworm          # its python3 is 3.11, its glibc 2.36: the wheel tags below follow from these
PACKAGES=python3,python3-venv,python3-pip,openssh-server,ca-certificates
# Wheels downloaded for offline installs on the device: the run-time core and both runtimes.
WHEELS=(numpy tokenizers click tomli-w onnxruntime openvino)
# The CPU qemu emulates. Its default, "max", announces SVE, SVE2, i8mm and bf16, which would send
# the runtimes down code paths that few edge CPUs have; a Cortex-A76 (Raspberry Pi 5, many phones)
# has NEON, fp16 and dot product only. write_cpuinfo describes the same CPU.
QEMU_CPU_MODEL=cortex-a76

ROOT=$CACHE/root        # the arm64 file system
KEYS=$CACHE/ssh         # client key pair and known_hosts
RUN=$CACHE/run          # state of a started device: pids, mounts, sshd log
STATE=$RUN/state        # lines "port N", "mount ID PATH", "pid N", in the order they were made
STAMP=etc/edge-electra-device.sha256   # inside the root: sha256 of the script that built it
SSHD_CONFIG=/etc/ssh/edge-electra_sshd_config
WHEEL_DIR=/root/wheels

say() { printf '[arm64] %s\n' "$*" >&2; }
die() { say "error: ${*:2}"; exit "$1"; }

cannot_run() { die 3 "the arm64 emulator cannot run here: $*"; }

need_root() {
    [[ $(id -u) -eq 0 ]] || cannot_run "needs root (chroot, mount, binfmt_misc); run it as root"
}

need_tools() {
    local missing=()
    for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    ((${#missing[@]} == 0)) ||
        cannot_run "missing ${missing[*]}: apt-get install -y qemu-user-static binfmt-support mmdebstrap arch-test"
}

# qemu-aarch64 registered with binfmt_misc, with the F flag so that chroots need no qemu inside.
need_binfmt() {
    need_tools update-binfmts qemu-aarch64-static
    local dir=/proc/sys/fs/binfmt_misc
    if [[ ! -e $dir/status ]]; then
        mount -t binfmt_misc binfmt_misc "$dir" 2>/dev/null ||
            cannot_run "binfmt_misc is not mounted and cannot be (mount -t binfmt_misc binfmt_misc $dir)"
    fi
    if ! grep -qx enabled "$dir/qemu-aarch64" 2>/dev/null; then
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 ||
            cannot_run "update-binfmts --enable qemu-aarch64 failed (a container without binfmt_misc rights?)"
    fi
    if command -v arch-test >/dev/null; then
        arch-test arm64 >/dev/null 2>&1 || cannot_run "arch-test arm64 fails although qemu-aarch64 is registered"
    fi
}

# The cache must stay out of the checkout: the root is 300 MB of someone else's files.
check_cache() {
    local cache
    cache=$(realpath -m "$CACHE")
    [[ $cache != "$REPO" && $cache != "$REPO"/* ]] ||
        die 1 "EDGE_ELECTRA_DEVICE_CACHE=$CACHE is inside the checkout $REPO; put it elsewhere"
    [[ $CACHE != *[[:space:]]* ]] || die 1 "EDGE_ELECTRA_DEVICE_CACHE must not contain white space"
}

# One build/start/stop at a time. Opened on fd 9, which sshd must not inherit (see start).
lock() {
    mkdir -p "$CACHE" "$KEYS" "$RUN"
    exec 9>"$CACHE/lock"
    flock -w 900 9 || die 1 "another arm64.sh holds $CACHE/lock"
}

mounts_under() {  # mount points at or below $1
    awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo
}

mount_id() {  # id of the topmost mount on $1 (mountinfo lists it last), empty if none
    awk -v d="$1" '$5 == d { id = $1 } END { print id }' /proc/self/mountinfo
}

built_sha() { cat "$ROOT/$STAMP" 2>/dev/null || true; }
script_sha() { sha256sum "$SCRIPT" | cut -d' ' -f1; }

# "deb URI SUITE COMPONENTS" for the host's Debian sources of $SUITE, from apt's own parsing of
# sources.list and the deb822 .sources files. EDGE_ELECTRA_DEVICE_MIRRORS (lines) overrides.
mirrors() {
    if [[ -n ${EDGE_ELECTRA_DEVICE_MIRRORS:-} ]]; then
        printf '%s\n' "$EDGE_ELECTRA_DEVICE_MIRRORS"
        return
    fi
    local lines
    # shellcheck disable=SC2016  # $(...) here is apt's format syntax
    lines=$(apt-get indextargets --format '$(TARGET_OF) $(REPO_URI) $(RELEASE) $(COMPONENT)' 2>/dev/null |
        awk -v s="$SUITE" '$1 == "deb" && ($3 == s || $3 == s "-updates" || $3 == s "-security") {
                key = $2 " " $3; if (!(key in comps)) order[n++] = key
                if (index(" " comps[key] " ", " " $4 " ") == 0) comps[key] = comps[key] " " $4 }
            END { for (i = 0; i < n; i++) print "deb " order[i] comps[order[i]] }')
    if [[ -z $lines ]]; then
        say "no $SUITE sources in the host's apt configuration; using deb.debian.org"
        lines="deb http://deb.debian.org/debian $SUITE main
deb http://deb.debian.org/debian $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main"
    fi
    printf '%s\n' "$lines"
}

# How the host's pip reaches PyPI, for the device's /etc/pip.conf: the CA bundle (the host's extra
# CAs are added to the root's), and any http(s) index, extra index or proxy the host configures.
# Local file:// indexes and find-links hold x86-64 wheels and do not exist on the device.
device_pip_conf() {
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    python3 -m pip config list 2>/dev/null |
        sed -nE "s/^[^.]*\.(index-url|extra-index-url|trusted-host|proxy)='(.*)'$/\1 \2/p" |
        while read -r key value; do
            local kept=()
            for v in $value; do
                if [[ $key == trusted-host || $v == http://* || $v == https://* ]]; then kept+=("$v"); fi
            done
            if ((${#kept[@]})); then echo "$key = ${kept[*]}"; fi
        done | sort -u -t= -k1,1
    local proxy=${HTTPS_PROXY:-${https_proxy:-}}
    if [[ -n $proxy ]]; then echo "proxy = $proxy"; fi
}

# pip download for the device: pip does not widen manylinux_2_X tags by itself, so name each glibc.
download_wheels() {
    local dest=$1 platforms=(--platform manylinux2014_aarch64)
    for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_aarch64"); done
    python3 -m pip download -qq --dest "$dest" --only-binary=:all: --implementation cp \
        --python-version 3.11 "${platforms[@]}" "${WHEELS[@]}"
}

cmd_build() {
    need_root
    need_tools mmdebstrap chroot ssh-keygen python3
    need_binfmt
    check_cache
    lock
    local sha
    sha=$(script_sha)
    if [[ -d $ROOT && $(built_sha) == "$sha" ]]; then
        say "reusing $ROOT (built by this version of arm64.sh)"
        return 0
    fi
    [[ ! -s $STATE ]] || die 1 "the device is started; run '$0 stop' before rebuilding"
    local new=$ROOT.new
    for dir in "$new" "$ROOT"; do
        [[ -z $(mounts_under "$dir") ]] || die 1 "something is mounted under $dir; unmount it first"
    done
    rm -rf "$new"
    if [[ -d $ROOT ]]; then
        [[ -f $ROOT/$STAMP ]] || die 1 "$ROOT exists but was not built by arm64.sh; move it away"
        say "$ROOT was built by another version of arm64.sh: rebuilding"
    fi

    say "mmdebstrap $SUITE arm64 into $new"
    local sources
    mapfile -t sources < <(mirrors)
    printf '[arm64]   %s\n' "${sources[@]}" >&2
    mmdebstrap --mode=root --variant=minbase --architectures=arm64 --include="$PACKAGES" \
        --quiet "$SUITE" "$new" "${sources[@]}"

    say "configuring: CA certificates, pip, sshd (${SECONDS}s so far)"
    cp /usr/local/share/ca-certificates/*.crt "$new/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$new" update-ca-certificates >/dev/null
    device_pip_conf >"$new/etc/pip.conf"
    # Host keys made here (fast) rather than by the emulated ssh-keygen; ed25519 only.
    rm -f "$new"/etc/ssh/ssh_host_*
    ssh-keygen -q -t ed25519 -N '' -C arm64-device -f "$new/etc/ssh/ssh_host_ed25519_key"
    [[ -f $KEYS/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C edge-electra-arm64 -f "$KEYS/id_ed25519"
    install -d -m 700 "$new/root/.ssh"
    install -m 600 "$KEYS/id_ed25519.pub" "$new/root/.ssh/authorized_keys"
    cat >"$new$SSHD_CONFIG" <<EOF
# Written by device/arm64.sh. Port and ListenAddress are given on sshd's command line.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PidFile /run/sshd.pid
Subsystem sftp internal-sftp
EOF

    say "downloading aarch64 wheels into $WHEEL_DIR: ${WHEELS[*]} (${SECONDS}s so far)"
    download_wheels "$new$WHEEL_DIR"

    echo "$sha" >"$new/$STAMP"
    rm -rf "$ROOT"
    mv "$new" "$ROOT"
    say "built $ROOT ($(du -sh "$ROOT" | cut -f1), ${SECONDS}s)"
}

# /proc/cpuinfo as an arm64 kernel writes it for $QEMU_CPU_MODEL, one entry per host CPU so that it
# agrees with /sys. qemu-user passes the host's x86 one through, which onnxruntime cannot parse.
write_cpuinfo() {
    local n
    n=$(nproc --all)
    for ((i = 0; i < n; i++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 50.00\n' "$i"
        printf 'Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n'
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n'
    done >"$1"
}

record() { echo "$*" >>"$STATE"; }

# mount, then record it (with its id, so stop unmounts this mount and no other one on the same
# path), then keep it from propagating to or from the host's mounts.
mount_recorded() {
    local target=${*: -1}
    mount "$@"
    record mount "$(mount_id "$target")" "$target"
    mount --make-private "$target"
}

ssh_opts() {
    echo -i "$KEYS/id_ed25519" -p "$PORT" -o IdentitiesOnly=yes -o BatchMode=yes \
        -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$KEYS/known_hosts" -o LogLevel=ERROR
}

recorded() {  # the values recorded under $1, one line each
    awk -v k="$1" '$1 == k { $1 = ""; print substr($0, 2) }' "$STATE" 2>/dev/null || true
}

running() {
    local pid
    pid=$(recorded pid | tail -n1)
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

answers() {
    # shellcheck disable=SC2046
    timeout 30 ssh $(ssh_opts) -o ConnectTimeout=10 root@127.0.0.1 true 2>/dev/null
}

print_destination() {
    echo "destination: root@127.0.0.1"
    echo "port:        $PORT"
    echo "key:         $KEYS/id_ed25519"
    echo "known_hosts: $KEYS/known_hosts"
    echo "try:         $0 ssh python3 -c 'import platform; print(platform.machine())'"
}

cmd_start() {
    if [[ ! $PORT =~ ^[1-9][0-9]{0,4}$ ]] || ((PORT > 65535)); then
        die 2 "EDGE_ELECTRA_DEVICE_PORT=$PORT is not a port number"
    fi
    need_root
    need_binfmt
    check_cache
    lock
    [[ -d $ROOT && -n $(built_sha) ]] || die 1 "no device root in $ROOT; run '$0 build' first"
    [[ $(built_sha) == "$(script_sha)" ]] || say "warning: $ROOT was built by another version of arm64.sh; '$0 build' rebuilds it"
    if running; then
        PORT=$(recorded port | tail -n1)
        say "already running"
        print_destination
        return 0
    fi
    if [[ -s $STATE ]]; then
        say "cleaning up after an earlier start"
        stop_recorded || die 1 "could not clean up after an earlier start (see above)"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        die 1 "port $PORT on 127.0.0.1 is taken; choose another with EDGE_ELECTRA_DEVICE_PORT"
    fi
    : >"$STATE"
    record port "$PORT"
    trap 'say "start failed; undoing"; stop_recorded' EXIT

    # The root bound onto itself, private: nothing mounted inside it reaches the host's mount tree.
    mount_recorded --bind "$ROOT" "$ROOT"
    mount_recorded -t proc proc "$ROOT/proc"
    write_cpuinfo "$RUN/cpuinfo"
    mount_recorded --bind "$RUN/cpuinfo" "$ROOT/proc/cpuinfo"
    mount_recorded -t sysfs sysfs "$ROOT/sys"   # OpenVINO's hwloc crashes without /sys
    mount_recorded --bind /dev "$ROOT/dev"
    mount_recorded --bind /dev/pts "$ROOT/dev/pts"
    mount_recorded -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$ROOT/dev/shm"
    mount_recorded -t tmpfs -o mode=755,nosuid,nodev tmpfs "$ROOT/run"
    mkdir -p "$ROOT/run/sshd"

    local hostkey
    hostkey=$(cut -d' ' -f1,2 "$ROOT/etc/ssh/ssh_host_ed25519_key.pub")
    if [[ $PORT == 22 ]]; then echo "127.0.0.1 $hostkey"; else echo "[127.0.0.1]:$PORT $hostkey"; fi >"$KEYS/known_hosts"

    # setsid: out of the caller's process group, so ^C in a test run does not kill the device.
    # qemu reads QEMU_CPU in every process: sshd passes it on to the sessions it starts.
    QEMU_CPU=$QEMU_CPU_MODEL setsid chroot "$ROOT" /usr/sbin/sshd -D -e -f "$SSHD_CONFIG" \
        -o "Port=$PORT" -o ListenAddress=127.0.0.1 -o "SetEnv=QEMU_CPU=$QEMU_CPU_MODEL" \
        </dev/null >"$RUN/sshd.log" 2>&1 9>&- &
    record pid $!

    local deadline=$((SECONDS + 90))
    until answers; do
        running || { tail -n 20 "$RUN/sshd.log" >&2; false; }
        ((SECONDS < deadline)) || { say "sshd does not answer after 90 s"; tail -n 20 "$RUN/sshd.log" >&2; false; }
        sleep 1
    done
    trap - EXIT
    say "started (sshd pid $(recorded pid), log $RUN/sshd.log)"
    print_destination
}

descendants() {  # pids below $1, from /proc
    ps -e -o pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2 }
        END { for (p in parent) for (q = parent[p]; q > 1; q = parent[q]) if (q == root) { print p; break } }'
}

# Ends the recorded sshd and what its sessions left running, unmounts the recorded mounts deepest
# first. The state file is dropped only when all of it is undone, so a failed stop can be rerun.
stop_recorded() {
    local pid rc=0
    for pid in $(recorded pid); do
        kill -0 "$pid" 2>/dev/null || continue
        local all
        all="$pid $(descendants "$pid" | tr '\n' ' ')"
        # shellcheck disable=SC2086
        kill $all 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        for p in $all; do kill -KILL "$p" 2>/dev/null || true; done
    done
    local id target
    while read -r id target; do
        [[ -n $id && $(mount_id "$target") == "$id" ]] || continue
        if ! umount "$target"; then
            say "cannot unmount $target; processes inside the root:"
            for p in /proc/[0-9]*; do
                [[ $(readlink "$p/root" 2>/dev/null) == "$ROOT" ]] && say "  ${p#/proc/}: $(tr '\0' ' ' <"$p/cmdline")"
            done
            rc=1
        fi
    done < <(recorded mount | tac)
    ((rc == 0)) && rm -f "$STATE"
    return $rc
}

cmd_stop() {
    need_root
    check_cache
    lock
    if [[ ! -s $STATE ]]; then
        say "not running"
        return 0
    fi
    stop_recorded || die 1 "stop left things behind (see above); '$0 stop' again once they are gone"
    say "stopped"
}

cmd_status() {
    check_cache
    local sha rc=1
    sha=$(built_sha)
    if [[ -z $sha ]]; then echo "root:    not built ($ROOT)"
    elif [[ $sha == "$(script_sha)" ]]; then echo "root:    built, current ($ROOT, $(du -shx "$ROOT" | cut -f1))"
    else echo "root:    built by another version of arm64.sh ('build' rebuilds it)"
    fi
    if running; then
        PORT=$(recorded port | tail -n1)
        if answers; then echo "device:  running, ssh answers on 127.0.0.1:$PORT"; rc=0
        else echo "device:  sshd running (pid $(recorded pid)) but ssh does not answer on 127.0.0.1:$PORT"; fi
        echo "mounts:  $(recorded mount | cut -d' ' -f2 | tr '\n' ' ')"
    elif [[ -s $STATE ]]; then echo "device:  stopped uncleanly; '$0 stop' cleans up"
    else echo "device:  stopped"
    fi
    local binfmt=/proc/sys/fs/binfmt_misc/qemu-aarch64
    echo "binfmt:  $(head -n1 "$binfmt" 2>/dev/null || echo 'qemu-aarch64 not registered')"
    exit $rc
}

cmd_env() {
    if running; then PORT=$(recorded port | tail -n1); else say "note: the device is not running ('$0 start')"; fi
    cat <<EOF
export EDGE_ELECTRA_DEVICE=root@127.0.0.1
export EDGE_ELECTRA_DEVICE_PORT=$PORT
export EDGE_ELECTRA_DEVICE_KEY=$KEYS/id_ed25519
export EDGE_ELECTRA_DEVICE_KNOWN_HOSTS=$KEYS/known_hosts
export EDGE_ELECTRA_DEVICE_PYTHON=python3
export EDGE_ELECTRA_DEVICE_WHEELS=$WHEEL_DIR
EOF
}

cmd_ssh() {
    running || die 1 "the device is not running ('$0 start')"
    PORT=$(recorded port | tail -n1)
    # shellcheck disable=SC2046
    exec ssh $(ssh_opts) root@127.0.0.1 "$@"
}

case ${1:-} in
    build | start | stop | status | env | ssh) command=$1; shift; "cmd_$command" "$@" ;;
    *) sed -n '5,10p' "$SCRIPT" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
