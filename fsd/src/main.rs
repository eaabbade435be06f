//! The `fsd` command.

use clap::Parser;

use fsd::cli::Opt;

fn main() {
    let opt = Opt::parse();
    if opt.print_capabilities {
        println!("{}", Opt::capabilities_json());
        return;
    }
    let settings = match opt.into_settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fsd: {e}");
            std::process::exit(2);
        }
    };
    fsd::logging::init(settings.log_level.filter(), settings.syslog);
    match fsd::daemon::run(settings) {
        // The VMM went away: done, as virtiofsd is.
        Ok(()) => std::process::exit(0),
        Err(e) => {
            log::error!("{e}");
            eprintln!("fsd: {e}");
            std::process::exit(1);
        }
    }
}
