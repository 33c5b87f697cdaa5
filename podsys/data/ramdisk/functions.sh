# shellcheck shell=sh
# FAIL_REASON and the steps' globals are read by /init, which sources this file.
# shellcheck disable=SC2034
# The deploy ramdisk's steps (sourced by /init). POSIX sh for busybox ash. Each step returns
# non-zero with FAIL_REASON set; /init runs each through run_step, which reports it and stops there.

FAIL_REASON=""
# Debian's tools by full path: busybox's shell runs its own applets first (Debian builds it with
# prefer-applets), and those lack what the steps need (wget crashes, tar drops xattrs, modprobe
# does not resolve modaliases, blkid has no -o).
WGET=/usr/bin/wget
TAR=/usr/bin/tar
ZSTD=/usr/bin/zstd
SFDISK=/usr/sbin/sfdisk
MKFS_EXT4=/usr/sbin/mkfs.ext4
MKFS_VFAT=/usr/sbin/mkfs.vfat
BLKID=/usr/sbin/blkid
MODPROBE=/usr/sbin/modprobe
IMAGE_FILE=/run/image.tar.zst
HOST_KEYS_ANSWER=/run/host-keys.answer
TARGET=/target
ESP_MOUNT=/run/esp
LOG_DIR=/run

log() {
    echo "podsys: $*" > /dev/console
}

# %-encode what would end or split a query value (no curl --data-urlencode here).
urlencode() {
    printf '%s' "$1" | sed 's/%/%25/g; s/ /%20/g; s/&/%26/g; s/#/%23/g; s/+/%2B/g; s/?/%3F/g; s/=/%3D/g; s/;/%3B/g'
}

# report EVENT STAGE MESSAGE: one callback to the head's status service. Never fatal: a
# missed report must not stop an install that is otherwise fine.
report() {
    url="$STATUS_URL?event=$1&stage=$(urlencode "$2")&message=$(urlencode "$3")"
    "$WGET" -q -T 10 --tries=1 -O /dev/null "$url" 2> /dev/null || log "status callback failed: $1 $2"
}

stage() {
    log "stage $1"
    report stage "$1" ""
}

fail() {
    log "FAILED at $1: $2"
    report fail "$1" "$2"
    # Stop here: no reboot (a reboot would PXE-boot straight back into this ramdisk).
    while true; do sleep 3600; done
}

run_step() {
    # run_step STAGE FUNCTION: report STAGE to the head, run FUNCTION, and stop there with its
    # FAIL_REASON if it fails.
    stage "$1"
    "$2" || fail "$1" "$FAIL_REASON"
}

cmdline_value() {
    # cmdline_value KEY CMDLINE -> the value of KEY=... (first match), empty if absent.
    for word in $2; do
        case "$word" in
            "$1"=*) printf '%s' "${word#*=}"; return 0 ;;
        esac
    done
    return 0
}

parse_cmdline() {
    IMAGE_URL=$(cmdline_value podsys.image "$1")
    STATUS_URL=$(cmdline_value podsys.status "$1")
    KEYS_URL=$(cmdline_value podsys.keys "$1")
    DISK=$(cmdline_value podsys.disk "$1")
    NODE_NAME=$(cmdline_value podsys.hostname "$1")
    FQDN=$(cmdline_value podsys.fqdn "$1")
    MAC=$(cmdline_value podsys.mac "$1")
    IP=$(cmdline_value podsys.ip "$1")
    GATEWAY=$(cmdline_value podsys.gateway "$1")
    DNS=$(cmdline_value podsys.dns "$1")
    FIRMWARE=$(cmdline_value podsys.firmware "$1")
    HEAD_IP=$(cmdline_value podsys.head_ip "$1")
    HEAD_NAME=$(cmdline_value podsys.head_name "$1")
    if [ -z "$FIRMWARE" ]; then
        if [ -d /sys/firmware/efi ]; then FIRMWARE=uefi; else FIRMWARE=bios; fi
    fi
}

load_modules() {
    # Drivers for what this machine has (NIC, disk controller), by their modalias, pass after
    # pass until no new device shows up: a device behind a bus driver appears only once that
    # driver is loaded (virtio devices behind virtio_pci, a SCSI disk behind virtio_scsi or a
    # SAS HBA, and its sd_mod only after that: three passes for a virtio-scsi disk).
    previous=""
    pass=0
    while [ "$pass" -lt 6 ]; do
        aliases=$(cat /sys/bus/*/devices/*/modalias 2> /dev/null | sort -u)
        [ "$aliases" = "$previous" ] && break
        pass=$((pass + 1))
        # One modprobe for all of them; word splitting wanted (no alias contains a space).
        # shellcheck disable=SC2086
        "$MODPROBE" -a -q $aliases 2> /dev/null
        log "modules: pass $pass, $(echo "$aliases" | wc -l) device aliases"
        previous=$aliases
        sleep 1
    done
    # The file systems the install writes.
    "$MODPROBE" -a -q ext4 vfat nls_cp437 nls_ascii 2> /dev/null
    # Disks appear asynchronously once their driver binds.
    sleep 2
}

nic_for_mac() {
    for dev in /sys/class/net/*; do
        [ "$(cat "$dev/address" 2> /dev/null)" = "$1" ] && { basename "$dev"; return 0; }
    done
    return 1
}

setup_network() {
    tries=0
    NIC=""
    while [ -z "$NIC" ] && [ "$tries" -lt 20 ]; do
        NIC=$(nic_for_mac "$MAC") || { tries=$((tries + 1)); sleep 1; }
    done
    [ -n "$NIC" ] || return 1
    ip link set lo up
    ip link set "$NIC" up
    ip addr add "$IP" dev "$NIC" || return 1
    if [ -n "$GATEWAY" ]; then ip route add default via "$GATEWAY" || return 1; fi
    # Links take a moment to come up (STP on a bridge, autonegotiation on a switch).
    tries=0
    while [ "$tries" -lt 30 ]; do
        "$WGET" -q -T 3 --tries=1 -O /dev/null "$IMAGE_URL/image.sha256" 2> /dev/null && return 0
        tries=$((tries + 1))
        sleep 1
    done
    FAIL_REASON="head not reachable at $IMAGE_URL"
    return 1
}

bytes_of() {
    if [ -e "$1" ]; then wc -c < "$1"; else echo 0; fi
}

fetch_image() {
    "$WGET" -q -T 30 --tries=3 -O /run/image.sha256 "$IMAGE_URL/image.sha256" || { FAIL_REASON="cannot fetch $IMAGE_URL/image.sha256"; return 1; }
    "$WGET" -q -T 30 --tries=3 -O /run/partitions.sfdisk "$IMAGE_URL/partitions-$FIRMWARE.sfdisk" \
        || { FAIL_REASON="cannot fetch $IMAGE_URL/partitions-$FIRMWARE.sfdisk"; return 1; }
    "$WGET" -q -T 30 --tries=3 -O /run/min-bytes "$IMAGE_URL/partitions-$FIRMWARE.min-bytes" \
        || { FAIL_REASON="cannot fetch $IMAGE_URL/partitions-$FIRMWARE.min-bytes"; return 1; }
    "$WGET" -q -T 60 --tries=3 -O "$IMAGE_FILE" "$IMAGE_URL/image.tar.zst" &
    pid=$!
    # Bytes so far, every 5 s, while the download runs.
    while kill -0 "$pid" 2> /dev/null; do
        sleep 5
        kill -0 "$pid" 2> /dev/null && report stage fetch "bytes=$(bytes_of "$IMAGE_FILE")"
    done
    wait "$pid" || { FAIL_REASON="download of $IMAGE_URL/image.tar.zst failed"; return 1; }
    report stage fetch "bytes=$(bytes_of "$IMAGE_FILE")"
    return 0
}

verify_image() {
    expected=$(cut -d' ' -f1 /run/image.sha256)
    actual=$(sha256sum "$IMAGE_FILE" | cut -d' ' -f1)
    if [ "$expected" != "$actual" ]; then
        FAIL_REASON="sha256 mismatch: got $actual, expected $expected"
        return 1
    fi
    return 0
}

# part_dev DISK N -> the kernel's name for partition N (sda2, nvme0n1p2).
part_dev() {
    case "$1" in
        *[0-9]) printf '%sp%s' "$1" "$2" ;;
        *) printf '%s%s' "$1" "$2" ;;
    esac
}

partition_disk() {
    case "$DISK" in
        /dev/disk/*) FAIL_REASON="$DISK: /dev/disk/ links need udev, which this ramdisk has not; name the kernel device"; return 1 ;;
    esac
    # A disk's device node appears once its controller's bus scan reaches it (asynchronous).
    tries=0
    while [ ! -b "$DISK" ] && [ "$tries" -lt 20 ]; do tries=$((tries + 1)); sleep 0.5; done
    [ -b "$DISK" ] || { FAIL_REASON="install disk $DISK not found"; return 1; }
    size=$(blockdev --getsize64 "$DISK") || { FAIL_REASON="cannot read the size of $DISK"; return 1; }
    need=$(cat /run/min-bytes)
    if [ "$size" -lt "$need" ]; then
        FAIL_REASON="disk $DISK has $((size / 1048576)) MiB, the image needs $((need / 1048576)) MiB"
        return 1
    fi
    "$SFDISK" --quiet --wipe always --wipe-partitions always "$DISK" < /run/partitions.sfdisk \
        || { FAIL_REASON="sfdisk on $DISK failed"; return 1; }
    ROOT_DEV=$(part_dev "$DISK" 2)
    ESP_DEV=$(part_dev "$DISK" 1)
    tries=0
    while [ ! -b "$ROOT_DEV" ] && [ "$tries" -lt 20 ]; do tries=$((tries + 1)); sleep 0.5; done
    [ -b "$ROOT_DEV" ] || { FAIL_REASON="$ROOT_DEV did not appear after partitioning"; return 1; }
    "$MKFS_EXT4" -q -F -L root "$ROOT_DEV" || { FAIL_REASON="mkfs.ext4 $ROOT_DEV failed"; return 1; }
    if [ "$FIRMWARE" = uefi ]; then
        "$MKFS_VFAT" -F 32 -n ESP "$ESP_DEV" > /dev/null || { FAIL_REASON="mkfs.vfat $ESP_DEV failed"; return 1; }
    fi
    return 0
}

write_image() {
    mount -t ext4 "$ROOT_DEV" "$TARGET" || { FAIL_REASON="cannot mount $ROOT_DEV"; return 1; }
    "$ZSTD" -dcq "$IMAGE_FILE" | "$TAR" --numeric-owner --xattrs --xattrs-include='*' -xpf - -C "$TARGET" \
        || { FAIL_REASON="unpacking the image onto $ROOT_DEV failed"; return 1; }
    rm -f "$IMAGE_FILE"
    written=$(df -k "$TARGET" | awk 'NR == 2 { print $3 * 1024 }')
    report stage write "bytes=$written"
    if [ "$FIRMWARE" = uefi ]; then
        mkdir -p "$TARGET/boot/efi"
        copy_image_esp || return 1
        mount -t vfat "$ESP_DEV" "$TARGET/boot/efi" || { FAIL_REASON="cannot mount $ESP_DEV"; return 1; }
    fi
    return 0
}

# Rocky's shim and GRUB packages install into /boot/efi (EFI/BOOT, EFI/rocky): in the image
# that is a plain folder, which the ESP mounted over it would hide, so its files go onto the ESP.
# Debian's images leave it empty (their GRUB is installed by grub-install below).
copy_image_esp() {
    [ -n "$(ls -A "$TARGET/boot/efi" 2> /dev/null)" ] || return 0
    mkdir -p "$ESP_MOUNT"
    mount -t vfat "$ESP_DEV" "$ESP_MOUNT" || { FAIL_REASON="cannot mount $ESP_DEV"; return 1; }
    # No owners or modes on FAT: copy, not cp -a.
    cp -R "$TARGET/boot/efi/." "$ESP_MOUNT/" || { umount "$ESP_MOUNT"; FAIL_REASON="copying the image's /boot/efi onto $ESP_DEV failed"; return 1; }
    umount "$ESP_MOUNT" || { FAIL_REASON="cannot unmount $ESP_DEV"; return 1; }
    return 0
}

uuid_of() {
    "$BLKID" -s UUID -o value "$1"
}

install_bootloader() {
    for fs in dev proc sys; do mount --bind "/$fs" "$TARGET/$fs" || { FAIL_REASON="cannot bind /$fs"; return 1; }; done
    {
        echo "UUID=$(uuid_of "$ROOT_DEV") / ext4 errors=remount-ro 0 1"
        if [ "$FIRMWARE" = uefi ]; then echo "UUID=$(uuid_of "$ESP_DEV") /boot/efi vfat umask=0077 0 1"; fi
    } > "$TARGET/etc/fstab"
    cat > "$TARGET/etc/default/grub" << 'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=podsys
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
EOF
    # Rocky's GRUB is grub2-* (grub2-tools); Debian's is grub-*.
    if [ -x "$TARGET/usr/sbin/grub2-mkconfig" ]; then
        install_grub2
        return
    fi
    if [ "$FIRMWARE" = uefi ]; then
        # --removable: \EFI\BOOT\BOOTX64.EFI, which firmware boots without an NVRAM entry.
        chroot "$TARGET" grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram \
            > "$LOG_DIR/grub-install.log" 2>&1 || { FAIL_REASON="grub-install (uefi): $(tail -n 1 "$LOG_DIR/grub-install.log")"; return 1; }
    else
        chroot "$TARGET" grub-install --target=i386-pc "$DISK" \
            > "$LOG_DIR/grub-install.log" 2>&1 || { FAIL_REASON="grub-install (bios): $(tail -n 1 "$LOG_DIR/grub-install.log")"; return 1; }
    fi
    chroot "$TARGET" update-grub > "$LOG_DIR/update-grub.log" 2>&1 \
        || { FAIL_REASON="update-grub: $(tail -n 1 "$LOG_DIR/update-grub.log")"; return 1; }
    return 0
}

# efi_vendor_dir ESP -> the ESP's vendor folder holding grubx64.efi (EFI/rocky), not EFI/BOOT.
efi_vendor_dir() {
    for dir in "$1"/EFI/*/; do
        dir=${dir%/}
        [ "${dir##*/}" = BOOT ] && continue
        [ -e "$dir/grubx64.efi" ] && { printf '%s' "$dir"; return 0; }
    done
    return 1
}

# Rocky: classic menu entries from /boot (GRUB_ENABLE_BLSCFG=false: the image's BLS entries, if
# any, were written at build time under the build's machine-id). BIOS: grub2-install into the
# BIOS boot partition. UEFI: RHEL's grub2-install refuses EFI (Secure Boot: the signed shim and
# GRUB come from shim-x64 and grub2-efi-x64, now on the ESP): EFI/BOOT/BOOTX64.EFI is shim, whose
# fallback (fbx64.efi) adds the boot entry for EFI/rocky from its BOOTX64.CSV, and the GRUB there
# reads the grub.cfg next to it, which hands over to /boot/grub2/grub.cfg on the root file system.
install_grub2() {
    echo "GRUB_ENABLE_BLSCFG=false" >> "$TARGET/etc/default/grub"
    if [ "$FIRMWARE" = uefi ]; then
        [ -e "$TARGET/boot/efi/EFI/BOOT/BOOTX64.EFI" ] || { FAIL_REASON="no EFI/BOOT/BOOTX64.EFI in the image (package shim-x64)"; return 1; }
        vendor=$(efi_vendor_dir "$TARGET/boot/efi") || { FAIL_REASON="no EFI/<vendor>/grubx64.efi in the image (package grub2-efi-x64)"; return 1; }
        # GRUB's own syntax: $dev and $prefix are GRUB's variables, not the shell's.
        # shellcheck disable=SC2016
        {
            echo "search --no-floppy --fs-uuid --set=dev $(uuid_of "$ROOT_DEV")"
            echo 'set prefix=($dev)/boot/grub2'
            echo 'export $prefix'
            echo 'configfile $prefix/grub.cfg'
        } > "$vendor/grub.cfg"
    else
        chroot "$TARGET" grub2-install --target=i386-pc "$DISK" \
            > "$LOG_DIR/grub-install.log" 2>&1 || { FAIL_REASON="grub2-install (bios): $(tail -n 1 "$LOG_DIR/grub-install.log")"; return 1; }
    fi
    mkdir -p "$TARGET/boot/grub2"
    chroot "$TARGET" grub2-mkconfig -o /boot/grub2/grub.cfg > "$LOG_DIR/update-grub.log" 2>&1 \
        || { FAIL_REASON="grub2-mkconfig: $(tail -n 1 "$LOG_DIR/update-grub.log")"; return 1; }
    return 0
}

# host_keys_value -> the target's public host keys as one %-encoded form value: `type base64`
# per key (the comment would name the ramdisk, not the node), joined by an encoded newline.
host_keys_value() {
    joined=""
    for kind in ed25519 ecdsa rsa; do
        pub="$TARGET/etc/ssh/ssh_host_${kind}_key.pub"
        [ -s "$pub" ] || continue
        key=$(cut -d' ' -f1,2 "$pub")
        joined="${joined:+$joined%0A}$(urlencode "$key")"
    done
    printf '%s' "$joined"
}

# The head pins host keys (it never trusts on first use), and the keys ssh-keygen just made exist
# nowhere else: unless the head learns them here it can never log in, so a failed report fails
# the install instead of leaving a node nobody can reach.
report_host_keys() {
    keys=$(host_keys_value)
    [ -n "$keys" ] || { FAIL_REASON="no SSH host keys in $TARGET/etc/ssh"; return 1; }
    # The head's answer is kept on error: a refusal says which key line it did not accept.
    "$WGET" -q -T 10 --tries=3 --content-on-error -O "$HOST_KEYS_ANSWER" \
        --post-data="event=stage&stage=identity&host_keys=$keys" "$STATUS_URL" 2> /dev/null && return 0
    FAIL_REASON="cannot report the SSH host keys to $STATUS_URL"
    if [ -s "$HOST_KEYS_ANSWER" ]; then FAIL_REASON="$FAIL_REASON: $(head -n 1 "$HOST_KEYS_ANSWER")"; fi
    return 1
}

write_identity() {
    echo "$NODE_NAME" > "$TARGET/etc/hostname"
    {
        echo "127.0.0.1 localhost"
        echo "${IP%/*} $FQDN $NODE_NAME"
        if [ -n "$HEAD_IP" ] && [ -n "$HEAD_NAME" ]; then echo "$HEAD_IP $HEAD_NAME"; fi
        echo "::1 localhost ip6-localhost ip6-loopback"
    } > "$TARGET/etc/hosts"
    tr -d '-' < /proc/sys/kernel/random/uuid > "$TARGET/etc/machine-id"
    chmod 0444 "$TARGET/etc/machine-id"
    rm -f "$TARGET"/etc/ssh/ssh_host_*
    chroot "$TARGET" ssh-keygen -A > /dev/null || { FAIL_REASON="ssh-keygen -A failed"; return 1; }
    report_host_keys || return 1
    mkdir -p "$TARGET/etc/systemd/network"
    {
        echo "[Match]"
        echo "MACAddress=$MAC"
        echo "[Network]"
        echo "Address=$IP"
        if [ -n "$GATEWAY" ]; then echo "Gateway=$GATEWAY"; fi
        for server in $(echo "$DNS" | tr ',' ' '); do echo "DNS=$server"; done
    } > "$TARGET/etc/systemd/network/10-provision.network"
    mkdir -p "$TARGET/root/.ssh"
    chmod 0700 "$TARGET/root/.ssh"
    "$WGET" -q -T 30 --tries=3 -O "$TARGET/root/.ssh/authorized_keys" "$KEYS_URL" \
        || { FAIL_REASON="cannot fetch the head's keys from $KEYS_URL"; return 1; }
    chmod 0600 "$TARGET/root/.ssh/authorized_keys"
    [ -s "$TARGET/root/.ssh/authorized_keys" ] || { FAIL_REASON="$KEYS_URL is empty: nobody could log in"; return 1; }
    return 0
}

finish_install() {
    sync
    for mount_point in "$TARGET/boot/efi" "$TARGET/sys" "$TARGET/proc" "$TARGET/dev" "$TARGET"; do
        umount "$mount_point" 2> /dev/null
    done
    sync
    # The head switches this node to `local` on this callback: the reboot boots the disk.
    report finish "done" "installed $NODE_NAME on $DISK ($FIRMWARE)"
    log "installed; rebooting"
    reboot -f
}
