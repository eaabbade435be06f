//! `delegate`: the host's delegation broker (docs/delegation.md).

use std::collections::HashMap;
use std::sync::Arc;

use clap::Parser;
use delegate::audit::AuditLog;
use delegate::config::Args;
use delegate::error::StartError;
use delegate::helper::HelperLink;
use delegate::listener;
use delegate::session::Broker;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("delegate: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), StartError> {
    // A policy that does not parse stops the start, with its line.
    fsd::policy::Policy::load(&args.policy)?;
    let audit = AuditLog::open(args.audit_log.as_deref()).map_err(|source| StartError::Io {
        what: "opening the audit log",
        path: format!("{:?}", args.audit_log),
        source,
    })?;
    let mut helpers = HashMap::new();
    let mut threads = Vec::new();
    for (name, path) in &args.helpers {
        let link = HelperLink::new(name);
        let l = listener::bind(path, args.socket_group.as_deref())?;
        let t = link.clone();
        threads.push(std::thread::spawn(move || listener::helper_vm(t, l)));
        helpers.insert(name.clone(), link);
    }
    let broker = Arc::new(Broker::new(
        args.policy.clone(),
        authd_client::client::Client::new(&args.authd_socket),
        helpers,
        audit,
        args.settings(),
    ));
    for (vm, path) in &args.vms {
        let l = listener::bind(path, args.socket_group.as_deref())?;
        let (b, vm) = (broker.clone(), vm.clone());
        threads.push(std::thread::spawn(move || listener::user_vm(b, vm, l)));
    }
    log::info!(
        "serving {} user VM(s) and {} helper VM(s)",
        args.vms.len(),
        args.helpers.len()
    );
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
