//! The QEMU side of the plugin: installation, the translation callback that
//! instruments the first instruction of each hooked function, the exec
//! callback that turns a hit into an event, and the arming of a new hook
//! table at a moment when no stale translation can survive.
//!
//! Arming: QEMU keeps translated blocks, so a function that already ran
//! before its hook arrived would keep running uninstrumented. A new table is
//! therefore put in force through `qemu_plugin_reset`, which flushes all
//! translations with every vCPU stopped and then calls back; the reset
//! unregisters all of the plugin's callbacks, so the callback registers them
//! again. `qemu_plugin_reset` must be called on a vCPU thread (elsewhere it
//! skips the flush), so the request thread only leaves the table pending and
//! the next translation, idle or resume callback of a vCPU asks for the
//! reset.
//!
//! Raw bindings (`qemu_plugin::sys`) are used for the hot paths: the exec
//! callback gets a `'static` hook site as its user data (no allocation per
//! translation), registers and memory are read into per-thread GLib arrays.
//! QEMU resizes the array it is given for a memory read (documented in
//! qemu-plugin.h), so it must be one GLib allocated: the crate's own reader
//! wraps a Rust buffer in a stack `GByteArray`, which GLib must not resize.

use std::cell::Cell;
use std::ffi::{c_uint, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use qemu_plugin::install::{Args, Info};
use qemu_plugin::plugin::{HasCallbacks, Register};
use qemu_plugin::sys::{
    self, qemu_plugin_cb_flags, qemu_plugin_id_t, qemu_plugin_reg_descriptor, qemu_plugin_register,
    qemu_plugin_tb, GArray, GByteArray,
};

use crate::channel::Channel;
use crate::config::{Hook, HookTable, Offsets, PluginArgs};
use crate::guest::{capture, GuestMem, Hit, Regs};

// GLib, which QEMU's process has loaded.
extern "C" {
    fn g_byte_array_sized_new(reserved_size: c_uint) -> *mut GByteArray;
    fn g_byte_array_set_size(array: *mut GByteArray, length: c_uint) -> *mut GByteArray;
    fn g_array_free(array: *mut GArray, free_segment: bool) -> *mut i8;
}

/// A hooked instruction's user data: the hook and the table it belongs to.
struct Site {
    hook: &'static Hook,
    offsets: &'static Offsets,
    generation: u64,
}

/// A table in force, with one site per hook (same order). Tables are
/// leaked: instrumented code may still point at an old one's sites until
/// the flush that replaces it, and they are a few KiB each.
struct Armed {
    table: &'static HookTable,
    sites: &'static [Site],
}

/// Register handles (QEMU's are the same for every vCPU of one target).
struct RegHandles {
    args: [*mut qemu_plugin_register; 4],
    gs_base: Option<*mut qemu_plugin_register>,
}
// SAFETY: the handles are opaque numbers QEMU hands out once; they are only
// passed back to QEMU, from any vCPU thread.
unsafe impl Send for RegHandles {}
// SAFETY: as above; never written after being set.
unsafe impl Sync for RegHandles {}

static PLUGIN_ID: AtomicU64 = AtomicU64::new(0);
static CHANNEL: OnceLock<Channel> = OnceLock::new();
static REGS: OnceLock<RegHandles> = OnceLock::new();
static ACTIVE: AtomicPtr<Armed> = AtomicPtr::new(std::ptr::null_mut());
static PENDING: Mutex<Option<HookTable>> = Mutex::new(None);
static ARM_PENDING: AtomicBool = AtomicBool::new(false);
static RESETTING: AtomicBool = AtomicBool::new(false);

fn arm(table: HookTable) -> &'static Armed {
    let table: &'static HookTable = Box::leak(Box::new(table));
    let sites: &'static [Site] = Box::leak(
        table
            .hooks
            .iter()
            .map(|hook| Site {
                hook,
                offsets: &table.offsets,
                generation: table.generation,
            })
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let armed: &'static Armed = Box::leak(Box::new(Armed { table, sites }));
    ACTIVE.store(armed as *const Armed as *mut Armed, Ordering::Release);
    armed
}

/// A line on QEMU's stderr (`qemu_plugin_outs` shows only with `-d plugin`).
fn say(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(text.as_bytes());
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

thread_local! {
    /// This vCPU thread's scratch array for register and memory reads.
    static SCRATCH: Cell<*mut GByteArray> = const { Cell::new(std::ptr::null_mut()) };
}

fn scratch() -> *mut GByteArray {
    SCRATCH.with(|s| {
        if s.get().is_null() {
            // SAFETY: plain GLib allocation; kept for the thread's lifetime.
            s.set(unsafe { g_byte_array_sized_new(4096) });
        }
        s.get()
    })
}

fn read_reg(handle: *mut qemu_plugin_register) -> Option<u64> {
    let arr = scratch();
    // SAFETY: `arr` is a live GLib byte array owned by this thread; QEMU
    // appends the register's bytes to it (we are in a callback registered
    // with QEMU_PLUGIN_CB_R_REGS, on the vCPU's thread).
    unsafe {
        g_byte_array_set_size(arr, 0);
        let n = sys::qemu_plugin_read_register(handle, arr);
        if n < 8 || (*arr).len < 8 {
            return None;
        }
        let bytes = std::slice::from_raw_parts((*arr).data, 8);
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }
}

/// Guest virtual memory through QEMU's debug access (a page-table walk on
/// the current vCPU; unmapped addresses fail, nothing is dereferenced here).
struct QemuMem;

impl GuestMem for QemuMem {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        if buf.is_empty() {
            return true;
        }
        let arr = scratch();
        // SAFETY: `arr` is this thread's GLib array, which QEMU resizes to
        // `buf.len()` and fills; we copy out no more than it holds.
        unsafe {
            if !sys::qemu_plugin_read_memory_vaddr(addr, arr, buf.len()) {
                return false;
            }
            if ((*arr).len as usize) < buf.len() {
                return false;
            }
            buf.copy_from_slice(std::slice::from_raw_parts((*arr).data, buf.len()));
        }
        true
    }
}

/// Exec callback of a hooked instruction.
unsafe extern "C" fn on_hit(vcpu: c_uint, userdata: *mut c_void) {
    // SAFETY: `userdata` is a `&'static Site` from a leaked table (see `arm`).
    let site: &'static Site = unsafe { &*(userdata as *const Site) };
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let (Some(ch), Some(regs)) = (CHANNEL.get(), REGS.get()) else {
            return;
        };
        let started = now_ns();
        let seq = ch.next_seq();
        let mut args = [0u64; 4];
        let used = site.hook.kind.args_used();
        for (a, h) in args.iter_mut().zip(regs.args).take(used) {
            *a = read_reg(h).unwrap_or(0);
        }
        let r = Regs {
            args,
            gs_base: regs.gs_base.and_then(read_reg),
        };
        let hit = Hit {
            seq,
            ns: started,
            vcpu,
            generation: site.generation,
        };
        let ev = capture(&mut QemuMem, site.hook, site.offsets, &r, hit);
        ch.push(ev);
        ch.callback_took(now_ns().saturating_sub(started));
    }));
}

/// Translation callback: instrument the hooked instructions of this block.
unsafe extern "C" fn on_translate(_id: qemu_plugin_id_t, tb: *mut qemu_plugin_tb) {
    maybe_arm();
    let armed = ACTIVE.load(Ordering::Acquire);
    if armed.is_null() {
        return;
    }
    // SAFETY: tables are leaked, so a pointer once stored stays valid.
    let armed: &'static Armed = unsafe { &*armed };
    let (Some(first), Some(last)) = (armed.table.hooks.first(), armed.table.hooks.last()) else {
        return;
    };
    // SAFETY: `tb` is valid for the duration of this callback; instruction
    // handles come from it and are used within the callback only.
    unsafe {
        let n = sys::qemu_plugin_tb_n_insns(tb);
        if n == 0 {
            return;
        }
        let start = sys::qemu_plugin_tb_vaddr(tb);
        let end = sys::qemu_plugin_insn_vaddr(sys::qemu_plugin_tb_get_insn(tb, n - 1));
        if end < first.addr || start > last.addr {
            return;
        }
        for i in 0..n {
            let insn = sys::qemu_plugin_tb_get_insn(tb, i);
            let va = sys::qemu_plugin_insn_vaddr(insn);
            let Ok(idx) = armed.table.hooks.binary_search_by_key(&va, |h| h.addr) else {
                continue;
            };
            let site = &armed.sites[idx] as *const Site as *mut c_void;
            sys::qemu_plugin_register_vcpu_insn_exec_cb(
                insn,
                Some(on_hit),
                qemu_plugin_cb_flags::QEMU_PLUGIN_CB_R_REGS,
                site,
            );
        }
    }
}

/// On a vCPU thread: if a new table waits, ask QEMU for a reset (a flush of
/// all translations with the vCPUs stopped), which calls `on_reset`.
fn maybe_arm() {
    if !ARM_PENDING.load(Ordering::Acquire) || RESETTING.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: called from a vCPU callback, where QEMU's reset schedules the
    // flush on this vCPU; `on_reset` matches qemu_plugin_simple_cb_t.
    unsafe { sys::qemu_plugin_reset(PLUGIN_ID.load(Ordering::Relaxed), Some(on_reset)) };
}

/// After the flush, all vCPUs stopped: put the pending table in force and
/// register the callbacks again (a reset removes them all).
unsafe extern "C" fn on_reset(id: qemu_plugin_id_t) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let table = match PENDING.lock() {
            Ok(mut p) => {
                ARM_PENDING.store(false, Ordering::Release);
                p.take()
            }
            Err(_) => None,
        };
        if let Some(table) = table {
            let armed = arm(table);
            if let Some(ch) = CHANNEL.get() {
                ch.armed(armed.table.generation, armed.table.hooks.len());
            }
        }
    }));
    register_callbacks(id);
    RESETTING.store(false, Ordering::Release);
}

/// From the request thread: a new table waits for a vCPU to arm it.
fn on_new_table(table: HookTable) {
    if let Ok(mut p) = PENDING.lock() {
        *p = Some(table);
        ARM_PENDING.store(true, Ordering::Release);
    }
}

unsafe extern "C" fn on_vcpu_init(_id: qemu_plugin_id_t, _vcpu: c_uint) {
    if REGS.get().is_none() {
        if let Some(r) = find_registers() {
            let _ = REGS.set(r);
        }
    }
}

unsafe extern "C" fn on_idle_or_resume(_id: qemu_plugin_id_t, _vcpu: c_uint) {
    maybe_arm();
}

unsafe extern "C" fn on_exit(_id: qemu_plugin_id_t, _data: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if let Some(ch) = CHANNEL.get() {
            ch.finish(Duration::from_secs(3));
            say(&ch.stats().summary());
        }
    }));
}

/// The handles of rdi, rsi, rdx, rcx and gs_base (on a vCPU thread).
fn find_registers() -> Option<RegHandles> {
    // SAFETY: called in the vCPU init callback, where QEMU lists the vCPU's
    // registers; the array and its descriptors are read, then the array is
    // freed (the names stay QEMU's).
    unsafe {
        let arr = sys::qemu_plugin_get_registers();
        if arr.is_null() {
            return None;
        }
        let descs = std::slice::from_raw_parts(
            (*arr).data as *const qemu_plugin_reg_descriptor,
            (*arr).len as usize,
        );
        let find = |want: &str| {
            descs
                .iter()
                .find(|d| !d.name.is_null() && CStr::from_ptr(d.name).to_bytes() == want.as_bytes())
                .map(|d| d.handle)
        };
        let args = [find("rdi"), find("rsi"), find("rdx"), find("rcx")];
        let gs_base = find("gs_base");
        g_array_free(arr, true);
        let [Some(a0), Some(a1), Some(a2), Some(a3)] = args else {
            say("taint-plugin: this target has no rdi/rsi/rdx/rcx; no arguments will be read\n");
            return None;
        };
        if gs_base.is_none() {
            say("taint-plugin: no gs_base register; the current task will not be read\n");
        }
        Some(RegHandles {
            args: [a0, a1, a2, a3],
            gs_base,
        })
    }
}

fn register_callbacks(id: qemu_plugin_id_t) {
    // SAFETY: plain registrations with functions of the matching C types.
    unsafe {
        sys::qemu_plugin_register_vcpu_init_cb(id, Some(on_vcpu_init));
        sys::qemu_plugin_register_vcpu_tb_trans_cb(id, Some(on_translate));
        sys::qemu_plugin_register_vcpu_idle_cb(id, Some(on_idle_or_resume));
        sys::qemu_plugin_register_vcpu_resume_cb(id, Some(on_idle_or_resume));
        sys::qemu_plugin_register_atexit_cb(id, Some(on_exit), std::ptr::null_mut());
    }
}

fn boxed(e: impl std::error::Error + Send + Sync + 'static) -> qemu_plugin::Error {
    qemu_plugin::Error::BoxedError(Box::new(e))
}

/// The plugin as the `qemu-plugin` crate installs it.
pub struct TaintPlugin;

impl HasCallbacks for TaintPlugin {}

impl Register for TaintPlugin {
    /// Replaces the crate's default registration, which would register
    /// every callback type; only those above are needed.
    fn register_default(
        &mut self,
        id: qemu_plugin_id_t,
        args: &Args,
        info: &Info,
    ) -> qemu_plugin::Result<()> {
        if info.system.is_none() || info.target_name != "x86_64" {
            return Err(boxed(std::io::Error::other(format!(
                "taint-plugin hooks x86_64 guest kernels under system emulation, not {}{}",
                info.target_name,
                if info.system.is_none() {
                    " user mode"
                } else {
                    ""
                }
            ))));
        }
        let parsed = PluginArgs::parse(&args.raw).map_err(boxed)?;
        PLUGIN_ID.store(id, Ordering::Relaxed);
        let armed = arm(parsed.table);
        let channel =
            Channel::start(&parsed.socket, parsed.ring, Box::new(on_new_table)).map_err(boxed)?;
        let _ = CHANNEL.set(channel);
        register_callbacks(id);
        say(&format!(
            "taint-plugin: listening on {}, {} hooks armed from the command line\n",
            parsed.socket.display(),
            armed.table.hooks.len()
        ));
        Ok(())
    }
}
