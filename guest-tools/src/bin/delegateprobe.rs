//! `delegateprobe`: what a hostile user VM sends the delegation broker,
//! for the broker's tests. Each mode writes to the delegation port and
//! prints the broker's answer as one line, `answer: KIND DETAIL`.
//!
//! ```text
//! delegateprobe garbage            bytes that are no frame
//! delegateprobe oversized          a header announcing a body over the limit
//! delegateprobe truncated          a request whose body ends early
//! delegateprobe stdin-first        a data frame with no request before it
//! delegateprobe request PROGRAM    a well-formed request for PROGRAM
//! delegateprobe flood N PROGRAM    N requests back to back, then the answers
//! delegateprobe time N CMD ARGS... runs CMD N times, one line per run:
//!                                  `run-us: MICROSECONDS STATUS`
//! ```

use std::time::Duration;

use delegate_proto::frame::MAX_PAYLOAD;
use delegate_proto::{Frame, Kind, Message, Request, CLIENT_PORT, VERSION};
use guest_tools::delegate::port::{port_path, Port};

fn request(program: &str) -> Vec<u8> {
    Message::Request(Request {
        version: VERSION,
        program: program.as_bytes().to_vec(),
        args: vec![],
        env: vec![],
        cwd: vec![],
        tty: None,
    })
    .encode()
    .expect("fits")
    .to_bytes()
}

fn answer(port: &mut Port) -> String {
    match port.recv(Duration::from_secs(60)) {
        Ok(Some(Message::Error(code, msg))) => format!("error {} {msg}", code.name()),
        Ok(Some(m)) => format!("{:?}", m.kind()),
        Ok(None) => "none".into(),
        Err(e) => format!("closed {e}"),
    }
}

/// Runs a command `n` times, timing each run from fork to exit.
fn time_runs(n: usize, cmd: &[String]) {
    for _ in 0..n {
        let t = std::time::Instant::now();
        let st = std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(std::process::Stdio::null())
            .status();
        let us = t.elapsed().as_micros();
        match st {
            Ok(s) => println!("run-us: {us} {}", s.code().unwrap_or(-1)),
            Err(e) => println!("run-us: {us} error {e}"),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("time") && args.len() > 2 {
        let n = args[1].parse().unwrap_or(1);
        return time_runs(n, &args[2..]);
    }
    let mut port = match Port::open(&port_path(CLIENT_PORT), Duration::from_secs(30)) {
        Ok(p) => p,
        Err(e) => {
            println!("answer: unusable {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = port.wait_host(Duration::from_secs(10)) {
        println!("answer: unusable {e}");
        std::process::exit(2);
    }
    port.drain();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let bytes: Vec<u8> = match mode {
        "garbage" => b"\xffGET / HTTP/1.0\r\n\r\n".to_vec(),
        "oversized" => {
            let mut v = vec![Kind::Request as u8];
            v.extend_from_slice(&((MAX_PAYLOAD as u32) * 16).to_be_bytes());
            v.extend_from_slice(&[0u8; 64]);
            v
        }
        "truncated" => {
            let full = request("usr/bin/pwchange");
            let body_len = full.len() - 5 - 3;
            let mut v = vec![Kind::Request as u8];
            v.extend_from_slice(&(body_len as u32).to_be_bytes());
            v.extend_from_slice(&full[5..5 + body_len]);
            v
        }
        "stdin-first" => Frame::new(Kind::Stdin, b"hello".to_vec()).to_bytes(),
        "request" => request(args.get(1).map(String::as_str).unwrap_or("")),
        "flood" => {
            let n: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(10);
            let program = args.get(2).map(String::as_str).unwrap_or("");
            let one = request(program);
            for _ in 0..n {
                if let Err(e) = port.send_raw(&one) {
                    println!("answer: write {e}");
                    return;
                }
            }
            for _ in 0..n {
                println!("answer: {}", answer(&mut port));
            }
            return;
        }
        _ => {
            eprintln!(
                "usage: delegateprobe garbage|oversized|truncated|stdin-first|request P|flood N P"
            );
            std::process::exit(64);
        }
    };
    if let Err(e) = port.send_raw(&bytes) {
        println!("answer: write {e}");
        return;
    }
    println!("answer: {}", answer(&mut port));
}
