use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_secs()
        .init();
    let cli = genda::cli::Cli::parse();
    if let Err(e) = genda::cli::execute(cli) {
        if !matches!(
            e.downcast_ref::<genda::GendaError>(),
            Some(genda::GendaError::Quiet)
        ) {
            eprintln!("genda: error: {e:#}");
        }
        // 75 (EX_TEMPFAIL): stopped on a signal with a checkpoint written — restartable.
        let code = match e.downcast_ref::<genda::GendaError>() {
            Some(genda::GendaError::Stopped { .. }) => 75,
            _ => 1,
        };
        std::process::exit(code);
    }
}
