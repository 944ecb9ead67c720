//! `demo-upstream [--listen ADDR]`: the quickstart's echo upstream (default 127.0.0.1:8081).

use clap::Parser;

/// An upstream that answers every request with the request it received, as JSON.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("demo-upstream: echoing requests on http://{}", listener.local_addr()?);
    portcullis_demo::serve_echo(listener).await;
    Ok(())
}
