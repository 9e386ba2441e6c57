#!/usr/bin/env bash
# Does this node's kernel have what ferry needs? Run before anything is
# installed (the Ansible play does); `ferry doctor` says the same, in more
# detail, once ferry runs. Reads the kernel's config (/proc/config.gz, else
# /boot/config-$(uname -r)); where there is none, tries what can be tried.
#
#   check-kernel.sh [--strict] [--page-size BYTES]
#
# Exit 1 when CRIU cannot work at all (CHECKPOINT_RESTORE, namespaces), when
# the page size is not BYTES (CRIU images never cross page sizes), and with
# --strict also when post-copy (USERFAULTFD) or socket dumps (*_DIAG) are
# missing. For tests: FERRY_KERNEL_CONFIG (a config file), FERRY_PAGE_SIZE,
# FERRY_BOARD (the board's model; /proc/device-tree/model), FERRY_OS_RELEASE.
set -euo pipefail

strict=0 want_page=""
while (($#)); do
    case $1 in
        --strict) strict=1; shift ;;
        --page-size) want_page=${2:?--page-size BYTES}; shift 2 ;;
        *) echo "check-kernel: unknown argument $1: use --strict, --page-size BYTES" >&2; exit 2 ;;
    esac
done

config=""
if [[ -n ${FERRY_KERNEL_CONFIG:-} ]]; then
    config=$(cat "$FERRY_KERNEL_CONFIG")
elif [[ -r /proc/config.gz ]]; then
    config=$(zcat /proc/config.gz)
elif [[ -r /boot/config-$(uname -r) ]]; then
    config=$(cat "/boot/config-$(uname -r)")
fi
page=${FERRY_PAGE_SIZE:-$(getconf PAGESIZE)}
board=${FERRY_BOARD:-$({ tr -d '\0' </proc/device-tree/model; } 2>/dev/null || true)}
os_release=${FERRY_OS_RELEASE:-/etc/os-release}
distro=$(. "$os_release" 2>/dev/null && echo "${ID:-?}")

# y, m or n from the config; where there is no config, what the probe finds
option() {
    if [[ -n $config ]]; then
        if grep -q "^CONFIG_$1=y" <<<"$config"; then echo y
        elif grep -q "^CONFIG_$1=m" <<<"$config"; then echo m
        else echo n; fi
        return
    fi
    case $1 in
        CHECKPOINT_RESTORE) [[ -e /proc/sys/kernel/ns_last_pid ]] && echo y || echo n ;;
        NAMESPACES) [[ -e /proc/self/ns/pid && -e /proc/self/ns/net ]] && echo y || echo n ;;
        USERFAULTFD) [[ -e /proc/sys/vm/unprivileged_userfaultfd ]] && echo y || echo n ;;
        *) echo "?" ;;
    esac
}

hard=0 soft=0
check() {  # OPTION, what its absence costs, hard|soft
    local v
    v=$(option "$1")
    case $v in
        y | m) printf '  ok       CONFIG_%s\n' "$1" ;;
        "?") printf '  unknown  CONFIG_%s (no kernel config to read: ferry doctor tries it)\n' "$1" ;;
        *)
            printf '  missing  CONFIG_%s: %s\n' "$1" "$2"
            if [[ $3 == hard ]]; then hard=1; else soft=1; fi
            ;;
    esac
}

echo "kernel $(uname -r), $(dpkg --print-architecture 2>/dev/null || uname -m), $((page / 1024)) KiB pages${board:+, $board}"
check CHECKPOINT_RESTORE "CRIU cannot run: no migration at all" hard
check NAMESPACES "ferry's containers need pid, uts, ipc namespaces" hard
check USERFAULTFD "no post-copy, no hybrid" soft
check UNIX_DIAG "a container with a unix socket (most programs) cannot be dumped" soft
check INET_DIAG "a container with a TCP or UDP socket cannot be dumped" soft
check PACKET_DIAG "a container with a packet socket cannot be dumped" soft
check NETLINK_DIAG "a container with a netlink socket cannot be dumped" soft

fail=$hard
if [[ -n $want_page && $page != "$want_page" ]]; then
    echo "  wrong page size: $page bytes, the cluster's is $want_page (images never cross page sizes)"
    if [[ $board == *"Raspberry Pi 5"* ]]; then
        echo "  Pi 5: boot the 4 KiB kernel (kernel=kernel8.img in /boot/firmware/config.txt)"
    fi
    fail=1
fi
if ((soft)); then
    ((strict)) && fail=1
    if [[ $board == *"Raspberry Pi"* && $distro != ubuntu ]]; then
        echo "  Raspberry Pi OS lacks these; two ways to get them (docs/operating.md):"
        echo "    1. build the Pi kernel from its defconfig plus ops/kernel/ferry.config"
        echo "    2. run Ubuntu Server for Raspberry Pi (its linux-raspi kernel has them)"
    else
        echo "  a kernel with ops/kernel/ferry.config's options has them"
    fi
fi
if ((hard)); then echo "  ferry cannot migrate anything on this kernel"; fi
exit "$fail"
