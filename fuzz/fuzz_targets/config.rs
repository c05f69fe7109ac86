//! Arbitrary text as the configuration file, through the same loader and validation `serve`
//! and `check-config` use: an error or a configuration, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(loaded) = cal_relay_config::Config::from_toml(text) {
        // What `serve` builds from a valid configuration, short of opening sinks.
        let _ = loaded.config.endpoints();
        let _ = loaded.config.route_table();
    }
});
