//! Pure domain logic of executions: what a command does to an execution's state, decided in one
//! place, with no I/O, so every (state, command) pair is unit-tested.

pub(crate) mod fingerprint;
pub(crate) mod state_machine;
