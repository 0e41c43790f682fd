//! The `frames` fuzz target: arbitrary frames into a stack that holds a listener and an
//! established connection. The input format and the checks are in `harness.rs`.
//!
//! ```text
//! RUSTC_BOOTSTRAP=1 cargo fuzz run frames -- -max_total_time=60
//! ```

#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;

// The replay test in tests/tests/model.rs uses parts of the harness this target does not.
#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

/// One harness for the whole run: building stacks and a connection per input would
/// cost more than the input itself. The harness starts afresh when an input breaks the
/// connection legitimately.
static HARNESS: Mutex<Option<harness::Harness>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut slot = HARNESS.lock().unwrap_or_else(|e| e.into_inner());
    let harness = match slot.as_mut() {
        Some(harness) => harness,
        None => slot.insert(harness::Harness::new().expect("the harness starts")),
    };
    if let Err(e) = harness.run(data) {
        panic!("{e}");
    }
});
