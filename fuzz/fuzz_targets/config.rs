//! Arbitrary text as the configuration file, through the same loader and validation `serve`
//! and `check-config` use (the configuration crate links no runtime crate): an error or a
//! configuration, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(loaded) = cal_relay_config::Config::from_toml(text) {
        // A reload walks every key of both configurations: none differs from itself.
        assert!(loaded.config.changes(&loaded.config).is_empty());
        let _ = loaded.config.check_replay_windows(std::time::Duration::ZERO);
    }
});
