//! The HTTP client every tool (bench, drills, status, local) builds for the cluster's API.

use std::path::Path;

/// A client builder for the cluster's HTTP API: the process's TLS crypto provider installed
/// (reqwest has none of its own), and with `ca` the cluster CA as the only trust root, for a
/// cluster serving HTTPS (the tools' `--ca-cert`).
pub fn client_builder(ca: Option<&Path>) -> anyhow::Result<reqwest::ClientBuilder> {
    settle_actors::tls::install_crypto_provider();
    let builder = reqwest::Client::builder();
    Ok(match ca {
        Some(ca) => builder.use_preconfigured_tls(settle_actors::tls::client_config_trusting(ca)?),
        None => builder,
    })
}
