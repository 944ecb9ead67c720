//! The Redis backend of the `kv` capability (`[kv] backend = "redis"`): every gateway
//! configured with the same Redis and `key_prefix` shares each plugin's keys, so quotas,
//! JWKS documents and introspection results are fleet-wide.
//!
//! **Client.** redis-rs's [`ConnectionManager`]: one multiplexed connection per gateway
//! (concurrent calls are pipelined on it), reconnected by itself after an I/O error. It is
//! created lazily, so a gateway starts, and serves routes that do not use `kv`, while Redis is
//! down.
//!
//! **Atomicity.** Every write is one Lua script (`EVALSHA`, loaded on first use): the value,
//! the namespace's caps bookkeeping and, for `compare-and-swap` and `throttle`, the read they
//! depend on run as one atomic step on the server. Scripts rather than `WATCH`/`MULTI`: one
//! round trip instead of three or more, and no retry loop under contention (`WATCH` aborts
//! every contended transaction, which is exactly the hot rate-limit key). `get` is a plain
//! `GET`.
//!
//! **Layout**, for a namespace (plugin id) `ns` under prefix `p` (default `portcullis:`):
//! `p` `ns` `:k:` key holds the value (with Redis' own `PX` expiry), `p` `ns` `:i` a sorted set
//! of the namespace's keys scored by expiry in ms (`+inf`: none), `p` `ns` `:s` a hash of their
//! sizes and `p` `ns` `:b` their total bytes. Plugin ids have no `:`, so namespaces cannot
//! overlap. The index enforces [`MAX_ENTRIES_PER_NAMESPACE`] and [`MAX_BYTES_PER_NAMESPACE`]
//! as the in-process store does; each write drops up to 16 expired entries from it, and a
//! write that would pass a cap drops all of them first.
//!
//! **Time.** TTLs and `throttle`'s now are the Redis server's clock (`TIME`), so every gateway
//! on one Redis agrees on them whatever its own clock says.
//!
//! **Failure.** A call that gets no answer within `command_timeout_ms` (once connected) or
//! `connect_timeout_ms + command_timeout_ms` (while connecting) fails with
//! [`KvError::Unavailable`]; the plugin decides what that means for its request. A probe
//! (`PING`) every `probe_interval_ms` keeps [`KvHealth`] current between calls.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Script, Value};

use super::{Cell, KvError, KvHealth, MAX_BYTES_PER_NAMESPACE, MAX_ENTRIES_PER_NAMESPACE};
use crate::config::KvConfig;
use crate::metrics::{KvErrorLabels, KvLabels, Metrics};

/// Expired index entries a write drops on its way (the rest wait for later writes, or for a
/// write that would pass a cap).
const SWEEP_PER_WRITE: u32 = 16;

/// Shared Lua: the clock, the expired-entry sweep and the capped write. `KEYS`: value, index,
/// sizes, bytes. `ARGV[1]` is the plugin's key, `ARGV[2]`/`ARGV[3]` the entry and byte caps.
const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function sweep(now, limit)
  local dead
  if limit then
    dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now, 'LIMIT', 0, limit)
  else
    dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
  end
  local freed = 0
  for i, member in ipairs(dead) do
    freed = freed + tonumber(redis.call('HGET', KEYS[3], member) or 0)
    redis.call('HDEL', KEYS[3], member)
    redis.call('ZREM', KEYS[2], member)
  end
  if freed > 0 then redis.call('DECRBY', KEYS[4], freed) end
end
local function fits(size)
  local old = redis.call('HGET', KEYS[3], ARGV[1])
  local bytes = tonumber(redis.call('GET', KEYS[4]) or 0)
  if old then return bytes - tonumber(old) + size <= tonumber(ARGV[3]) end
  return redis.call('ZCARD', KEYS[2]) < tonumber(ARGV[2]) and bytes + size <= tonumber(ARGV[3])
end
local function forget()
  local old = redis.call('HGET', KEYS[3], ARGV[1])
  if old then
    redis.call('HDEL', KEYS[3], ARGV[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('DECRBY', KEYS[4], old)
  end
end
-- Stores value with ttl (ms, or nil for none); false when a cap refuses it.
local function put(value, ttl)
  if ttl == 0 then
    redis.call('DEL', KEYS[1])
    forget()
    return true
  end
  local now = now_ms()
  sweep(now, SWEEP)
  local size = #ARGV[1] + #value
  if not fits(size) then
    sweep(now, nil)
    if not fits(size) then return false end
  end
  local old = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or 0)
  redis.call('INCRBY', KEYS[4], size - old)
  redis.call('HSET', KEYS[3], ARGV[1], size)
  if ttl then
    redis.call('SET', KEYS[1], value, 'PX', ttl)
    redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
  else
    redis.call('SET', KEYS[1], value)
    redis.call('ZADD', KEYS[2], '+inf', ARGV[1])
  end
  return true
end
local function ttl_arg(s)
  if s == '' then return nil end
  return tonumber(s)
end
"#;

/// `ARGV[4]` value, `ARGV[5]` TTL in ms or empty. 1 stored, -1 refused by a cap.
const SET: &str = r#"
if put(ARGV[4], ttl_arg(ARGV[5])) then return 1 end
return -1
"#;

/// 1 when a value was removed.
const DELETE: &str = r#"
local removed = redis.call('DEL', KEYS[1])
forget()
return removed
"#;

/// `ARGV[4]` delta, `ARGV[5]` TTL for a new key. `{1, value}`, `{-1}` cap, `{-2}` not a number.
const INCREMENT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local r = redis.pcall('INCRBY', KEYS[1], ARGV[4])
  if type(r) == 'table' and r.err then return {-2} end
  local value = redis.call('GET', KEYS[1])
  local old = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or 0)
  local size = #ARGV[1] + #value
  redis.call('INCRBY', KEYS[4], size - old)
  redis.call('HSET', KEYS[3], ARGV[1], size)
  return {1, value}
end
if put(ARGV[4], ttl_arg(ARGV[5])) then return {1, ARGV[4]} end
return {-1}
"#;

/// `ARGV[4]` `1` when a value is expected (`ARGV[5]`), `0` for absent; `ARGV[6]` the new value,
/// `ARGV[7]` its TTL. 1 written, 0 not equal, -1 refused by a cap.
const COMPARE_AND_SWAP: &str = r#"
local current = redis.call('GET', KEYS[1])
if ARGV[4] == '1' then
  if current ~= ARGV[5] then return 0 end
elseif current then
  return 0
end
if put(ARGV[6], ttl_arg(ARGV[7])) then return 1 end
return -1
"#;

/// GCRA as `gcra::take` states it, at the server's now. `ARGV[4]` interval in µs, `ARGV[5]`
/// window in µs, `ARGV[6]` quantity. `{allowed, remaining, reset, retry-after}`, `{-1}` cap,
/// `{-2}` the key holds something else.
const THROTTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local current = redis.call('GET', KEYS[1])
local stored = nil
if current then
  stored = tonumber(current)
  if not stored or stored < 0 or stored ~= math.floor(stored) then return {-2} end
end
local interval = math.max(tonumber(ARGV[4]), 1)
local window = tonumber(ARGV[5])
local q = tonumber(ARGV[6])
local cost = interval * math.abs(q)
local function remaining(tat) return math.floor(math.max(window - math.max(tat - now, 0), 0) / interval) end
local function ttl(tat) return math.ceil(math.max(tat - now, 0) / 1000) + 1 end
local function fmt(x) return string.format('%.0f', x) end
if q < 0 then
  if not stored then return {1, remaining(now), 0, 0} end
  local back = math.max(stored - cost, now)
  if not put(fmt(back), ttl(back)) then return {-1} end
  return {1, remaining(back), back - now, 0}
end
local tat = math.max(stored or 0, now)
local new_tat = tat + cost
local allow_at = new_tat - window
if now < allow_at then return {0, remaining(tat), tat - now, allow_at - now} end
if not put(fmt(new_tat), ttl(new_tat)) then return {-1} end
return {1, remaining(new_tat), new_tat - now, 0}
"#;

/// The operations, for metric labels and scripts.
#[derive(Debug, Clone, Copy)]
enum Op {
    Get,
    Set,
    Delete,
    Increment,
    CompareAndSwap,
    Throttle,
    Probe,
}

const OPS: [Op; 7] = [Op::Get, Op::Set, Op::Delete, Op::Increment, Op::CompareAndSwap, Op::Throttle, Op::Probe];

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Delete => "delete",
            Op::Increment => "increment",
            Op::CompareAndSwap => "compare-and-swap",
            Op::Throttle => "throttle",
            Op::Probe => "probe",
        }
    }
}

/// One operation's metric series, resolved at start.
#[derive(Debug)]
struct Series {
    duration: Histogram,
    timeouts: Counter,
    errors: Counter,
}

/// The scripts, each with the prelude.
struct Scripts {
    set: Script,
    delete: Script,
    increment: Script,
    compare_and_swap: Script,
    throttle: Script,
}

impl std::fmt::Debug for Scripts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scripts")
    }
}

/// Last known state of the server.
#[derive(Debug, Default)]
struct State {
    down: Option<String>,
}

/// The backend: a lazily connected [`ConnectionManager`], the scripts, timeouts and health.
#[derive(Debug)]
pub struct RedisKv {
    connection: ConnectionManager,
    prefix: String,
    address: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    scripts: Scripts,
    state: Mutex<State>,
    connected: std::sync::atomic::AtomicBool,
    up: Gauge,
    series: Vec<Series>,
}

// === impl RedisKv ===

impl RedisKv {
    /// A backend for `config` (the `[kv]` table, its password already read) that reports in
    /// `metrics`. No connection is made here: the first call or probe makes it. Must run
    /// inside a Tokio runtime: the manager and the probe are tasks on it.
    ///
    /// Errors: an unusable `url` (the message never contains credentials).
    pub fn new(config: &KvConfig, password: Option<String>, metrics: &Metrics) -> Result<Arc<Self>, String> {
        let url = config.url.as_deref().unwrap_or("redis://127.0.0.1:6379/0");
        let mut info =
            url.into_connection_info().map_err(|e| format!("`kv.url` is not a Redis URL: {}", e.category()))?;
        let address = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}/{}", info.redis_settings().db()),
            redis::ConnectionAddr::TcpTls { host, port, .. } => {
                // rustls needs a process-wide provider for redis-rs's client config; ring is
                // the one the gateway is built with (a no-op when one is installed already).
                let _ = rustls::crypto::ring::default_provider().install_default();
                format!("rediss://{host}:{port}/{}", info.redis_settings().db())
            }
            _ => return Err("`kv.url` must be redis:// or rediss:// (TCP)".to_owned()),
        };
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &config.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = password {
            settings = settings.set_password(password);
        }
        info = info.set_redis_settings(settings);
        let client = redis::Client::open(info).map_err(|e| format!("`kv.url`: {}", e.category()))?;
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let command_timeout = Duration::from_millis(config.command_timeout_ms);
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(command_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let connection =
            ConnectionManager::new_lazy_with_config(client, manager).map_err(|e| format!("`kv`: {}", e.category()))?;
        let script = |body: &str| Script::new(&format!("local SWEEP = {SWEEP_PER_WRITE}\n{PRELUDE}\n{body}"));
        let series = OPS
            .iter()
            .map(|op| {
                let labels = KvLabels { backend: "redis".to_owned(), op: op.label().to_owned() };
                let errors = |reason: &str| {
                    let labels = KvErrorLabels {
                        backend: "redis".to_owned(),
                        op: op.label().to_owned(),
                        reason: reason.to_owned(),
                    };
                    metrics.kv_errors.get_or_create(&labels).clone()
                };
                Series {
                    duration: metrics.kv_command_duration.get_or_create(&labels).clone(),
                    timeouts: errors("timeout"),
                    errors: errors("error"),
                }
            })
            .collect();
        let up = metrics.kv_up.get_or_create(&crate::metrics::KvBackendLabels { backend: "redis".to_owned() }).clone();
        let kv = Arc::new(RedisKv {
            connection,
            prefix: config.key_prefix.clone(),
            address,
            connect_timeout,
            command_timeout,
            scripts: Scripts {
                set: script(SET),
                delete: script(DELETE),
                increment: script(INCREMENT),
                compare_and_swap: script(COMPARE_AND_SWAP),
                throttle: script(THROTTLE),
            },
            state: Mutex::new(State { down: Some("not connected yet".to_owned()) }),
            connected: std::sync::atomic::AtomicBool::new(false),
            up,
            series,
        });
        tokio::spawn(probe(Arc::downgrade(&kv), Duration::from_millis(config.probe_interval_ms.max(10))));
        Ok(kv)
    }

    /// Health as last seen by a call or the probe.
    pub fn health(&self) -> KvHealth {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        KvHealth {
            backend: "redis",
            state: if state.down.is_some() { "down" } else { "up" },
            error: state.down.clone(),
            address: Some(self.address.clone()),
        }
    }

    fn keys(&self, ns: &str, key: &str) -> [String; 4] {
        let p = &self.prefix;
        [format!("{p}{ns}:k:{key}"), format!("{p}{ns}:i"), format!("{p}{ns}:s"), format!("{p}{ns}:b")]
    }

    /// Runs `call` within the timeout, recording its duration, errors and the health.
    async fn run<T>(
        &self,
        op: Op,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, KvError> {
        let series = &self.series[op as usize];
        let bound = if self.connected.load(std::sync::atomic::Ordering::Relaxed) {
            self.command_timeout
        } else {
            self.connect_timeout + self.command_timeout
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(bound, call).await;
        series.duration.observe(started.elapsed().as_secs_f64());
        let why = match outcome {
            Ok(Ok(value)) => {
                self.mark(None);
                return Ok(value);
            }
            Ok(Err(e)) if e.is_timeout() => {
                series.timeouts.inc();
                format!("no answer within {} ms", bound.as_millis())
            }
            Ok(Err(e)) => {
                series.errors.inc();
                describe(&e)
            }
            Err(_) => {
                series.timeouts.inc();
                format!("no answer within {} ms", bound.as_millis())
            }
        };
        self.mark(Some(why.clone()));
        Err(KvError::Unavailable(why))
    }

    /// Records the outcome of a call or probe; a success while up touches one atomic only.
    fn mark(&self, down: Option<String>) {
        let up = down.is_none();
        let was_up = self.connected.swap(up, std::sync::atomic::Ordering::Relaxed);
        if up && was_up {
            return;
        }
        if was_up != up {
            self.up.set(i64::from(up));
            match &down {
                Some(why) => tracing::warn!(address = %self.address, error = %why, "kv backend redis is down"),
                None => tracing::info!(address = %self.address, "kv backend redis is up"),
            }
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.down = down;
    }

    /// Runs `script` on `keys` with `ARGV` = the plugin's `member` key, the caps, then `args`.
    fn invoke<'a, T: redis::FromRedisValue + Send + 'a>(
        &'a self,
        script: &'a Script,
        keys: &'a [String; 4],
        member: &'a str,
        args: &'a [&'a [u8]],
    ) -> impl std::future::Future<Output = redis::RedisResult<T>> + 'a {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key.as_str());
        }
        invocation.arg(member).arg(MAX_ENTRIES_PER_NAMESPACE).arg(MAX_BYTES_PER_NAMESPACE);
        for arg in args {
            invocation.arg(*arg);
        }
        let mut connection = self.connection.clone();
        async move { invocation.invoke_async(&mut connection).await }
    }

    /// `GET`.
    ///
    /// Errors: [`KvError::Unavailable`].
    pub async fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let mut connection = self.connection.clone();
        let name = format!("{}{ns}:k:{key}", self.prefix);
        let mut cmd = redis::cmd("GET");
        cmd.arg(name);
        self.run(Op::Get, async move { cmd.query_async::<Option<Vec<u8>>>(&mut connection).await }).await
    }

    /// The `SET` script.
    ///
    /// Errors: [`KvError::QuotaExceeded`], [`KvError::Unavailable`].
    pub async fn set(&self, ns: &str, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), KvError> {
        let keys = self.keys(ns, key);
        let ttl = ttl_arg(ttl_ms);
        let args: [&[u8]; 2] = [&value, ttl.as_bytes()];
        match self.run(Op::Set, self.invoke::<i64>(&self.scripts.set, &keys, key, &args)).await? {
            1 => Ok(()),
            _ => Err(KvError::QuotaExceeded),
        }
    }

    /// The `DELETE` script.
    ///
    /// Errors: [`KvError::Unavailable`].
    pub async fn delete(&self, ns: &str, key: &str) -> Result<bool, KvError> {
        let keys = self.keys(ns, key);
        Ok(self.run(Op::Delete, self.invoke::<i64>(&self.scripts.delete, &keys, key, &[])).await? == 1)
    }

    /// The `INCREMENT` script (`INCRBY`, exact over all of i64).
    ///
    /// Errors: [`KvError::NotANumber`], [`KvError::QuotaExceeded`], [`KvError::Unavailable`].
    pub async fn increment(&self, ns: &str, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        let keys = self.keys(ns, key);
        let (delta, ttl) = (delta.to_string(), ttl_arg(ttl_ms));
        let args: [&[u8]; 2] = [delta.as_bytes(), ttl.as_bytes()];
        let reply: Vec<Value> =
            self.run(Op::Increment, self.invoke(&self.scripts.increment, &keys, key, &args)).await?;
        match reply.as_slice() {
            [Value::Int(1), value] => {
                let text: String = redis::from_redis_value_ref(value).map_err(|_| KvError::NotANumber)?;
                text.parse().map_err(|_| KvError::NotANumber)
            }
            [Value::Int(-2)] => Err(KvError::NotANumber),
            _ => Err(KvError::QuotaExceeded),
        }
    }

    /// The `COMPARE_AND_SWAP` script.
    ///
    /// Errors: [`KvError::QuotaExceeded`], [`KvError::Unavailable`].
    pub async fn compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, KvError> {
        let keys = self.keys(ns, key);
        let ttl = ttl_arg(ttl_ms);
        let present: &[u8] = if expected.is_some() { b"1" } else { b"0" };
        let args: [&[u8]; 4] = [present, expected.unwrap_or_default(), &value, ttl.as_bytes()];
        match self
            .run(Op::CompareAndSwap, self.invoke::<i64>(&self.scripts.compare_and_swap, &keys, key, &args))
            .await?
        {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(KvError::QuotaExceeded),
        }
    }

    /// The `THROTTLE` script: one round trip per take.
    ///
    /// Errors: [`KvError::NotANumber`], [`KvError::QuotaExceeded`], [`KvError::Unavailable`].
    pub async fn throttle(
        &self,
        ns: &str,
        key: &str,
        interval_us: u64,
        window_us: u64,
        quantity: i32,
    ) -> Result<Cell, KvError> {
        let keys = self.keys(ns, key);
        let (interval, window, quantity) = (interval_us.to_string(), window_us.to_string(), quantity.to_string());
        let args: [&[u8]; 3] = [interval.as_bytes(), window.as_bytes(), quantity.as_bytes()];
        let reply: Vec<i64> = self.run(Op::Throttle, self.invoke(&self.scripts.throttle, &keys, key, &args)).await?;
        let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
        match reply.as_slice() {
            [allowed @ (0 | 1), remaining, reset, retry] => Ok(Cell {
                allowed: *allowed == 1,
                remaining: unsigned(*remaining),
                reset_us: unsigned(*reset),
                retry_after_us: unsigned(*retry),
            }),
            [-2] => Err(KvError::NotANumber),
            _ => Err(KvError::QuotaExceeded),
        }
    }

    async fn ping(&self) -> Result<(), KvError> {
        let mut connection = self.connection.clone();
        self.run(Op::Probe, async move { redis::cmd("PING").query_async::<()>(&mut connection).await }).await
    }
}

fn ttl_arg(ttl_ms: Option<u64>) -> String {
    ttl_ms.map(|t| t.to_string()).unwrap_or_default()
}

/// An error's kind and text, for logs and `/status`. redis-rs never puts the password in
/// either.
fn describe(e: &redis::RedisError) -> String {
    if e.is_connection_refusal() {
        return "connection refused".to_owned();
    }
    let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
    format!("{}{detail}", e.category())
}

/// Pings every `interval` while the backend lives.
async fn probe(kv: Weak<RedisKv>, interval: Duration) {
    loop {
        let Some(kv) = kv.upgrade() else { return };
        let _ = kv.ping().await;
        drop(kv);
        tokio::time::sleep(interval).await;
    }
}
