//! A handler: the forked child that serves one connection. It echoes what it reads until the
//! client's FIN, then ends the connection the way the behaviour says.

use std::io::{Read, Write};
use std::net::Shutdown;

use socket2::Socket;

use crate::Behaviour;

/// Serves one connection; returns the exit status for the child.
pub fn handle(behaviour: Behaviour, conn: Socket) -> i32 {
    let code = match echo_until_eof(&conn) {
        Ok(()) => 0,
        Err(_) => 3,
    };
    match behaviour {
        // close() drops this process's reference; the FIN waits for the last one.
        Behaviour::CloseOnly | Behaviour::ParentCloses => drop(conn),
        // shutdown() acts on the socket itself: the FIN goes now, whoever else holds it.
        Behaviour::ShutdownClose => {
            let _ = conn.shutdown(Shutdown::Both);
            drop(conn);
        }
    }
    code
}

fn echo_until_eof(mut conn: &Socket) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        conn.write_all(&buf[..n])?;
    }
}
