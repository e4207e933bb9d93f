//! `regmirror healthcheck`: GET a health URL and exit 0 on 200, for images without curl (the
//! container image's HEALTHCHECK, a kubelet exec probe).

use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `regmirror healthcheck`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The URL to ask.
    #[arg(long, default_value = "http://127.0.0.1:5000/healthz")]
    url: String,
    /// Accept any certificate (a private CA the image does not hold; this is a liveness check).
    #[arg(long)]
    insecure: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3)]
    timeout_secs: u64,
}

pub(crate) fn main(args: Args) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return super::fail(format!("cannot start the async runtime: {e}")),
    };
    let result = rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .danger_accept_invalid_certs(args.insecure)
            .timeout(Duration::from_secs(args.timeout_secs))
            .build()
            .map_err(|e| e.to_string())?;
        let r = client
            .get(&args.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match r.status().as_u16() {
            200 => Ok(()),
            s => Err(format!("{} answered {s}", args.url)),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("regmirror healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}
