//! TCP states, numbered as the kernel numbers them (include/net/tcp_states.h) and named as `ss`
//! prints them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A TCP socket state. The discriminants are the kernel's `TCP_*` values, so a sock_diag reply or a
/// `/proc/net/tcp` line converts with [`TcpState::from_kernel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum TcpState {
    /// `TCP_ESTABLISHED`, printed `ESTAB`.
    Established = 1,
    /// `TCP_SYN_SENT`.
    SynSent = 2,
    /// `TCP_SYN_RECV` (request sockets are reported in this state too).
    SynRecv = 3,
    /// `TCP_FIN_WAIT1`: our FIN is sent (or queued) and not yet acknowledged.
    FinWait1 = 4,
    /// `TCP_FIN_WAIT2`: our FIN is acknowledged; waiting for the peer's.
    FinWait2 = 5,
    /// `TCP_TIME_WAIT`: both FINs exchanged, we closed first.
    TimeWait = 6,
    /// `TCP_CLOSE`, which `ss` prints `UNCONN`.
    Close = 7,
    /// `TCP_CLOSE_WAIT`: the peer's FIN arrived; our side has not sent its own.
    CloseWait = 8,
    /// `TCP_LAST_ACK`: we sent our FIN after the peer's and wait for its ACK.
    LastAck = 9,
    /// `TCP_LISTEN`.
    Listen = 10,
    /// `TCP_CLOSING`: both FINs crossed; waiting for the ACK of ours.
    Closing = 11,
}

impl TcpState {
    /// Every state, in kernel order.
    pub const ALL: [TcpState; 11] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
    ];

    /// Converts the kernel's state number; `TCP_NEW_SYN_RECV` (12) is reported as `SYN-RECV`, as
    /// `ss` does.
    pub fn from_kernel(n: u8) -> Option<TcpState> {
        match n {
            12 => Some(TcpState::SynRecv),
            _ => TcpState::ALL.iter().copied().find(|s| *s as u8 == n),
        }
    }

    /// The kernel's state number.
    pub fn kernel(self) -> u8 {
        self as u8
    }

    /// This state's bit in a sock_diag `idiag_states` mask.
    pub fn mask_bit(self) -> u32 {
        1 << (self as u8)
    }

    /// The name `ss` prints, except `TCP_CLOSE`, which is `CLOSE` here (`UNCONN` is accepted too).
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTAB",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynRecv => "SYN-RECV",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::TimeWait => "TIME-WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::LastAck => "LAST-ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A state name that is none of the spellings [`TcpState`] accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown TCP state `{0}` (expected one of ESTAB, SYN-SENT, SYN-RECV, FIN-WAIT-1, FIN-WAIT-2, TIME-WAIT, CLOSE, CLOSE-WAIT, LAST-ACK, LISTEN, CLOSING)")]
pub struct UnknownState(pub String);

impl FromStr for TcpState {
    type Err = UnknownState;

    /// Accepts the spellings people type: `CLOSE-WAIT`, `close-wait`, `close_wait`, `CLOSE_WAIT`,
    /// `closewait`, `ESTABLISHED`, `FIN_WAIT1`, `UNCONN`.
    fn from_str(s: &str) -> Result<TcpState, UnknownState> {
        let key: String =
            s.chars().filter(|c| *c != '-' && *c != '_').map(|c| c.to_ascii_uppercase()).collect();
        let state = match key.as_str() {
            "ESTAB" | "ESTABLISHED" => TcpState::Established,
            "SYNSENT" => TcpState::SynSent,
            "SYNRECV" | "SYNRECEIVED" => TcpState::SynRecv,
            "FINWAIT1" => TcpState::FinWait1,
            "FINWAIT2" => TcpState::FinWait2,
            "TIMEWAIT" => TcpState::TimeWait,
            "CLOSE" | "CLOSED" | "UNCONN" => TcpState::Close,
            "CLOSEWAIT" => TcpState::CloseWait,
            "LASTACK" => TcpState::LastAck,
            "LISTEN" => TcpState::Listen,
            "CLOSING" => TcpState::Closing,
            _ => return Err(UnknownState(s.to_string())),
        };
        Ok(state)
    }
}

impl Serialize for TcpState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for TcpState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TcpState, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses() {
        for s in ["CLOSE-WAIT", "close-wait", "close_wait", "CLOSE_WAIT", "closewait", "CloseWait"]
        {
            assert_eq!(s.parse::<TcpState>().unwrap(), TcpState::CloseWait, "{s}");
        }
        assert_eq!("fin_wait1".parse::<TcpState>().unwrap(), TcpState::FinWait1);
        assert_eq!("FIN-WAIT-2".parse::<TcpState>().unwrap(), TcpState::FinWait2);
        assert_eq!("established".parse::<TcpState>().unwrap(), TcpState::Established);
        assert_eq!("UNCONN".parse::<TcpState>().unwrap(), TcpState::Close);
    }

    #[test]
    fn names_round_trip_and_match_kernel_numbers() {
        for s in TcpState::ALL {
            assert_eq!(s.name().parse::<TcpState>().unwrap(), s);
            assert_eq!(TcpState::from_kernel(s.kernel()), Some(s));
        }
        assert_eq!(TcpState::from_kernel(8), Some(TcpState::CloseWait));
        assert_eq!(TcpState::from_kernel(12), Some(TcpState::SynRecv));
        assert_eq!(TcpState::from_kernel(0), None);
    }

    #[test]
    fn unknown_state_names_the_choices() {
        let err = "close-wiat".parse::<TcpState>().unwrap_err();
        assert!(err
            .to_string()
            .starts_with("unknown TCP state `close-wiat` (expected one of ESTAB"));
    }
}
