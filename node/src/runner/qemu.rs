//! The QEMU command line for one job, and facts about the host QEMU runs on.
//!
//! Facts measured on our machines (see design.md, "Running a job in a VM"): x86_64 guests
//! boot directly into an uncompressed `vmlinux` on `-M microvm` with `tsc_early_khz` set
//! (without it microvm under TCG hangs at random); TCG gets `tb-size=128` so that its
//! translation buffer fits memory rlimits; the CPU model is pinned for reproducibility;
//! the guest has no network device at all; job I/O is raw virtio-blk disks identified by
//! their serial numbers.

use std::path::{Path, PathBuf};
use std::process::Command;

use barn_protocol::message::Accel;

/// Everything that varies in a job's QEMU command line.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub qemu: PathBuf,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The read-only squashfs root, for images that have one.
    pub root: Option<PathBuf>,
    pub input: PathBuf,
    pub output: PathBuf,
    pub tsc_khz: Option<u64>,
    /// Turn QEMU's seccomp sandbox off (only for QEMU builds without seccomp).
    pub no_sandbox: bool,
}

/// The pinned guest CPU model: the same instructions on every volunteer.
pub const CPU_MODEL: &str = "Nehalem-v1";
/// TCG translation-buffer size in MiB (the 1 GiB default breaks memory rlimits).
pub const TB_SIZE_MIB: u64 = 128;

impl VmConfig {
    /// The arguments after the QEMU binary.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(&["-M", "microvm,x-option-roms=off", "-cpu", CPU_MODEL]);
        let tcg = format!("tcg,thread=multi,tb-size={TB_SIZE_MIB}");
        push(&[
            "-accel",
            if self.accel == Accel::Kvm {
                "kvm"
            } else {
                &tcg
            },
        ]);
        push(&[
            "-m",
            &format!("{}M", self.memory_mib),
            "-smp",
            &self.cpus.to_string(),
        ]);
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        if !self.no_sandbox {
            push(&[
                "-sandbox",
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            ]);
        }
        push(&[
            "-kernel",
            &path(&self.kernel),
            "-initrd",
            &path(&self.initrd),
        ]);
        let mut cmdline = String::from(
            "console=ttyS0 panic=-1 quiet loglevel=0 i8042.noaux i8042.nokbd i8042.nopnp",
        );
        if let Some(khz) = self.tsc_khz {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        push(&["-append", &cmdline]);
        push(&[
            "-chardev",
            "stdio,id=con,signal=off",
            "-serial",
            "chardev:con",
        ]);
        let disks = [
            ("root", self.root.as_ref(), true),
            ("input", Some(&self.input), true),
            ("output", Some(&self.output), false),
        ];
        for (name, file, readonly) in disks {
            let Some(file) = file else { continue };
            let ro = if readonly { ",readonly=on" } else { "" };
            push(&[
                "-drive",
                &format!(
                    "file={},format=raw,if=none,id={name}{ro}",
                    qemu_escape(&path(file))
                ),
            ]);
            push(&[
                "-device",
                &format!("virtio-blk-device,drive={name},serial=barn-{name}"),
            ]);
        }
        a
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// QEMU option values escape a comma by doubling it.
fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// The QEMU binary for guests of `arch` (only x86_64 images exist so far).
pub fn qemu_binary(arch: &str) -> String {
    format!("qemu-system-{arch}")
}

/// `qemu-system-… --version`'s first line, e.g. `7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)`.
pub fn qemu_version(qemu: &Path) -> Option<String> {
    let out = Command::new(qemu).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?;
    Some(
        line.trim_start_matches("QEMU emulator version ")
            .trim()
            .to_string(),
    )
}

/// The host TSC frequency in kHz, for the guest's `tsc_early_khz`: sysfs when the kernel
/// exports it, else the kernel's refined calibration from its log, else `/proc/cpuinfo`.
pub fn host_tsc_khz() -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
        && let Ok(k) = s.trim().parse()
    {
        return Some(k);
    }
    if let Ok(out) = Command::new("dmesg").output() {
        let text = String::from_utf8_lossy(&out.stdout);
        for marker in ["Refined TSC clocksource calibration: ", "tsc: Detected "] {
            if let Some(mhz) = text.lines().rev().find_map(|l| mhz_after(l, marker)) {
                return Some((mhz * 1000.0).round() as u64);
            }
        }
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse::<f64>()
        .ok()?;
    Some((mhz * 1000.0).round() as u64)
}

fn mhz_after(line: &str, marker: &str) -> Option<f64> {
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig {
            qemu: "qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            cpus: 1,
            memory_mib: 256,
            kernel: "/i/vmlinux".into(),
            initrd: "/i/initrd.img".into(),
            root: None,
            input: "/w/in,put.tar".into(),
            output: "/w/output.img".into(),
            tsc_khz: Some(2_000_000),
            no_sandbox: false,
        }
    }

    #[test]
    fn command_line_has_the_measured_settings_and_no_network() {
        let args = cfg().args().join(" ");
        assert!(args.contains("-M microvm,x-option-roms=off -cpu Nehalem-v1"));
        assert!(args.contains("-accel tcg,thread=multi,tb-size=128"));
        assert!(args.contains("tsc_early_khz=2000000"));
        assert!(args.contains("-nodefaults"));
        assert!(args.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ));
        assert!(args.contains("file=/w/in,,put.tar,format=raw,if=none,id=input,readonly=on"));
        assert!(args.contains("serial=barn-output"));
        assert!(!args.contains("netdev") && !args.contains("-nic") && !args.contains("-net "));
    }

    #[test]
    fn kvm_replaces_tcg() {
        let mut c = cfg();
        c.accel = Accel::Kvm;
        let args = c.args();
        assert!(args.windows(2).any(|w| w[0] == "-accel" && w[1] == "kvm"));
    }

    #[test]
    fn tsc_parsing() {
        assert_eq!(
            mhz_after(
                "[0.1] tsc: Refined TSC clocksource calibration: 2893.202 MHz",
                "Refined TSC clocksource calibration: "
            ),
            Some(2893.202)
        );
    }
}
