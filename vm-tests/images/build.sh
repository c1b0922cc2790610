#!/usr/bin/env bash
# Build the VM test images from Debian's packages, without mounting anything on the host.
#
#   vm-tests/images/build.sh [generic|testos|all]     (default: all)
#   vm-tests/images/build.sh packages                 (the Debian packages the host needs)
#
# Everything lands in a cache outside the repository, one directory per layer named by a hash
# of that layer's inputs (its recipe below, the files it reads, the layers it builds on):
#
#   $HK_VM_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/housekeeper/vm)/
#     keys/                  SSH key pairs the harness logs in with (made once)
#     tree-generic-<h>/root  mmdebstrap root tree of the generic machine        (expensive)
#     tree-testos-<h>/root   mmdebstrap root tree of testos, OSTree-shaped      (expensive)
#     boot-generic-<h>/      vmlinux (uncompressed, for PVH), busybox initrd    (kernel extraction)
#     generic-<h>/           disk.qcow2 + boot files + manifest.env             (cheap assembly)
#     testos-<h>/            OSTree repo (v1, v2, v3), metal.raw.xz + sha256,
#                            metal.qcow2 + manifest.env                         (cheap; holds hkd)
#     current/{generic,testos} -> the layers the last build produced
#
# A layer is rebuilt only when its hash changes; each step prints its time. HKD_BIN names the
# hkd binary to install in testos (default: the newest of target/{debug,release}/hkd).
set -Eeuo pipefail
trap 'echo "error: image build failed at line $LINENO: $BASH_COMMAND" >&2' ERR

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
. "$REPO/tools/lib.sh"

CACHE=${HK_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/housekeeper/vm}
SUITE=bookworm
# The host packages this script and the harness use, each with the tools it is needed for
# (tools/lib.sh need_packages: PKG:TOOL,...). `need_packages` installs what is missing.
HOST_PACKAGES=(mmdebstrap:mmdebstrap qemu-system-x86:qemu-system-x86_64 qemu-utils:qemu-img
    ostree:ostree fdisk:sfdisk e2fsprogs:mkfs.ext4,debugfs busybox-static:busybox xz-utils:xz
    binutils:readelf cpio:cpio openssh-client:ssh-keygen,ssh ca-certificates
    debian-archive-keyring xorriso:xorriso)

die() { echo "error: $*" >&2; exit 1; }
# timed LABEL CMD...: run CMD quietly, print its time (a sub-step of a layer).
timed() {
    local label=$1 t0=$SECONDS
    shift
    "$@" >/dev/null
    echo "    $label: $((SECONDS - t0))s"
}

# --- hashing -------------------------------------------------------------------------------

# hash_of ARG...: short hash of the arguments (strings) — a layer's identity.
hash_of() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }
# file_hash FILE...: hash of files' contents (missing files hash as "absent").
file_hash() {
    local f
    for f in "$@"; do
        if [ -e "$f" ]; then sha256sum <"$f" | cut -c1-16; else echo "absent:$f"; fi
    done | sha256sum | cut -c1-16
}
# recipe FUNC...: the source text of shell functions, so that editing a recipe rebuilds its layer.
recipe() { declare -f "$@" | sha256sum | cut -c1-16; }

# layer NAME HASH FUNC: build layer NAME-HASH with FUNC DIR unless it is already complete,
# and print how long it took; sets LAYER to the layer directory. (Not through `step`: a
# function run as an `if` condition would run with errexit off.)
layer() {
    local name=$1 hash=$2 fn=$3 t0=$SECONDS
    LAYER="$CACHE/$name-$hash"
    if [ -e "$LAYER/.complete" ]; then
        touch "$LAYER" # in use: spared by prune for the next hour
        echo "==> $name: cached ($LAYER)"
        return 0
    fi
    clear_dir "$LAYER.tmp"
    mkdir -p "$LAYER.tmp"
    echo "==> $name: building"
    "$fn" "$LAYER.tmp"
    echo "==> $name: built in $((SECONDS - t0))s"
    clear_dir "$LAYER"
    mv "$LAYER.tmp" "$LAYER"
    touch "$LAYER/.complete"
}

# prune NAME KEEP: remove old layers NAME-* (each image rebuild leaves one, ~750 MiB for
# testos) but KEEP, the newest other one, and any touched in the last hour (a run still
# using it); and unfinished NAME-*.tmp left by a build that died over an hour ago. Called
# with NAME's lock held.
prune() {
    local name=$1 keep=$2 d spared=0
    for d in $(ls -dt "$CACHE/$name"-* 2>/dev/null); do
        [ "$d" = "$keep" ] && continue
        case $d in
            *.tmp) ;;
            *) if [ $spared -eq 0 ]; then spared=1; continue; fi ;;
        esac
        [ -n "$(find "$d" -maxdepth 0 -mmin +60)" ] || continue
        echo "==> $name: removing the old layer $d"
        clear_dir "$d"
    done
}

# clear_dir DIR: remove DIR, including OSTree deployment dirs that carry the immutable flag.
clear_dir() {
    [ -e "$1" ] || return 0
    chattr -R -i "$1" 2>/dev/null || true
    rm -rf "$1"
}

# --- shared pieces -------------------------------------------------------------------------

# check_tools: every tool HOST_PACKAGES names is there, else each missing one named with its
# package.
check_tools() {
    local spec t tools missing=() pkgs=()
    for spec in "${HOST_PACKAGES[@]}"; do
        [ "$spec" = "${spec%%:*}" ] && continue
        IFS=, read -r -a tools <<<"${spec#*:}"
        for t in "${tools[@]}"; do
            tool_present "$t" || { missing+=("$t"); pkgs+=("${spec%%:*}"); }
        done
    done
    [ ${#missing[@]} -eq 0 ] ||
        die "missing tools: ${missing[*]}; install: apt-get install ${pkgs[*]}"
}

ensure_keys() {
    mkdir -p "$CACHE/keys"
    local k
    for k in root admin restricted; do
        [ -e "$CACHE/keys/$k" ] || ssh-keygen -q -t ed25519 -N '' -C "hk-vm-$k" -f "$CACHE/keys/$k"
    done
}

# Packages both machines share: systemd, udev, SSH, ifupdown with DHCP, Debian's kernel.
BASE_PACKAGES=systemd-sysv,udev,dbus,kmod,openssh-server,ifupdown,isc-dhcp-client,iproute2,procps,linux-image-amd64

# mmdebstrap_tree DIR INCLUDE: a minbase root tree without docs, and without running dracut at
# package install time (the harness brings its own initrd; the stub is removed afterwards, so
# the machine's dracut is the real one).
mmdebstrap_tree() {
    local dir=$1 include=$2
    mmdebstrap --mode=unshare --variant=minbase --include="$include" \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --divert /usr/bin/dracut.real --add /usr/bin/dracut && printf "#!/bin/sh\nexit 0\n" >"$1/usr/bin/dracut" && chmod 755 "$1/usr/bin/dracut"' \
        --customize-hook='rm -f "$1/usr/bin/dracut" && chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/bin/dracut' \
        "$SUITE" "$dir" >"$dir.log" 2>&1 || { tail -20 "$dir.log" >&2; die "mmdebstrap failed (log: $dir.log)"; }
}

# trim_modules ROOT: drop kernel modules no VM needs (sound, GPUs, wireless, real NICs, …) so
# the images stay small, then refresh modules.dep.
trim_modules() {
    local root=$1 kver m
    kver=$(kernel_version "$root")
    m="$root/usr/lib/modules/$kver/kernel"
    rm -rf "$m/sound" "$m/drivers/"{gpu,media,infiniband,staging,bluetooth,iio,isdn,usb,hid,net/wireless,net/ethernet,net/can,net/usb,net/wan,net/ieee802154,net/hamradio,net/ppp,hwmon,scsi,ata,target,comedi,platform,video,mmc,mtd,nfc,thunderbolt,firewire,pcmcia,atm,leds,power,w1,i2c,spi,gnss,mfd} \
        "$m/drivers/input/"{joystick,misc,tablet,touchscreen,mouse} \
        "$m/net/"{wireless,mac80211,bluetooth,sunrpc,ceph,ieee802154,6lowpan,batman-adv,can,nfc,rxrpc} \
        "$m/fs/"{nfs,nfsd,ocfs2,ceph,smb,gfs2,xfs,btrfs,f2fs,jfs,reiserfs,ubifs,orangefs,afs,coda,nilfs2}
    chroot "$root" depmod -a "$kver"
}

kernel_version() { ls "$1/usr/lib/modules" | head -n1; }

# mask_noise ROOT: units that cost boot time under emulation or write over the serial markers.
mask_noise() {
    local u
    for u in e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
        e2scrub_all.timer fstrim.timer man-db.timer serial-getty@ttyS0.service \
        systemd-timesyncd.service; do
        ln -sf /dev/null "$1/etc/systemd/system/$u"
    done
}

# install_markers ETC: the guest side of the marker protocol (see vm-tests/README.md):
# `HK-MARK:ready <boot_id>` on the serial console once multi-user, network and sshd are up.
install_markers() {
    local etc=$1
    mkdir -p "$etc/systemd/system/multi-user.target.wants"
    cat >"$etc/systemd/system/hk-ready.service" <<'EOF'
[Unit]
Description=Tell the VM test harness that the machine is up
After=multi-user.target ssh.service network-online.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "HK-MARK:ready $(cat /proc/sys/kernel/random/boot_id)" >/dev/ttyS0'

[Install]
WantedBy=multi-user.target
EOF
    ln -sf ../hk-ready.service "$etc/systemd/system/multi-user.target.wants/hk-ready.service"
    cat >"$etc/network/interfaces" <<'EOF'
source /etc/network/interfaces.d/*
auto lo
iface lo inet loopback
auto eth0
iface eth0 inet dhcp
EOF
}

# copy_elf ROOT BIN DEST: copy BIN (a path inside ROOT) and the shared libraries it needs
# (found through readelf in ROOT's library dirs) into the initramfs tree DEST.
copy_elf() {
    local root=$1 bin=$2 dest=$3 lib dir found
    mkdir -p "$dest$(dirname "$bin")"
    cp -L "$root$bin" "$dest$bin"
    for lib in $(readelf -d "$root$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
        [ -e "$dest/lib/x86_64-linux-gnu/$lib" ] && continue
        found=
        for dir in /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/lib64 /lib64; do
            if [ -e "$root$dir/$lib" ]; then found="$dir/$lib"; break; fi
        done
        [ -n "$found" ] || die "library $lib of $bin not found in $root"
        mkdir -p "$dest/lib/x86_64-linux-gnu"
        cp -L "$root$found" "$dest/lib/x86_64-linux-gnu/$lib"
        copy_elf "$root" "$found" "$dest" >/dev/null
    done
    if [ ! -e "$dest/lib64/ld-linux-x86-64.so.2" ]; then
        mkdir -p "$dest/lib64"
        cp -L "$root/usr/lib64/ld-linux-x86-64.so.2" "$dest/lib64/"
    fi
}

# busybox_initramfs ROOT INIT OUT [EXTRA_DIR]: a small initramfs: static busybox, the modules
# that mount an ext4 root from virtio-blk (in load order), INIT as /init, EXTRA_DIR merged in.
busybox_initramfs() {
    local root=$1 init=$2 out=$3 extra=${4:-} kver d m
    kver=$(kernel_version "$root")
    d=$(mktemp -d)
    mkdir -p "$d"/{bin,dev,proc,sys,run,sysroot,tmp}
    cp /usr/bin/busybox "$d/bin/busybox"
    cp "$init" "$d/init"
    chmod 755 "$d/init"
    : >"$d/modules.order"
    for m in virtio_pci virtio_blk crc32c_generic ext4; do
        chroot "$root" modprobe --show-depends -S "$kver" "$m" | awk '$1 == "insmod" { print $2 }'
    done | awk '!seen[$0]++' | while read -r m; do
        mkdir -p "$d$(dirname "$m")"
        cp "$root/usr$m" "$d$m" 2>/dev/null || cp "$root$m" "$d$m"
        echo "$m" >>"$d/modules.order"
    done
    if [ -n "$extra" ]; then cp -a "$extra/." "$d/"; fi
    (cd "$d" && find . | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible) | gzip -1 >"$out"
    rm -rf "$d"
}

# extract_vmlinux VMLINUZ OUT: the uncompressed kernel inside a bzImage (booted through PVH,
# which skips the slow in-guest decompression under emulation).
extract_vmlinux() {
    local off
    off=$(LC_ALL=C grep -m1 -obUaP '\xfd7zXZ\x00' "$1" | head -n1 | cut -d: -f1)
    [ -n "$off" ] || die "no xz payload in $1"
    # xz stops at the end of its stream; tail then dies of SIGPIPE, which is expected.
    { tail -c +$((off + 1)) "$1" || true; } | xz -dc --single-stream >"$2"
}

# --- generic: a plain Debian 12 machine ----------------------------------------------------

GENERIC_PACKAGES=$BASE_PACKAGES,kexec-tools,dracut,xz-utils,sudo

build_tree_generic() {
    local out=$1
    mmdebstrap_tree "$out/root" "$GENERIC_PACKAGES"
    local r=$out/root
    trim_modules "$r"
    mask_noise "$r"
    # kexec-tools must not load its own kernel at shutdown over the one a test loaded.
    sed -i 's/^LOAD_KEXEC=.*/LOAD_KEXEC=false/' "$r/etc/default/kexec"
    chroot "$r" useradd -m -s /bin/bash -G sudo admin
    echo 'admin ALL=(ALL) NOPASSWD: ALL' >"$r/etc/sudoers.d/admin"
    chmod 440 "$r/etc/sudoers.d/admin"
}

build_boot_generic() {
    local out=$1 r=$TREE_GENERIC/root kver
    kver=$(kernel_version "$r")
    extract_vmlinux "$r/boot/vmlinuz-$kver" "$out/vmlinux"
    busybox_initramfs "$r" "$HERE/initrd/generic-init" "$out/initrd.img"
    # The initramfs of the kexec smoke scenario's second kernel: it only says it is there.
    busybox_initramfs "$r" "$HERE/initrd/marker-init" "$out/marker-initrd.img"
    echo "$kver" >"$out/kver"
}

build_generic() {
    local out=$1 w r size kver
    w=$(mktemp -d "$CACHE/work.XXXXXX")
    r=$w/root
    # Hard links: a new root without copying the tree. Files are replaced, never edited in place.
    cp -al "$TREE_GENERIC/root" "$r"
    echo generic-vm >"$r/etc/hostname.new" && mv "$r/etc/hostname.new" "$r/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 generic-vm\n' >"$r/etc/hosts.new" && mv "$r/etc/hosts.new" "$r/etc/hosts"
    echo 'LABEL=root / ext4 defaults 0 1' >"$r/etc/fstab.new" && mv "$r/etc/fstab.new" "$r/etc/fstab"
    rm -f "$r/etc/network/interfaces"
    install_markers "$r/etc"
    install -d -m 700 "$r/root/.ssh"
    {
        cat "$CACHE/keys/root.pub"
        # A cloud-image style key: whoever uses it only ever runs this command.
        printf 'command="echo restricted-key-only",no-port-forwarding,no-pty %s\n' "$(cat "$CACHE/keys/restricted.pub")"
    } >"$r/root/.ssh/authorized_keys"
    chmod 600 "$r/root/.ssh/authorized_keys"
    install -d -m 700 -o 1000 -g 1000 "$r/home/admin/.ssh"
    install -m 600 -o 1000 -g 1000 "$CACHE/keys/admin.pub" "$r/home/admin/.ssh/authorized_keys"
    install -D -m 644 "$BOOT_GENERIC/marker-initrd.img" "$r/usr/lib/housekeeper-test/marker-initrd.img"
    kver=$(cat "$BOOT_GENERIC/kver")
    # One GPT partition, ext4 labelled root, with room to spare.
    size=$(( $(du -sm "$r" | cut -f1) + 1024 ))
    truncate -s $((size + 2))M "$w/disk.raw"
    printf 'label: gpt\nstart=2048, name=root\n' | sfdisk -q "$w/disk.raw"
    mkfs.ext4 -q -F -L root -E offset=$((2048 * 512)) -d "$r" "$w/disk.raw" "$((size))M"
    qemu-img convert -O qcow2 "$w/disk.raw" "$out/disk.qcow2"
    cp "$BOOT_GENERIC/vmlinux" "$BOOT_GENERIC/initrd.img" "$out/"
    cat >"$out/manifest.env" <<EOF
KIND=generic
KVER=$kver
HOSTNAME=generic-vm
KERNEL=vmlinux
INITRD=initrd.img
CMDLINE=root=LABEL=root rw console=ttyS0 net.ifnames=0 panic=-1
DISK=disk.qcow2
EOF
    clear_dir "$w"
}

# --- testos: a NestOS-like OSTree OS -------------------------------------------------------

TESTOS_PACKAGES=$BASE_PACKAGES,ostree,ostree-boot,ignition,dracut,passwd

# The tree is reshaped the way an OSTree commit wants it: /etc in /usr/etc, kernel in
# /usr/lib/modules/$kver, an empty /var filled by tmpfiles at boot, state dirs under /var.
build_tree_testos() {
    local out=$1 r kver d
    r=$out/root
    mmdebstrap_tree "$r" "$TESTOS_PACKAGES"
    trim_modules "$r"
    mask_noise "$r"
    kver=$(kernel_version "$r")
    mv "$r/boot/vmlinuz-$kver" "$r/usr/lib/modules/$kver/vmlinuz"
    rm -rf "${r:?}/boot" && mkdir "$r/boot"
    rm -rf "${r:?}/dev" && mkdir "$r/dev"
    echo testos >"$r/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 testos\n' >"$r/etc/hosts"
    echo 'LABEL=boot /boot ext4 defaults 0 2' >"$r/etc/fstab"
    rm -f "$r/etc/network/interfaces"
    install_markers "$r/etc"
    # Ignition writes keys to ~/.ssh/authorized_keys.d/ignition (NestOS reads that dir too).
    echo 'AuthorizedKeysFile .ssh/authorized_keys .ssh/authorized_keys.d/ignition' \
        >"$r/etc/ssh/sshd_config.d/10-ignition.conf"
    cat >"$r/usr/lib/tmpfiles.d/testos.conf" <<'EOF'
d /var/home 0755 root root -
d /var/roothome 0700 root root -
d /var/opt 0755 root root -
d /var/srv 0755 root root -
d /var/mnt 0755 root root -
d /var/lib/hkd 0700 root root -
L /var/run - - - - ../run
L /var/lock - - - - ../run/lock
EOF
    mv "$r/etc" "$r/usr/etc"
    rm -rf "${r:?}/var" && mkdir "$r/var"
    for d in home opt srv mnt; do rm -rf "${r:?}/$d" && ln -s "var/$d" "$r/$d"; done
    rm -rf "${r:?}/root" && ln -s var/roothome "$r/root"
    rm -rf "${r:?}/media" && ln -s run/media "$r/media"
    mkdir -p "$r/sysroot"
    ln -s sysroot/ostree "$r/ostree"
}

# A health check the later hkd scenarios read: v3 of testos boots fine but fails it.
write_version_overlay() {
    local o=$1 v=$2 health=$3
    mkdir -p "$o/usr/lib/housekeeper-test" "$o/usr/lib/systemd/system/multi-user.target.wants"
    echo "$v" >"$o/usr/lib/housekeeper-test/version"
    echo "$health" >"$o/usr/lib/housekeeper-test/health"
    cat >"$o/usr/lib/os-release" <<EOF
NAME="Housekeeper test OS"
ID=testos
ID_LIKE=debian
VERSION_ID=$v
VERSION="$v"
PRETTY_NAME="Housekeeper test OS $v"
EOF
    cat >"$o/usr/lib/housekeeper-test/health-check" <<'EOF'
#!/bin/sh
# testos health check: passes unless this version is marked bad.
h=$(cat /usr/lib/housekeeper-test/health 2>/dev/null)
v=$(cat /usr/lib/housekeeper-test/version 2>/dev/null)
echo "HK-MARK:health-$h version=$v" >/dev/ttyS0
[ "$h" = ok ]
EOF
    chmod 755 "$o/usr/lib/housekeeper-test/health-check"
    cat >"$o/usr/lib/systemd/system/hk-test-health.service" <<'EOF'
[Unit]
Description=testos health check (fails on versions marked bad)
After=multi-user.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/housekeeper-test/health-check

[Install]
WantedBy=multi-user.target
EOF
    ln -sf ../hk-test-health.service "$o/usr/lib/systemd/system/multi-user.target.wants/"
}

hkd_binary() {
    if [ -n "${HKD_BIN:-}" ]; then echo "$HKD_BIN"; return; fi
    local b best=
    for b in "$REPO/target/debug/hkd" "$REPO/target/release/hkd"; do
        [ -x "$b" ] || continue
        if [ -z "$best" ] || [ "$b" -nt "$best" ]; then best=$b; fi
    done
    [ -n "$best" ] || die "no hkd binary: run cargo build --bin hkd (or set HKD_BIN)"
    echo "$best"
}

build_testos() {
    local out=$1 w t kver o v s b
    w=$(mktemp -d "$CACHE/work.XXXXXX")
    t=$TREE_TESTOS/root
    kver=$(kernel_version "$t")

    # Layer shared by every version: hkd (+ its unit when the repository has one) and the
    # initramfs (busybox + ostree-prepare-root + Ignition on first boot).
    o=$w/common
    mkdir -p "$o/usr/bin" "$o/usr/lib/modules/$kver"
    strip -o "$o/usr/bin/hkd" "$HKD"
    if [ -e "$REPO/systemd/hkd.service" ]; then
        install -D -m 644 "$REPO/systemd/hkd.service" "$o/usr/lib/systemd/system/hkd.service"
        mkdir -p "$o/usr/lib/systemd/system/multi-user.target.wants"
        ln -s ../hkd.service "$o/usr/lib/systemd/system/multi-user.target.wants/hkd.service"
    fi
    local extra=$w/initrd-extra
    copy_elf "$t" /usr/lib/ostree/ostree-prepare-root "$extra"
    mkdir -p "$extra/usr/bin" "$extra/usr/sbin"
    copy_elf "$t" /usr/lib/dracut/modules.d/30ignition/ignition "$extra"
    mv "$extra/usr/lib/dracut/modules.d/30ignition/ignition" "$extra/usr/bin/ignition"
    rm -rf "$extra/usr/lib/dracut"
    # Ignition creates and edits users with the shadow tools of the target root (--root).
    copy_elf "$t" /usr/sbin/usermod "$extra"
    copy_elf "$t" /usr/sbin/useradd "$extra"
    printf '#!/bin/sh\n# testos has no SELinux policy: nothing to relabel.\ncat >/dev/null\n' >"$extra/usr/sbin/setfiles"
    chmod 755 "$extra/usr/sbin/setfiles"
    busybox_initramfs "$t" "$HERE/initrd/testos-init" "$o/usr/lib/modules/$kver/initramfs.img" "$extra"

    # The update server's repository: v1, v2 (a plain update), v3 (boots, fails health).
    local repo=$out/repo br=testos/x86_64/stable
    ostree --repo="$repo" init --mode=archive
    # A build artefact, rebuilt rather than repaired: no fsync per object.
    ostree --repo="$repo" config set core.fsync false
    # The base tree is checksummed once (ref `base`); each version is that plus a small layer.
    timed "commit base tree" ostree --repo="$repo" commit --branch=base --no-bindings --tree=dir="$t" --tree=dir="$o"
    for v in 1 2 3; do
        local health=ok
        [ "$v" = 3 ] && health=fail
        write_version_overlay "$w/v$v" "$v" "$health"
        timed "commit v$v" ostree --repo="$repo" commit --branch="$br" --subject="testos $v" \
            --bind-ref="testos/x86_64/v$v" --add-metadata-string=version="$v" \
            --tree=ref=base --tree=dir="$w/v$v"
        ostree --repo="$repo" refs --create="testos/x86_64/v$v" "$br"
    done
    ostree --repo="$repo" refs --delete base
    # `stable` is the last good version; v3 is reachable only by its own ref.
    ostree --repo="$repo" reset "$br" "testos/x86_64/v2"
    ostree --repo="$repo" summary -u

    # The metal image: GPT, `boot` (BLS entries, kernels, Ignition config) and `root` (the
    # OSTree sysroot with v1 deployed), as x2nestos writes it to a disk.
    s=$w/sysroot
    b=$w/bootpart
    mkdir -p "$s" "$b"
    ostree admin init-fs "$s" >/dev/null
    ostree admin os-init --sysroot="$s" testos >/dev/null
    ostree --repo="$s/ostree/repo" remote add --no-gpg-verify hk "$PLACEHOLDER_URL" "$br"
    timed "sysroot: pull v1" ostree --repo="$s/ostree/repo" pull-local --remote=hk "$repo" testos/x86_64/v1
    ostree admin deploy --sysroot="$s" --os=testos --karg=root=LABEL=root --karg=rw \
        --karg=console=ttyS0 --karg=net.ifnames=0 --karg=panic=-1 hk:testos/x86_64/v1 >/dev/null
    mv "$s/boot/"* "$b/"
    # First-boot stamp: the initramfs runs Ignition only while this file exists.
    touch "$b/ignition.firstboot"
    mkdir -p "$b/ignition"
    local boot_mb=192 root_mb
    root_mb=$(( $(du -sm "$s" | cut -f1) * 13 / 10 + 512 ))
    truncate -s $((1 + boot_mb + root_mb + 1))M "$w/metal.raw"
    printf 'label: gpt\nstart=2048, size=%d, name=boot\nsize=%d, name=root\n' \
        $((boot_mb * 2048)) $((root_mb * 2048)) | sfdisk -q "$w/metal.raw"
    mkfs.ext4 -q -F -L boot -E offset=$((2048 * 512)) -d "$b" "$w/metal.raw" "${boot_mb}M"
    timed "mkfs root partition" mkfs.ext4 -q -F -L root -E offset=$(((2048 + boot_mb * 2048) * 512)) -d "$s" "$w/metal.raw" "${root_mb}M"
    timed "metal.qcow2" qemu-img convert -O qcow2 "$w/metal.raw" "$out/metal.qcow2"
    # -0: most of the gain at a fraction of the time (compression dominated this layer).
    timed "metal.raw.xz" xz -T2 -0 -k "$w/metal.raw"
    mv "$w/metal.raw.xz" "$out/metal.raw.xz"
    (cd "$out" && sha256sum metal.raw.xz >metal.raw.xz.sha256)
    cp "$HERE/initrd/testos-init" "$out/"
    cat >"$out/manifest.env" <<EOF
KIND=testos
KVER=$kver
OSNAME=testos
BOOT_PART_OFFSET=$((2048 * 512))
BOOT_PART_SIZE=$((boot_mb * 1024 * 1024))
DISK=metal.qcow2
METAL_XZ=metal.raw.xz
REPO=repo
REMOTE=hk
REF_STABLE=$br
V1=$(ostree --repo="$repo" rev-parse testos/x86_64/v1)
V2=$(ostree --repo="$repo" rev-parse testos/x86_64/v2)
V3=$(ostree --repo="$repo" rev-parse testos/x86_64/v3)
EOF
    clear_dir "$w"
}

# The remote URL baked into the image; the harness serves the repository on a port it picks
# and points the remote there (`ostree remote add --force`).
PLACEHOLDER_URL=http://10.0.2.2:8470/repo

# --- main ----------------------------------------------------------------------------------

main() {
    local what=${1:-all}
    case $what in
        generic | testos | all) ;;
        packages) echo "${HOST_PACKAGES[*]}"; return 0 ;;
        *) die "usage: $0 [generic|testos|all|packages]" ;;
    esac
    check_tools
    mkdir -p "$CACHE/current"
    # Keys are shared by both kinds; each kind has its own lock so a generic-only run does not
    # wait for a testos build.
    exec 9>"$CACHE/.lock-keys"
    flock 9
    ensure_keys
    exec 9>&-
    local keys
    keys=$(file_hash "$CACHE/keys/root.pub" "$CACHE/keys/admin.pub" "$CACHE/keys/restricted.pub")
    local common
    common=$(recipe mmdebstrap_tree trim_modules kernel_version mask_noise)

    if [ "$what" != testos ]; then
        exec 8>"$CACHE/.lock-generic"
        flock 8
        layer tree-generic "$(hash_of "$SUITE" "$GENERIC_PACKAGES" "$common" "$(recipe build_tree_generic)")" build_tree_generic
        TREE_GENERIC=$LAYER
        layer boot-generic "$(hash_of "$TREE_GENERIC" "$(recipe build_boot_generic busybox_initramfs extract_vmlinux)" \
            "$(file_hash "$HERE/initrd/generic-init" "$HERE/initrd/marker-init" /usr/bin/busybox)")" build_boot_generic
        BOOT_GENERIC=$LAYER
        layer generic "$(hash_of "$TREE_GENERIC" "$BOOT_GENERIC" "$keys" "$(recipe build_generic install_markers)")" build_generic
        ln -sfn "$LAYER" "$CACHE/current/generic"
        prune generic "$LAYER"
        prune boot-generic "$BOOT_GENERIC"
        prune tree-generic "$TREE_GENERIC"
        exec 8>&-
    fi
    if [ "$what" != generic ]; then
        exec 7>"$CACHE/.lock-testos"
        flock 7
        layer tree-testos "$(hash_of "$SUITE" "$TESTOS_PACKAGES" "$common" "$(recipe build_tree_testos install_markers)")" build_tree_testos
        TREE_TESTOS=$LAYER
        HKD=$(hkd_binary)
        layer testos "$(hash_of "$TREE_TESTOS" "$PLACEHOLDER_URL" \
            "$(recipe build_testos write_version_overlay copy_elf busybox_initramfs)" \
            "$(file_hash "$HKD" "$REPO/systemd/hkd.service" "$HERE/initrd/testos-init" /usr/bin/busybox)")" build_testos
        ln -sfn "$LAYER" "$CACHE/current/testos"
        prune testos "$LAYER"
        prune tree-testos "$TREE_TESTOS"
        exec 7>&-
    fi
    echo "images ready in $CACHE/current"
}

main "$@"
