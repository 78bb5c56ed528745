//! The HTTP client every tool (bench, drills, status, local) builds for the cluster's API.

use anyhow::Context;
use std::path::Path;

/// A client builder for the cluster's HTTP API: the process's TLS crypto provider installed
/// (reqwest has none of its own), and with `ca` the cluster CA as the only trust root, for a
/// cluster serving HTTPS (the tools' `--ca-cert`); with `api_key`, every request carries it
/// (`Authorization: Bearer`, the tools' `--api-key`), marked sensitive so it is never logged.
pub fn client_builder(ca: Option<&Path>, api_key: Option<&str>) -> anyhow::Result<reqwest::ClientBuilder> {
    settle_actors::tls::install_crypto_provider();
    let mut builder = reqwest::Client::builder();
    if let Some(key) = api_key {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).context("the API key is not header text")?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    Ok(match ca {
        Some(ca) => builder.use_preconfigured_tls(settle_actors::tls::client_config_trusting(ca)?),
        None => builder,
    })
}
