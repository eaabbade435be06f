//! Daemon mode: one monitor per host serving requests from fsd (and
//! operators) over a Unix socket, one JSON object per line each way.
//!
//! ```text
//! -> {"op":"flush","vm":"web","inos":[1234,5678]}
//! <- {"ok":true,"flush":{"inodes":1,"pages_before":256,...}}
//! -> {"op":"ps","vm":"web"}
//! <- {"ok":true,"processes":[...]}
//! -> {"op":"nonsense"}
//! <- {"ok":false,"error":"bad request: ..."}
//! ```
//!
//! Operations: `ping`, `uuid`, `ps`, `freeze` (`pid`), `thaw` (`pid`),
//! `flush` (`inos`: host inode numbers). VMs are named in the config file and
//! attached on first use; requests for one VM are serialised (they pause and
//! single-step it), requests for different VMs run in parallel, one thread
//! per connection.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::vm::Vm;
use crate::{freeze, pagecache, process, smbios};

/// How long a flush, thaw or other injection may wait for a safe point.
const INJECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest request line accepted.
const MAX_LINE: usize = 1 << 20;

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Ping,
    Uuid { vm: String },
    Ps { vm: String },
    Freeze { vm: String, pid: u32 },
    Thaw { vm: String, pid: u32 },
    Flush { vm: String, inos: Vec<u64> },
}

/// Shared daemon state: the config and the VMs attached so far.
pub struct State {
    config: Config,
    cache: Option<PathBuf>,
    vms: Mutex<BTreeMap<String, Arc<Mutex<Vm>>>>,
}

impl State {
    pub fn new(config: Config, profile_cache: Option<PathBuf>) -> State {
        State {
            config,
            cache: profile_cache,
            vms: Mutex::new(BTreeMap::new()),
        }
    }

    fn vm(&self, name: &str) -> Result<Arc<Mutex<Vm>>> {
        let mut vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = vms.get(name) {
            return Ok(v.clone());
        }
        let spec = self.config.vm(name)?.clone();
        let vm = Arc::new(Mutex::new(Vm::attach(spec, self.cache.clone())?));
        vms.insert(name.to_string(), vm.clone());
        Ok(vm)
    }

    /// Run one request against the VM it names.
    pub fn handle(&self, req: &Request) -> Result<Value> {
        let name = match req {
            Request::Ping => return Ok(json!({ "ok": true })),
            Request::Uuid { vm }
            | Request::Ps { vm }
            | Request::Freeze { vm, .. }
            | Request::Thaw { vm, .. }
            | Request::Flush { vm, .. } => vm,
        };
        let vm = self.vm(name)?;
        let mut vm = vm.lock().unwrap_or_else(|p| p.into_inner());
        let res = Self::run(&mut vm, req);
        if res.as_ref().is_err_and(Error::vm_connection_lost) {
            // The VM went away or its socket broke: attach afresh next time.
            self.vms
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name);
        }
        res
    }

    fn run(vm: &mut Vm, req: &Request) -> Result<Value> {
        let v = |x: serde_json::Result<Value>| x.map_err(Error::EncodeReply);
        Ok(match req {
            Request::Ping => json!({ "ok": true }),
            Request::Uuid { .. } => {
                let q = vm.qmp.uuid()?;
                let found = smbios::read_uuid(&vm.ram).ok();
                json!({ "ok": true, "identity": v(serde_json::to_value(smbios::Identity::compare(&q, found.as_ref())))? })
            }
            Request::Ps { .. } => {
                let procs = vm.paused(|vm| {
                    let p = vm.paging()?;
                    process::list(&vm.kernel(p)?)
                })?;
                json!({ "ok": true, "processes": v(serde_json::to_value(procs))? })
            }
            Request::Freeze { pid, .. } => {
                json!({ "ok": true, "freeze": v(serde_json::to_value(freeze::freeze(vm, *pid, true, INJECT_TIMEOUT)?))? })
            }
            Request::Thaw { pid, .. } => {
                json!({ "ok": true, "thaw": v(serde_json::to_value(freeze::thaw(vm, *pid, INJECT_TIMEOUT)?))? })
            }
            Request::Flush { inos, .. } => {
                let set: BTreeSet<u64> = inos.iter().copied().collect();
                json!({ "ok": true, "flush": v(serde_json::to_value(pagecache::flush(vm, &set, INJECT_TIMEOUT)?))? })
            }
        })
    }
}

/// Answer one parsed-or-not line.
pub fn respond(state: &State, line: &str) -> Value {
    match serde_json::from_str::<Request>(line) {
        Err(e) => json!({ "ok": false, "error": format!("bad request: {e}") }),
        Ok(req) => match state.handle(&req) {
            Ok(v) => v,
            Err(e) => json!({ "ok": false, "error": e.to_string() }),
        },
    }
}

fn serve_connection(state: &State, stream: UnixStream) -> Result<()> {
    let mut writer = stream
        .try_clone()
        .map_err(|e| Error::io("clone connection", e))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .map_err(|e| Error::io("read request", e))?;
        if n == 0 {
            return Ok(());
        }
        let reply = if !line.ends_with('\n') && n >= MAX_LINE {
            json!({ "ok": false, "error": "request line too long" })
        } else if line.trim().is_empty() {
            continue;
        } else {
            respond(state, line.trim())
        };
        let mut out = reply.to_string();
        out.push('\n');
        writer
            .write_all(out.as_bytes())
            .map_err(|e| Error::io("write reply", e))?;
        if n >= MAX_LINE && !line.ends_with('\n') {
            return Ok(());
        }
    }
}

/// Accept connections forever, one thread each.
pub fn serve(listener: UnixListener, state: Arc<State>) -> Result<()> {
    for conn in listener.incoming() {
        let stream = conn.map_err(|e| Error::io("accept", e))?;
        let st = state.clone();
        let spawned = std::thread::Builder::new()
            .name("monitor-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(&st, stream) {
                    log::warn!("connection: {e}");
                }
            });
        if let Err(source) = spawned {
            // The connection is dropped; the daemon goes on serving others.
            log::error!(
                "{}",
                Error::ThreadSpawn {
                    what: "serve a connection",
                    source
                }
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        let r: Request = serde_json::from_str(r#"{"op":"flush","vm":"a","inos":[1,2]}"#).unwrap();
        assert_eq!(
            r,
            Request::Flush {
                vm: "a".into(),
                inos: vec![1, 2]
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"flush","vm":"a"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"rm","vm":"a"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"ps","vm":"a","x":1}"#).is_err());
    }

    #[test]
    fn socket_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let state = Arc::new(State::new(Config::default(), None));
        std::thread::spawn(move || serve(listener, state));
        let s = UnixStream::connect(&path).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut ask = |q: &str| -> Value {
            w.write_all(format!("{q}\n").as_bytes()).unwrap();
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            serde_json::from_str(&l).unwrap()
        };
        assert_eq!(ask(r#"{"op":"ping"}"#)["ok"], true);
        let e = ask(r#"{"op":"flush","vm":"nope","inos":[1]}"#);
        assert_eq!(e["ok"], false);
        assert!(
            e["error"].as_str().unwrap().contains("no VM named nope"),
            "{e}"
        );
        let e = ask("not json");
        assert!(
            e["error"].as_str().unwrap().starts_with("bad request"),
            "{e}"
        );
    }
}
