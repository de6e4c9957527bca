fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let config = match sonde::config::Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sonde: error: {e}");
            std::process::exit(2);
        }
    };
    if config.print_config {
        print!("{}", config.to_yaml());
        return;
    }
    if let Err(e) = sonde::agent::run(config) {
        eprintln!("sonde: error: {e}");
        std::process::exit(e.exit_code());
    }
}
