//! The expectation language's parser: one line of words into an [`Expectation`], or an error
//! at the offset of the word that was not what the grammar (at the top of `expect.rs`) allows.

use std::time::Duration;

use super::{Cmp, Expectation, ParseError, Quantity, Rhs, Window};
use crate::duration;
use crate::report::{Role, Side};
use crate::state::TcpState;

impl Cmp {
    fn parse(s: &str) -> Option<Cmp> {
        Some(match s {
            "==" | "=" => Cmp::Eq,
            "!=" => Cmp::Ne,
            "<" => Cmp::Lt,
            "<=" => Cmp::Le,
            ">" => Cmp::Gt,
            ">=" => Cmp::Ge,
            _ => return None,
        })
    }
}

struct Tokens<'a> {
    items: Vec<(usize, &'a str)>,
    next: usize,
    end: usize,
}

impl<'a> Tokens<'a> {
    fn new(text: &'a str) -> Tokens<'a> {
        let mut items = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices() {
            match (c.is_whitespace(), start) {
                (true, Some(s)) => {
                    items.push((s, &text[s..i]));
                    start = None;
                }
                (false, None) => start = Some(i),
                _ => {}
            }
        }
        if let Some(s) = start {
            items.push((s, &text[s..]));
        }
        Tokens { items, next: 0, end: text.len() }
    }

    fn peek(&self) -> Option<(usize, &'a str)> {
        self.items.get(self.next).copied()
    }

    fn take(&mut self, what: &str) -> Result<(usize, &'a str), ParseError> {
        let t = self.peek().ok_or_else(|| ParseError {
            offset: self.end,
            message: format!("expected {what}, found the end of the expectation"),
        })?;
        self.next += 1;
        Ok(t)
    }

    fn keyword(&mut self, word: &str) -> Result<(), ParseError> {
        let (at, t) = self.take(&format!("`{word}`"))?;
        if t.eq_ignore_ascii_case(word) {
            Ok(())
        } else {
            Err(ParseError { offset: at, message: format!("expected `{word}`, found `{t}`") })
        }
    }
}

const QUANTITY_HELP: &str = "expected a quantity: `server STATE`, `client STATE` or `acceptor fds`";

impl Expectation {
    /// Parses one expectation line.
    pub fn parse(text: &str) -> Result<Expectation, ParseError> {
        let mut toks = Tokens::new(text);
        let (quantity, grew) = parse_quantity(&mut toks)?;
        let cmp = if grew {
            Cmp::Eq
        } else {
            let (at, t) = toks.take("a comparison (==, !=, <, <=, >, >=)")?;
            Cmp::parse(t).ok_or_else(|| ParseError {
                offset: at,
                message: format!("expected a comparison (==, !=, <, <=, >, >=), found `{t}`"),
            })?
        };
        let rhs = parse_rhs(&mut toks)?;
        let window = parse_window(&mut toks)?;
        if quantity.end_only() && window != Window::End {
            return Err(ParseError {
                offset: toks.items[toks.next - 2].0,
                message: format!(
                    "{quantity} is known only at the end of a run: drop `within`/`for`"
                ),
            });
        }
        if let Some((at, t)) = toks.peek() {
            return Err(ParseError {
                offset: at,
                message: format!("expected `within D`, `for D` or the end, found `{t}`"),
            });
        }
        Ok(Expectation { text: text.trim().to_string(), quantity, cmp, rhs, window })
    }
}

fn parse_quantity(toks: &mut Tokens<'_>) -> Result<(Quantity, bool), ParseError> {
    let (at, word) = toks.take("a quantity")?;
    let lower = word.to_ascii_lowercase();
    let word = lower.as_str();
    let side = match word {
        "server" => Side::Server,
        "client" => Side::Client,
        "acceptor" => {
            toks.keyword("fds")?;
            return parse_fds_suffix(toks);
        }
        "hung" => {
            toks.keyword("clients")?;
            return Ok((Quantity::HungClients, false));
        }
        "unaccepted" => {
            toks.keyword("clients")?;
            return Ok((Quantity::UnacceptedClients, false));
        }
        "accepted" => return Ok((Quantity::Accepted, false)),
        "handler" | "helper" | "worker" => {
            toks.keyword("fds")?;
            let role = Role::ALL.iter().copied().find(|r| r.name() == word).expect("listed");
            return Ok((Quantity::RoleFds(role), false));
        }
        "accept" => {
            toks.keyword("errors")?;
            return Ok((Quantity::AcceptErrors, false));
        }
        _ => {
            return Err(ParseError {
                offset: at,
                message: format!("{QUANTITY_HELP}, found `{word}`"),
            })
        }
    };
    if let Some((_, next)) = toks.peek() {
        let upper = next.to_ascii_uppercase();
        if let Some((flag, _)) = crate::evidence::FLAGS.iter().find(|(f, _)| *f == upper) {
            toks.next += 1;
            return Ok((Quantity::Sent(side, flag), false));
        }
        if next.eq_ignore_ascii_case("transitions") {
            toks.next += 1;
            let from = parse_state(toks)?;
            toks.keyword("->")?;
            let to = parse_state(toks)?;
            return Ok((Quantity::Transitions(side, from, to), false));
        }
        if next.eq_ignore_ascii_case("path") {
            toks.next += 1;
            let mut path = vec![parse_state(toks)?];
            while toks.peek().is_some_and(|(_, t)| t == "->") {
                toks.next += 1;
                path.push(parse_state(toks)?);
            }
            return Ok((Quantity::Path(side, path), false));
        }
    }
    let (at, st) = toks.take("a TCP state such as CLOSE-WAIT")?;
    let state: TcpState = st.parse().map_err(|e: crate::state::UnknownState| ParseError {
        offset: at,
        message: e.to_string(),
    })?;
    if side == Side::Client
        && state == TcpState::CloseWait
        && toks.peek().is_some_and(|(_, t)| t.eq_ignore_ascii_case("leaked"))
    {
        toks.next += 1;
        return Ok((Quantity::ClientCloseWaitLeaked, false));
    }
    if toks.peek().is_some_and(|(_, t)| t.eq_ignore_ascii_case("held")) {
        toks.next += 1;
        toks.keyword("by")?;
        let (at, r) = toks.take("a role")?;
        let role = Role::ALL.iter().copied().find(|x| x.name().eq_ignore_ascii_case(r)).ok_or_else(
            || ParseError {
                offset: at,
                message: format!(
                    "unknown role `{r}` (expected one of acceptor, handler, helper, client, nobody, other)"
                ),
            },
        )?;
        return Ok((Quantity::HeldBy(side, state, role), false));
    }
    Ok((Quantity::Sockets(side, state), false))
}

fn parse_state(toks: &mut Tokens<'_>) -> Result<TcpState, ParseError> {
    let (at, st) = toks.take("a TCP state such as CLOSE-WAIT")?;
    st.parse()
        .map_err(|e: crate::state::UnknownState| ParseError { offset: at, message: e.to_string() })
}

fn parse_fds_suffix(toks: &mut Tokens<'_>) -> Result<(Quantity, bool), ParseError> {
    match toks.peek() {
        Some((_, t)) if t.eq_ignore_ascii_case("grew") => {
            toks.next += 1;
            toks.keyword("by")?;
            Ok((Quantity::AcceptorFdsGrowth, true))
        }
        Some((_, t)) if t.eq_ignore_ascii_case("growth") => {
            toks.next += 1;
            Ok((Quantity::AcceptorFdsGrowth, false))
        }
        Some((_, t)) if t.eq_ignore_ascii_case("leaked") => {
            toks.next += 1;
            Ok((Quantity::AcceptorFdsLeaked, false))
        }
        _ => Ok((Quantity::AcceptorFds, false)),
    }
}

fn parse_rhs(toks: &mut Tokens<'_>) -> Result<Rhs, ParseError> {
    let (at, t) = toks.take("a number or `clients`")?;
    if t.eq_ignore_ascii_case("clients") {
        return Ok(Rhs::Clients);
    }
    t.parse::<i64>().map(Rhs::Number).map_err(|_| ParseError {
        offset: at,
        message: format!("expected a number or `clients`, found `{t}`"),
    })
}

fn parse_window(toks: &mut Tokens<'_>) -> Result<Window, ParseError> {
    let Some((_, word)) = toks.peek() else { return Ok(Window::End) };
    let make: fn(Duration) -> Window = match word.to_ascii_lowercase().as_str() {
        "within" => Window::Within,
        "for" => Window::For,
        _ => return Ok(Window::End),
    };
    toks.next += 1;
    let (at, d) = toks.take("a duration such as `2s`")?;
    let d = duration::parse(d).map_err(|message| ParseError { offset: at, message })?;
    Ok(make(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Expectation {
        Expectation::parse(s).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    fn err(s: &str) -> ParseError {
        Expectation::parse(s).unwrap_err()
    }

    #[test]
    fn parses_the_readme_examples() {
        let e = parse("server CLOSE-WAIT == clients for 1s");
        assert_eq!(e.quantity, Quantity::Sockets(Side::Server, TcpState::CloseWait));
        assert_eq!((e.cmp, e.rhs), (Cmp::Eq, Rhs::Clients));
        assert_eq!(e.window, Window::For(Duration::from_secs(1)));
        let e = parse("server close_wait == 0 within 2s");
        assert_eq!(e.window, Window::Within(Duration::from_secs(2)));
        assert_eq!(e.rhs, Rhs::Number(0));
        let e = parse("client TIME-WAIT == clients");
        assert_eq!(e.window, Window::End);
        let e = parse("acceptor fds grew by clients");
        assert_eq!(
            (e.quantity, e.cmp, e.rhs),
            (Quantity::AcceptorFdsGrowth, Cmp::Eq, Rhs::Clients)
        );
        let e = parse("acceptor fds growth <= 3");
        assert_eq!((e.quantity, e.cmp), (Quantity::AcceptorFdsGrowth, Cmp::Le));
        let e = parse("server CLOSE-WAIT held by acceptor == clients");
        assert_eq!(e.quantity, Quantity::HeldBy(Side::Server, TcpState::CloseWait, Role::Acceptor));
    }

    #[test]
    fn every_parse_error_points_at_its_word() {
        let e = err("servre CLOSE-WAIT == 1");
        assert_eq!(e.offset, 0);
        assert_eq!(e.message, format!("{QUANTITY_HELP}, found `servre`"));
        let e = err("server CLOSE-WIAT == 1");
        assert_eq!(e.offset, 7);
        assert!(e.message.starts_with("unknown TCP state `CLOSE-WIAT`"), "{}", e.message);
        let e = err("server CLOSE-WAIT ~ 1");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (18, "expected a comparison (==, !=, <, <=, >, >=), found `~`")
        );
        let e = err("server CLOSE-WAIT == many");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (21, "expected a number or `clients`, found `many`")
        );
        let e = err("server CLOSE-WAIT == 1 within forever");
        assert_eq!(e.offset, 30);
        assert!(e.message.contains("found `forever`"));
        let e = err("server CLOSE-WAIT == 1 please");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (23, "expected `within D`, `for D` or the end, found `please`")
        );
        let e = err("server CLOSE-WAIT ==");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (20, "expected a number or `clients`, found the end of the expectation")
        );
        let e = err("server CLOSE-WAIT held by landlord == 1");
        assert_eq!(e.offset, 26);
        assert!(e.message.starts_with("unknown role `landlord`"));
        let e = err("server CLOSE-WAIT held by acceptor == 1 for 1s");
        assert!(
            e.message.starts_with("server CLOSE-WAIT held by acceptor is known only at the end"),
            "{}",
            e.message
        );
        let e = parse("hung clients == 3");
        assert_eq!((e.quantity, e.rhs), (Quantity::HungClients, Rhs::Number(3)));
        let e = parse("accept errors >= 1");
        assert_eq!((e.quantity, e.cmp), (Quantity::AcceptErrors, Cmp::Ge));
        assert_eq!(parse("accepted == clients").quantity, Quantity::Accepted);
        assert_eq!(parse("helper fds == 50").quantity, Quantity::RoleFds(Role::Helper));
        let e = parse("server transitions CLOSE-WAIT -> LAST-ACK == clients");
        assert_eq!(
            e.quantity,
            Quantity::Transitions(Side::Server, TcpState::CloseWait, TcpState::LastAck)
        );
        let e = parse("server path ESTAB -> CLOSE-WAIT == clients");
        assert_eq!(
            e.quantity,
            Quantity::Path(Side::Server, vec![TcpState::Established, TcpState::CloseWait])
        );
        assert_eq!(parse("client fin == clients").quantity, Quantity::Sent(Side::Client, "FIN"));
        assert_eq!(parse("server RST == 0").quantity, Quantity::Sent(Side::Server, "RST"));
        let e = err("server transitions CLOSE-WAIT LAST-ACK == 1");
        assert_eq!(e.message, "expected `->`, found `LAST-ACK`");
        let e = err("accepted == 60 within 1s");
        assert!(e.message.starts_with("accepted is known only at the end"), "{}", e.message);
        let e = err("acceptor sockets == 1");
        assert_eq!((e.offset, e.message.as_str()), (9, "expected `fds`, found `sockets`"));
    }
}
