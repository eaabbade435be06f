//! Profile extraction against the real guest kernel image.

use monitor::kernel::{KernelImage, Profile};

#[test]
fn profile_from_real_vmlinux() {
    let Some(vmlinux) = testrig::prereq::vmlinux() else {
        return;
    };
    let image = KernelImage::load(&vmlinux).unwrap();
    let p = Profile::build(&image, None).unwrap();
    assert!(p.banner.starts_with("Linux version 6."), "{}", p.banner);
    assert!(p.symbol_count > 50_000, "{}", p.symbol_count);
    for s in [
        "init_task",
        "linux_banner",
        "wake_up_process",
        "super_blocks",
        "vmemmap_base",
    ] {
        assert!(p.symbol(s).unwrap() >= 0xffff_ffff_8000_0000, "{s}");
    }
    assert_eq!(p.symbol("_text").unwrap(), image.text_addr);
    // list_head is two pointers, and task_struct's tasks is one.
    assert_eq!(p.field("list_head", "prev").unwrap().offset, 8);
    assert_eq!(p.field("task_struct", "tasks").unwrap().size, 16);
    assert_eq!(p.field("task_struct", "comm").unwrap().size, 16);
    // thread_info is embedded first in task_struct on x86-64.
    assert_eq!(p.off("task_struct", "thread_info.flags").unwrap(), 0);
    // Page flag bits come from BTF's enum pageflags.
    assert_eq!(p.constant("PG_locked").unwrap(), 0);
    assert!(p.constant("PG_writeback").unwrap() > p.constant("PG_dirty").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = p.store(dir.path()).unwrap();
    assert_eq!(Profile::load(&path).unwrap(), p);
}
