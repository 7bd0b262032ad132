use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_secs()
        .init();
    let cli = genda::cli::Cli::parse();
    if let Err(e) = genda::cli::execute(cli) {
        eprintln!("genda: error: {e:#}");
        std::process::exit(1);
    }
}
