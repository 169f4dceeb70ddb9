//! The allocator's settings. Every service allocates with mimalloc (the `#[global_allocator]` in
//! its `main.rs`) and calls [`configure`] first thing; each option is set unless the operator set
//! it in the environment (which mimalloc read when it started):
//!
//! - **No transparent huge pages** (every service). mimalloc asks for huge pages on its arenas
//!   (`MADV_HUGEPAGE`), so a page it gave back to the OS came back as a 2 MiB page fault that
//!   zeroes the whole huge page. In the gateway that happened inside the fan-out of each event: 5–6
//!   % of its CPU at 10 events/s to 5,000 connections (`perf`: `clear_page_erms` under the growth of
//!   a connection's queue) and p99 63–79 ms against 40–43 ms without (fan-out bench (c),
//!   interleaved, 2026-12-05); the persister spent 6.4 µs of CPU per event without them against 7.1
//!   with (drain bench, 6 of 7 interleaved pairs); the api did not move. mimalloc turns THP off for
//!   the process only at its own start, so [`configure`] also sets the process's THP-disable flag
//!   (`PR_SET_THP_DISABLE`), which holds for memory mapped already.
//! - **Purge delay** (the gateway: 10 ms). mimalloc returns a freed page to the OS only
//!   `purge_delay` ms after the free, and only when it allocates or frees again after that.
//!   mimalloc 3, the version linked, waits 1,000 ms by default (mimalloc 2 waited 10): after a burst
//!   of new connections an idle gateway kept what the burst had freed resident, 5.2–5.4 KiB per
//!   idle subscribed connection in the fan-out bench's (d) against 4.4–4.5 with 10 ms
//!   (interleaved, 2026-12-04), over issue 11's 5 KiB. At 10 ms the delivery rate did not move.

use std::ffi::{OsString, c_long};

/// A mimalloc option set unless the operator set it.
#[derive(Debug, Clone, Copy)]
struct Setting {
    /// Where mimalloc reads the operator's value at start (older names after the first).
    env: &'static [&'static str],
    /// The option's index in mimalloc 3's `mi_option_e` (`mimalloc.h`); `libmimalloc-sys` names
    /// no constant for either. A unit test checks each index against mimalloc's default.
    option: libmimalloc_sys::mi_option_t,
}

const PURGE_DELAY: Setting = Setting { env: &["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"], option: 15 };

const ALLOW_THP: Setting = Setting { env: &["MIMALLOC_ALLOW_THP"], option: 43 };

impl Setting {
    /// The value the operator gave mimalloc in its environment, if any.
    fn operator_value(self) -> Option<OsString> {
        self.env.iter().find_map(std::env::var_os)
    }

    /// Sets the option to `value` unless the operator set it; returns whether it did.
    fn apply(self, value: c_long) -> bool {
        if self.operator_value().is_some() {
            return false;
        }
        // SAFETY: writes one of mimalloc's option words by its index; no pointers are involved,
        // and mimalloc reads both options each time it purges or maps memory.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_set(self.option, value)
        };
        true
    }
}

/// What [`configure`] could not do, to report once logging is up.
#[derive(Debug)]
#[must_use = "report() logs what could not be set"]
pub struct Configured {
    huge_pages_off: Result<(), nix::Error>,
}

impl Configured {
    pub fn report(&self) {
        if let Err(err) = &self.huge_pages_off {
            tracing::warn!(%err, "cannot turn transparent huge pages off: memory given back may return as 2 MiB page faults");
        }
    }
}

/// Turns transparent huge pages off, and sets the purge delay to `purge_delay_ms` when given, each
/// unless the operator set it (`MIMALLOC_ALLOW_THP`, `MIMALLOC_PURGE_DELAY` or
/// `MIMALLOC_RESET_DELAY`). Call it first thing in `main`. A kernel that refuses the THP flag is
/// reported, not fatal: the service runs on, at the cost of the huge pages.
pub fn configure(purge_delay_ms: Option<c_long>) -> Configured {
    if let Some(delay) = purge_delay_ms {
        PURGE_DELAY.apply(delay);
    }
    let huge_pages_off = if ALLOW_THP.apply(0) { huge_pages_off_for_the_process() } else { Ok(()) };
    Configured { huge_pages_off }
}

#[cfg(target_os = "linux")]
fn huge_pages_off_for_the_process() -> Result<(), nix::Error> {
    nix::sys::prctl::set_thp_disable(true)
}

/// Transparent huge pages are Linux's: elsewhere mimalloc's option is all there is.
#[cfg(not(target_os = "linux"))]
fn huge_pages_off_for_the_process() -> Result<(), nix::Error> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option's value now.
    fn current(setting: Setting) -> c_long {
        // SAFETY: reads one of mimalloc's option words by its index; no pointers are involved, and
        // mimalloc initialises its options on first use, from any thread.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_get(setting.option)
        }
    }

    /// The option's value before `configure` (mimalloc's default, unless this test's environment
    /// set it) and the one expected after it asked for `value`.
    fn before_and_after(setting: Setting, mimalloc_default: c_long, value: c_long) -> (c_long, c_long) {
        let operator = setting.operator_value();
        let before = operator.as_deref().and_then(|value| value.to_str()?.parse().ok()).unwrap_or(mimalloc_default);
        (before, if operator.is_some() { before } else { value })
    }

    #[test]
    fn the_options_set_are_mimallocs_and_only_those_the_operator_left_alone() {
        // mimalloc 3's defaults: a wrong index (or a mimalloc 2 build, 10 ms) fails here.
        let (purge_before, purge_after) = before_and_after(PURGE_DELAY, 1_000, 10);
        let (thp_before, thp_after) = before_and_after(ALLOW_THP, 1, 0);
        assert_eq!((current(PURGE_DELAY), current(ALLOW_THP)), (purge_before, thp_before), "before");

        let configured = configure(Some(10));

        assert!(configured.huge_pages_off.is_ok(), "{configured:?}");
        assert_eq!((current(PURGE_DELAY), current(ALLOW_THP)), (purge_after, thp_after), "after");
        #[cfg(target_os = "linux")]
        if ALLOW_THP.operator_value().is_none() {
            assert!(nix::sys::prctl::get_thp_disable().expect("readable flag"), "THP off for the process");
        }
    }
}
