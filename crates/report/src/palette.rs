//! One colour per TCP state, the same in every picture: the chart, the state machine, the ladder,
//! the HTML report and the live view. Few colours, the ones that matter loud: CLOSE-WAIT red
//! (the leak), FIN-WAIT-2 orange (its other half), TIME-WAIT blue (a normal end).

use cwlab_model::TcpState;

/// The state's colour for SVG and HTML.
pub fn colour(s: TcpState) -> &'static str {
    match s {
        TcpState::CloseWait => "#d62728",
        TcpState::FinWait2 => "#ff7f0e",
        TcpState::TimeWait => "#1f77b4",
        TcpState::Established => "#7f7f7f",
        TcpState::FinWait1 => "#9467bd",
        TcpState::LastAck => "#8c564b",
        TcpState::Closing => "#e377c2",
        TcpState::Close => "#2ca02c",
        _ => "#bcbd22",
    }
}

/// The state's colour on a terminal (an ANSI 256-colour index close to [`colour`]).
pub fn ansi(s: TcpState) -> u8 {
    match s {
        TcpState::CloseWait => 160,
        TcpState::FinWait2 => 208,
        TcpState::TimeWait => 32,
        TcpState::Established => 244,
        TcpState::FinWait1 => 97,
        TcpState::LastAck => 94,
        TcpState::Closing => 176,
        TcpState::Close => 34,
        _ => 142,
    }
}

/// The colour of the descriptor series: neutral, so the states stay the loud ones.
pub const DESCRIPTORS: &str = "#222222";

/// Whether a terminal face may colour its text: stdout is a terminal and NO_COLOR is unset or
/// empty (no-color.org).
pub fn terminal_colour() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

/// `text` in the state's colour when `on`.
pub fn paint(text: &str, s: TcpState, on: bool) -> String {
    if on {
        format!("\x1b[38;5;{}m{text}\x1b[0m", ansi(s))
    } else {
        text.to_string()
    }
}
