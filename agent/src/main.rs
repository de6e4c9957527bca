use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let config = sonde::config::Config::parse();
    if let Err(e) = sonde::agent::run(config) {
        eprintln!("sonde: error: {e}");
        std::process::exit(e.exit_code());
    }
}
