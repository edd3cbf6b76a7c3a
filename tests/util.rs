//! A small harness for driving the built `cwlab` binary, after ripgrep's `TestCommand`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A fresh scratch folder for one test.
pub fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cwlab-e2e-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// True when this machine lets us make network namespaces; under CI=true it must.
pub fn can_isolate(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{test}: CI runs as root");
    eprintln!("skipping {test}: needs root for private network namespaces");
    false
}

/// `cwlab ARGS` from the repository's root.
pub fn cwlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cwlab")).args(args).current_dir(root()).output().unwrap()
}

/// The output's streams, for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts the exit code, showing both streams when it differs.
#[macro_export]
macro_rules! assert_exit {
    ($out:expr, $code:expr) => {
        assert_eq!($out.status.code(), Some($code), "{}", $crate::util::show(&$out))
    };
}
