//! The allocator's settings. The binary allocates with mimalloc (see `main.rs`); the gateway sets
//! two of its options at start, each unless the operator set it in the environment (which mimalloc
//! read when it started):
//!
//! - **Purge delay, 10 ms.** mimalloc returns a freed page to the OS only `purge_delay` ms after
//!   the free, and only when it allocates or frees again after that. mimalloc 3, the version
//!   linked, waits 1,000 ms by default (mimalloc 2 waited 10): after a burst of new connections an
//!   idle replica kept what the burst had freed resident, 5.2–5.4 KiB per idle subscribed
//!   connection in the fan-out bench's (d) against 4.4–4.5 with 10 ms (interleaved, 2026-12-04),
//!   over issue 11's 5 KiB. At 10 ms the delivery rate did not move.
//! - **No transparent huge pages.** mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`),
//!   so a page purged between two bursts of deliveries came back as a 2 MiB page fault that zeroes
//!   the whole huge page, inside the fan-out of the next event: 5–6 % of the gateway's CPU at 10
//!   events/s to 5,000 connections (`perf`: `clear_page_erms` under `VecDeque::grow` of a
//!   connection's queue) and p99 65–70 ms against 35 ms without (fan-out bench (c), interleaved,
//!   2026-12-05). mimalloc turns THP off for the process only at its own start, so the gateway
//!   also sets the process's THP-disable flag (`PR_SET_THP_DISABLE`), which holds for memory
//!   mapped already.

use std::ffi::{OsString, c_long};

/// A mimalloc option the gateway sets unless the operator did.
#[derive(Debug, Clone, Copy)]
struct Setting {
    /// Where mimalloc reads the operator's value at start (older names after the first).
    env: &'static [&'static str],
    /// The option's index in mimalloc 3's `mi_option_e` (`mimalloc.h`); `libmimalloc-sys` names
    /// no constant for either. A unit test checks each index against mimalloc's default.
    option: libmimalloc_sys::mi_option_t,
    value: c_long,
}

const PURGE_DELAY: Setting = Setting { env: &["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"], option: 15, value: 10 };

const ALLOW_THP: Setting = Setting { env: &["MIMALLOC_ALLOW_THP"], option: 43, value: 0 };

impl Setting {
    /// The value the operator gave mimalloc in its environment, if any.
    fn operator_value(self) -> Option<OsString> {
        self.env.iter().find_map(std::env::var_os)
    }

    /// Sets the option unless the operator did; returns whether it set it.
    fn apply(self) -> bool {
        if self.operator_value().is_some() {
            return false;
        }
        // SAFETY: writes one of mimalloc's option words by its index; no pointers are involved,
        // and mimalloc reads both options each time it purges or maps memory.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_set(self.option, self.value)
        };
        true
    }
}

/// Sets the purge delay to 10 ms and turns transparent huge pages off, each unless
/// the operator set it (`MIMALLOC_PURGE_DELAY` or `MIMALLOC_RESET_DELAY`, `MIMALLOC_ALLOW_THP`).
/// Call it first thing in `main`. A kernel that refuses the THP flag is an error to log: the
/// gateway runs on, at the latency the huge pages cost.
pub fn configure() -> Result<(), nix::Error> {
    PURGE_DELAY.apply();
    if ALLOW_THP.apply() {
        nix::sys::prctl::set_thp_disable(true)?;
    }
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

    /// Each option's value before `configure` (mimalloc's default, unless this test's environment
    /// set it) and after.
    fn before_and_after(setting: Setting, mimalloc_default: c_long) -> (c_long, c_long, c_long) {
        let operator = setting.operator_value();
        let before = operator.as_deref().and_then(|value| value.to_str()?.parse().ok()).unwrap_or(mimalloc_default);
        let after = if operator.is_some() { before } else { setting.value };
        (current(setting), before, after)
    }

    #[test]
    fn the_options_set_are_mimallocs_and_only_those_the_operator_left_alone() {
        // mimalloc 3's defaults: a wrong index (or a mimalloc 2 build, 10 ms) fails here.
        let (purge_now, purge_before, purge_after) = before_and_after(PURGE_DELAY, 1_000);
        let (thp_now, thp_before, thp_after) = before_and_after(ALLOW_THP, 1);
        assert_eq!((purge_now, thp_now), (purge_before, thp_before), "mimalloc's values before");

        configure().expect("the kernel takes the THP-disable flag");

        assert_eq!((current(PURGE_DELAY), current(ALLOW_THP)), (purge_after, thp_after), "after");
        if ALLOW_THP.operator_value().is_none() {
            assert!(nix::sys::prctl::get_thp_disable().expect("readable flag"), "THP off for the process");
        }
    }
}
