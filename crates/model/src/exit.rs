//! Exit codes of the `cwlab` binary, shared by every subcommand.

/// Every expectation held.
pub const PASS: i32 = 0;
/// At least one expectation failed: the scenario did not behave as its file says.
pub const FAIL: i32 = 1;
/// Bad input, or an environment that cannot run the scenario.
pub const BAD_INPUT: i32 = 2;
/// The run was interrupted by SIGINT (128 + 2).
pub const INTERRUPTED_SIGINT: i32 = 130;
/// The run was interrupted by SIGTERM (128 + 15).
pub const INTERRUPTED_SIGTERM: i32 = 143;
