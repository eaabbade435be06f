//! Arbitrary bytes as one FUSE request (header and arguments), laid out as
//! the Linux driver does: readable request, writable out header, writable
//! page-aligned body.
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;

static RIG: Mutex<Option<fsd_fuzz::Rig>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = RIG.lock().unwrap_or_else(|p| p.into_inner());
    let rig = guard.get_or_insert_with(fsd_fuzz::Rig::new);
    let chain = driver::Chain::request(data.to_vec(), 4096);
    for c in rig.run(&chain) {
        // A reply must never claim more than the chain could hold.
        assert!(
            c.len as u64 <= 16 + 4096,
            "used length {} exceeds the chain",
            c.len
        );
    }
});
