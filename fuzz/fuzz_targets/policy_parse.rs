//! Fuzz `policy::parse_str` with arbitrary UTF-8: it must never panic, hang or blow up memory,
//! whatever the text (alias bombs, deep nesting and huge rule lists included).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = policy::parse_str(text, "fuzz.yaml");
    }
});
