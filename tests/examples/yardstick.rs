//! The yardstick for the request path (issue 19): the least reverse proxy hyper makes, so that
//! `bench/callgrind.py` can say how much of a proxy's cost per request is hyper's and how much
//! is ours.
//!
//! `yardstick LISTEN UPSTREAM [pooled|affine|own]`, both `host:port`:
//! - `pooled` (the default): hyper 1's server and hyper-util's legacy pooled client, as
//!   Portcullis' upstream module uses it (keep-alive pool, `TokioExecutor`).
//! - `affine`: each client connection opens its own upstream connection, and one task drives
//!   both (no pool, no task hop between them).
//! - `own`: each client connection opens its own upstream connection, driven by a task of its
//!   own as hyper's examples do (no pool, but a task hop each way).
//!
//! It forwards method, target, headers and body unchanged and streams the response back: no
//! routing, hygiene, hop-by-hop handling, metrics or logs. It is a measuring stick, not a proxy
//! to deploy. Runs on one tokio worker, as the harness runs Portcullis.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, rest @ ..] = args.as_slice() else {
        eprintln!("usage: yardstick LISTEN UPSTREAM [pooled|affine|own]");
        std::process::exit(2);
    };
    let mode = match rest.first().map(String::as_str) {
        None | Some("pooled") => Mode::Pooled,
        Some("affine") => Mode::Affine,
        Some("own") => Mode::Own,
        Some(other) => {
            eprintln!("yardstick: unknown mode {other:?} (pooled, affine or own)");
            std::process::exit(2);
        }
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a tokio runtime");
    let (listen, upstream) = (listen.clone(), upstream.clone());
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen).await.expect("the listen address binds");
        eprintln!("yardstick: {listen} -> {upstream} ({mode:?})");
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
        let upstream: Arc<str> = upstream.into();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let (client, upstream) = (client.clone(), upstream.clone());
            tokio::spawn(async move {
                match mode {
                    Mode::Pooled => serve_pooled(stream, client, upstream).await,
                    Mode::Affine | Mode::Own => serve_own(stream, &upstream, mode == Mode::Affine).await,
                }
            });
        }
    });
}

async fn serve_pooled(stream: TcpStream, client: Client<HttpConnector, Incoming>, upstream: Arc<str>) {
    let service = service_fn(move |mut request: Request<Incoming>| {
        let client = client.clone();
        let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("http://{upstream}{target}").parse::<Uri>();
        async move {
            let Ok(uri) = uri else { return Ok::<_, Infallible>(status(400)) };
            *request.uri_mut() = uri;
            Ok(match client.request(request).await {
                Ok(response) => response.map(Either::Upstream),
                Err(_) => status(502),
            })
        }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pooled,
    Affine,
    Own,
}

/// One upstream connection for this client connection, driven in this task (`same_task`) or
/// in one of its own.
async fn serve_own(stream: TcpStream, upstream: &str, same_task: bool) {
    let Ok(up) = TcpStream::connect(upstream).await else { return };
    let _ = up.set_nodelay(true);
    let Ok((sender, connection)) = hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(up)).await else {
        return;
    };
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = service_fn(move |request: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let mut sender = sender.lock().await;
            if sender.ready().await.is_err() {
                return Ok::<_, Infallible>(status(502));
            }
            Ok(match sender.send_request(request).await {
                Ok(response) => response.map(Either::Upstream),
                Err(_) => status(502),
            })
        }
    });
    let server = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    if !same_task {
        let upstream = tokio::spawn(connection);
        let _ = server.await;
        upstream.abort();
        return;
    }
    // One task polls both connections: the upstream's reads wake this task, not another.
    tokio::select! {
        _ = server => {}
        _ = connection => {}
    }
}

fn status(code: u16) -> Response<Either> {
    let mut response = Response::new(Either::Empty);
    *response.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::BAD_GATEWAY);
    response
}

/// The upstream's body, or none.
enum Either {
    Upstream(Incoming),
    Empty,
}

impl hyper::body::Body for Either {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            Either::Upstream(body) => std::pin::Pin::new(body).poll_frame(cx),
            Either::Empty => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Either::Upstream(body) => body.is_end_stream(),
            Either::Empty => true,
        }
    }
}
