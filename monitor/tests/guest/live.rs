//! Identity, symbols and the process list against one real booted guest.
//!
//! One boot serves several checks (boots cost 10–30 s of a shared 2-core
//! machine); the SMBIOS tampering check runs last because it rewrites guest
//! memory.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::common::{Guest, UUID};
use monitor::vm::Vm;
use monitor::{process, smbios};

#[test]
fn identity_symbols_and_processes() {
    let Some(mut g) = Guest::boot("auto") else {
        return;
    };
    let cache = g.dir().join("profiles");
    let mut vm = Vm::attach(g.spec.clone(), Some(cache)).unwrap();

    // Symbols from kallsyms, relocated by the detected KASLR slide, agree
    // with the guest's own /proc/kallsyms.
    let paging = vm.paging().unwrap();
    let k = vm.kernel(paging).unwrap();
    for sym in [
        "init_task",
        "wake_up_process",
        "super_blocks",
        "linux_banner",
    ] {
        let line = g.sh(&format!("grep ' {sym}$' /proc/kallsyms"));
        let guest_addr = u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap();
        assert_eq!(k.sym(sym).unwrap(), guest_addr, "{sym}: {line}");
    }

    // VM identity: the SMBIOS copy equals -uuid and QMP.
    let t = Instant::now();
    let found = smbios::read_uuid(&vm.ram).unwrap();
    let id = smbios::identity(&vm.qmp.uuid().unwrap(), Some(&found));
    println!("UUID lookup (RAM scan + QMP query-uuid): {:?}", t.elapsed());
    assert_eq!(found.uuid, UUID);
    assert!(!id.tampered, "{id:?}");

    // Process list: the guest's ps, then ours while paused.
    let guest_ps = g.sh("ps -o pid,ppid,comm");
    let t = Instant::now();
    let ours = vm
        .paused(|vm| {
            let p = vm.paging()?;
            process::list(&vm.kernel(p)?)
        })
        .unwrap();
    println!(
        "process list ({} processes, pause + CR3 + KASLR + walk + resume): {:?}",
        ours.len(),
        t.elapsed()
    );
    let ours: BTreeMap<u32, &monitor::report::Process> = ours.iter().map(|p| (p.pid, p)).collect();
    let mut seen = 0;
    for line in guest_ps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() || f[0] == "PID" {
            continue;
        }
        assert_eq!(f.len(), 3, "unexpected ps line {line:?} in:\n{guest_ps}");
        if f[2] == "ps" {
            continue;
        }
        let pid: u32 = f[0]
            .parse()
            .unwrap_or_else(|_| panic!("{line:?} in:\n{guest_ps}"));
        let ppid: u32 = f[1]
            .parse()
            .unwrap_or_else(|_| panic!("{line:?} in:\n{guest_ps}"));
        let p = ours
            .get(&pid)
            .unwrap_or_else(|| panic!("pid {pid} ({line}) missing: {ours:#?}"));
        assert_eq!(p.ppid, ppid, "{line}");
        // /proc shows workqueue workers as comm + "-" + the queue they serve.
        let same = p.name == f[2]
            || (p.name.starts_with("kworker/") && f[2].starts_with(&format!("{}-", p.name)));
        assert!(same, "name {} vs guest {line}", p.name);
        seen += 1;
    }
    assert!(seen > 10, "guest ps listed too little:\n{guest_ps}");
    assert!(
        ours.len() <= seen + 3,
        "monitor lists processes the guest does not: {ours:#?}\n{guest_ps}"
    );
    assert_eq!(ours[&1].uid, 0);

    // Tampering: the guest (here: the test, writing guest RAM as a
    // compromised guest kernel would) rewrites its SMBIOS UUID.
    let mut bytes = [0u8; 16];
    monitor::mem::PhysMem::read_phys(&vm.ram, found.uuid_addr, &mut bytes).unwrap();
    bytes[0] ^= 0xff;
    monitor::mem::PhysMem::write_phys(&vm.ram, found.uuid_addr, &bytes).unwrap();
    let forged = smbios::read_uuid(&vm.ram).unwrap();
    assert_ne!(forged.uuid, UUID);
    let id = smbios::identity(&vm.qmp.uuid().unwrap(), Some(&forged));
    assert!(id.tampered, "{id:?}");
}
