//! A loopback TCP relay in front of a real server that can stop relaying a reply part-way and
//! keep the connection open, sending nothing: what a firewall that silently drops a connection
//! looks like to a client.  Armed with a byte count, the next reply bytes are relayed up to it;
//! then that connection stalls until the client gives up on it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// No stall armed.
const DISARMED: i64 = -1;

/// The relay, listening until dropped.
pub struct StallingRelay {
    /// Its loopback port.
    pub port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: u16,
    /// Reply bytes still relayed before a stall (`DISARMED`: none armed).
    budget: AtomicI64,
    /// Stall every connection from its first reply byte on (the server answers nothing).
    always: AtomicBool,
    /// Set `always` once the armed stall has happened.
    then_always: AtomicBool,
    stalls: AtomicU32,
    connections: AtomicU32,
    stopped: AtomicBool,
}

impl StallingRelay {
    /// Relays 127.0.0.1:`port` to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> StallingRelay {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind the relay");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            budget: AtomicI64::new(DISARMED),
            always: AtomicBool::new(false),
            then_always: AtomicBool::new(false),
            stalls: AtomicU32::new(0),
            connections: AtomicU32::new(0),
            stopped: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let s = Arc::clone(&s);
                std::thread::spawn(move || relay(client, s));
            }
        });
        StallingRelay { port, shared }
    }

    /// Its URL, as a target's `remote_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The next `bytes` bytes of replies are relayed, then their connection stalls.
    pub fn stall_after(&self, bytes: i64) {
        self.shared.budget.store(bytes, Ordering::SeqCst);
    }

    /// Every connection stalls from now on, before its first reply byte.
    pub fn stall_always(&self) {
        self.shared.always.store(true, Ordering::SeqCst);
    }

    /// As `stall_after`, and from that stall on every connection stalls (`stall_always`).
    pub fn stall_for_good_after(&self, bytes: i64) {
        self.shared.then_always.store(true, Ordering::SeqCst);
        self.stall_after(bytes);
    }

    /// Connections stalled so far.
    pub fn stalls(&self) -> u32 {
        self.shared.stalls.load(Ordering::SeqCst)
    }

    /// Connections the client has opened so far.
    pub fn connections(&self) -> u32 {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for StallingRelay {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so that it sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn relay(client: TcpStream, s: Arc<Shared>) {
    s.connections.fetch_add(1, Ordering::SeqCst);
    let Ok(server) = TcpStream::connect(("127.0.0.1", s.upstream)) else {
        return;
    };
    let closed = Arc::new(AtomicBool::new(false));
    // Requests: relayed whole; the client closing its side ends the connection.
    {
        let (mut from, mut to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let closed = Arc::clone(&closed);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            closed.store(true, Ordering::SeqCst);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    // Replies: relayed until the budget runs out, then nothing until the client leaves.
    let (mut from, mut to) = (server, client);
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut give = n;
        let mut stall = s.always.load(Ordering::SeqCst);
        if stall {
            give = 0;
        } else {
            let left = s.budget.load(Ordering::SeqCst);
            if left != DISARMED {
                let take = (n as i64).min(left);
                give = take as usize;
                let rest = left - take;
                if rest == 0 {
                    stall = s
                        .budget
                        .compare_exchange(left, DISARMED, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok();
                    if !stall {
                        give = n;
                    }
                } else if s
                    .budget
                    .compare_exchange(left, rest, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
                {
                    give = n;
                }
            }
        }
        if to.write_all(&buf[..give]).is_err() {
            break;
        }
        if stall {
            s.stalls.fetch_add(1, Ordering::SeqCst);
            if s.then_always.load(Ordering::SeqCst) {
                s.always.store(true, Ordering::SeqCst);
            }
            while !closed.load(Ordering::SeqCst) && !s.stopped.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}
