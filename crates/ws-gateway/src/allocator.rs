//! The allocator's settings. The binary allocates with mimalloc (see `main.rs`), which returns a
//! freed page to the OS only `purge_delay` ms after the free, and only when it allocates or frees
//! again after that. mimalloc 3, the version linked, waits 1,000 ms by default (mimalloc 2 waited
//! 10): after a burst of new connections an idle replica kept what the burst had freed resident,
//! 5.2–5.4 KiB per idle subscribed connection in the fan-out bench's (d) against 4.4–4.5 with 10 ms
//! (interleaved, 2026-12-04), over issue 11's 5 KiB. At 10 ms the delivery rate did not move.

use std::ffi::{OsStr, OsString, c_long};

/// The purge delay the gateway runs with unless the operator chose one.
pub const PURGE_DELAY_MS: c_long = 10;

/// Where mimalloc reads an operator's purge delay at start (the second is its older name).
const PURGE_DELAY_ENV: [&str; 2] = ["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"];

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (`mimalloc.h`); `libmimalloc-sys` names
/// no constant for it. A unit test checks that this option holds mimalloc 3's default delay.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets the purge delay to [`PURGE_DELAY_MS`] unless `MIMALLOC_PURGE_DELAY` (or
/// `MIMALLOC_RESET_DELAY`) was set. Call it first thing in `main`.
pub fn configure() {
    if let Some(delay) = purge_delay_to_set(operator_purge_delay().as_deref()) {
        set_purge_delay_ms(delay);
    }
}

/// The purge delay the operator gave mimalloc in its environment, if any.
fn operator_purge_delay() -> Option<OsString> {
    PURGE_DELAY_ENV.iter().find_map(std::env::var_os)
}

/// The delay to set: ours, unless the operator set one, which mimalloc has read already.
fn purge_delay_to_set(operator: Option<&OsStr>) -> Option<c_long> {
    operator.is_none().then_some(PURGE_DELAY_MS)
}

/// mimalloc's purge delay now, in ms.
pub fn purge_delay_ms() -> c_long {
    // SAFETY: reads one of mimalloc's option words by its index; no pointers are involved, and
    // mimalloc initialises its options on first use, from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY)
    }
}

fn set_purge_delay_ms(delay: c_long) {
    // SAFETY: writes one of mimalloc's option words by its index; no pointers are involved, and
    // mimalloc reads this one each time it schedules a purge, so it applies from then on.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_sets_its_delay_only_when_the_operator_did_not() {
        assert_eq!(purge_delay_to_set(None), Some(PURGE_DELAY_MS));
        assert_eq!(purge_delay_to_set(Some(OsStr::new("0"))), None);
        assert_eq!(purge_delay_to_set(Some(OsStr::new("1000"))), None);
    }

    #[test]
    fn the_option_set_is_mimallocs_purge_delay() {
        // An operator's value in this test's environment would be the starting point instead.
        let operator = operator_purge_delay();
        let expected_default = operator.as_deref().and_then(|value| value.to_str()?.parse().ok()).unwrap_or(1_000);
        // mimalloc 3's default: a wrong index (or a mimalloc 2 build, 10 ms) fails here.
        assert_eq!(purge_delay_ms(), expected_default);
        configure();
        let expected = if operator.is_some() { expected_default } else { PURGE_DELAY_MS };
        assert_eq!(purge_delay_ms(), expected);
    }
}
