//! `netprobe`: traffic a hostile guest may send, for the packet filter's
//! tests (see `guest_tools::net`). One summary line per run.
//!
//! ```text
//! netprobe synflood DST PORT COUNT     # SYNs from a raw socket
//! netprobe scan DST FROM TO            # connect() to each port
//! netprobe send DST PORT BYTES         # bulk TCP: BYTES of zeros, then close
//! netprobe udp DST PORT TEXT           # one datagram from a UDP socket, wait for a reply
//! netprobe rawudp DST PORT SPORT       # one datagram no socket owns
//! netprobe malformed IFACE DST         # malformed frames via AF_PACKET
//! netprobe runas UID GID PROG ARGS...  # exec PROG as UID:GID, no groups
//! ```
//! Exit status: 0 done, 2 error, 64 usage.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

use guest_tools::net;

const USAGE: &str = "usage: netprobe synflood DST PORT COUNT | scan DST FROM TO | send DST PORT BYTES | udp DST PORT TEXT | rawudp DST PORT SPORT | malformed IFACE DST | runas UID GID PROG ARGS...";

fn run(args: &[String]) -> Result<String, String> {
    let ip = |s: &String| s.parse::<Ipv4Addr>().map_err(|e| format!("{s}: {e}"));
    let num = |s: &String| s.parse::<u32>().map_err(|e| format!("{s}: {e}"));
    let port = |s: &String| s.parse::<u16>().map_err(|e| format!("{s}: {e}"));
    match args {
        [cmd, dst, p, n] if cmd == "synflood" => {
            let sent =
                net::syn_flood(ip(dst)?, port(p)?, num(n)?, 20000).map_err(|e| e.to_string())?;
            Ok(format!("synflood: sent {sent}"))
        }
        [cmd, dst, from, to] if cmd == "scan" => {
            let r = net::scan(ip(dst)?, port(from)?..=port(to)?, Duration::from_secs(3));
            Ok(format!(
                "scan: open {} refused {} timed_out {}",
                r.open, r.refused, r.timed_out
            ))
        }
        [cmd, dst, p, n] if cmd == "send" => {
            let bytes = n.parse::<u64>().map_err(|e| format!("{n}: {e}"))?;
            let secs = net::send_bulk(ip(dst)?, port(p)?, bytes).map_err(|e| e.to_string())?;
            Ok(format!("send: {bytes} bytes in {secs:.3} s"))
        }
        [cmd, dst, p, text] if cmd == "udp" => {
            match net::udp_exchange(ip(dst)?, port(p)?, text.as_bytes(), Duration::from_secs(3)) {
                Ok(reply) => Ok(format!("udp: reply {}", reply.trim())),
                Err(e) => Ok(format!("udp: no reply ({e})")),
            }
        }
        [cmd, dst, p, sp] if cmd == "rawudp" => {
            net::raw_udp(ip(dst)?, port(p)?, port(sp)?, b"no socket owns me")
                .map_err(|e| e.to_string())?;
            Ok("rawudp: sent 1".into())
        }
        [cmd, iface, dst] if cmd == "malformed" => {
            let dst = ip(dst)?;
            let src = net::source_for(dst).map_err(|e| e.to_string())?;
            let mac = net::mac_of(iface).map_err(|e| e.to_string())?;
            let frames: Vec<Vec<u8>> = net::malformed_frames(mac, src, dst)
                .into_iter()
                .map(|(_, f)| f)
                .collect();
            let sent = net::send_frames(iface, &frames).map_err(|e| e.to_string())?;
            Ok(format!("malformed: sent {sent} of {}", frames.len()))
        }
        [cmd, uid, gid, prog, rest @ ..] if cmd == "runas" => {
            let e = net::exec_as(num(uid)?, num(gid)?, prog, rest);
            Err(format!("exec {prog}: {e}"))
        }
        _ => Err(USAGE.into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) if e == USAGE => {
            eprintln!("{e}");
            ExitCode::from(64)
        }
        Err(e) => {
            println!("netprobe: error: {e}");
            ExitCode::from(2)
        }
    }
}
