//! A stand-in for authd, for tests: it speaks authd's real wire protocol
//! (authd-client's types) and grants while the test says so, so that a test
//! decides when a grant exists and when it ends without a person at a
//! dialog. authd's own tests cover the real dialog. [`RestartableAuthd`]
//! can also stop and start again keeping the grants it issued, as authd
//! does across a restart.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use authd_client::protocol::{
    now_unix_ms, Call, DenyReason, EndCause, Event, EventKind, Grant, Reason, Reply, ReplyBody,
    Request, ServerMessage, VERSION,
};

/// authd's protocol, answered by the test: grants while `grant` is set.
pub struct FakeAuthd {
    pub socket: PathBuf,
    pub grant: Arc<AtomicBool>,
    pub asked: Arc<AtomicUsize>,
    /// Each authenticate request's protocol version and reason, in order.
    pub reasons: Arc<Mutex<Vec<(u32, Reason)>>>,
    pub subscribers: Arc<Mutex<Vec<UnixStream>>>,
    pub issued: Arc<Mutex<Vec<Grant>>>,
}

/// What a stand-in that stops and starts again keeps besides.
#[derive(Default)]
struct Lifecycle {
    stopping: AtomicBool,
    /// Every connection accepted, to close them all at a stop.
    conns: Mutex<Vec<UnixStream>>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl FakeAuthd {
    pub fn start(dir: &Path) -> FakeAuthd {
        let f = FakeAuthd::unstarted(dir);
        f.listen(None);
        f
    }

    fn unstarted(dir: &Path) -> FakeAuthd {
        FakeAuthd {
            socket: dir.join("authd.sock"),
            grant: Arc::new(AtomicBool::new(false)),
            asked: Arc::new(AtomicUsize::new(0)),
            reasons: Arc::default(),
            subscribers: Arc::new(Mutex::new(Vec::new())),
            issued: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn listen(&self, life: Option<Arc<Lifecycle>>) -> JoinHandle<()> {
        let listener = UnixListener::bind(&self.socket).unwrap();
        let (grant, asked, reasons, subs, issued) = (
            self.grant.clone(),
            self.asked.clone(),
            self.reasons.clone(),
            self.subscribers.clone(),
            self.issued.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                if let Some(life) = &life {
                    if life.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    life.conns.lock().unwrap().push(conn.try_clone().unwrap());
                }
                let (grant, asked, reasons, subs, issued) = (
                    grant.clone(),
                    asked.clone(),
                    reasons.clone(),
                    subs.clone(),
                    issued.clone(),
                );
                std::thread::spawn(move || {
                    let mut lines = BufReader::new(conn.try_clone().unwrap()).lines();
                    while let Some(Ok(line)) = lines.next() {
                        let req: Request = serde_json::from_str(&line).unwrap();
                        let body = match req.call {
                            Call::Subscribe => {
                                subs.lock().unwrap().push(conn.try_clone().unwrap());
                                ReplyBody::Subscribed
                            }
                            Call::Authenticate {
                                vm,
                                principal,
                                reason,
                                lifetime_secs,
                            } => {
                                asked.fetch_add(1, Ordering::SeqCst);
                                reasons.lock().unwrap().push((req.v, reason));
                                if grant.load(Ordering::SeqCst) {
                                    let g = Grant {
                                        id: format!("g{}", req.id),
                                        vm,
                                        principal,
                                        expires_at_ms: now_unix_ms() + lifetime_secs * 1000,
                                        lifetime_secs,
                                    };
                                    issued.lock().unwrap().push(g.clone());
                                    ReplyBody::Granted { grant: g }
                                } else {
                                    ReplyBody::Denied {
                                        why: DenyReason::Cancelled,
                                        retry_after_ms: None,
                                    }
                                }
                            }
                            Call::ListGrants => ReplyBody::Grants {
                                grants: issued.lock().unwrap().clone(),
                            },
                            other => ReplyBody::Error {
                                message: format!("not in this stand-in: {other:?}"),
                            },
                        };
                        let msg = ServerMessage::Reply(Reply {
                            v: VERSION,
                            id: req.id,
                            body,
                        });
                        let mut out = serde_json::to_vec(&msg).unwrap();
                        out.push(b'\n');
                        if (&conn).write_all(&out).is_err() {
                            return;
                        }
                    }
                });
            }
        })
    }

    /// Pushes the end of every grant issued so far, as authd does on revoke.
    pub fn revoke_all(&self) {
        let grants: Vec<Grant> = self.issued.lock().unwrap().drain(..).collect();
        for g in grants {
            let msg = ServerMessage::Event(Event {
                v: VERSION,
                kind: EventKind::GrantEnded {
                    grant: g,
                    cause: EndCause::Revoked,
                },
            });
            let mut out = serde_json::to_vec(&msg).unwrap();
            out.push(b'\n');
            for s in self.subscribers.lock().unwrap().iter() {
                let _ = (&*s).write_all(&out);
            }
        }
    }
}

/// A stand-in authd that stops and starts again on the same socket, keeping
/// the grants it issued, as authd keeps them across a restart.
pub struct RestartableAuthd {
    pub authd: FakeAuthd,
    life: Arc<Lifecycle>,
}

impl std::ops::Deref for RestartableAuthd {
    type Target = FakeAuthd;
    fn deref(&self) -> &FakeAuthd {
        &self.authd
    }
}

impl RestartableAuthd {
    pub fn start(dir: &Path) -> RestartableAuthd {
        let r = RestartableAuthd {
            authd: FakeAuthd::unstarted(dir),
            life: Arc::default(),
        };
        r.restart();
        r
    }

    /// Goes away as a stopped authd does: every connection closes (its
    /// subscribers see the end of the stream) and the socket is gone.
    pub fn stop(&self) {
        self.life.stopping.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees `stopping`.
        let _ = UnixStream::connect(&self.socket);
        if let Some(a) = self.life.acceptor.lock().unwrap().take() {
            a.join().unwrap();
        }
        let _ = std::fs::remove_file(&self.socket);
        self.subscribers.lock().unwrap().clear();
        for c in self.life.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// (Re)starts on the socket, with every grant issued so far still live.
    pub fn restart(&self) {
        self.life.stopping.store(false, Ordering::SeqCst);
        let acceptor = self.authd.listen(Some(self.life.clone()));
        *self.life.acceptor.lock().unwrap() = Some(acceptor);
    }
}
