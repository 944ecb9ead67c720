//! Test guest: a `filter` plugin that opens a TCP connection with `std::net`, so its component
//! imports `wasi:sockets`. By default the host loads it and denies the connection (the guest
//! sets `x-reached: no`); with `strict_imports` the host refuses to load it.

use portcullis_sdk::{ConfigError, Filter, FilterAction, HeaderEdits, Plugin, Request};
use serde::Deserialize;

/// No settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// The plugin.
pub struct SocketFilter;

impl Plugin for SocketFilter {
    type Config = Config;
    fn new(_: Config) -> Result<Self, ConfigError> {
        Ok(SocketFilter)
    }
}

impl Filter for SocketFilter {
    fn on_request(&self, _: &Request<'_>) -> FilterAction {
        let reached = std::net::TcpStream::connect("127.0.0.1:9").is_ok();
        FilterAction::Continue(HeaderEdits::default().set("x-reached", if reached { "yes" } else { "no" }))
    }
}

portcullis_sdk::export_filter!(SocketFilter);
