#!/bin/bash
# dracut module: the x2nestos conversion initramfs.
#
# x2nestos builds the initramfs with the host's own dracut, from a private copy of dracut's
# module directory (dracutbasedir=…) holding this module, so nothing under /usr/lib/dracut
# on the host changes. What goes in comes from a stage directory that x2nestos prepares and
# names in X2NESTOS_STAGE:
#
#   x2nestos                   the program itself (its library dependencies follow it)
#   plan.json                  the plan: disk (path, serial, size), image source and checksum
#   config.ign                 the Ignition config for the new system (0600, secrets inside)
#   x2nestos-install.service   the installer unit (systemd/ in the source tree)
#
# A carried image is not staged here: x2nestos appends it to the finished initramfs as an
# uncompressed archive of its own (x2nestos/image), so dracut does not compress it again.
#
# The installer unit is pulled in by initrd.target; everything else in the initramfs is the
# host's usual dracut content. Only included when asked for (`-m`/`--add x2nestos`).

# Included only when named: it is of no use in a normal boot initramfs.
check() {
    [[ -n $X2NESTOS_STAGE ]] || return 255
    require_binaries "$X2NESTOS_STAGE/x2nestos" || return 1
    return 255
}

depends() {
    # systemd runs the installer unit; the network modules are added by x2nestos on the
    # dracut command line only when the image is streamed.
    echo systemd
    return 0
}

install() {
    if [[ -z $X2NESTOS_STAGE || ! -d $X2NESTOS_STAGE ]]; then
        dfatal "x2nestos: X2NESTOS_STAGE does not name the stage directory"
        return 1
    fi
    local f
    for f in x2nestos plan.json config.ign x2nestos-install.service; do
        if [[ ! -f $X2NESTOS_STAGE/$f ]]; then
            dfatal "x2nestos: $X2NESTOS_STAGE/$f is missing"
            return 1
        fi
    done

    inst_binary "$X2NESTOS_STAGE/x2nestos" /usr/bin/x2nestos
    inst_simple "$X2NESTOS_STAGE/plan.json" /etc/x2nestos/plan.json
    inst_simple "$X2NESTOS_STAGE/config.ign" /etc/x2nestos/config.ign
    # It carries secrets (host keys, network passwords): readable by root only, in the
    # initramfs as on the host.
    chmod 0600 "$initdir/etc/x2nestos/config.ign"
    # Tools the installer calls: ip (links, when the image is streamed), losetup, mount and
    # umount (the new boot partition).
    inst_multiple ip losetup mount umount

    inst_simple "$X2NESTOS_STAGE/x2nestos-install.service" \
        "$systemdsystemunitdir/x2nestos-install.service"
    mkdir -p "$initdir/$systemdsystemunitdir/initrd.target.wants"
    ln_r "$systemdsystemunitdir/x2nestos-install.service" \
        "$systemdsystemunitdir/initrd.target.wants/x2nestos-install.service"
}
