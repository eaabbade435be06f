//! The debug-register syscall hook on the monitor's own KVM guest.
//!
//! The synthetic guest lives with its example, outside the monitor's
//! library; it is included here so that `cargo test` still runs it.

#[path = "../examples/kvm_syscall_hook/guest.rs"]
mod guest;

use guest::SyscallLoopVm;

fn kvm_usable() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            println!("SKIP: /dev/kvm not usable ({e})");
            eprintln!("SKIP: /dev/kvm not usable ({e})");
            false
        }
    }
}

#[test]
fn hook_observes_every_syscall() {
    if !kvm_usable() {
        return;
    }
    let mut vm = SyscallLoopVm::new().unwrap();
    // Unhooked: the loop runs to its end without a single debug exit.
    let s = vm.run(10_000, None).unwrap();
    assert_eq!(s.hook_exits, 0);
    // Hooked: each call is seen once, in order (the guest puts the
    // countdown in rax before every syscall).
    let mut seen = Vec::new();
    let mut obs = |rax: u64| seen.push(rax);
    let s = vm.run(1000, Some(&mut obs)).unwrap();
    assert_eq!(s.hook_exits, 1000);
    assert_eq!(seen, (1..=1000).rev().collect::<Vec<u64>>());
    // And the same VM can run unhooked again.
    assert_eq!(vm.run(10, None).unwrap().hook_exits, 0);
}

#[test]
fn hook_cost() {
    if !kvm_usable() {
        return;
    }
    let c = guest::measure(20_000, 5_000, 7).unwrap();
    println!(
        "syscall unhooked {:.0} ns, hooked {:.0} ns, added {:.0} ns per call (medians of {})",
        c.unhooked_ns, c.hooked_ns, c.added_ns, c.runs
    );
    assert!(c.hooked_ns.is_finite() && c.unhooked_ns > 0.0);
}
