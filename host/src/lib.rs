//! Portcullis: a programmable API gateway whose policies are sandboxed WebAssembly components.
//!
//! For every request the gateway matches a route ([`router`]), strips spoofable identity and
//! hop-by-hop headers, runs the route's filter chain of plugins ([`chain`], [`plugin`]), and
//! forwards to an upstream ([`upstream`]) with the verified identity as headers. Plugins
//! implement one kind of the `portcullis:plugin@0.3.0` WIT contract (`wit/`; components built against `0.2.0` and `0.1.0` still load): `auth`,
//! `rate-limit`, `validation`, `logging` or `filter`.
//!
//! The running configuration is one immutable [`snapshot::Snapshot`]; configuration is
//! parsed and checked by [`config`]; every gateway error becomes an RFC 9457 problem response
//! in [`error`]. Components are checked from their binary before compiling
//! ([`plugin::imports`]) and compiled once per content across restarts (an on-disk cache);
//! [`scaffold`] writes new plugin projects in Rust, JavaScript or Python (`portcullis new`).
//!
//! ```no_run
//! # async fn run() -> Result<(), portcullis::StartError> {
//! let gateway = portcullis::Gateway::start("examples/quickstart/portcullis.toml".as_ref()).await?;
//! println!("listening on {:?}", gateway.listener_addrs());
//! gateway.run_until_signal().await;
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod body;
pub mod chain;
pub mod config;
pub mod error;
pub mod fuzzing;
mod gateway;
pub mod golden;
pub mod health;
pub mod metrics;
pub mod plugin;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod scaffold;
pub mod secrets;
pub mod server;
pub mod snapshot;
pub mod sources;
pub mod telemetry;
pub mod tls;
pub mod upstream;
mod wake;

pub use gateway::{Gateway, StartError};
