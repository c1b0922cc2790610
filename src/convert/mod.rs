//! x2nestos: turning a running Linux machine into NestOS.
//!
//! Rooms that decide do no I/O and are tested with plain unit tests over captured text;
//! rooms that act decide nothing and are tested against the real thing (files, loop devices,
//! `ignition-validate`).
//!
//! - [`sshkeys`], [`ignition`]: the machine's identity, captured from text and
//!   rendered as one Ignition config (pure).
//! - [`identity`]: gathers that identity from a root directory (host name, login keys, host
//!   keys, time zone, extra files).
//! - [`network`]: the running network (`ip -json`, resolv.conf, NetworkManager keyfiles) as
//!   keyfiles matched by MAC (pure, plus one reader).
//! - [`disk`]: which whole disk a name means and what else lives on it (pure over a sysfs tree
//!   and the text of mountinfo and swaps).
//! - [`preflight`]: what blocks or warns before anything changes (pure), plus the readers that
//!   gather its facts from /proc and /sys.
//! - [`overlay`]: the live ISO / PXE path: the live image's boot entry and installer prefix
//!   read from its own files, and the overlay initramfs (newc cpio, written here) with the
//!   install directives and the Ignition config.
//! - [`image`]: sniffing, verifying, decompressing and writing a disk image (the one room here
//!   that writes to a device, and only to the one it is handed).
//! - [`plan`]: the plan and its decisions (carry or stream, memory, the conversion kernel's
//!   arguments, the disk re-check after kexec, the summary) (pure); [`prepare`] gathers it.
//! - [`stream`]: the image chosen by stream: the metal image's URL, sha256 and signature from
//!   a stream metadata document (Fedora CoreOS's format), for this machine (pure, plus one
//!   fetch through [`source`]).
//! - [`source`]: the image from a file or an http(s) URL, sha256 and OpenPGP (`gpgv`) checks;
//!   [`progress`]: bars on a terminal, plain lines elsewhere.
//! - [`kargs`]: the new system's kernel arguments and console, and the edit of a boot
//!   loader entry (pure).
//! - [`saved`]: the partitions kept across the conversion (`--save-partlabel`,
//!   `--save-partindex`): which the filters name, room before them, the merged table (pure).
//! - [`initramfs`]: the conversion initramfs from the host's dracut and our module;
//!   [`jump`]: `x2nestos convert` (plan, initramfs, kexec load, jump); [`install`]: what the
//!   conversion initramfs runs.

pub mod disk;
pub mod identity;
pub mod ignition;
pub mod image;
pub mod initramfs;
pub mod install;
pub mod jump;
pub mod kargs;
pub mod network;
pub mod overlay;
pub mod plan;
pub mod preflight;
pub mod prepare;
pub mod progress;
pub mod saved;
pub mod source;
pub mod sshkeys;
pub mod stream;
pub mod workdir;
