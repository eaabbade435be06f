//! fsd as libvirt deploys it: a private libvirtd (Debian 12's libvirt 9.0,
//! testrig::libvirt) runs a `type='qemu'` domain whose root file system is a
//! `<filesystem>` with `<binary path=…>` pointing at fsd. libvirt starts fsd
//! itself, in its legacy form (`--fd=N -o source=…,cache=…,sandbox=…,…`),
//! with the domain XML's cache, sandbox, xattr and lock settings.
//!
//! One domain, three boots: the guest writes and reads a file of its boot,
//! then waits for the ACPI power button. `virsh reboot` presses it (libvirt's
//! "fake reboot": the guest powers off, QEMU is reset and goes on), so fsd
//! sees the device reset and a new FUSE session on the same connection;
//! `virsh shutdown` presses it again, the guest remounts its root read-only
//! and powers off, libvirt stops QEMU and fsd; `virsh start` starts both
//! anew. Every boot finds the files of the boots before it, and the host
//! finds every file the guest wrote.
//!
//! Needs root (libvirt's system instance) and libvirtd, virtlogd, virsh
//! (`scripts/apt/deploy.txt`); otherwise it prints `SKIP: …` (a failure
//! under `CI=true`).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::FSD;
use testrig::libvirt::{self, Libvirt};
use testrig::{prereq, require, rootfs, skip, wait_for, InitramfsBuilder, Need};

const TAG: &str = "rootfs";
const DOMAIN: &str = "fsd-libvirt-test";
/// Longest wait for one boot (or one shutdown) on a loaded 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The guest's work at each boot, then a wait for the power button.
const SCRIPT: &str = r#"
n=$(( $(cat /boots 2>/dev/null || echo 0) + 1 ))
echo "$n" > /boots
echo "written in boot $n" > "/root/boot-$n.txt"
echo "LV boot=$n read=[$(cat /root/boot-$n.txt)] files=$(ls /root | tr '\n' ' ')"
dev=
for e in /sys/class/input/event*; do
    [ "$(cat "$e/device/name" 2>/dev/null)" = "Power Button" ] && dev=/dev/input/${e##*/}
done
[ -n "$dev" ] || { echo "LV no power button"; exit 1; }
echo "LV waiting for the power button on $dev (boot $n)"
head -c 24 "$dev" >/dev/null
echo "LV power button (boot $n)"
sync
mount -o remount,ro / && echo "LV root remounted read-only (boot $n)"
"#;

#[test]
fn libvirt_runs_fsd_through_reboot_shutdown_and_start() {
    let Some(env) = require(&[Need::Busybox]) else {
        return;
    };
    if !prereq::is_root() {
        skip::<(), _>("libvirt's system instance needs root");
        return;
    }
    if let Some(why) = prereq::missing_program(libvirt::PROGRAMS) {
        skip::<(), _>(why);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    rootfs::populate_busybox_root(&root).unwrap();
    rootfs::set_script(&root, SCRIPT).unwrap();
    // The ACPI power button and its input device are modules in Debian's
    // kernel; the initramfs loads them before it switches root.
    let initrd = InitramfsBuilder::switch_root(TAG)
        .module("button")
        .module("evdev")
        .build(&env.kernel)
        .unwrap();
    let console = dir.path().join("console.log");
    let xml = domain_xml(&env.kernel.vmlinuz, &initrd, &root, &console);
    std::fs::write(dir.path().join("domain.xml"), &xml).unwrap();

    let lv = Libvirt::start(&dir.path().join("libvirt")).unwrap_or_else(|e| panic!("{e}"));
    let version = lv.virsh(&["version"]).unwrap();
    println!("{}", version.trim().replace('\n', "; "));
    let fail = |what: &str| -> ! {
        panic!(
            "{what}\n--- console ---\n{}\n--- libvirt ---\n{}",
            tail(&std::fs::read_to_string(&console).unwrap_or_default(), 40),
            lv.log_tail()
        )
    };
    lv.virsh(&["define", &dir.path().join("domain.xml").to_string_lossy()])
        .unwrap_or_else(|e| fail(&e));

    // Boot 1.
    let t = Instant::now();
    lv.virsh(&["start", DOMAIN]).unwrap_or_else(|e| fail(&e));
    if !wait_for(BOOT_TIMEOUT, || {
        has(
            &console,
            "LV waiting for the power button on /dev/input/event",
        )
    }) {
        fail("boot 1 did not reach its wait");
    }
    println!("boot 1 in {:?}", t.elapsed());
    let fsd_cmd = fsd_command_line(&root);
    println!("libvirt started fsd as: {fsd_cmd}");
    assert!(
        fsd_cmd.contains("--fd=") && fsd_cmd.contains("-o") && fsd_cmd.contains("source="),
        "libvirt 9.0 starts the daemon in the legacy form: {fsd_cmd}"
    );

    // Boot 2: `virsh reboot` (ACPI), the same QEMU and fsd.
    let t = Instant::now();
    lv.virsh(&["reboot", DOMAIN]).unwrap_or_else(|e| fail(&e));
    if !wait_for(BOOT_TIMEOUT, || has(&console, "(boot 2)")) {
        fail("no second boot after virsh reboot");
    }
    println!("virsh reboot: boot 2 in {:?}", t.elapsed());
    assert_eq!(
        fsd_command_line(&root),
        fsd_cmd,
        "the same fsd serves the reboot"
    );

    // `virsh shutdown`: a clean power-off, QEMU and fsd stop.
    let t = Instant::now();
    lv.virsh(&["shutdown", DOMAIN]).unwrap_or_else(|e| fail(&e));
    if !wait_for(BOOT_TIMEOUT, || lv.state(DOMAIN) == "shut off") {
        fail(&format!("still {} after virsh shutdown", lv.state(DOMAIN)));
    }
    println!("virsh shutdown: shut off in {:?}", t.elapsed());
    assert!(has(&console, "LV root remounted read-only (boot 2)"));
    assert!(
        wait_for(Duration::from_secs(30), || fsd_command_line(&root)
            .is_empty()),
        "fsd still runs after the domain stopped: {}",
        fsd_command_line(&root)
    );

    // Boot 3: `virsh start` again.
    let t = Instant::now();
    lv.virsh(&["start", DOMAIN]).unwrap_or_else(|e| fail(&e));
    if !wait_for(BOOT_TIMEOUT, || has(&console, "(boot 3)")) {
        fail("no third boot after virsh start");
    }
    println!("virsh start: boot 3 in {:?}", t.elapsed());
    let text = std::fs::read_to_string(&console).unwrap();
    let boots: Vec<&str> = text.lines().filter(|l| l.contains("LV boot=")).collect();
    println!("{}", boots.join("\n"));
    assert_eq!(boots.len(), 3, "{text}");
    for (i, l) in boots.iter().enumerate() {
        let n = i + 1;
        assert!(
            l.contains(&format!("LV boot={n} read=[written in boot {n}]")),
            "{l}"
        );
        for earlier in 1..=n {
            assert!(l.contains(&format!("boot-{earlier}.txt")), "{l}");
        }
    }
    for n in 1..=3 {
        assert_eq!(
            std::fs::read_to_string(root.join(format!("root/boot-{n}.txt"))).unwrap(),
            format!("written in boot {n}\n")
        );
    }
    lv.virsh(&["destroy", DOMAIN]).unwrap_or_else(|e| fail(&e));
    lv.virsh(&["undefine", DOMAIN]).unwrap_or_else(|e| fail(&e));
}

/// The domain: TCG, memfd shared memory (vhost-user needs it), direct kernel
/// boot, ACPI (without it `poweroff -f` only halts and the power button
/// does nothing), the root file system from fsd, the console to a file.
fn domain_xml(kernel: &Path, initrd: &Path, root: &Path, console: &Path) -> String {
    format!(
        r#"<domain type='qemu'>
  <name>{DOMAIN}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 rdinit=/init</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs' queue='1024'/>
      <binary path='{fsd}' xattr='on'>
        <cache mode='always'/>
        <lock posix='on' flock='on'/>
      </binary>
      <source dir='{root}'/>
      <target dir='{TAG}'/>
    </filesystem>
    <serial type='file'>
      <source path='{console}' append='on'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"#,
        kernel = kernel.display(),
        initrd = initrd.display(),
        fsd = FSD,
        root = root.display(),
        console = console.display(),
    )
}

fn has(file: &Path, text: &str) -> bool {
    std::fs::read_to_string(file).is_ok_and(|s| s.contains(text))
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The command line of the fsd libvirt started for `root` (empty when none
/// runs).
fn fsd_command_line(root: &Path) -> String {
    let source = format!("source={}", root.display());
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return String::new();
    };
    for e in rd.flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().map(String::as_str) == Some(FSD) && args.iter().any(|a| a.contains(&source))
        {
            return args.join(" ");
        }
    }
    String::new()
}
