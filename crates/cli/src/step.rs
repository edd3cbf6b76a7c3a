//! A presenter's pace: `--step` waits before each phase until a line arrives on stdin (Enter at
//! a terminal, or a line from `cwlab demo`, which drives its runs this way). The lines are read
//! here, by the command; the runner only waits for the go-ahead.

use cwlab_runner::{GoAhead, Pace};

/// A pace moved on by each line of stdin, read on a thread of its own (a blocking read must not
/// hold the run). At the end of stdin every later phase goes on without waiting.
pub fn enter_keys() -> Pace {
    let (go, pace) = Pace::new();
    std::thread::spawn(move || read_lines(&go));
    pace
}

fn read_lines(go: &GoAhead) {
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
        line.clear();
        if !go.go() {
            return;
        }
    }
}
