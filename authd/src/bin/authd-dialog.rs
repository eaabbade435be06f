//! `authd-dialog`: the trusted dialog process. Started by authd for one
//! prompt; reads a request line on stdin, shows the window, writes JSON
//! lines to stdout (`shown`, then the answer) and exits. It never verifies
//! anything and never sees a password hash.

use std::io::{BufRead, Write};
use std::path::Path;

use authd::dialog::window;
use authd::dialog::{load_font, ChildMessage, DialogRequest, FONT_PATH};
use zeroize::Zeroize;

fn send(msg: &ChildMessage) {
    let mut line = serde_json::to_string(msg).expect("serialisable");
    line.push('\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
    line.zeroize();
}

fn main() {
    env_logger::init();
    let mut line = String::new();
    let stdin = std::io::stdin();
    if stdin.lock().read_line(&mut line).unwrap_or(0) == 0 {
        eprintln!("authd-dialog: no request on stdin");
        std::process::exit(2);
    }
    let request: DialogRequest = match serde_json::from_str(line.trim_end()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("authd-dialog: bad request: {e}");
            std::process::exit(2);
        }
    };
    let font_path = std::env::var_os("AUTHD_FONT").unwrap_or_else(|| FONT_PATH.into());
    let font = match load_font(Path::new(&font_path)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("authd-dialog: {e}");
            std::process::exit(2);
        }
    };
    let result = window::run(
        request,
        &font,
        Box::new(|| send(&ChildMessage::Shown)),
        |wake| {
            std::thread::spawn(move || {
                // The daemon keeps our stdin open while it waits; EOF means it is gone.
                let mut rest = Vec::new();
                let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
                wake();
            });
        },
    );
    match result {
        Ok(outcome) => send(&window::message(outcome)),
        Err(e) => {
            eprintln!("authd-dialog: {e}");
            std::process::exit(1);
        }
    }
}
